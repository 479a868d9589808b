"""`noisy_qpu`: an offline QPU that is *not* a thermal sampler, built like `thermal_mock`
(a `MockDWaveSampler` of a topology whose substitute sampler is `NoisyDevice`).

Each call samples the Boltzmann distribution of a distorted version of the Ising problem it was
given, at one inverse temperature, so enumeration can check it (docs/noisy_qpu.md has the model,
where each default magnitude comes from, and what it leaves out):

    D(s) = Σ_i g_i (a_i h_i + δ_i(t)) s_i + Σ_ij sqrt(g_i g_j) c_ij J_ij s_i s_j
    p(s) ∝ exp(−β_eff · D(s)),    β_eff = beta / (1 + freeze_out · scale(h, J))

* δ_i(t): a field offset per qubit, static N(0, field_noise²) draws plus a random walk that moves
  every offset by N(0, drift²) after each call;
* a_i, c_ij: static multiplicative errors of every field and coupler, exp(coupler_noise · z);
* g_i: the qubit's own inverse-temperature factor, exp(beta_spread · z); a coupler between two
  qubits sees the geometric mean of theirs, so a uniform factor is exactly a global β change;
* scale(h, J) = sqrt(mean_i (h_i² + Σ_j J_ij²)) of the programmed problem: the RMS size of a
  qubit's local field. Larger problems freeze out earlier, where the programmed energy is worth
  less, so β_eff in programmed units falls as they grow;
* after sampling, every qubit of the problem reads out flipped with probability `chain_break`
  (independently): in an embedded problem a flipped qubit of a chain breaks it.

Every random draw comes from `seed`: the same seed gives the same device (offsets, errors,
factors, in the chip's sorted qubit and coupler order) and the same samples. The Gibbs engine and
its per-call seeds are `thermal_mock`'s, so with every noise at 0 the samples are the thermal
mock's own, bit for bit. `last_distortion` holds the distorted problem of the latest call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import dimod
import numpy as np

from samplers.base import SamplerOptionError

# Default magnitudes, in programmed h/J units; docs/noisy_qpu.md gives the published figure
# behind each, or says why the value was chosen where there is none.
BETA = 4.6           # β_eff at vanishing problem scale
FIELD_NOISE = 0.01   # σ of the static field offsets δ_i
COUPLER_NOISE = 0.014  # relative σ of the field and coupler errors a_i, c_ij
BETA_SPREAD = 0.01   # relative σ of the per-qubit β factors g_i
DRIFT = 1e-4         # σ of each offset's step per call
FREEZE_OUT = 0.05    # how fast β_eff falls with the problem's scale
CHAIN_BREAK = 0.0    # readout flip probability per qubit

FACTORY = "samplers.testing:noisy_qpu"


class DeviceModelError(SamplerOptionError):
    """An impossible device parameter (negative noise, beta <= 0, chain_break outside [0, 1),
    a non-finite number); the CLI reports it as bad input."""


@dataclass(frozen=True)
class Distortion:
    """What one call sampled: exp(−beta · bqm) on the call's qubits."""

    bqm: dimod.BinaryQuadraticModel   # the distorted problem D, SPIN, the call's variable order
    beta: float                       # β_eff(scale) of the call
    scale: float                      # the programmed problem's scale
    offsets: np.ndarray               # δ_i of the call's qubits, in the bqm's variable order


def problem_scale(h: np.ndarray, row: np.ndarray, col: np.ndarray, quad: np.ndarray) -> float:
    """sqrt(mean_i (h_i² + Σ_j J_ij²)): the RMS norm of a qubit's local-field coefficients."""
    if len(h) == 0:
        return 0.0
    sq = h * h + np.bincount(row, quad * quad, len(h)) + np.bincount(col, quad * quad, len(h))
    return float(math.sqrt(sq.mean()))


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DeviceModelError(f"{FACTORY}: {name} must be a number "
                               f"(got {type(value).__name__}; value not shown)")
    if not math.isfinite(value):
        raise DeviceModelError(f"{FACTORY}: {name} = {value!r} is not finite")
    return float(value)


def check_parameters(beta, noise: dict, chain_break, num_sweeps, seed) -> None:
    """DeviceModelError naming the first impossible parameter."""
    if _number("beta", beta) <= 0:
        raise DeviceModelError(f"{FACTORY}: beta must be > 0, got {beta!r}")
    for name, value in noise.items():
        if _number(name, value) < 0:
            raise DeviceModelError(f"{FACTORY}: {name} must be >= 0, got {value!r}")
    if not 0 <= _number("chain_break", chain_break) < 1:
        raise DeviceModelError(f"{FACTORY}: chain_break must be in [0, 1), got {chain_break!r}")
    if isinstance(num_sweeps, bool) or not isinstance(num_sweeps, int) or num_sweeps < 1:
        raise DeviceModelError(f"{FACTORY}: num_sweeps must be an int >= 1")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise DeviceModelError(f"{FACTORY}: seed must be null or an int >= 0")


