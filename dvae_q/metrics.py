"""The run's metrics CSV: a fixed header, one row per logged step or evaluation.

Rows after the last checkpoint are dropped on resume, so a killed run's file continues without
duplicates. Model metrics keep their names; sampler diagnostics get a `sampler_` prefix.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

COLUMNS = (
    "step",
    "wall_time_s",
    "loss",
    "recon",
    "kl",
    "approx_bound",  # only with a log Z estimate; approximate (stale AIS log Z), never the loss
    "iw_ess",
    "mf_residual",
    "lr",
    "kappa",
    "sampler_mean_energy",
    "sampler_time_s",
    "sampler_beta_eff",
    "sampler_beta_eff_measured",
    "sampler_beta_eff_stderr",
    "sampler_chain_break_fraction",
    "sampler_clipped_fraction",
    "sampler_retries",
    "sampler_log_z",
    "sampler_ess",
    "sampler_qpu_access_time_us",
    "log_z",
    "log_z_stderr",
    "valid_nll",
    "valid_elbo",
    "test_nll",
    "test_elbo",
)


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return value


class MetricsWriter:
    """Appends rows to `metrics.csv`; unknown keys are ignored, missing ones left empty."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = Path(path)
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        elif not self.path.exists() or resume_step is None:
            with open(self.path, "w", newline="") as handle:
                csv.writer(handle).writerow(COLUMNS)

    def _truncate_after(self, step: int) -> None:
        with open(self.path, newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= step]
        with open(self.path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: dict) -> None:
        with open(self.path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, COLUMNS, extrasaction="ignore", restval="")
            writer.writerow({k: _cell(v) for k, v in row.items()})


def read(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))
