"""Collecting the finished cells of a `dvae-q reproduce` output folder: its cells.json says which
run directory is which cell, each finished run's results.json holds its numbers, and the runs of
one cell (its seeds) are summarised together."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from dvae_q.errors import BadInput
from dvae_q.table import paper as paper_table


@dataclass
class RunRecord:
    name: str
    cell: dict  # dataset, structure, method, k, seed, variant, variant_overrides
    results: dict


@dataclass
class CellSummary:
    dataset: str
    structure: str
    method: str
    k: int
    variant: str | None
    runs: list[RunRecord] = field(default_factory=list)

    @property
    def nlls(self) -> list[float]:
        return [r.results["test_nll"] for r in self.runs]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.nlls)

    @property
    def sd(self) -> float | None:
        return statistics.stdev(self.nlls) if len(self.runs) > 1 else None

    @property
    def published(self) -> float | None:
        """The poster's number; a variant changes the method, so it has none."""
        return None if self.variant else paper_table.published(self.dataset, self.method, self.k)

    @property
    def gap(self) -> float | None:
        return None if self.published is None else self.mean - self.published

    @property
    def label(self) -> str:
        letter = paper_table.LETTERS.get(self.method, "?")
        return f"{letter} {self.method}" + (f" [{self.variant}]" if self.variant else "")


def read_manifest(out: Path) -> dict:
    path = out / "cells.json"
    if not path.is_file():
        raise BadInput(f"{out} holds no cells.json: not a `dvae-q reproduce` output folder")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise BadInput(f"{path} is not readable JSON") from None


def load_runs(out: Path, manifest: dict) -> list[RunRecord]:
    """Every finished run of the folder's cells."""
    records = []
    for name, cell in manifest.get("cells", {}).items():
        path = out / name / "results.json"
        if path.is_file():
            try:
                records.append(RunRecord(name, cell, json.loads(path.read_text())))
            except (OSError, ValueError):
                raise BadInput(f"{path} is not readable JSON") from None
    return records


def summarise(records: Sequence[RunRecord]) -> list[CellSummary]:
    """One summary per cell (its seeds together), datasets, structures, K and the poster's
    column order kept."""
    cells: dict[tuple, CellSummary] = {}
    for r in records:
        c = r.cell
        key = (c["dataset"], c["structure"], c["method"], c["k"], c.get("variant"))
        cells.setdefault(key, CellSummary(*key)).runs.append(r)
    order = {m: i for i, m in enumerate(paper_table.COLUMNS)}
    return sorted(cells.values(), key=lambda s: (s.dataset, s.structure, s.k, s.variant or "",
                                                 order.get(s.method, 99)))


def dataset_label(s: CellSummary) -> str:
    """The dataset variant(s) the cell's runs were trained on, as they are named in the report."""
    variants = sorted({r.results.get("dataset_variant", s.dataset) for r in s.runs})
    return "/".join(variants)
