"""The run's metrics: `metrics.csv`, one row per logged step, and TensorBoard event files.

Columns are whatever the rows bring: model metrics keep their names, evaluation values are
merged into the row of the step they belong to, and every numeric fact a sampler reports for a
step is logged under a `sampler/` prefix — nothing is dropped. When a row brings a column the
file has not seen, the file is rewritten with the wider header (rare: the first evaluation, a
sampler's occasional keys), so it always stays one valid CSV table. Rows after the last
checkpoint are dropped on resume, so a killed run's file continues without duplicates.

TensorBoard (`torch.utils.tensorboard`, optional) gets the same scalars, grouped by prefix.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from dvae_q.errors import BadInput
from storage.files import write_atomic

LEADING = ("step", "wall_time_s")
SAMPLER_PREFIX = "sampler/"


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return value


def sampler_columns(info: dict) -> dict:
    """Every numeric (not boolean) value of a sampler's info under the `sampler/` prefix;
    nested dicts (e.g. timing) flatten to `sampler/timing/<key>`."""
    out = {}
    for key, value in info.items():
        if isinstance(value, dict):
            for sub, item in sampler_columns(value).items():
                out[f"{SAMPLER_PREFIX}{key}/{sub[len(SAMPLER_PREFIX):]}"] = item
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{SAMPLER_PREFIX}{key}"] = float(value)
    return out


def read(path: Path) -> list[dict]:
    """All rows of a metrics file (strings, '' for absent values); BadInput if unreadable."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        for row in rows:
            int(row["step"])
    except (OSError, UnicodeDecodeError, csv.Error, KeyError, TypeError, ValueError):
        raise BadInput(f"{path} is not a readable metrics file; move it aside to continue") from None
    return rows


class MetricsWriter:
    """Appends rows to `metrics.csv` (and TensorBoard if asked); missing values stay empty."""

    def __init__(self, path: Path, resume_step: int | None = None, tensorboard: bool = False):
        self.path = Path(path)
        self.columns: list[str] = list(LEADING)
        rows: list[dict] = []
        if resume_step is not None and self.path.exists():
            rows = [r for r in read(self.path) if int(r["step"]) <= resume_step]
            with open(self.path, newline="") as handle:
                header = next(csv.reader(handle), [])
            self.columns += [c for c in header if c not in self.columns]
        self._rewrite(rows)
        self._board = _board(self.path.parent, resume_step) if tensorboard else None

    def _rewrite(self, rows: list[dict]) -> None:
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, self.columns, restval="", extrasaction="raise")
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(self.path, text.getvalue())

    def write(self, row: dict) -> None:
        cells = {k: _cell(v) for k, v in row.items()}
        new = [k for k in cells if k not in self.columns]
        if new:
            self.columns += new
            self._rewrite(read(self.path))
        with open(self.path, "a", newline="") as handle:
            csv.DictWriter(handle, self.columns, restval="").writerow(cells)
        if self._board is not None:
            step = int(row["step"])
            for key, value in row.items():
                if key not in LEADING and isinstance(value, (int, float)) and value is not None:
                    self._board.add_scalar(_board_tag(key), value, step)
            self._board.flush()

    def close(self) -> None:
        if self._board is not None:
            self._board.close()
            self._board = None


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


EVAL_KEYS = ("log_z", "log_z_stderr", "valid_nll", "valid_elbo", "test_nll", "test_elbo")


def _board_tag(key: str) -> str:
    """TensorBoard groups tags by their first path part: sampler/…, eval/…, train/…"""
    if "/" in key:
        return key
    return f"eval/{key}" if key in EVAL_KEYS or key.startswith(("log_z", "nll_")) else f"train/{key}"


def _board(folder: Path, resume_step: int | None):
    from torch.utils.tensorboard import SummaryWriter

    # on resume, TensorBoard's own purge drops events after the checkpoint's step
    return SummaryWriter(log_dir=str(folder / "tensorboard"),
                         purge_step=None if resume_step is None else resume_step + 1)
