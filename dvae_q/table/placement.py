"""Where the cells of `dvae-q reproduce` run: each cell's share of the cluster (an equal share of
the CPUs, a GPU, or 1/N of a GPU), the checks of the hardware flags, and whether N cells fit in
one GPU's memory.

`--device cuda` gives each cell `num_gpus = 1/N` (`--cells-per-gpu N`, default 1) and
`device: cuda` in its config; Ray shows the task only the GPU it was given, as cuda:0. Ray does
not share memory fairly between the cells on a GPU, so N is checked against the GPU's memory
when a node reports it: N times a lower estimate of one cell's memory must fit."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from dvae_q.errors import BadInput

DEVICES = ("cpu", "cuda")
# Ray counts a resource in units of 1/10000: a share rounded up would let fewer than N fit
GPU_UNITS = 10_000
# a lower estimate of what a process's CUDA context takes before any tensor (torch's kernels
# loaded); measured contexts are larger, so an N refused on it cannot fit
CUDA_CONTEXT_BYTES = 300 * 2**20
FLOAT_BYTES = 4


@dataclass
class Hardware:
    """Where the cells run: the Ray cluster's size and each cell's share of it."""

    address: str | None = None
    num_cpus: int | None = None  # local instance: CPUs it may use (default all)
    num_gpus: int | None = None  # local instance: GPUs (default all); 0: CPU only anywhere
    cpus_per_cell: int | None = None  # default: an equal share of the CPUs, at least one
    device: str | None = None  # "cpu", "cuda"; None: cuda when the cluster has GPUs
    cells_per_gpu: int = 1  # with cuda: cells sharing one GPU (num_gpus = 1/N each)
    retries: int = 2  # times Ray runs a cell again when its worker or node dies


def check_flags(hw: Hardware) -> None:
    """The hardware flags on their own, before anything connects or is written."""
    if hw.device is not None and hw.device not in DEVICES:
        raise BadInput(f"--device: '{hw.device}' is not one of {', '.join(DEVICES)}")
    if not 1 <= hw.cells_per_gpu <= GPU_UNITS:
        raise BadInput(f"--cells-per-gpu must be between 1 and {GPU_UNITS} (Ray counts a GPU in "
                       f"units of 1/{GPU_UNITS}), got {hw.cells_per_gpu}")
    if hw.retries < 0:
        raise BadInput(f"--retries must be >= 0, got {hw.retries}")
    if hw.cells_per_gpu > 1 and hw.device != "cuda":
        raise BadInput("--cells-per-gpu shares GPUs between cells: give --device cuda with it")
    if hw.device == "cuda" and hw.num_gpus == 0:
        raise BadInput("--device cuda with --num-gpus 0: the cells would have no GPU")
    if hw.device == "cuda" and not hw.address and hw.num_gpus is None:
        import torch

        if torch.cuda.device_count() == 0:  # what a local Ray instance would find
            raise BadInput("--device cuda: this machine has no CUDA GPU (torch sees none); "
                           "use --device cpu, or --address a Ray cluster with GPUs")


def uses_gpus(hw: Hardware, cluster: dict) -> bool:
    if hw.device == "cuda":
        return True
    return hw.device is None and hw.num_gpus != 0 and cluster.get("GPU", 0) >= 1


def gpu_share(cells_per_gpu: int) -> float:
    """One cell's num_gpus: 1/N rounded down to Ray's unit, so that N of them fit in one GPU."""
    return math.floor(GPU_UNITS / cells_per_gpu) / GPU_UNITS


def cell_resources(hw: Hardware, pending: int, cluster: dict, node_cpus: int
                   ) -> tuple[dict, dict, int]:
    """(Ray task resources, the cell's hardware config keys, its torch threads) for `pending`
    cells on a cluster of `cluster` resources whose largest node has `node_cpus` CPUs."""
    if uses_gpus(hw, cluster):
        if cluster.get("GPU", 0) < 1:
            raise BadInput("--device cuda: the Ray cluster has no GPUs "
                           f"({int(cluster.get('CPU', 0))} CPUs, 0 GPUs)")
        # Ray shows the task only its own GPU, as cuda:0
        return {"num_cpus": 1, "num_gpus": gpu_share(hw.cells_per_gpu)}, {"device": "cuda"}, 1
    cpus = int(cluster.get("CPU", 1))
    # an equal share, so that fewer cells than cores still use every core
    share = hw.cpus_per_cell or max(1, min(node_cpus, cpus // max(1, min(pending, cpus))))
    if share > node_cpus:
        raise BadInput(f"--cpus-per-cell {share}: the largest Ray node has {node_cpus} CPUs")
    return {"num_cpus": share, "num_gpus": 0}, {}, share


def cell_bytes(cfg) -> int:
    """A lower estimate of one cell's GPU memory: a CUDA context and the largest of the tensors
    the training's own memory check counts (float32)."""
    from dvae_q.training.build import largest_tensors

    return CUDA_CONTEXT_BYTES + FLOAT_BYTES * max(largest_tensors(cfg).values())


def check_fits(cells_per_gpu: int, gpu_bytes: int | None, configs: Iterable) -> None:
    """BadInput when N of the largest cell cannot fit in the smallest GPU; nothing when no node
    reported its GPUs' memory (a GPU Ray counts but torch cannot see)."""
    if gpu_bytes is None:
        return
    need = max(cell_bytes(cfg) for cfg in configs)
    if cells_per_gpu * need > gpu_bytes:
        fit = gpu_bytes // need
        raise BadInput(f"--cells-per-gpu {cells_per_gpu}: a cell needs at least "
                       f"{need / 2**30:.2f} GiB of GPU memory and the smallest GPU has "
                       f"{gpu_bytes / 2**30:.1f} GiB, so at most {fit} fit; lower it")
