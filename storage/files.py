"""Atomic file writes and the process umask they honour, shared by every layer: checkpoints,
metrics, data archives, embedding caches and reproduction reports are all written through
`write_atomic`."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def umask() -> int:
    """The process's umask, read from /proc where Linux offers it: setting it to read it back
    would, for that moment, give umask 0 to files other threads (TensorBoard's writer, the
    service's workers) create."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, content: str | bytes | Callable[[BinaryIO], None]) -> None:
    """Write `content` (text, bytes, or a function writing to a binary file) to `path` through
    a temporary file beside it, fsync and a rename: a concurrent reader never sees half a file
    and a killed writer leaves the old file (or none) plus, at worst, a `.NAME.*.tmp` orphan.

    The file gets the permissions a plain `open()` would give (umask applied), not mkstemp's 0600.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as handle:
            if callable(content):
                content(handle)
            else:
                handle.write(content.encode() if isinstance(content, str) else content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
