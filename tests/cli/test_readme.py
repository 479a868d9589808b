"""Every ```python block of README.md runs as written, each in a fresh interpreter.

A block that cannot run here (it needs the network, a D-Wave token, hardware) is marked in the
README by an HTML comment on the line right before its fence, which GitHub does not render:

    <!-- skip-test: needs a D-Wave API token -->
    ```python
    ...

The reason after ``skip-test:`` is reported as the skip reason. Nothing else is skipped: a
snippet that raises is a failing test, so the documentation cannot drift from the code.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
SKIP_MARK = re.compile(r"^<!--\s*skip-test:\s*(?P<reason>.*?)\s*-->\s*$")
# a hang guard, not a speed check: README blocks take seconds (a training example stays tiny)
BLOCK_TIMEOUT_S = 300


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    section: str  # the nearest heading above it
    code: str
    skip_reason: str | None


def _heading(line: str) -> str | None:
    match = re.match(r"^#{1,6}\s+(.*)$", line)
    return match.group(1).strip() if match else None


def python_blocks(text: str) -> list[Block]:
    """The ```python blocks of a Markdown text, with their skip marker if any."""
    blocks, section, lines = [], "top", text.splitlines()
    i = 0
    while i < len(lines):
        fence = lines[i].strip()
        if fence.startswith("```"):  # any fenced block: its '#' lines are no headings
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            if fence == "```python":
                mark = SKIP_MARK.match(lines[i - 1].strip()) if i > 0 else None
                code = "\n".join(lines[i + 1 : end]) + "\n"
                blocks.append(Block(i + 1, section, code, mark.group("reason") if mark else None))
            i = end
        else:
            section = _heading(lines[i]) or section
        i += 1
    return blocks


def test_block_extraction_and_skip_marker():
    text = (
        "# A\n```python\nx = 1\n```\n## B\n```yaml\n# not a heading\n```\n"
        "<!-- skip-test: needs a D-Wave token -->\n```python\nimport dwave\n```\n"
    )
    blocks = python_blocks(text)
    assert [(b.line, b.section, b.code, b.skip_reason) for b in blocks] == [
        (2, "A", "x = 1\n", None),
        (10, "B", "import dwave\n", "needs a D-Wave token"),
    ]


def _suite_env() -> dict[str, str]:
    """The suite's environment (data and cache folders from conftest), worktree first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.setdefault("MPLBACKEND", "Agg")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        env["OMP_NUM_THREADS"] = "1"  # parallel workers share the cores, as in conftest
    return env


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 5, "README.md lost its Python examples (or the extractor broke)"


@pytest.mark.parametrize(
    "block", BLOCKS, ids=[f"L{b.line}-{re.sub(r'[^A-Za-z0-9]+', '_', b.section)[:30]}" for b in BLOCKS]
)
def test_readme_block_runs(block: Block, tmp_path):
    if block.skip_reason is not None:
        pytest.skip(f"README.md line {block.line}: {block.skip_reason}")
    try:
        done = subprocess.run(
            [sys.executable, "-c", block.code],
            cwd=tmp_path,  # as a user's own folder: files a block writes (runs/...) land here
            env=_suite_env(),
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"README.md line {block.line} ({block.section}) ran over {BLOCK_TIMEOUT_S} s")
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-8:])
        pytest.fail(f"README.md line {block.line} ({block.section}) fails as written:\n{tail}")
