"""What every node of the cluster sees, asked before any cell of `dvae-q reproduce` runs.

A cell writes its run directory under the output folder on whichever node Ray picks, and a
retried cell resumes from that directory on another node, so every node must see the folder
the driver sees: a shared file system. The driver writes a marker with random content in the
output folder and a probe task on every node that can run a cell (one with CPUs) reads it back;
a node that reads nothing, or other content (another file system mounted at the same path),
is one line naming the node and the folder. A node that joins later is not asked.

The same probe reports the memory of the GPUs a node's torch can see, which bounds how many
cells may share one GPU.
"""

from __future__ import annotations

import secrets
from contextlib import contextmanager
from pathlib import Path

from dvae_q.errors import BadInput, RunFailure
from storage.files import write_atomic

MARKER = ".reproduce-probe-"
PROBE_TIMEOUT_S = 120.0  # a probe starts a worker (and imports torch on a GPU node)


def _look(marker: str, gpus: bool) -> dict:
    """The probe's body on one node: the marker's content, and its GPUs' smallest memory."""
    try:
        seen = Path(marker).read_text()
    except OSError:
        seen = None
    gpu_bytes = None
    if gpus:
        import torch

        if torch.cuda.is_available():
            gpu_bytes = min(torch.cuda.get_device_properties(i).total_memory
                            for i in range(torch.cuda.device_count()))
    return {"seen": seen, "gpu_bytes": gpu_bytes}


def _label(node: dict) -> str:
    return f"{node['NodeID'][:12]} ({node.get('NodeManagerAddress', '?')})"


@contextmanager
def folder(out: Path):
    """The output folder for the block; if the block fails, the folders made for it (those
    still empty) are removed, so a refused command leaves nothing behind."""
    made = [p for p in (out, *out.parents) if not p.exists()]  # deepest first
    out.mkdir(parents=True, exist_ok=True)
    try:
        yield out
    except BaseException:
        for path in made:
            try:
                path.rmdir()
            except OSError:
                break
        raise


def probe(ray, out: Path) -> int | None:
    """Check that every node with CPUs sees the folder `out`; the smallest GPU memory any node
    reported (None when none did)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    content = secrets.token_hex(16)
    marker = out / f"{MARKER}{content[:8]}"
    write_atomic(marker, content)
    try:
        nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
        # max_calls=1: a worker that touched CUDA must not run a cell given another GPU
        task = ray.remote(num_cpus=0, max_retries=0, max_calls=1)(_look)
        refs = [(n, task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["NodeID"], soft=False)).remote(str(marker), n["Resources"].get("GPU", 0) > 0))
            for n in nodes]
        reports = []
        for node, ref in refs:
            try:
                report = ray.get(ref, timeout=PROBE_TIMEOUT_S)
            except ray.exceptions.GetTimeoutError:
                raise RunFailure(f"node {_label(node)} did not answer the output folder's probe "
                                 f"within {PROBE_TIMEOUT_S:.0f} s") from None
            except ray.exceptions.RayError as exc:
                raise RunFailure(f"node {_label(node)} failed the output folder's probe: "
                                 f"{type(exc).__name__}") from None
            if report["seen"] != content:
                raise BadInput(f"the output folder {out} is not visible from node "
                               f"{_label(node)}: reproduce on a cluster needs a shared file "
                               "system (every node must see --out at the same path)")
            reports.append(report)
    finally:
        marker.unlink(missing_ok=True)
    found = [r["gpu_bytes"] for r in reports if r["gpu_bytes"] is not None]
    return min(found) if found else None
