"""`dvae-q reproduce`: train cells of the DVAE# table side by side on whatever hardware there is,
and compare them with the published numbers.

A cell is dataset × structure × method × K, run once per seed, optionally under a named variant
(extra config keys, e.g. an ablation). Each cell and seed gets its own run directory under the
output folder and runs as one Ray task: on this machine as many at once as its cores (or GPUs)
allow, on a cluster with `address`. The output folder is the state: a cell whose directory holds
results.json is skipped, one with a config and checkpoint is resumed (`dvae_q.fit(...,
resume=True)`; the run directory's lock keeps it to one process), anything else is started. So
rerunning the same command after a kill, a failure or a reboot continues where it stopped, and
Ray holds no state worth keeping. A failed cell is reported in one line and the others go on.

    cells.json          which run directory is which cell (merged over invocations)
    <cell>-seed<S>/     one run directory per cell and seed
    errors/<cell>.txt   the full error of a cell that failed (removed once it succeeds)
    reproduction.md     the report (`dvae_q.table.report`), and reproduction.png

On a cluster the output folder must be a path every node sees (a shared file system), and every
node needs dvae-q and the datasets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from dvae_q.progress import Reporter
from dvae_q.table.cells import Request, plan, write_manifest
from dvae_q.table.scheduler import Hardware, Outcome, run


def reproduce(request: Request, hw: Hardware | None = None, *, reporter: Reporter | None = None,
              on_event: Callable | None = None) -> tuple[list[Outcome], Path]:
    """Plan, run every cell that is not complete, and write the report; (outcomes, report)."""
    from dvae_q.table import report as reproduction_report

    planned = plan(request)
    write_manifest(request.out, planned, request)
    outcomes = run(planned, hw, reporter=reporter, on_event=on_event)
    report = reproduction_report.write(request.out, outcomes=outcomes)
    return outcomes, report
