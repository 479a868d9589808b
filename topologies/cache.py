"""dvae-q's per-user cache folder, shared by every layer (embeddings here; downloads and
hash verdicts in dvae_q.data): $DVAEQ_CACHE_DIR, else $XDG_CACHE_HOME/dvae-q, else
~/.cache/dvae-q."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def cache_root(cache_dir=None) -> Path:
    """`cache_dir` if given, else the user cache folder described above."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("DVAEQ_CACHE_DIR"):
        return Path(os.environ["DVAEQ_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dvae-q"


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