class NoisyDevice(dimod.Sampler):
    """The substitute sampler of `noisy_qpu`: the distorted problem's Boltzmann distribution,
    sampled by `thermal_mock`'s fixed-β Gibbs engine (see the module docstring)."""

    parameters = {"num_reads": []}
    properties: dict = {}

    def __init__(self, nodes, edges, *, beta: float = BETA, field_noise: float = FIELD_NOISE,
                 coupler_noise: float = COUPLER_NOISE, beta_spread: float = BETA_SPREAD,
                 drift: float = DRIFT, freeze_out: float = FREEZE_OUT,
                 chain_break: float = CHAIN_BREAK, num_sweeps: int = 200,
                 seed: int | None = None):
        from samplers.testing import FixedBetaGibbs

        noise = {"field_noise": field_noise, "coupler_noise": coupler_noise,
                 "beta_spread": beta_spread, "drift": drift, "freeze_out": freeze_out}
        check_parameters(beta, noise, chain_break, num_sweeps, seed)
        self.beta, self.freeze_out = float(beta), float(freeze_out)
        self.drift, self.chain_break = float(drift), float(chain_break)
        nodes = np.array(sorted(int(q) for q in nodes), dtype=np.int64)
        pairs = sorted((min(u, v), max(u, v)) for u, v in edges)
        self._index = np.full(int(nodes.max()) + 1, -1, dtype=np.int64)
        self._index[nodes] = np.arange(len(nodes))
        self._stride = len(self._index)
        self._edge_keys = np.array([u * self._stride + v for u, v in pairs], dtype=np.int64)
        # one stream per purpose, so that a magnitude set to 0 changes no other draw, and the
        # Gibbs engine's own stream (seeded by `seed` itself) stays thermal_mock's
        device, walk, readout = np.random.SeedSequence(seed).spawn(3)
        rng = np.random.default_rng(device)
        z_offset, z_gain, z_spread = rng.standard_normal((3, len(nodes)))
        z_coupler = rng.standard_normal(len(pairs))
        self._offsets = float(field_noise) * z_offset
        self._field_gain = np.exp(float(coupler_noise) * z_gain)
        self._spread = np.exp(float(beta_spread) * z_spread)
        self._coupler_gain = np.exp(float(coupler_noise) * z_coupler)
        self._walk = np.random.default_rng(walk)
        self._readout = np.random.default_rng(readout)
        self._gibbs = FixedBetaGibbs(self.beta, num_sweeps, seed)
        self.nodes = nodes
        self.calls = 0
        self.last_distortion: Distortion | None = None

    def field_offsets(self) -> np.ndarray:
        """The offsets δ_i the next call sees, one per chip qubit in sorted label order."""
        return self._offsets.copy()

    def beta_at(self, scale: float) -> float:
        """β_eff of a problem of this scale (programmed units)."""
        return self.beta / (1.0 + self.freeze_out * scale)

    def distorted_problem(self, bqm) -> Distortion:
        """What the next call would sample for `bqm` (qubit labels): D and its β_eff."""
        spin = bqm if bqm.vartype is dimod.SPIN else bqm.change_vartype(dimod.SPIN, inplace=False)
        labels = list(spin.variables)
        h, (row, col, quad), offset = spin.to_numpy_vectors(variable_order=labels)
        qubits = self._index[np.asarray(labels, dtype=np.int64)]
        lo, hi = np.minimum(qubits[row], qubits[col]), np.maximum(qubits[row], qubits[col])
        keys = self.nodes[lo] * self._stride + self.nodes[hi]
        couplers = np.searchsorted(self._edge_keys, keys)
        gain = self._spread[qubits]
        fields = gain * (self._field_gain[qubits] * h + self._offsets[qubits])
        couplings = np.sqrt(gain[row] * gain[col]) * self._coupler_gain[couplers] * quad
        scale = problem_scale(h, row, col, quad)
        distorted = dimod.BinaryQuadraticModel.from_numpy_vectors(
            fields, (row, col, couplings), offset, dimod.SPIN, variable_order=labels)
        return Distortion(distorted, self.beta_at(scale), scale, self._offsets[qubits].copy())

    def sample(self, bqm, num_reads: int = 1, **ignored):
        # `ignored`: QPU-only parameters (auto_scale, annealing_time, ...) forwarded by the mock
        from samplers.testing import _relabelled_energies

        distortion = self.distorted_problem(bqm)
        answer = self._gibbs.sample_at(distortion.bqm, distortion.beta, num_reads)
        if self.chain_break > 0:
            flips = self._readout.random(answer.record.sample.shape) < self.chain_break
            answer.record.sample[flips] *= -1
        self.last_distortion = distortion
        self.calls += 1
        if self.drift > 0:
            self._offsets = self._offsets + self.drift * self._walk.standard_normal(
                len(self._offsets))
        return _relabelled_energies(answer, bqm)


def noisy_qpu(topology="chimera_c4", beta: float = BETA, field_noise: float = FIELD_NOISE,
              coupler_noise: float = COUPLER_NOISE, beta_spread: float = BETA_SPREAD,
              drift: float = DRIFT, freeze_out: float = FREEZE_OUT,
              chain_break: float = CHAIN_BREAK, num_sweeps: int = 200, seed: int | None = None):
    """A MockDWaveSampler of `topology` (name, path or Topology) whose answers are Boltzmann in a
    distorted problem (`NoisyDevice`, reached as `.substitute_sampler`); defaults are the
    published magnitudes (docs/noisy_qpu.md)."""
    import topologies
    from samplers.testing import _mock_with

    graph = topologies.load(topology).graph()
    device = NoisyDevice(graph.nodes, graph.edges, beta=beta, field_noise=field_noise,
                         coupler_noise=coupler_noise, beta_spread=beta_spread, drift=drift,
                         freeze_out=freeze_out, chain_break=chain_break, num_sweeps=num_sweeps,
                         seed=seed)
    return _mock_with(topology, device)
