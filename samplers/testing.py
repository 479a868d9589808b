"""Offline QPU test doubles: a "thermal QPU" whose effective temperature is known exactly, a
slow one that answers after a fixed latency, and deliberately non-thermal ones.

`thermal_mock(topology, beta=b)` is a `MockDWaveSampler` with the topology's hardware graph and
properties (h_range, j_range, timing, ...) whose substitute sampler is simulated annealing held at
the fixed inverse temperature b with single-site Gibbs updates. It therefore behaves like a QPU
whose effective inverse temperature is exactly b in programmed units: samples ≈ exp(−b·E_prog).
Unlike the real mock's default substitute (steepest descent) this is a Boltzmann sampler, so
β_eff calibration and distribution tests have a known answer.

Like the real mock it enforces structure (qubits and couplers) but not h/J ranges. Physical QPU
parameters (auto_scale, annealing_time, thermalization) are accepted and have no effect.

Config files can name it as the qpu sampler's child:

    sampler_options:
      qpu: {child_sampler: "samplers.testing:thermal_mock",
            child_kwargs: {beta: 5.0, num_sweeps: 200, seed: 1}}

`noisy_qpu` (from `samplers.noisy_device`) is the faithful device model: Boltzmann in a distorted
problem (field offsets that drift, field and coupler errors, a β spread across the chip, a β_eff
that falls with the problem's scale, readout flips), named the same way
(`child_sampler: "samplers.testing:noisy_qpu"`).
"""

from __future__ import annotations

import threading
import time

import dimod
import numpy as np

from samplers.noisy_device import DeviceModelError, NoisyDevice, noisy_qpu

__all__ = ["DeviceModelError", "FieldOffsetGibbs", "FixedBetaGibbs", "LatencyQPU", "NoisyDevice",
           "TwoTemperatureGibbs", "field_offset_mock", "latency_mock", "noisy_qpu",
           "thermal_mock", "two_temperature_mock"]


class FixedBetaGibbs(dimod.Sampler):
    """Simulated annealing at one fixed β (Gibbs updates, random order), seeded per call from
    its own numpy Generator so that successive calls differ but a seed reproduces a run.

    With `per_problem_seed` each call's seed is instead a function of `seed` and the problem
    programmed (its arrays), so a process that is killed and restarted sees the same answers to
    the same problems — what exact-resume tests of a training run need from a stand-in QPU.
    """

    parameters = {"num_reads": []}
    properties: dict = {}

    def __init__(self, beta: float, num_sweeps: int, seed: int | None = None,
                 per_problem_seed: bool = False):
        from dwave.samplers import SimulatedAnnealingSampler

        self.beta = float(beta)
        self.num_sweeps = int(num_sweeps)
        self._engine = SimulatedAnnealingSampler()
        self._rng = np.random.default_rng(seed)
        self._seed, self._per_problem = seed, per_problem_seed

    def _call_seed(self, bqm, num_reads: int) -> int:
        if not self._per_problem:
            return int(self._rng.integers(2**31 - 1))
        import hashlib

        h, (row, col, quad), offset = bqm.to_numpy_vectors(variable_order=sorted(bqm.variables))
        digest = hashlib.sha256(repr((self._seed, num_reads, offset)).encode())
        for array in (h, row, col, quad):
            digest.update(np.ascontiguousarray(array).tobytes())
        return int.from_bytes(digest.digest()[:4], "little") % (2**31 - 1)

    def sample(self, bqm, num_reads: int = 1, **ignored):
        # `ignored`: QPU-only parameters (auto_scale, annealing_time, ...) forwarded by the mock
        return self.sample_at(bqm, self.beta, num_reads)

    def sample_at(self, bqm, beta: float, num_reads: int = 1):
        """`num_reads` samples of exp(−beta·E_bqm), from this call's seed."""
        return self._engine.sample(
            bqm,
            num_reads=num_reads,
            beta_range=[beta, beta],
            num_sweeps=self.num_sweeps,
            proposal_acceptance_criteria="Gibbs",
            randomize_order=True,
            seed=self._call_seed(bqm, num_reads),
        )


