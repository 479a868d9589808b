"""Checkpoints: plain dicts written atomically, read back without running any code.

A checkpoint holds everything a run needs to continue exactly: model and optimiser state, the
step, the resolved config, the sampler's persistent state, every generator's state, the data
iterator's position, the best validation NLL and the latest log Z estimate.

Writing: a temporary file in the same folder, fsync, rename — so the path is always either the
old or the new complete file, whatever kills the process. A checkpoint is only ever written from
finite tensors (`assert_finite`), so "the last good checkpoint" is one a run can resume from.

Reading: `torch.load(weights_only=True)` with an explicit allow-list of the few non-tensor types
the project saves (numpy arrays of generator states and data order). A pickle that needs any
other global — e.g. a `__reduce__` payload in a file someone shared — is refused before anything
in it runs.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path

import numpy as np
import torch

from dvae_q.errors import BadInput, RunFailure
from storage.files import write_atomic

LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"


def _safe_globals() -> list:
    from numpy._core.multiarray import _reconstruct

    dtypes = {type(np.dtype(name)) for name in
              ("bool", "int8", "uint8", "int16", "int32", "int64", "uint32", "uint64",
               "float16", "float32", "float64")}
    return [np.ndarray, np.dtype, _reconstruct, *dtypes]


def non_finite(state) -> list[str]:
    """Dotted names of the floating tensors in a nested state that hold NaN or inf."""
    bad: list[str] = []

    def walk(value, name):
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                bad.append(name)
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{name}.{key}" if name else str(key))
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{name}.{i}")

    walk(state, "")
    return bad


def save_atomic(state: dict, path: Path) -> None:
    """Write `state` so that `path` is always either the old or the new complete file.

    A full disk or a read-only folder is a RunFailure naming the file; the previous checkpoint
    is then still intact.
    """
    try:
        with _interrupt_deferred():
            write_atomic(path, lambda handle: torch.save(state, handle))
    except OSError as exc:
        raise RunFailure(
            f"cannot write {path} ({exc.strerror or type(exc).__name__}); "
            "the previous checkpoint is intact"
        ) from None


@contextlib.contextmanager
def _interrupt_deferred():
    """Hold Ctrl-C until the file is written and closed.

    A KeyboardInterrupt raised inside torch's zip writer makes its clean-up fail with an unrelated
    RuntimeError that hides the interrupt; a save takes milliseconds, so the interrupt waits.
    """
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    pending = []
    signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if pending:
        raise KeyboardInterrupt


def remove_orphans(folder: Path) -> None:
    """Delete temporary files left by a process killed in the middle of a save."""
    for name in (LAST, BEST):  # write_atomic's temporary names
        for orphan in Path(folder).glob(f".{name}.*.tmp"):
            orphan.unlink(missing_ok=True)


def load(path: Path) -> dict:
    """Load a checkpoint written by `save_atomic` (CPU tensors; the caller moves them).

    Refused with one line (BadInput): a missing or damaged file, a file that is not a dict, and
    any file whose pickle names a global outside the allow-list — nothing in it is executed.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"no checkpoint at {path}")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or disallowed file
        reason = "it needs code to load; refused" if "Weights only load failed" in str(exc) \
            else type(exc).__name__
        raise BadInput(f"{path} is not a readable checkpoint ({reason})") from None
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise BadInput(f"{path} is not a dvae-q checkpoint")
    return state
