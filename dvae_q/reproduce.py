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
    reproduction.md     the report (`dvae_q.reproduction_report`), and reproduction.png

On a cluster the output folder must be a path every node sees (a shared file system), and every
node needs dvae-q and the datasets.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from dvae_q import paper_table
from dvae_q.config import parse_override
from dvae_q.errors import BadInput, RunFailure
from dvae_q.methods import METHODS
from dvae_q.progress import NULL, Reporter, format_duration
from topologies.cache import write_atomic

if TYPE_CHECKING:  # config and run directories pull in torch: imported where they are used
    from dvae_q.config import Config

PAPER_STEPS = 1_000_000
MANIFEST = "cells.json"
ERRORS = "errors"
CELL_KEYS = ("dataset", "structure", "method", "k")
# chosen by the command's own flags, never by --set
RESERVED = (*CELL_KEYS, "seed")
# keys that may differ between the run directory and a rerun: hardware, not the experiment
HARDWARE_KEYS = ("device",)
POLL_S = 0.5  # how often the driver looks at the cells' progress
SEND_EVERY_S = 0.5  # how often a cell reports its step
NAME = re.compile(r"[A-Za-z0-9_]+")


# --- what to run ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """Extra cells: every selected cell again with these `key=value` overrides (YAML values)."""

    name: str
    overrides: tuple[str, ...]

    def cell_fields(self) -> dict:
        """The overrides that change which cell this is (dataset, structure, method, K)."""
        fields = {}
        for item in self.overrides:
            key, value = parse_override(item)
            if key in CELL_KEYS:
                fields[key] = value
        return fields

    def config_overrides(self) -> list[str]:
        return [o for o in self.overrides if o.partition("=")[0] not in CELL_KEYS]


def parse_variant(text: str) -> Variant:
    """`NAME:KEY=VALUE,KEY=VALUE` (a comma starts a new pair only before `KEY=`)."""
    name, sep, body = text.partition(":")
    if not sep or not NAME.fullmatch(name) or not body:
        raise BadInput(f"--variant expects NAME:KEY=VALUE[,KEY=VALUE...] with NAME of letters, "
                       f"digits and _, got '{text}'")
    pairs = tuple(p.strip() for p in re.split(r",(?=\s*[A-Za-z_][\w.]*=)", body))
    for pair in pairs:
        key = pair.partition("=")[0]
        if "=" not in pair or not re.fullmatch(r"[A-Za-z_][\w.]*", key):
            raise BadInput(f"--variant {name}: expected KEY=VALUE, got '{pair}'")
        if key == "seed":
            raise BadInput(f"--variant {name}: seeds are chosen with --seeds")
    variant = Variant(name, pairs)
    fields = variant.cell_fields()
    if "k" in fields and (isinstance(fields["k"], bool) or not isinstance(fields["k"], int)):
        raise BadInput(f"--variant {name}: k must be an integer")
    if any(not isinstance(fields[key], str) for key in fields if key != "k"):
        raise BadInput(f"--variant {name}: dataset, structure and method are names")
    return variant


@dataclass(frozen=True)
class Cell:
    dataset: str
    structure: str
    method: str
    k: int
    seed: int = 0
    variant: str | None = None

    @property
    def name(self) -> str:
        """The run directory's name: <dataset>-<structure>-<method>-k<K>[-<variant>]-seed<S>."""
        tail = f"-{self.variant}" if self.variant else ""
        return f"{self.dataset}-{self.structure}-{self.method}-k{self.k}{tail}-seed{self.seed}"

    def describe(self) -> dict:
        return {"dataset": self.dataset, "structure": self.structure, "method": self.method,
                "k": self.k, "seed": self.seed, "variant": self.variant}


def parse_choices(text: str, choices: Sequence[str], what: str) -> list[str]:
    """A comma-separated list of names, or `all`."""
    if text.strip() == "all":
        return list(choices)
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in choices]
    if bad or not items:
        raise BadInput(f"--{what}: '{bad[0] if bad else text}' is not one of "
                       f"{', '.join(choices)} (or all)")
    return list(dict.fromkeys(items))


def parse_ints(text: str, what: str, least: int) -> list[int]:
    """A comma-separated list of integers >= least."""
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise BadInput(f"--{what} expects integers separated by commas, got '{text}'") from None
    if not values or min(values) < least:
        raise BadInput(f"--{what} expects integers >= {least}, got '{text}'")
    return list(dict.fromkeys(values))


def select(datasets, structures, methods, ks) -> list[tuple[str, str, str, int]]:
    """Every (dataset, structure, method, K) of the product, methods in the poster's order."""
    methods = sorted(methods, key=_method_order)
    return [(d, s, m, k) for d in datasets for s in structures for m in methods for k in ks]