def thermal_mock(topology="chimera_c4", beta: float = 5.0, num_sweeps: int = 200,
                 seed: int | None = None, broken_nodes=None, broken_edges=None,
                 per_problem_seed: bool = False):
    """A MockDWaveSampler of `topology` (name, path or Topology) sampling exp(−beta·E_prog);
    `per_problem_seed`: see `FixedBetaGibbs`."""
    from dwave.system.testing import MockDWaveSampler

    import topologies

    topo = topologies.load(topology)
    graph = topo.mock_kwargs()  # the file's own broken qubits/couplers, plus any given here
    if broken_nodes:
        graph["broken_nodes"] = (graph["broken_nodes"] or []) + list(broken_nodes)
    if broken_edges:
        graph["broken_edges"] = (graph["broken_edges"] or []) + [tuple(e) for e in broken_edges]
    return MockDWaveSampler(
        **graph,
        substitute_sampler=FixedBetaGibbs(beta, num_sweeps, seed, per_problem_seed),
        parameter_warnings=False,
    )


class LatencyQPU(dimod.ComposedSampler, dimod.Structured):
    """A structured child (e.g. `thermal_mock`) answering like a remote QPU: `sample()` returns
    at once with a SampleSet that resolves lazily, `latency_s` after submission at the earliest.

    The child's own work runs on one worker thread in submission order, so its generator is used
    in the same order as without the latency and a seed reproduces a run; the waits run on
    threads of their own, so calls in flight together wait at the same time.

    Concurrency is recorded structurally, not by timing: `submitted` calls, `collected` answers
    (resolved by the caller), `in_flight` = submitted − collected, and `max_in_flight`.
    """

    def __init__(self, child, latency_s: float = 0.05):
        from concurrent.futures import ThreadPoolExecutor

        self._children = [child]
        self.latency_s = float(latency_s)
        self._work = ThreadPoolExecutor(max_workers=1)
        self._waits = ThreadPoolExecutor(max_workers=64)
        self._lock = threading.Lock()
        self.submitted = self.collected = self.max_in_flight = 0

    @property
    def children(self):
        return self._children

    nodelist = property(lambda self: self.child.nodelist)
    edgelist = property(lambda self: self.child.edgelist)
    parameters = property(lambda self: self.child.parameters.copy())
    properties = property(lambda self: self.child.properties)

    @property
    def in_flight(self) -> int:
        return self.submitted - self.collected

    def sample(self, bqm, **parameters):
        due = time.monotonic() + self.latency_s
        work = self._work.submit(self._compute, bqm, parameters)
        answer = self._waits.submit(self._answer, work, due)
        with self._lock:
            self.submitted += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return dimod.SampleSet.from_future(answer, self._collect)

    def _compute(self, bqm, parameters):
        answer = self.child.sample(bqm, **parameters)
        answer.resolve()
        return answer

    @staticmethod
    def _answer(work, due):
        result = work.result()
        time.sleep(max(0.0, due - time.monotonic()))
        return result

    def _collect(self, future):
        with self._lock:
            self.collected += 1
        return future.result()

    def close(self):
        self._work.shutdown(wait=True)
        self._waits.shutdown(wait=True)
        super().close()


def latency_mock(topology="chimera_c4", latency_s: float = 0.05, **thermal_kwargs) -> LatencyQPU:
    """`thermal_mock(topology, **thermal_kwargs)` behind a fixed per-call latency (`LatencyQPU`);
    usable as the qpu sampler's `child_sampler: samplers.testing:latency_mock`."""
    return LatencyQPU(thermal_mock(topology, **thermal_kwargs), latency_s)


