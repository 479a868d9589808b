"""One trainer's session in the service: its own sampler instance (persistent chains or
particles, generator, β_eff scaling), its usage, and when it was last heard from.

A session's sampler is built from the service's sampler name and options, overridden by the
session's own options, with the trainer's seed and topology as the run-supplied values; with
packing on, a sampler that has a packed implementation (`packing.PACKED`) gets that instead.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import samplers
from samplers.base import Sampler
from samplers.service.accounting import Usage
from samplers.service.errors import BadRequest
from samplers.service.packing import PACKED

_ids = itertools.count(1)
# samplers whose draws are a pure function of their state_dict(), the model and the sample
# count (every random number comes from a generator the state holds): the same state and the
# same calls give the same chains, so a client can rebuild a lost session exactly by replaying
# its calls since that state (client.py). A QPU's draws cannot be repeated, and repeating them
# would spend QPU time.
REPLAYABLE = frozenset({"gibbs", "pa", "neal", "exact"})


@dataclass
class Session:
    id: str
    label: str
    sampler: Sampler
    timeout_s: float
    packed: bool
    last_seen: float = field(default_factory=time.monotonic)
    usage: Usage = field(default_factory=Usage)
    pending: int = 0  # requests queued or running: such a session is never dropped as idle

    def row(self, now: float) -> dict:
        return {"session": self.id, "label": self.label, **self.usage.as_dict(),
                "idle_s": 0.0 if self.pending else now - self.last_seen}


def new_id(incarnation: str) -> str:
    """Session ids are unique across restarts: a restarted service never reuses one."""
    return f"{incarnation[:6]}-{next(_ids)}"


def _merged_options(name: str, service_options: dict, overrides) -> dict:
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, dict):
        raise BadRequest("session options must be a mapping of the service sampler's options")
    try:
        samplers.check_options(name, overrides)
    except samplers.SamplerOptionError as exc:
        raise BadRequest(str(exc)) from None
    return {**service_options, **overrides}


def _topology(service_topology: str | None, requested) -> str | None:
    if requested is not None and not isinstance(requested, str):
        raise BadRequest("a session's topology is a name or a path")
    if service_topology and requested and requested != service_topology:
        raise BadRequest(f"the trainer's topology '{requested}' differs from the service's "
                         f"'{service_topology}'")
    return requested or service_topology


def build_sampler(name: str, service_options: dict, service_topology: str | None,
                  request: dict, packing: bool) -> Sampler:
    """The session's own sampler; bad options or an impossible topology raise BadRequest."""
    options = _merged_options(name, service_options, request.get("options"))
    seed = request.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise BadRequest("a session's seed is an int or null")
    run = {"seed": seed, "topology": _topology(service_topology, request.get("topology"))}
    run = {k: v for k, v in run.items() if v is not None}
    cls = PACKED.get(name) if packing else None
    try:
        if cls is None:
            return samplers.get(name, run=run, **options)
        for key, opt in cls.parameters.items():  # what samplers.get does with `run`
            if opt.run_key in run and key not in options:
                options[key] = run[opt.run_key]
        return cls(**options)
    except ValueError as exc:  # SamplerOptionError, TopologyError: the request's options
        raise BadRequest(str(exc)) from None
