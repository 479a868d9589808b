"""A run directory: its files, its creation, and the lock that makes it one run's.

    config.yaml          the resolved config (written once, at creation)
    metrics.csv          one row per logged step (`dvae_q.training.metrics`)
    checkpoint_last.pt   the latest finite state; checkpoint_best.pt the best validation NLL
    results.json         the final evaluation, when the run is complete
    .lock                held (flock) by the process that trains in the directory

Creation is atomic: the directory is assembled under a hidden temporary name beside it (config
and the step-0 checkpoint) and renamed into place, so a failure or a kill during start-up leaves
no half-made run directory behind, and `--resume` of a directory always finds a config and a
checkpoint. A directory that has a config but no checkpoint (made by hand, or by an older
version) resumes from step 0. While a process trains, it holds an exclusive lock on `.lock`;
a second process on the same directory is refused at once.

The lock is flock(2) on an open file, so it ends with its holder: the kernel drops it when the
process dies, however it dies, and there is no stale lock to clear by hand (a lock file that
names a pid would be one). On a network file system the server holds it for the client host
and drops it when that host's lease runs out (NFSv4: 90 s by default). `lock(wait_s=...)` waits
that long for a holder that is going away; the holder's host and pid are written into the file
so that a refusal can say who holds it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import yaml

from dvae_q.errors import BadInput
from dvae_q.training import checkpoint
from dvae_q.training.config import Config, config_from_dict, read_yaml
from storage.files import umask, write_atomic

CONFIG = "config.yaml"
METRICS = "metrics.csv"
RESULTS = "results.json"
LOCK = ".lock"
LOCK_POLL_S = 0.2  # how often a waiting lock() tries again
log = logging.getLogger(__name__)


def _os_error(path: Path, exc: OSError, doing: str) -> BadInput:
    return BadInput(f"cannot {doing} {path} ({exc.strerror or type(exc).__name__})")


class RunDir:
    """Paths of one run directory and its lock."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock_fd: int | None = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # --- files ---
    @property
    def config_file(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS

    @property
    def last(self) -> Path:
        return self.path / checkpoint.LAST

    @property
    def best(self) -> Path:
        return self.path / checkpoint.BEST

    @property
    def results_file(self) -> Path:
        return self.path / RESULTS

    def is_complete(self) -> bool:
        return self.results_file.is_file()

    def read_config(self) -> Config:
        """The run's resolved config, validated again (a shared directory is untrusted)."""
        if not self.path.is_dir() or not self.config_file.is_file():
            raise BadInput(f"{self.path} is not a run directory (no {CONFIG})")
        raw = read_yaml(self.config_file)
        if not isinstance(raw, dict):
            raise BadInput(f"{self.config_file} is not a resolved config (not a mapping)")
        if _unavailable(raw.get("device")):
            # a run trained on a GPU is still loadable, evaluable and resumable without one
            log.warning("%s was trained on %s, which is not available here: using the CPU",
                        self.path, raw["device"])
            raw = {**raw, "device": "cpu"}
        try:
            return config_from_dict(raw)
        except BadInput as exc:
            raise BadInput(f"{self.config_file}: {exc}") from None

    def checkpoint_path(self, which: str = "best") -> Path:
        """The best checkpoint (falling back to the last one), or the last."""
        if which == "best" and self.best.is_file():
            return self.best
        return self.last

    def write_results(self, results: dict) -> None:
        write_atomic(self.results_file, json.dumps(results, indent=2) + "\n")

    # --- creation and locking ---
    def check_new(self) -> None:
        """BadInput unless a new run can be created here (absent, or an empty folder)."""
        if self.path.exists() and not self.path.is_dir():
            raise BadInput(f"run directory {self.path} exists and is not a folder")
        if self.path.is_dir() and any(self.path.iterdir()):
            raise BadInput(f"run directory {self.path} exists; continue it with --resume {self.path}")

    def create(self, cfg: Config, first_checkpoint: dict) -> None:
        """Make the directory atomically with its config and step-0 checkpoint, and lock it."""
        self.check_new()
        parent = self.path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.creating-", dir=parent))
        except OSError as exc:
            raise _os_error(parent, exc, "create a run directory in") from None
        try:
            os.chmod(staging, 0o777 & ~umask())
            (staging / CONFIG).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            checkpoint.save_atomic(first_checkpoint, staging / checkpoint.LAST)
            self._lock_fd = _lock(staging / LOCK)
            os.rename(staging, self.path)  # onto an absent or empty folder only
        except OSError as exc:
            self.unlock()
            shutil.rmtree(staging, ignore_errors=True)
            raise _os_error(self.path, exc, "create") from None
        except BaseException:
            self.unlock()
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def lock(self, wait_s: float = 0.0) -> None:
        """Hold this directory's lock for the life of the process; BadInput if another still
        has it after `wait_s` seconds."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                self._lock_fd = _lock(self.path / LOCK)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BadInput(f"run directory {self.path} is in use by another process"
                                   f"{self.holder()}; wait for it to finish or stop it first"
                                   ) from None
                time.sleep(LOCK_POLL_S)
            except OSError as exc:
                raise _os_error(self.path, exc, "lock") from None
        checkpoint.remove_orphans(self.path)

    def holder(self) -> str:
        """' (pid P on host H)' as the lock's holder wrote it, or '' if it cannot be read."""
        try:
            host, pid = (self.path / LOCK).read_text().split()
        except (OSError, ValueError):
            return ""
        return f" (pid {pid} on host {host})"

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _unavailable(device) -> bool:
    """Whether a stored device name is a CUDA device this machine does not have."""
    import torch

    if not isinstance(device, str) or not device.startswith("cuda"):
        return False
    try:
        index = torch.device(device).index or 0
    except (RuntimeError, ValueError):
        return False  # not a device name at all: the config's own check says so
    return not torch.cuda.is_available() or index >= torch.cuda.device_count()


def _lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # only the holder writes, so a reader sees the live holder or, at worst, an old one
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()} {os.getpid()}\n".encode(), 0)
    except OSError:
        os.close(fd)
        raise
    return fd
