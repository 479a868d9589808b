"""Effective inverse temperature of a sampler's samples, and β_eff calibration.

**Estimator.** Maximum pseudo-likelihood (MPL). For each sample s and unit i
let Δ_i(s) = E(s with unit i flipped) − E(s). If s ~ exp(−β·E), then
p(s_i | s_−i) = σ(β·Δ_i(s)), and the pseudo-log-likelihood Σ_s Σ_i log σ(β·Δ_i(s)) is concave in
β with stationarity condition

    g(β) = Σ_s Σ_i Δ_i(s) · σ(−β·Δ_i(s)) = 0,

which is monotone decreasing in β (g' = −Σ Δ²σ(βΔ)σ(−βΔ) < 0), so the root is unique when it
exists. This is the condition `dwave.system.temperatures.maximum_pseudolikelihood_temperature`
solves (with T = 1/β); tests cross-check the two. Here it is solved by safeguarded Newton steps
in log β over arrays of Δ. The error bar is the standard deviation of bootstrap replicates (rows
resampled with replacement), each solved by one Newton step from β̂ — one pass over Δ for all
replicates, so recalibrating a 5,640-qubit problem costs tens of milliseconds.

MPL measures local, single-spin statistics. The second estimator, energy matching
(`samplers.energy_matching`), measures a global, energy-level temperature; a sampler that is
Boltzmann at one temperature satisfies both, so `calibrate(..., estimator="both")` reports when
they disagree beyond their errors.

**Units.** For a `BipartiteModel` the estimate is β̂ with samples ≈ exp(−β̂·E(z)), E the model's
energy *without* its own `beta` (so exact samples of a model with beta=b give β̂ ≈ b). For a dimod
BQM it is β̂ with samples ≈ exp(−β̂·E_bqm).

**Calibration.** A sampler whose temperature is a scaling (the QPU backend: it programs
E·β/β_eff) is corrected by β_eff ← its estimate, measured by MPL against the problem it actually
programmed or by energy matching against a classical reference; `calibrate` repeats that until
the estimate is stable and reports β_eff, its error, the chain-break fraction and the QPU access
time per call. A seed fixes every random choice, so a report is reproducible.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.special import expit

from samplers.base import SamplerOptionError, TemperatureScaled, import_object
from samplers.energy_matching import EnergyReference, energy_reference, match_energy
from samplers.model import BipartiteModel

LOG_BETA_MIN, LOG_BETA_MAX = math.log(1e-3), math.log(1e3)  # Ocean's T_bracket (0.001, 1000)

ESTIMATORS = ("mpl", "energy", "both")
# An error bar needs enough samples to mean something: the standard error estimated from n
# samples has itself a relative error of about 1/sqrt(2(n − 1)) (13 % at n = 30), and a bootstrap
# of a single sample is identically 0. Below these counts calibrate refuses rather than print a
# number that looks like an error bar.
MIN_SAMPLES = 30
# the bootstrap std from B replicates has a relative error of about 1/sqrt(2(B − 1)): 16 % at 20
MIN_BOOTSTRAP = 20
# the energy loop stops when the mean-energy gap is within this many combined standard errors of
# the two means. Not 1: after a step the gap carries the step's own error as well as the new
# samples', so on a device that is exactly thermal a 1-sigma rule keeps iterating about half the
# time (measured: 300 reads on the thermal mock ran into the 5-call cap); 2 matches the mpl loop
ENERGY_GAP_SIGMAS = 2.0
# the estimators disagree when they differ by more than this many combined standard errors; for a
# sampler that is Boltzmann at one temperature that happens with probability 0.3 % (normal errors)
DISAGREE_SIGMAS = 3.0


class TemperatureEstimationError(ValueError):
    """The samples do not determine a finite β (e.g. all are local minima, or all anti-thermal)."""


@dataclass(frozen=True)
class BetaEstimate:
    beta: float
    stderr: float                    # bootstrap std; nan with < 2 replicates or < MIN_SAMPLES rows
    num_samples: int
    bootstrap: tuple = field(default=(), repr=False)


def flip_costs(model_or_bqm, samples, labels=None) -> np.ndarray:
    """Δ_i(s) = E(flip_i s) − E(s) for every sample (rows) and unit (columns), float64.

    `samples`: for a BipartiteModel, (n, n_left + n_right) values in {0, 1} (tensor or array).
    For a dimod BQM: a SampleSet, a (array, labels) pair, or an array whose columns follow
    `labels` (default: bqm.variables); values in the BQM's vartype.
    """
    if isinstance(model_or_bqm, BipartiteModel):
        m = model_or_bqm
        z = torch.as_tensor(samples).detach().to("cpu", torch.float64)
        w = m.W.detach().to("cpu", torch.float64)
        zl, zr = z[:, : m.num_left], z[:, m.num_left :]
        field_l = m.a_left.detach().cpu().double() + zr @ w.T
        field_r = m.a_right.detach().cpu().double() + zl @ w
        fields = torch.cat([field_l, field_r], dim=1)
        return (-(1 - 2 * z) * fields).numpy()
    return _bqm_flip_costs(model_or_bqm, samples, labels)


def _bqm_flip_costs(bqm, samples, labels):
    import dimod
    import scipy.sparse as sp

    if isinstance(samples, dimod.SampleSet):
        if np.any(samples.record.num_occurrences != 1):
            raise ValueError("flip_costs needs raw samples (answer_mode='raw'), not a histogram")
        samples, labels = samples.record.sample, list(samples.variables)
    elif isinstance(samples, tuple):
        samples, labels = samples
    arr = np.asarray(samples, dtype=np.float64)
    labels = list(bqm.variables) if labels is None else list(labels)
    if arr.ndim != 2 or arr.shape[1] != len(labels) or set(labels) != set(bqm.variables):
        raise ValueError("samples' columns must be exactly the BQM's variables")
    h, (row, col, quad), _ = bqm.to_numpy_vectors(variable_order=labels)
    n = len(labels)
    coupling = sp.coo_matrix((np.concatenate([quad, quad]),
                              (np.concatenate([row, col]), np.concatenate([col, row]))),
                             shape=(n, n)).tocsr()
    fields = h[None, :] + (coupling @ arr.T).T
    if bqm.vartype is dimod.SPIN:
        return -2.0 * arr * fields
    return -(1.0 - 2.0 * arr) * fields


def _score(delta: np.ndarray, weights: np.ndarray, beta: np.ndarray):
    """g(β_b) and dg/dβ_b for each replicate b (weights (B, n) over sample rows)."""
    g = np.empty(len(beta))
    dg = np.empty(len(beta))
    for b, bt in enumerate(beta):
        s = expit(-bt * delta)
        g[b] = weights[b] @ (delta * s).sum(1)
        dg[b] = -(weights[b] @ (delta * delta * s * (1 - s)).sum(1))
    return g, dg


def _solve(delta: np.ndarray, weights: np.ndarray, beta0: float) -> np.ndarray:
    """Root of g per replicate by Newton steps in x = log β, bisecting when a step leaves the
    current bracket; returns nan where the root is outside [1e-3, 1e3]."""
    count = len(weights)
    lo = np.full(count, LOG_BETA_MIN)
    hi = np.full(count, LOG_BETA_MAX)
    x = np.full(count, math.log(min(max(beta0, 1.01e-3), 0.99e3)))
    for _ in range(100):
        beta = np.exp(x)
        g, dg = _score(delta, weights, beta)
        lo = np.where(g > 0, x, lo)   # g decreasing: a positive score means the root is larger
        hi = np.where(g <= 0, x, hi)
        with np.errstate(divide="ignore", invalid="ignore"):
            step = np.where(dg != 0, x - g / (dg * beta), np.nan)
        # at the root g is rounding noise and the step tiny: accept it even if it touches
        # the bracket, rather than bisecting away from a converged value
        done = np.isfinite(step) & (np.abs(step - x) < 1e-10)
        bad = ~done & (~np.isfinite(step) | (step <= lo) | (step >= hi))
        x = np.where(bad, 0.5 * (lo + hi), step)
        if done.all():
            break
    out = np.exp(x)
    edge = (x - LOG_BETA_MIN < 1e-6) | (LOG_BETA_MAX - x < 1e-6)
    return np.where(edge, np.nan, out)


def bootstrap_weights(num_samples: int, num_bootstrap: int, seed: int | None) -> np.ndarray:
    """(num_bootstrap, num_samples) multiplicities of rows resampled with replacement."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, num_samples, size=(num_bootstrap, num_samples))
    weights = np.zeros((num_bootstrap, num_samples))
    np.add.at(weights, (np.arange(num_bootstrap)[:, None], idx), 1.0)
    return weights


