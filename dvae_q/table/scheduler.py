"""The cell scheduler of `dvae-q reproduce`: join or start Ray, give each cell its share of the
cluster (`dvae_q.table.placement`), run every cell that is not complete as one Ray task, follow
their progress through the tracker actor, and collect each cell's outcome (a failed cell is one
line here and its full error in errors/<cell>.txt; the others go on).

A cell whose worker or node dies is run again by Ray (`Hardware.retries` times), on any node
with room, and resumes from its run directory's last checkpoint. Errors the cell raises itself
(a NaN, bad data, a lock held by a live process) are not retried: they would happen again."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from dvae_q.errors import BadInput, RunFailure
from dvae_q.progress import Reporter, format_duration
from dvae_q.table.cell_task import Tracker, run_cell
from dvae_q.table.cells import Cell, Planned
from dvae_q.table.placement import Hardware, cell_resources

__all__ = ["Hardware", "Outcome", "cell_resources", "check_address", "connected", "run",
           "task_options"]

ERRORS = "errors"
POLL_S = 0.5  # how often the driver looks at the cells' progress


@dataclass
class Outcome:
    cell: Cell
    run_dir: Path
    status: str  # "skipped", "done" or "failed"
    error: str | None = None
    resumed_from: int | None = None
    results: dict | None = None


def _ray():
    try:
        import ray
    except ImportError:
        raise BadInput("dvae-q reproduce runs its cells on Ray, which is not installed: "
                       "pip install 'dvae-q[service]'") from None
    from samplers.service import head

    return ray, head


@contextmanager
def _ray_errors():
    """The samplers' error types as the command's: the caller's to fix (exit 2) or a failure
    (exit 1)."""
    from samplers import SamplerFailure, SamplerOptionError

    try:
        yield
    except SamplerOptionError as exc:
        raise BadInput(str(exc)) from None
    except SamplerFailure as exc:
        raise RunFailure(str(exc)) from None


def check_address(address: str | None) -> None:
    """Before anything is written: token authentication on (a local instance gets a token only
    its owner can read), and a cluster address that answers."""
    _, head = _ray()
    with _ray_errors():
        head.require_token_auth(create=not address)
        if address:
            head.probe(address)


def _connect(hw: Hardware) -> bool:
    """Join (or start) Ray; True if this call connected (and must disconnect)."""
    ray, head = _ray()
    if ray.is_initialized():
        return False
    check_address(hw.address)
    if hw.address:
        with _ray_errors():
            head.join(hw.address, namespace="dvae-q-reproduce")
        return True
    with head.loopback_only():   # a local instance listens on 127.0.0.1 only
        ray.init(address="local", num_cpus=hw.num_cpus or os.cpu_count(), num_gpus=hw.num_gpus,
                 include_dashboard=False, object_store_memory=200 * 1024**2,
                 log_to_driver=False, logging_level="ERROR", namespace="dvae-q-reproduce")
    return True


@contextmanager
def connected(hw: Hardware):
    """Ray for the block: joined or started here (and left after it), or this process's."""
    import ray

    mine = _connect(hw)
    try:
        yield ray
    finally:
        if mine:
            ray.shutdown()


def task_options(hw: Hardware, resources: dict) -> dict:
    """The cell task's `ray.remote` options besides its resources."""
    # max_calls=1 on a GPU: the worker exits after its cell and frees the CUDA context
    return {"max_retries": hw.retries, "retry_exceptions": False,
            "max_calls": 1 if resources["num_gpus"] else 0}


def largest_node_cpus(ray) -> int:
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
        with connected(hw) as ray:
            outcomes.update(_run_on_ray(ray, todo, hw, len(planned), reporter, on_event))
    return [outcomes[p.cell.name] for p in planned]


def _run_on_ray(ray, todo, hw, total, reporter, on_event) -> dict[str, Outcome]:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    resources, hardware, threads = cell_resources(hw, len(todo), ray.cluster_resources(),
                                                  largest_node_cpus(ray))
    # on the driver's node: the cells' progress must outlive any node that runs them
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    tracker = ray.remote(num_cpus=0)(Tracker).options(scheduling_strategy=here).remote()
    task = ray.remote(**task_options(hw, resources))(run_cell).options(**resources)
    refs = {task.remote({"name": p.cell.name, "run_dir": str(p.run_dir), "config": p.config,
                         "hardware": hardware, "threads": threads}, tracker): p for p in todo}
    where = f"{resources['num_gpus']:g} GPU" if resources["num_gpus"] else f"{threads} CPU"
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
    """A line when a cell's attempt starts training (where, and from which step); events for
    callers."""
    for name, state in states.items():
        attempt = state.get("attempt", 1)
        if "initial" in state and seen.get(name, (0,))[0] != attempt:
            start = state["initial"]
            how = f"resuming at step {start:,}" if start else "from step 0"
            again = f", attempt {attempt} (its worker or node died)" if attempt > 1 else ""
            _say(reporter, f"started {name} on {state.get('host')} (pid {state.get('pid')}), "
                 f"{how} of {state['total']:,}{again}")
            if on_event:
                on_event("started", name, dict(state))
        if "step" in state and seen.get(name) != (attempt, state["step"]):
            if on_event:
                on_event("progress", name, dict(state))
            seen[name] = (attempt, state["step"])


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
    if isinstance(exc, ray.exceptions.NodeDiedError):
        return "its node died, on every attempt Ray made; rerun to resume it"
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
