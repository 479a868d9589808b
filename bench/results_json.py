"""Where every bench script leaves its numbers: one JSON file, its folder made if needed."""

from __future__ import annotations

import json
from pathlib import Path


def save(result: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return path
