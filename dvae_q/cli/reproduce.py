"""`dvae-q reproduce` on the command line: flags to a Request, --dry-run's plan, and the summary
and exit status of a run of cells."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from dvae_q.errors import BadInput, RunFailure
from dvae_q.model.methods import METHODS
from dvae_q.progress import Reporter
from dvae_q.table import paper as paper_table
from dvae_q.table.cells import (
    Planned,
    Request,
    expand,
    parse_choices,
    parse_ints,
    parse_variant,
    plan,
    select,
    steps_for,
)
from dvae_q.table.placement import Hardware, check_flags
from dvae_q.table.reproduce import reproduce
from dvae_q.table.scheduler import check_address


def _request(args) -> Request:
    from dvae_q.training.config import DATASETS, STRUCTURES

    selection_flags = (args.dataset, args.structure, args.method, args.k)
    if args.table == "poster":
        if any(selection_flags):
            raise BadInput("--table poster selects the cells itself; drop --dataset, "
                           "--structure, --method and --k")
        selection = paper_table.poster_cells()
    else:
        missing = [f"--{n}" for n, v in zip(("dataset", "structure", "method", "k"),
                                            selection_flags) if not v]
        if missing:
            raise BadInput(f"reproduce needs {', '.join(missing)} (or --table poster)")
        selection = select(parse_choices(args.dataset, DATASETS, "dataset"),
                           parse_choices(args.structure, STRUCTURES, "structure"),
                           parse_choices(args.method, tuple(METHODS), "method"),
                           parse_ints(args.k, "k", 1))
    variants = [parse_variant(v) for v in args.variant or []]
    if len({v.name for v in variants}) < len(variants):
        raise BadInput("--variant names must differ")
    cells = expand(selection, parse_ints(args.seeds, "seeds", 0), variants)
    return Request(cells, Path(args.out), config=args.config, overrides=list(args.set or []),
                   variants=variants, steps=steps_for(args.steps, args.budget),
                   command=_command_line(args))


def _command_line(args) -> str:
    """The command as it would be typed again (flags in a fixed order)."""
    import shlex

    parts = ["dvae-q", "reproduce"]
    for flag in ("table", "dataset", "structure", "method", "k", "seeds", "config", "steps",
                 "budget"):
        if getattr(args, flag) is not None:
            parts += [f"--{flag}", str(getattr(args, flag))]
    parts += [x for item in args.set or [] for x in ("--set", item)]
    parts += [x for item in args.variant or [] for x in ("--variant", item)]
    parts += ["--out", args.out]
    for flag in ("address", "num_cpus", "num_gpus", "cpus_per_cell", "device", "cells_per_gpu",
                 "retries"):
        if getattr(args, flag) is not None:
            parts += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    return shlex.join(parts)


def _print_plan(planned: Sequence[Planned]) -> None:
    for p in planned:
        cfg = p.config
        print(f"{p.state:8s} {p.run_dir.name}  ({cfg['steps']:,} steps, sampler {cfg['sampler']})")
    counts = {s: sum(p.state == s for p in planned) for s in ("complete", "resume", "new")}
    print(f"{len(planned)} cells: {counts['complete']} complete, {counts['resume']} to resume, "
          f"{counts['new']} to start")


def _given(value, default):
    return default if value is None else value


def _cmd(args) -> int:
    from dvae_q.logs import configure_logging
    from dvae_q.table import report as reproduction_report

    if args.report_only:
        print(f"report: {reproduction_report.write(Path(args.out))}")
        return 0
    for flag in ("num_cpus", "num_gpus", "cpus_per_cell"):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag == "num_gpus" else 1):
            raise BadInput(f"--{flag.replace('_', '-')} must be >= "
                           f"{0 if flag == 'num_gpus' else 1}")
    defaults = Hardware()
    hw = Hardware(args.address, args.num_cpus, args.num_gpus, args.cpus_per_cell, args.device,
                  _given(args.cells_per_gpu, defaults.cells_per_gpu),
                  _given(args.retries, defaults.retries))
    check_flags(hw)
    request = _request(args)
    if args.address:
        check_address(args.address)  # before anything is written
    if args.dry_run:
        _print_plan(plan(request))
        return 0
    reporter = Reporter(quiet=args.quiet)  # a bar on a terminal, plain lines in a log
    configure_logging(reporter)
    outcomes, report = reproduce(request, hw, reporter=reporter)
    failed = [o for o in outcomes if o.status == "failed"]
    done = sum(o.status == "done" for o in outcomes)
    print(f"{len(outcomes)} cells: {done} trained, "
          f"{sum(o.status == 'skipped' for o in outcomes)} already complete, {len(failed)} failed")
    print(f"report: {report} (figure: {report.with_suffix('.png')})")
    if failed:
        raise RunFailure(f"{len(failed)} of {len(outcomes)} cells failed (first: "
                         f"{failed[0].cell.name}: {failed[0].error}); rerun the same command to "
                         "continue them")
    return 0


def add_command(subparsers) -> None:
    """`dvae-q reproduce` on the CLI's subcommand table."""
    p = subparsers.add_parser(
        "reproduce", help="train cells of the DVAE# table on Ray and compare with the paper",
        description="Train cells (dataset x structure x method x K x seed) as Ray tasks, one run "
                    "directory each under --out; rerunning continues killed cells and skips "
                    "finished ones. Writes reproduction.md and reproduction.png.")
    p.add_argument("--table", choices=["poster"], help="the poster's 48 cells (both datasets, "
                   "4-layer-nonlin, the eight methods, K = 1, 5, 25)")
    p.add_argument("--dataset", help="binarized_mnist, omniglot, a comma list, or all")
    p.add_argument("--structure", help="1-layer-lin, 1-layer-nonlin, 2-layer-nonlin, "
                   "4-layer-nonlin, a comma list, or all")
    p.add_argument("--method", help="a method (see `dvae-q configs --keys`), a comma list, or all")
    p.add_argument("--k", help="training samples K, e.g. 1 or 1,5,25")
    p.add_argument("--seeds", default="0", help="seeds, e.g. 0,1,2")
    p.add_argument("--config", help="base config for every cell; none: the shipped "
                   "<dataset>/<structure>")
    p.add_argument("--steps", type=int, help="training steps of every cell")
    p.add_argument("--budget", type=float, help="fraction of the paper's 1M steps, e.g. 0.01")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="config override applied to every cell (repeatable)")
    p.add_argument("--variant", action="append", metavar="NAME:KEY=VALUE,...",
                   help="extra cells: every selected cell again with these overrides; a "
                   "method=... (or k=...) in them picks which (repeatable)")
    p.add_argument("--out", required=True, help="output folder: one run directory per cell "
                   "and seed, the report")
    p.add_argument("--address", help="Ray cluster (host:port or ray://host:port); none: a "
                   "local instance for this command")
    p.add_argument("--num-cpus", type=int, help="local instance: CPUs to use; none: all")
    p.add_argument("--num-gpus", type=int, help="GPUs: local instance size, none: all; 0: CPU "
                   "only")
    p.add_argument("--cpus-per-cell", type=int, help="CPUs (and torch threads) per cell; none: an "
                   "equal share")
    p.add_argument("--device", help="cpu, or cuda: one GPU per cell (or a share, "
                   "--cells-per-gpu) and device: cuda in its config; none: cuda when the cluster "
                   "has GPUs")
    p.add_argument("--cells-per-gpu", type=int, help="with --device cuda: cells sharing one GPU "
                   "(num_gpus = 1/N each), checked against the GPU's memory; default 1")
    p.add_argument("--retries", type=int, help="times a cell is run again, from its last "
                   "checkpoint, when its worker or node dies; default 2")
    p.add_argument("--dry-run", action="store_true", help="list the cells and their state")
    p.add_argument("--report-only", action="store_true",
                   help="only (re)write the report from the run directories in --out")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd)