def _bootstrap(delta: np.ndarray, beta: float, weights: np.ndarray) -> np.ndarray:
    """Bootstrap replicates of β̂ by one Newton step from the full-sample root (a linearised
    bootstrap): g_b(β) ≈ g_b(β̂) + g_b'(β̂)(β − β̂), with g_b, g_b' weighted sums of per-sample
    terms computed in one pass. The step's error is O((β_b − β̂)²), i.e. about stderr², far
    below the spread it measures; tests compare it with fully re-solved replicates."""
    s = expit(-beta * delta)
    per_g = (delta * s).sum(1)
    per_dg = -(delta * delta * s * (1 - s)).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return beta - (weights @ per_g) / (weights @ per_dg)


def estimate_beta(model_or_bqm, samples, labels=None, *, num_bootstrap: int = 100,
                  seed: int | None = 0, beta_guess: float = 1.0) -> BetaEstimate:
    """β̂ of `samples` for a BipartiteModel or dimod BQM by maximum pseudo-likelihood.

    See the module docstring for units. `num_bootstrap` replicates (row resampling with a
    numpy Generator seeded by `seed`) give `stderr`; with fewer than MIN_SAMPLES samples there is
    no meaningful error bar and `stderr` is nan (a bootstrap of one sample is identically 0). Raises TemperatureEstimationError when no
    root lies in β ∈ [1e-3, 1e3] (e.g. every sample is a local minimum: β̂ = ∞).
    """
    delta = flip_costs(model_or_bqm, samples, labels)
    n = delta.shape[0]
    if n < 1:
        raise ValueError("estimate_beta needs at least one sample")
    # a root in (0, ∞) needs g(0) = ΣΔ/2 > 0 and some Δ < 0 (else g > 0 for every β: β̂ = ∞)
    possible = delta.sum() > 0 and (delta < 0).any()
    beta = float(_solve(delta, np.ones((1, n)), beta_guess)[0]) if possible else math.nan
    if not math.isfinite(beta):
        raise TemperatureEstimationError(
            f"no pseudo-likelihood β in [1e-3, 1e3] for these {n} samples "
            "(all local minima, or anti-thermal); the sampler is not near equilibrium"
        )
    boot = np.empty(0)
    if num_bootstrap > 0 and n >= MIN_SAMPLES:
        boot = _bootstrap(delta, beta, bootstrap_weights(n, num_bootstrap, seed))
    finite = boot[np.isfinite(boot)]
    stderr = float(np.std(finite, ddof=1)) if len(finite) >= 2 else math.nan
    return BetaEstimate(beta=beta, stderr=stderr, num_samples=n, bootstrap=tuple(boot.tolist()))


