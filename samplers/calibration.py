"""β_eff calibration: `calibrate` loops a sampler between drawing and correcting its scaling, by
pseudo-likelihood against the problem it programmed (`samplers.pseudo_likelihood`) or by energy
matching against a classical reference (`samplers.energy_matching`), and reports the outcome
(`CalibrationResult`). A sampler that is Boltzmann at one temperature satisfies both estimators,
so `estimator="both"` reports when they disagree beyond their errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from samplers.base import SamplerOptionError, TemperatureScaled
from samplers.energy_matching import EnergyReference, energy_reference, match_energy
from samplers.model import BipartiteModel
from samplers.pseudo_likelihood import MIN_SAMPLES, estimate_beta

ESTIMATORS = ("mpl", "energy", "both")
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
    hints: tuple = ()                 # corrections the last samples point to (`calibration_hints`)
    corrections: tuple = ()           # report lines of the device corrections (`calibrate_cli`)

    def _agreement(self) -> str:
        diff = self.mpl.beta_eff - self.energy.beta_eff
        sigma = math.hypot(self.mpl.stderr, self.energy.stderr)
        apart = (f"mpl - energy = {diff:.3f} is {abs(diff) / sigma:.1f} combined standard errors "
                 f"({sigma:.3f})")
        if self.disagree:
            from samplers.calibration_hints import TEMPERATURE

            return (f"estimators DISAGREE: {apart} > {DISAGREE_SIGMAS:g}: the samples are not "
                    "Boltzmann at one temperature\n" + "\n".join(
                        f"  try: {hint}" for hint in (self.hints or (TEMPERATURE,))))
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
            *self.corrections,
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
            return Measurement("mpl", at_model.beta, at_model.stderr, at_model.beta, it,
                               True), info, z
        measured = sampler.measure_beta_eff(num_bootstrap=num_bootstrap, seed=seed)
        converged = abs(at_model.beta - model.beta) <= 2 * at_model.stderr
        sampler.set_beta_eff(measured.beta)
        history.append(measured.beta)
        if converged:
            break
    return Measurement("mpl", measured.beta, measured.stderr, at_model.beta, it,
                       converged), info, z


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
                               not match.clipped), info, z
        ratio = sampler.beta_eff / reference.beta
        beta_eff = ratio * match.beta
        sampler.set_beta_eff(beta_eff)
        history.append(beta_eff)
        if converged:
            break
    return Measurement("energy", beta_eff, ratio * match.stderr, match.beta, it,
                       converged), info, z


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
        runs["mpl"], info, z = _mpl_loop(sampler, model, num_samples, max_iterations,
                                         num_bootstrap, boot_seed, history, progress)
    if estimator in ("energy", "both"):
        if not isinstance(reference, EnergyReference):
            reference = energy_reference(model, sampler=reference, seed=ref_seed)
        runs["energy"], info, z = _energy_loop(sampler, model, num_samples, max_iterations,
                                               reference, history, progress)
    primary = runs["energy" if estimator == "energy" else "mpl"]
    disagree = _disagree(runs)
    found = ()
    if disagree:
        from samplers.calibration_hints import hints

        found = tuple(hints(model, z))
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
        energy=runs.get("energy"), disagree=disagree, hints=found,
    )


def _disagree(runs: dict) -> bool | None:
    if len(runs) < 2:
        return None
    mpl, energy = runs["mpl"], runs["energy"]
    return abs(mpl.beta_eff - energy.beta_eff) > DISAGREE_SIGMAS * math.hypot(mpl.stderr,
                                                                             energy.stderr)

