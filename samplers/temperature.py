"""Effective inverse temperature of a sampler's samples, and β_eff calibration: the names of
`samplers.pseudo_likelihood` (the estimator), `samplers.calibration` (the loop and its report) and
`samplers.calibration_cli` (what `dvae-q calibrate` runs), in one place.

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

from samplers.calibration import (
    DISAGREE_SIGMAS,
    ENERGY_GAP_SIGMAS,
    ESTIMATORS,
    MIN_BOOTSTRAP,
    CalibrationResult,
    CalibrationSettingError,
    Measurement,
    calibrate,
    check_calibration_settings,
    spawn_seeds,
)
from samplers.calibration_cli import calibrate_cli, random_native_model
from samplers.pseudo_likelihood import (
    MIN_SAMPLES,
    BetaEstimate,
    TemperatureEstimationError,
    bootstrap_weights,
    estimate_beta,
    flip_costs,
)

__all__ = ["DISAGREE_SIGMAS", "ENERGY_GAP_SIGMAS", "ESTIMATORS", "MIN_BOOTSTRAP", "MIN_SAMPLES",
           "BetaEstimate", "CalibrationResult", "CalibrationSettingError", "Measurement",
           "TemperatureEstimationError", "bootstrap_weights", "calibrate", "calibrate_cli",
           "check_calibration_settings", "estimate_beta", "flip_costs", "random_native_model",
           "spawn_seeds"]