class CalibrationSettingError(SamplerOptionError):
    """A calibration setting that cannot give a meaningful estimate (too few samples, ...)."""


@dataclass(frozen=True)
class Measurement:
    """One estimator's outcome: β_eff (programmed units for a scaled sampler, else the β of the
    samples against the model's energy), its error, and how the loop ended."""

    estimator: str          # "mpl" or "energy"
    beta_eff: float
    stderr: float           # bootstrap std (mpl) or delta-method error (energy)
    beta_model: float       # β̂ of the last samples against the model's energy
    iterations: int
    converged: bool

    def describe(self) -> str:
        how = ("pseudo-likelihood, bootstrap std" if self.estimator == "mpl"
               else "energy matching, delta-method error")
        return f"{self.beta_eff:.3f} ± {self.stderr:.3f} ({how})"


@dataclass(frozen=True)
class CalibrationResult:
    """Outcome of `calibrate`: the sampler's β_eff (programmed units) and facts per call."""

    beta_eff: float                   # the value the sampler was left at
    stderr: float
    beta_model: float                 # β̂ of the last samples against the model's energy
    chain_break_fraction: float | None
    qpu_access_time_us: float | None  # per sample() call, as the solver reported (a mock's is fake)
    estimated_qpu_access_time_us: float | None  # per sample() call, Ocean's timing model
    num_samples: int
    iterations: int                   # sampler calls of all loops together
    history: tuple = ()
    estimator: str = "mpl"
    mpl: Measurement | None = None
    energy: Measurement | None = None
    disagree: bool | None = None      # None unless both estimators ran

    def _agreement(self) -> str:
        diff = self.mpl.beta_eff - self.energy.beta_eff
        sigma = math.hypot(self.mpl.stderr, self.energy.stderr)
        apart = (f"mpl - energy = {diff:.3f} is {abs(diff) / sigma:.1f} combined standard errors "
                 f"({sigma:.3f})")
        if self.disagree:
            return (f"estimators DISAGREE: {apart} > {DISAGREE_SIGMAS:g}: the samples are not "
                    "Boltzmann at one temperature")
        return f"estimators agree: {apart} <= {DISAGREE_SIGMAS:g}"

    def report(self) -> str:
        """Human-readable lines for `dvae-q calibrate`, numbers with fixed decimals."""
        fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
        primary = self.mpl if self.estimator != "energy" else self.energy
        lines = [f"beta_eff: {primary.describe()}"]
        if self.estimator == "both":
            lines += [f"beta_eff by energy matching: {self.energy.describe()}", self._agreement()]
        loops = "; ".join(f"{m.estimator} {m.iterations} "
                          f"({'converged' if m.converged else 'not converged'})"
                          for m in (self.mpl, self.energy) if m is not None)
        lines += [
            f"beta of samples against the model: {self.beta_model:.4f} (target 1 after calibration)",
            f"chain-break fraction: {fmt(self.chain_break_fraction, '.4f')}",
            f"QPU access time per call of {self.num_samples} samples (reported by the solver): "
            f"{fmt(self.qpu_access_time_us, ',.0f')} µs",
            f"QPU access time per call of {self.num_samples} samples (Ocean timing model): "
            f"{fmt(self.estimated_qpu_access_time_us, ',.0f')} µs",
            f"iterations: {loops}; beta_eff history: " + ", ".join(f"{b:.3f}" for b in self.history),
        ]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.report()


