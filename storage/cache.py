"""dvae-q's per-user cache folder, shared by every layer (embeddings in topologies; downloads
and hash verdicts in dvae_q.data): $DVAEQ_CACHE_DIR, else $XDG_CACHE_HOME/dvae-q, else
~/.cache/dvae-q."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(cache_dir=None) -> Path:
    """`cache_dir` if given, else the user cache folder described above."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("DVAEQ_CACHE_DIR"):
        return Path(os.environ["DVAEQ_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dvae-q"
