"""Packing: concurrent requests of several sessions that can share one device call run as one.

A `Packer` recognises the requests it can pack (`key`: requests with equal keys go together;
None: not this packer's) and runs a group (`run`: one result per request, in order). The
service asks each packer in `PACKERS` in turn; a request no packer claims runs alone through
its session's own `draw`.

`PACKED` names, per sampler, the implementation a session gets when packing is on, so that its
requests are packable at all: `gibbs` sessions get `PackedGibbsSampler` (the same options,
semantics and state format, driven by a batched kernel).

A QPU packer plugs in here the same way: its key is the solver, and its `run` places the
sessions' RBMs on disjoint regions of the chip (tiling), submits one problem, and splits the
answer and the QPU access time between the sessions.
"""

from __future__ import annotations

import math
from typing import Hashable, Protocol

import torch

from samplers.base import Sampler
from samplers.model import BipartiteModel
from samplers.service.packed_gibbs import PackedGibbsSampler, draw_packed

PACKED: dict[str, type[Sampler]] = {"gibbs": PackedGibbsSampler}


class Packer(Protocol):
    def key(self, sampler: Sampler, model: BipartiteModel, num_samples: int) -> Hashable | None:
        """Requests with equal keys can run as one call; None: not packable by this packer."""

    def run(self, members: list[Sampler], models: list[BipartiteModel],
            num_samples: list[int]) -> list[tuple[torch.Tensor, dict]]:
        """(samples, info) per request of one group, in order."""


class GibbsPacker:
    """Packs `PackedGibbsSampler` sessions whose kernels have the same shapes: model size,
    dtype, device, chains, sweeps, thinning and number of read-outs."""

    def key(self, sampler, model, num_samples):
        if not isinstance(sampler, PackedGibbsSampler):
            return None
        o = sampler.options
        reads = math.ceil(num_samples / o["num_chains"])
        return ("gibbs", model.num_left, model.num_right, model.dtype, sampler.device_for(model),
                o["num_chains"], o["sweeps"], o["thin"], reads, num_samples)

    def run(self, members, models, num_samples):
        return draw_packed(members, models, num_samples[0])


PACKERS: list[Packer] = [GibbsPacker()]


def plan(items: list, packing: bool) -> list[tuple[Packer | None, list]]:
    """Groups of `items` (each with .session.sampler, .model, .num_samples) in order of first
    appearance: (packer, group) for packed groups, (None, [item]) for the rest."""
    groups: dict = {}
    for item in items:
        key = None
        for packer in PACKERS if packing else ():
            key = packer.key(item.session.sampler, item.model, item.num_samples)
            if key is not None:
                groups.setdefault((id(packer), key), (packer, []))[1].append(item)
                break
        if key is None:
            groups[("alone", id(item))] = (None, [item])
    return list(groups.values())
