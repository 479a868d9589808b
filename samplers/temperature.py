"""Effective inverse temperature of a sampler's samples, and β_eff calibration: the names of
`samplers.pseudo_likelihood` (the estimator, maximum pseudo-likelihood: its module docstring
derives it and states its units), `samplers.calibration` (the loop and its report) and
`samplers.calibration_cli` (what `dvae-q calibrate` runs), in one place.

MPL measures local, single-spin statistics. The second estimator, energy matching
(`samplers.energy_matching`), measures a global, energy-level temperature; a sampler that is
Boltzmann at one temperature satisfies both, so `calibrate(..., estimator="both")` reports when
they disagree beyond their errors.

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