class FieldOffsetGibbs(FixedBetaGibbs):
    """A QPU that adds a fixed offset δ_q to the programmed field of every qubit q (like flux-bias
    offsets), then samples at a fixed β: not Boltzmann in the problem it was given.
    δ_q = offset_mean + offset_std·N(0, 1), the normal from a generator seeded by
    (offset_seed, q), so δ_q is the same on every call whichever qubits a problem uses."""

    def __init__(self, beta: float, num_sweeps: int, offset_mean: float, offset_std: float = 0.0,
                 offset_seed: int = 0, seed: int | None = None):
        super().__init__(beta, num_sweeps, seed)
        self.offset_mean, self.offset_std = float(offset_mean), float(offset_std)
        self.offset_seed = int(offset_seed)

    def offset(self, qubit) -> float:
        noise = np.random.default_rng([self.offset_seed, int(qubit)]).normal()
        return self.offset_mean + self.offset_std * noise

    def sample(self, bqm, num_reads: int = 1, **ignored):
        shifted = bqm.change_vartype(dimod.SPIN, inplace=False)
        for q in shifted.variables:
            shifted.add_linear(q, self.offset(q))
        return _relabelled_energies(super().sample(shifted, num_reads=num_reads), bqm)


class TwoTemperatureGibbs(FixedBetaGibbs):
    """A QPU whose fields act at inverse temperature `beta_fields` and couplings at
    `beta_couplings` (samples ∝ exp(−β_h·E_h − β_J·E_J)), as when fields and couplers freeze out
    at different points of the anneal: Boltzmann at one temperature only if the two are equal."""

    def __init__(self, beta_fields: float, beta_couplings: float, num_sweeps: int,
                 seed: int | None = None):
        super().__init__(1.0, num_sweeps, seed)
        self.beta_fields = float(beta_fields)
        self.beta_couplings = float(beta_couplings)

    def sample(self, bqm, num_reads: int = 1, **ignored):
        spin = bqm.change_vartype(dimod.SPIN, inplace=False)
        split = dimod.BinaryQuadraticModel(
            {v: self.beta_fields * b for v, b in spin.linear.items()},
            {uv: self.beta_couplings * b for uv, b in spin.quadratic.items()}, 0.0, dimod.SPIN)
        return _relabelled_energies(super().sample(split, num_reads=num_reads), bqm)


def _relabelled_energies(sampleset, bqm):
    """The samples of `sampleset` in `bqm`'s vartype, with `bqm`'s energies."""
    samples = sampleset.change_vartype(bqm.vartype, inplace=False)
    return dimod.SampleSet.from_samples_bqm((samples.record.sample, list(samples.variables)), bqm)


def _mock_with(topology, substitute):
    from dwave.system.testing import MockDWaveSampler

    import topologies

    graph = topologies.load(topology).mock_kwargs()
    return MockDWaveSampler(**graph, substitute_sampler=substitute, parameter_warnings=False)


def field_offset_mock(topology="chimera_c4", beta: float = 5.0, offset_mean: float = 0.05,
                      offset_std: float = 0.0, num_sweeps: int = 200, offset_seed: int = 0,
                      seed: int | None = None):
    """A MockDWaveSampler of `topology` sampling exp(−beta·(E_prog + Σ_q δ_q s_q)) with fixed
    per-qubit field offsets δ_q ~ N(offset_mean, offset_std²): a non-thermal QPU."""
    return _mock_with(topology, FieldOffsetGibbs(beta, num_sweeps, offset_mean, offset_std,
                                                 offset_seed, seed))


def two_temperature_mock(topology="chimera_c4", beta_fields: float = 3.0,
                         beta_couplings: float = 6.0, num_sweeps: int = 200,
                         seed: int | None = None):
    """A MockDWaveSampler of `topology` whose fields are sampled at `beta_fields` and couplings
    at `beta_couplings`: a non-thermal QPU for estimator checks."""
    return _mock_with(topology, TwoTemperatureGibbs(beta_fields, beta_couplings, num_sweeps, seed))