def spawn_seeds(seed: int | None, count: int) -> list[int | None]:
    """`count` independent integer seeds derived from `seed` (None stays None: OS entropy)."""
    if seed is None:
        return [None] * count
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(count)]


def check_calibration_settings(num_samples, estimator: str = "mpl", num_bootstrap: int = 100,
                               max_iterations: int = 5) -> None:
    """Raise CalibrationSettingError for settings that cannot give a meaningful error bar."""
    if estimator not in ESTIMATORS:
        raise CalibrationSettingError(
            f"calibrate: unknown estimator {estimator!r}; known: {', '.join(ESTIMATORS)}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) \
            or num_samples < MIN_SAMPLES:
        raise CalibrationSettingError(
            f"calibrate: too few samples per call for an error bar ({num_samples!r}); "
            f"use at least {MIN_SAMPLES} (num_samples, --num-reads)")
    if estimator != "energy" and num_bootstrap < MIN_BOOTSTRAP:
        raise CalibrationSettingError(
            f"calibrate: too few bootstrap replicates for an error bar ({num_bootstrap!r}); "
            f"use at least {MIN_BOOTSTRAP}")
    if isinstance(max_iterations, bool) or not isinstance(max_iterations, int) \
            or max_iterations < 1:
        raise CalibrationSettingError(f"calibrate: max_iterations must be >= 1, got {max_iterations!r}")


def _mpl_loop(sampler, model, num_samples, max_iterations, num_bootstrap, seed, history,
              progress=None):
    """Pseudo-likelihood loop: β_eff ← β̂ of the samples against the programmed problem, until
    the samples' β against the model is model.beta within 2 bootstrap errors."""
    scalable = isinstance(sampler, TemperatureScaled)
    for it in range(1, max_iterations + 1):
        z, info = sampler.draw(model, num_samples)
        if progress is not None:
            progress.update(1)
        at_model = estimate_beta(model, z, num_bootstrap=num_bootstrap, seed=seed,
                                 beta_guess=max(model.beta, 1e-3))
        if not scalable:
            return Measurement("mpl", at_model.beta, at_model.stderr, at_model.beta, it, True), info
        measured = sampler.measure_beta_eff(num_bootstrap=num_bootstrap, seed=seed)
        converged = abs(at_model.beta - model.beta) <= 2 * at_model.stderr
        sampler.set_beta_eff(measured.beta)
        history.append(measured.beta)
        if converged:
            break
    return Measurement("mpl", measured.beta, measured.stderr, at_model.beta, it, converged), info


def _energy_loop(sampler, model, num_samples, max_iterations, reference, history,
                 progress=None):
    """Energy-matching loop: β_eff ← β_eff·β̂/β₀ with β̂ the energy-matched β of the samples (a
    scaled sampler samples exp(−β_dev·β₀/β_eff·E), so β_dev = β_eff·β̂/β₀), until the samples'
    mean energy is the reference's within ENERGY_GAP_SIGMAS combined standard errors."""
    scalable = isinstance(sampler, TemperatureScaled)
    for it in range(1, max_iterations + 1):
        z, info = sampler.draw(model, num_samples)
        if progress is not None:
            progress.update(1)
        match = match_energy(model, z, reference)
        converged = not match.clipped and abs(match.gap) <= ENERGY_GAP_SIGMAS * match.gap_stderr
        if not scalable:
            return Measurement("energy", match.beta, match.stderr, match.beta, it,
                               not match.clipped), info
        ratio = sampler.beta_eff / reference.beta
        beta_eff = ratio * match.beta
        sampler.set_beta_eff(beta_eff)
        history.append(beta_eff)
        if converged:
            break
    return Measurement("energy", beta_eff, ratio * match.stderr, match.beta, it, converged), info


def calibrate(sampler, model: BipartiteModel, num_samples: int = 1000, *,
              estimator: str = "mpl", max_iterations: int = 5, num_bootstrap: int = 100,
              seed: int | None = 0, reference=None, progress=None) -> CalibrationResult:
    """Measure β_eff at `model` (e.g. the current prior) and update the sampler's scaling.

    `estimator`: "mpl" (pseudo-likelihood against the programmed problem, looped until the
    samples' β against the model is model.beta within 2 bootstrap errors), "energy" (energy
    matching against `reference`, looped until the mean energies agree within 2 combined
    standard errors) or "both" (mpl, then energy from there; the sampler is left at the mpl value
    and `disagree` says whether the two differ by more than DISAGREE_SIGMAS combined errors).
    A sampler that is not `TemperatureScaled` is measured once per estimator. `reference`: an
    `EnergyReference`, a `Sampler` to draw one with, or None (see `energy_reference`). `seed` fixes
    the bootstrap and the reference. Raises CalibrationSettingError for meaningless settings.
    `progress` (anything with `update(n)`) counts sampler calls.
    """
    check_calibration_settings(num_samples, estimator, num_bootstrap, max_iterations)
    boot_seed, ref_seed = spawn_seeds(seed, 2)
    scalable = isinstance(sampler, TemperatureScaled)
    history = [float(sampler.beta_eff)] if scalable else []
    runs = {}
    if estimator in ("mpl", "both"):
        runs["mpl"], info = _mpl_loop(sampler, model, num_samples, max_iterations, num_bootstrap,
                                      boot_seed, history, progress)
    if estimator in ("energy", "both"):
        if not isinstance(reference, EnergyReference):
            reference = energy_reference(model, sampler=reference, seed=ref_seed)
        runs["energy"], info = _energy_loop(sampler, model, num_samples, max_iterations,
                                            reference, history, progress)
    primary = runs["energy" if estimator == "energy" else "mpl"]
    if scalable and estimator == "both":
        sampler.set_beta_eff(primary.beta_eff)
        history.append(primary.beta_eff)
    return CalibrationResult(
        beta_eff=float(primary.beta_eff), stderr=float(primary.stderr),
        beta_model=float(primary.beta_model),
        chain_break_fraction=info.get("chain_break_fraction"),
        qpu_access_time_us=info.get("qpu_access_time_us"),
        estimated_qpu_access_time_us=(sampler.estimated_access_time_us(model, num_samples)
                                      if scalable else None),
        num_samples=num_samples, iterations=sum(m.iterations for m in runs.values()),
        history=tuple(history), estimator=estimator, mpl=runs.get("mpl"),
        energy=runs.get("energy"), disagree=_disagree(runs),
    )


def _disagree(runs: dict) -> bool | None:
    if len(runs) < 2:
        return None
    mpl, energy = runs["mpl"], runs["energy"]
    return abs(mpl.beta_eff - energy.beta_eff) > DISAGREE_SIGMAS * math.hypot(mpl.stderr,
                                                                             energy.stderr)


def random_native_model(topology, num_left=None, num_right=None, *, scale: float = 1.0,
                        seed: int = 0) -> BipartiteModel:
    """A random RBM on a topology's native mask (weights, biases ~ N(0, scale²/4)) — the
    calibration probe when no trained prior is given."""
    if topology.mode == "native":
        _, _, mask = topology.native_rbm(num_left, num_right)
        n_l, n_r = mask.shape
    else:
        n_l, n_r, mask = num_left or 16, num_right or 16, None
    g = torch.Generator().manual_seed(seed)
    normal = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64) * scale / 2  # noqa: E731
    return BipartiteModel(normal(n_l), normal(n_r), normal(n_l, n_r),
                          None if mask is None else mask.double())


