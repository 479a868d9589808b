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
node needs dvae-q and the datasets. Before anything is written, the cells' placement is checked
against the cluster (GPUs for `--device cuda`, whether N cells fit in one GPU) and every node is
asked whether it sees the output folder (`dvae_q.table.node_probe`); a cell whose node dies is
retried by Ray on another node and resumes from its last checkpoint.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Callable

from dvae_q.progress import Reporter
from dvae_q.table import node_probe, placement
from dvae_q.table.cells import Planned, Request, plan, write_manifest
from dvae_q.table.scheduler import Hardware, Outcome, connected, largest_node_cpus, run


def reproduce(request: Request, hw: Hardware | None = None, *, reporter: Reporter | None = None,
              on_event: Callable | None = None) -> tuple[list[Outcome], Path]:
    """Plan, run every cell that is not complete, and write the report; (outcomes, report)."""
    from dvae_q.table import report as reproduction_report

    hw = hw or Hardware()
    placement.check_flags(hw)
    planned = plan(request)
    todo = [p for p in planned if p.state != "complete"]
    with connected(hw) if todo else nullcontext() as ray:
        if todo:
            with node_probe.folder(request.out.resolve()):
                _check_cluster(ray, request, hw, todo)
        write_manifest(request.out, planned, request)
        outcomes = run(planned, hw, reporter=reporter, on_event=on_event)
    report = reproduction_report.write(request.out, outcomes=outcomes)
    return outcomes, report


def _check_cluster(ray, request: Request, hw: Hardware, todo: list[Planned]) -> None:
    """BadInput, with nothing written, for cells the cluster cannot place or an output folder
    some node cannot see."""
    from dvae_q.training.config import config_from_dict

    resources, _, _ = placement.cell_resources(hw, len(todo), ray.cluster_resources(),
                                               largest_node_cpus(ray))
    gpu_bytes = node_probe.probe(ray, request.out.resolve())
    if resources["num_gpus"]:
        placement.check_fits(hw.cells_per_gpu, gpu_bytes,
                             [config_from_dict(p.config) for p in todo])
