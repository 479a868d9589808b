"""One cell of `dvae-q reproduce` inside a Ray worker: train, resume or skip its run directory,
and report its host, phase and step to the driver's tracker actor.

Ray runs a cell again (a retry) when its worker or its node dies. The retry resumes from the
run directory's last checkpoint like any rerun; it waits a while for the directory's lock
because the attempt it replaces may still be going away (its file-system client releasing the
lock), and a holder that stays is refused as any second writer is."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from dvae_q.progress import NULL, Reporter

SEND_EVERY_S = 0.5  # how often a cell reports its step
# a retry's wait for the lock of the attempt it replaces: longer than an NFSv4 lease (90 s by
# default), after which the server drops the locks of a client host that died
RETRY_LOCK_WAIT_S = 120.0


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
    import ray
    import torch

    from dvae_q import run as run_api
    from dvae_q.training.rundir import RunDir

    torch.set_num_threads(spec["threads"])
    reporter = _TrackerReporter(tracker, spec["name"])
    attempt = ray.get(tracker.begin.remote(spec["name"], {
        "host": socket.gethostname(), "pid": os.getpid(),
        "node": ray.get_runtime_context().get_node_id(), "phase": "set-up"}))
    path = Path(spec["run_dir"])
    rd = RunDir(path)
    if rd.is_complete():  # finished by another invocation since this one planned
        return {"status": "skipped"}
    if attempt > 1 and rd.config_file.is_file():
        rd.lock(wait_s=RETRY_LOCK_WAIT_S)  # fit takes it again at once: only a wait here
        rd.unlock()
    if rd.config_file.is_file():
        run = run_api.fit(run_dir=path, resume=True, reporter=reporter)
    else:
        run = run_api.fit({**spec["config"], **spec["hardware"]}, run_dir=path, reporter=reporter)
    return {"status": "done", "results": run.results, "resumed_from": reporter.initial}


class Tracker:
    """A Ray actor holding each running cell's latest state (host, pid, phase, step)."""

    def __init__(self):
        self.states: dict[str, dict] = {}

    def begin(self, name: str, state: dict) -> int:
        """A cell's attempt starts: its number (2 and up: Ray retries a cell whose worker or
        node died); the last attempt's step and training start are forgotten."""
        attempt = self.states.get(name, {}).get("attempt", 0) + 1
        self.states[name] = {**state, "attempt": attempt}
        return attempt

    def update(self, name: str, state: dict) -> None:
        self.states.setdefault(name, {}).update(state)

    def snapshot(self) -> dict:
        return self.states
