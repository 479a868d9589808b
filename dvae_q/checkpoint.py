"""Checkpoints: plain dicts written atomically (temporary file, fsync, rename).

A checkpoint holds everything a run needs to continue exactly: model and optimiser state, the
step, the resolved config, the sampler's persistent state, every generator's state, the data
iterator's position, the best validation NLL and the latest log Z estimate.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from dvae_q.errors import BadInput

LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"


def save_atomic(state: dict, path: Path) -> None:
    """Write `state` so that `path` is always either the old or the new complete file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: Path) -> dict:
    """Load a checkpoint written by `save_atomic` (CPU tensors; the caller moves them)."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"no checkpoint at {path}")
    try:
        # our own files hold numpy generator states and plain containers besides tensors
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged file
        raise BadInput(f"{path} is not a readable checkpoint ({type(exc).__name__})") from None
