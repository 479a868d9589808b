"""Packing: concurrent requests of several sessions that can share one device call run as one.

A `Packer` recognises the requests it can pack (`key`: requests with equal keys go together;
None: not this packer's) and runs a group (`run`: one result per request, in order). The
service asks each packer in `PACKERS` in turn; a request no packer claims runs alone through
its session's own `draw`.

`PACKED` names, per sampler, the implementation a session gets when packing is on, so that its
requests are packable at all: `gibbs` sessions get `PackedGibbsSampler` (the same options,
semantics and state format, driven by a batched kernel). `qpu` sessions keep `QPUSampler`,
whose `draw_tiled` programs several models on disjoint copies of the chip in one call.

A packer raises `Unpackable` when a group cannot run as one call for a reason that belongs to
one of its requests (a model the solver cannot take, found before anything was sent); the
service then runs the group's requests one at a time, so only that request is refused.
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


class Unpackable(Exception):
    """This group cannot share one call; run its requests one at a time."""


# options that may differ between QPU sessions packed together: the seed (their own generator,
# used only for calibration's bootstrap) and β_eff (the solver's is shared, see core.py)
QPU_OWN_OPTIONS = ("seed", "beta_eff")


class QPUPacker:
    """Packs QPU sessions whose samplers have the same options apart from `QPU_OWN_OPTIONS`
    (hence the same solver, topology, schedule, range policy and calibration settings) into
    one `QPUSampler.draw_tiled` call made by the first session's sampler (the host)."""

    def key(self, sampler, model, num_samples):
        if getattr(sampler, "name", None) != "qpu" or not hasattr(sampler, "draw_tiled"):
            return None
        shared = sorted((k, v) for k, v in sampler.options.items() if k not in QPU_OWN_OPTIONS)
        return ("qpu", repr(shared))

    def run(self, members, models, num_samples):
        from samplers.qpu import QPURangeError

        host = members[0]
        # one measurement serves every session of the solver: re-measure if any is due
        due = any(m.recalibration_due for m in members)
        try:
            results = host.draw_tiled(models, list(num_samples), recalibrate=due)
        except (ValueError, QPURangeError) as exc:  # a model the QPU cannot take
            if len(members) > 1:
                raise Unpackable(str(exc)) from exc
            raise
        for member in members[1:]:
            member.follow(host)
        return [tuple(r) for r in results]


PACKERS: list[Packer] = [GibbsPacker(), QPUPacker()]


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