def _method_order(method: str) -> int:
    return list(METHODS).index(method)


def expand(selection, seeds: Sequence[int], variants: Sequence[Variant] = ()) -> list[Cell]:
    """Cells for every selected tuple and seed, then the variants' (duplicates dropped)."""
    cells = []
    for variant in (None, *variants):
        for dataset, structure, method, k in selection:
            fields = dict(dataset=dataset, structure=structure, method=method, k=k)
            fields.update(variant.cell_fields() if variant else {})
            cells += [Cell(**fields, seed=s, variant=variant and variant.name) for s in seeds]
    return list(dict.fromkeys(cells))


def steps_for(steps: int | None, budget: float | None) -> int | None:
    """Training steps from --steps, or from --budget as a fraction of the paper's 1M steps (the
    schedule's boundaries and the KL warm-up are fractions of `steps`, so they compress too)."""
    if steps is not None and budget is not None:
        raise BadInput("give --steps or --budget, not both")
    if budget is not None:
        if not 0 < budget <= 1:
            raise BadInput("--budget is a fraction of the paper's 1M steps, in (0, 1]")
        return max(1, round(budget * PAPER_STEPS))
    if steps is not None and steps < 1:
        raise BadInput("--steps must be >= 1")
    return steps


@dataclass
class Request:
    """One `dvae-q reproduce`: what to run, where, and with which settings."""

    cells: list[Cell]
    out: Path
    config: str | None = None  # base config; default: the shipped <dataset>/<structure>
    overrides: list[str] = field(default_factory=list)
    variants: list[Variant] = field(default_factory=list)
    steps: int | None = None
    command: str | None = None

    def check_overrides(self) -> None:
        for item in self.overrides:
            key = item.partition("=")[0].strip()
            if key in RESERVED or (key == "steps" and self.steps is not None):
                flag = {"k": "--k", "seed": "--seeds", "steps": "--steps"}.get(key, f"--{key}")
                raise BadInput(f"--set {key}: chosen by {flag}, not --set")

    def cell_config(self, cell: Cell) -> Config:
        from dvae_q.run import resolve

        variant = next((v for v in self.variants if v.name == cell.variant), None)
        items = [*self.overrides, *(variant.config_overrides() if variant else [])]
        items += [f"{key}={value}" for key, value in cell.describe().items() if key != "variant"]
        items += [f"steps={self.steps}"] if self.steps is not None else []
        try:
            return resolve(self.config or f"{cell.dataset}/{cell.structure}", items)
        except BadInput as exc:
            raise BadInput(f"cell {cell.name}: {exc}") from None


# --- the plan: what each cell's run directory says -----------------------------------------


@dataclass
class Planned:
    cell: Cell
    run_dir: Path
    config: dict
    state: str  # "complete", "resume" or "new"


def plan(request: Request) -> list[Planned]:
    """Each cell's resolved config and the state of its run directory; BadInput (before
    anything runs) for a bad config or a directory made with another config."""
    request.check_overrides()
    out = request.out.resolve()
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {request.out} exists and is not a folder")
    planned = []
    for cell in request.cells:
        cfg = request.cell_config(cell).to_dict()
        run_dir = out / cell.name
        planned.append(Planned(cell, run_dir, cfg, _state(run_dir, cfg)))
    return planned


def _state(run_dir: Path, cfg: dict) -> str:
    from dvae_q.rundir import RunDir

    rd = RunDir(run_dir)
    if not run_dir.exists() or (run_dir.is_dir() and not any(run_dir.iterdir())):
        return "new"
    stored = rd.read_config().to_dict()  # BadInput if it is not a run directory
    differ = [k for k in cfg if k not in HARDWARE_KEYS and stored.get(k) != cfg[k]]
    if differ:
        raise BadInput(f"{run_dir} was made with another config ({', '.join(differ[:4])} "
                       "differ); rerun with the same flags, or choose another --out")
    return "complete" if rd.is_complete() else "resume"


def write_manifest(out: Path, planned: Sequence[Planned], request: Request) -> None:
    """Record which run directory is which cell (merged with earlier invocations)."""
    path = out / MANIFEST
    manifest = {"cells": {}, "commands": []}
    if path.is_file():
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):
            raise BadInput(f"{path} is not readable JSON; move it aside to continue") from None
    variants = {v.name: list(v.overrides) for v in request.variants}
    for item in planned:
        entry = item.cell.describe()
        entry["variant_overrides"] = variants.get(item.cell.variant, [])
        manifest["cells"][item.cell.name] = entry
    if request.command:
        manifest["commands"] = [*manifest.get("commands", []), request.command][-20:]
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(manifest, indent=2) + "\n")


