"""β_eff of a `QPUSampler`: its measurement by pseudo-likelihood against the problem last
programmed, the recalibration schedule, and setting it (a mixin of `QPUSampler`)."""

from __future__ import annotations

import logging
import math

log = logging.getLogger("samplers.qpu")
# skips in a row before the sampler says so: a prior with near-zero parameters (the first
# training steps) carries no temperature information even on a perfect device, so one skip is
# expected; several in a row mean the samples do not follow the programmed problem
WARN_AFTER_SKIPS = 3


class BetaEffTracking:
    """`TemperatureScaled`'s β_eff side of `QPUSampler`: the state it uses (`beta_eff`,
    `beta_eff_history`, `calls`, `_last`, `_rng`, `options`) is the sampler's."""

    @property
    def recalibration_due(self) -> bool:
        """Whether this sampler's next draw re-measures β_eff (every `recalibrate_every` calls)."""
        every = self.options["recalibrate_every"]
        return bool(every) and (self.calls + 1) % every == 0

    def _maybe_recalibrate(self, info: dict, due: bool | None = None) -> None:
        """Re-measure β_eff after a call if `due` (None: on this sampler's schedule)."""
        from samplers.pseudo_likelihood import TemperatureEstimationError

        every = self.options["recalibrate_every"]
        if due is None:
            due = bool(every) and self.calls % every == 0  # the call is counted already
        if not due:
            return
        try:
            est = self.measure_beta_eff()
        except TemperatureEstimationError as exc:
            # keep β_eff and say so in the call's info
            self.recalibrations_skipped += 1
            self.skipped_in_a_row += 1
            info["recalibration_skipped"] = str(exc)
            if self.skipped_in_a_row == WARN_AFTER_SKIPS:
                log.warning(
                    "β_eff not re-measured at the last %d recalibrations (%s); it stays at %.4g. "
                    "The device's samples follow no temperature of the programmed problem: its "
                    "own errors outweigh the problem's scale (field offsets larger than the "
                    "prior's fields). spin_reversal_transforms or flux_bias_shim remove offsets; "
                    "`dvae-q calibrate --estimator both` says what the samples point to",
                    WARN_AFTER_SKIPS, exc, self.beta_eff)
        else:
            self.skipped_in_a_row = 0
            self.set_beta_eff(est.beta)
            info.update(recalibrated=True, beta_eff_measured=est.beta, beta_eff_stderr=est.stderr)
        # the count as a number, so that the training's metrics log it
        info["recalibrations_skipped"] = self.recalibrations_skipped

    # ---- temperature -------------------------------------------------------------------------
    def measure_beta_eff(self, num_bootstrap: int | None = None, seed: int | None = None):
        """β̂ (a `BetaEstimate`) of the last call's samples against the problem it programmed."""
        from samplers.pseudo_likelihood import estimate_beta

        if self._last is None:
            raise RuntimeError("measure_beta_eff needs a previous sample() call")
        bqm, spins, labels = self._last
        if seed is None:
            seed = int(self._rng.integers(2**31 - 1))
        boot = self.options["calibration_bootstrap"] if num_bootstrap is None else num_bootstrap
        return estimate_beta(bqm, (spins, labels), num_bootstrap=boot, seed=seed,
                             beta_guess=self.beta_eff)

    def set_beta_eff(self, beta_eff: float) -> None:
        """Use `beta_eff` for the scaling from the next call on (recorded in the history)."""
        if not (isinstance(beta_eff, (int, float)) and math.isfinite(beta_eff) and beta_eff > 0):
            raise ValueError(f"beta_eff must be a finite number > 0, got {beta_eff!r}")
        self.beta_eff = float(beta_eff)
        self.beta_eff_history.append(self.beta_eff)