def _factory_takes_seed(spec) -> bool:
    """Whether a "module:callable" child factory accepts `seed` (unresolvable specs are left to
    the qpu sampler, which reports them)."""
    if not isinstance(spec, str):
        return False
    try:
        factory = import_object(spec, "child sampler")
        return "seed" in inspect.signature(factory).parameters
    except (SamplerOptionError, TypeError, ValueError):
        return False


def calibrate_cli(topology, sampler: str = "qpu", num_reads: int = 1000, seed: int = 0,
                  child_sampler=None, num_left=None, num_right=None, estimator: str = "mpl",
                  num_bootstrap: int = 100, max_iterations: int = 5,
                  progress=None) -> CalibrationResult:
    """What `dvae-q calibrate` runs: calibrate `sampler` on a random native probe RBM of
    `topology` (or a dense 16+16 one for embedded topologies); str() of the result is the report.

    `seed` determines everything: independent streams for the probe RBM, the sampler, a child
    factory that accepts `seed` (e.g. samplers.testing:thermal_mock), the bootstrap and the
    energy reference, so the same seed prints the same report.
    """
    import samplers
    import topologies

    check_calibration_settings(num_reads, estimator, num_bootstrap, max_iterations)
    topo = topologies.load(topology)
    model_seed, sampler_seed, child_seed, calibration_seed = spawn_seeds(seed, 4)
    declared = samplers.declared_options(sampler)
    options = {}
    if child_sampler is not None:
        if "child_sampler" not in declared:
            raise CalibrationSettingError(
                f"calibrate: sampler '{sampler}' takes no child sampler (only 'qpu' does)")
        options["child_sampler"] = child_sampler
        if _factory_takes_seed(child_sampler):
            options["child_kwargs"] = {"seed": child_seed}
    if "num_reads" in declared:
        options["num_reads"] = num_reads
    smp = samplers.get(sampler, run={"seed": sampler_seed, "topology": topology}, **options)
    model = random_native_model(topo, num_left, num_right, seed=model_seed)
    return calibrate(smp, model, num_samples=num_reads, estimator=estimator,
                     num_bootstrap=num_bootstrap, max_iterations=max_iterations,
                     seed=calibration_seed, progress=progress)