# --- one cell, inside a Ray worker -----------------------------------------------------------


class _CellTask:
    """What the training loop reports through; forwards the step to the tracker actor."""

    def __init__(self, reporter: "_TrackerReporter", description, total, unit, initial):
        self.reporter, self.description, self.unit = reporter, description, unit
        self.total, self.n = total, initial
        extra = {}
        if unit == "steps" and reporter.initial is None:
            reporter.initial = initial  # where the training loop itself starts: the resume step
            extra["initial"] = initial
        reporter.send(force=True, phase=description, **self._counts(), **extra)

    def _counts(self) -> dict:
        return {"step": self.n, "total": self.total} if self.unit == "steps" else {}

    def set_total(self, total):
        self.total = total

    def update(self, n=1):
        self.n += n
        if self.unit == "steps":
            self.reporter.send(**self._counts())

    def set_postfix(self, **values):
        pass

    def close(self, failed: bool = False):
        if self.unit == "steps":
            self.reporter.send(force=True, phase="final evaluation", **self._counts())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _TrackerReporter(Reporter):
    """A Reporter whose tasks go to the tracker actor instead of a terminal."""

    def __init__(self, tracker, name: str):
        super().__init__(mode="off")
        self.tracker, self.name = tracker, name
        self.initial: int | None = None
        self._sent = 0.0

    def task(self, description, total=None, unit="it", initial=0):
        if unit != "steps" and self.initial is None:
            return NULL  # set-up before training: nothing to show
        return _CellTask(self, description, total, unit, initial)

    def send(self, force: bool = False, **state) -> None:
        now = time.monotonic()
        if force or now - self._sent >= SEND_EVERY_S:
            self._sent = now
            self.tracker.update.remote(self.name, state)


def run_cell(spec: dict, tracker) -> dict:
    """Train (or resume, or skip) one cell's run directory; the body of each Ray task."""
    import torch

    from dvae_q import run as run_api
    from dvae_q.rundir import RunDir

    torch.set_num_threads(spec["threads"])
    reporter = _TrackerReporter(tracker, spec["name"])
    reporter.send(force=True, host=socket.gethostname(), pid=os.getpid(), phase="set-up")
    path = Path(spec["run_dir"])
    rd = RunDir(path)
    if rd.is_complete():  # finished by another invocation since this one planned
        return {"status": "skipped"}
    if rd.config_file.is_file():
        run = run_api.fit(run_dir=path, resume=True, reporter=reporter)
    else:
        run = run_api.fit({**spec["config"], **spec["hardware"]}, run_dir=path, reporter=reporter)
    return {"status": "done", "results": run.results, "resumed_from": reporter.initial}


class Tracker:
    """A Ray actor holding each running cell's latest state (host, pid, phase, step)."""

    def __init__(self):
        self.states: dict[str, dict] = {}

    def update(self, name: str, state: dict) -> None:
        self.states.setdefault(name, {}).update(state)

    def snapshot(self) -> dict:
        return self.states


# --- many cells on Ray -----------------------------------------------------------------------


@dataclass
class Outcome:
    cell: Cell
    run_dir: Path
    status: str  # "skipped", "done" or "failed"
    error: str | None = None
    resumed_from: int | None = None
    results: dict | None = None


@dataclass
class Hardware:
    """Where the cells run: the Ray cluster's size and each cell's share of it."""

    address: str | None = None
    num_cpus: int | None = None  # local instance: CPUs it may use (default all)
    num_gpus: int | None = None  # local instance: GPUs (default all); 0: CPU only anywhere
    cpus_per_cell: int | None = None  # default: an equal share of the CPUs, at least one


def _connect(hw: Hardware) -> bool:
    """Join (or start) Ray; True if this call connected (and must disconnect)."""
    try:
        import ray
    except ImportError:
        raise BadInput("dvae-q reproduce runs its cells on Ray, which is not installed: "
                       "pip install 'dvae-q[service]'") from None
    if ray.is_initialized():
        return False
    quiet = dict(log_to_driver=False, logging_level="ERROR", namespace="dvae-q-reproduce")
    if hw.address:
        _probe(hw.address)
        ray.init(address=hw.address, **quiet)
        return True
    ray.init(address="local", num_cpus=hw.num_cpus or os.cpu_count(), num_gpus=hw.num_gpus,
             include_dashboard=False, object_store_memory=200 * 1024**2, **quiet)
    return True


def _probe(address: str) -> None:
    """Refuse an address nothing listens on at once (Ray itself would retry for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except ValueError:
        raise BadInput(f"--address '{address}' is not host:port or ray://host:port") from None
    except OSError as exc:
        raise BadInput(f"nothing answers at Ray address {address} "
                       f"({exc.strerror or type(exc).__name__})") from None


def cell_resources(hw: Hardware, pending: int, cluster: dict, node_cpus: int
                   ) -> tuple[dict, dict, int]:
    """(Ray task resources, the cell's hardware config keys, its torch threads) for `pending`
    cells on a cluster of `cluster` resources whose largest node has `node_cpus` CPUs."""
    gpus = 0 if hw.num_gpus == 0 else cluster.get("GPU", 0)
    if gpus >= 1:  # one cell per GPU; Ray shows the task only its own GPU, as cuda:0
        return {"num_cpus": 1, "num_gpus": 1}, {"device": "cuda"}, 1
    cpus = int(cluster.get("CPU", 1))
    # an equal share, so that fewer cells than cores still use every core
    share = hw.cpus_per_cell or max(1, min(node_cpus, cpus // max(1, min(pending, cpus))))
    if share > node_cpus:
        raise BadInput(f"--cpus-per-cell {share}: the largest Ray node has {node_cpus} CPUs")
    return {"num_cpus": share, "num_gpus": 0}, {}, share


def _largest_node_cpus(ray) -> int:
    return max(int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n["Alive"])


def run(planned: Sequence[Planned], hw: Hardware | None = None, *,
        reporter: Reporter | None = None, on_event: Callable | None = None) -> list[Outcome]:
    """Run every cell that is not complete as a Ray task; an Outcome per cell, in plan order.

    `on_event(kind, name, state)` (kinds: started, progress, finished) sees what the progress
    view sees, for callers that act on it."""
    hw = hw or Hardware()
    reporter = reporter or Reporter(quiet=True)
    outcomes = {p.cell.name: Outcome(p.cell, p.run_dir, "skipped")
                for p in planned if p.state == "complete"}
    todo = [p for p in planned if p.state != "complete"]
    if todo:
        import ray

        connected = _connect(hw)
        try:
            outcomes.update(_run_on_ray(ray, todo, hw, len(planned), reporter, on_event))
        finally:
            if connected:
                ray.shutdown()
    return [outcomes[p.cell.name] for p in planned]


def _run_on_ray(ray, todo, hw, total, reporter, on_event) -> dict[str, Outcome]:
    resources, hardware, threads = cell_resources(hw, len(todo), ray.cluster_resources(),
                                                  _largest_node_cpus(ray))
    tracker = ray.remote(num_cpus=0)(Tracker).remote()
    task = ray.remote(max_retries=0)(run_cell).options(**resources)
    refs = {task.remote({"name": p.cell.name, "run_dir": str(p.run_dir), "config": p.config,
                         "hardware": hardware, "threads": threads}, tracker): p for p in todo}
    where = f"{resources['num_gpus']} GPU" if resources["num_gpus"] else f"{threads} CPU"
    resumed = sum(p.state == "resume" for p in todo)
    _say(reporter, f"{total} cells: {total - len(todo)} complete (skipped), {resumed} to "
         f"resume, {len(todo) - resumed} to start; {where} per cell on Ray ({_cluster_line(ray)})")
    try:
        with reporter.task("reproduce", total=total, initial=total - len(todo),
                           unit="cells") as bar:
            return _drive(ray, refs, tracker, bar, reporter, on_event)
    except BaseException:
        for ref in refs:  # Ctrl-C: stop the cells; their run directories resume next time
            ray.cancel(ref, force=True)
        raise
    finally:
        ray.kill(tracker)


def _say(reporter: Reporter, line: str) -> None:
    if not reporter.quiet:
        reporter.write(line)


def _cluster_line(ray) -> str:
    res = ray.cluster_resources()
    return f"{int(res.get('CPU', 0))} CPUs, {int(res.get('GPU', 0))} GPUs"


def _drive(ray, refs: dict, tracker, bar, reporter, on_event) -> dict[str, Outcome]:
    remaining, outcomes, seen = dict(refs), {}, {}
    failed = 0
    while remaining:
        ready, _ = ray.wait(list(remaining), num_returns=1, timeout=POLL_S)
        states = ray.get(tracker.snapshot.remote())
        _announce(states, seen, reporter, on_event)
        for ref in ready:
            item = remaining.pop(ref)
            outcome = _collect(ray, ref, item)
            outcomes[item.cell.name] = outcome
            failed += outcome.status == "failed"
            _finished_line(outcome, reporter)
            if on_event:
                on_event("finished", item.cell.name, {"status": outcome.status})
        running = sum(1 for p in remaining.values() if p.cell.name in states)
        bar.set_postfix(running=running, queued=len(remaining) - running, failed=failed,
                        **_steps_done(states, remaining))
        bar.update(len(ready))
    return outcomes


def _steps_done(states: dict, remaining: dict) -> dict:
    """The running cells' training progress, as a percentage of their steps."""
    live = [states[p.cell.name] for p in remaining.values()
            if states.get(p.cell.name, {}).get("total")]
    if not live:
        return {}
    done = sum(s["step"] for s in live) / sum(s["total"] for s in live)
    return {"running_steps": f"{100 * done:.0f}%"}


def _announce(states: dict, seen: dict, reporter, on_event) -> None:
    """A line when a cell starts training (where, and from which step); events for callers."""
    for name, state in states.items():
        if name not in seen and "initial" in state:
            start = state["initial"]
            how = f"resuming at step {start:,}" if start else "from step 0"
            _say(reporter, f"started {name} on {state.get('host')} (pid {state.get('pid')}), "
                 f"{how} of {state['total']:,}")
            if on_event:
                on_event("started", name, dict(state))
        if "step" in state and seen.get(name) != state["step"] and on_event:
            on_event("progress", name, dict(state))
        if "step" in state:
            seen[name] = state["step"]


def _collect(ray, ref, item: Planned) -> Outcome:
    errors = item.run_dir.parent / ERRORS / f"{item.cell.name}.txt"
    try:
        value = ray.get(ref)
    except ray.exceptions.RayError as exc:
        errors.parent.mkdir(exist_ok=True)
        errors.write_text(str(exc) + "\n")
        return Outcome(item.cell, item.run_dir, "failed", error=_one_line_error(ray, exc))
    errors.unlink(missing_ok=True)
    return Outcome(item.cell, item.run_dir, value["status"], resumed_from=value.get("resumed_from"),
                   results=value.get("results"))


def _one_line_error(ray, exc: BaseException) -> str:
    if isinstance(exc, (ray.exceptions.WorkerCrashedError, ray.exceptions.TaskCancelledError)):
        return "its worker process died (killed, or out of memory); rerun to resume it"
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    text = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {text[:300]}"


def _finished_line(outcome: Outcome, reporter) -> None:
    name = outcome.cell.name
    if outcome.status == "failed":
        reporter.write(f"FAILED {name}: {outcome.error}")  # also when quiet, as warnings are
    elif outcome.results:
        r = outcome.results
        _say(reporter, f"done {name}: test NLL {r['test_nll']:.2f}, log Z {r['log_z']:.2f} "
                       f"± {r['log_z_stderr']:.2f}, {format_duration(r['wall_time_s'])} of "
                       "training")


# --- the whole command ------------------------------------------------------------------------


def reproduce(request: Request, hw: Hardware | None = None, *, reporter: Reporter | None = None,
              on_event: Callable | None = None) -> tuple[list[Outcome], Path]:
    """Plan, run every cell that is not complete, and write the report; (outcomes, report)."""
    from dvae_q import reproduction_report

    planned = plan(request)
    write_manifest(request.out, planned, request)
    outcomes = run(planned, hw, reporter=reporter, on_event=on_event)
    report = reproduction_report.write(request.out, outcomes=outcomes)
    return outcomes, report


# --- the command line -------------------------------------------------------------------------


def _request(args) -> Request:
    from dvae_q.config import DATASETS, STRUCTURES

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
    for flag in ("address", "num_cpus", "num_gpus", "cpus_per_cell"):
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


def _cmd(args) -> int:
    from dvae_q import reproduction_report
    from dvae_q.progress import configure_logging

    if args.report_only:
        print(f"report: {reproduction_report.write(Path(args.out))}")
        return 0
    for flag in ("num_cpus", "num_gpus", "cpus_per_cell"):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag == "num_gpus" else 1):
            raise BadInput(f"--{flag.replace('_', '-')} must be >= "
                           f"{0 if flag == 'num_gpus' else 1}")
    request = _request(args)
    if args.address:
        _probe(args.address)  # before anything is written
    if args.dry_run:
        _print_plan(plan(request))
        return 0
    hw = Hardware(args.address, args.num_cpus, args.num_gpus, args.cpus_per_cell)
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
    p.add_argument("--dry-run", action="store_true", help="list the cells and their state")
    p.add_argument("--report-only", action="store_true",
                   help="only (re)write the report from the run directories in --out")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd)
