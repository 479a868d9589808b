"""Seeded randomness for the sampler kernels: cheap 16-bit uniforms on the CPU.

A block-Gibbs sweep needs one uniform per unit. On the CPU, torch's generator (a Mersenne
twister, one 32-bit draw per float) makes those uniforms cost more than the sweep's two matmuls.
`WordStream` instead takes raw 64-bit words from numpy's SFC64 bit generator (the fastest source
of random bits measured on our machines, see bench/sampler_throughput.py) and splits each word
into four 16-bit integers u ∈ {0, …, 65535}. A unit with probability p turns on when
u < 65536·p − ½, i.e. with probability round(65536·p)/65536: p is resolved to 2^-17, far below
any sampling error a test or an estimate can see (a probability error of 2^-17 per update moves
a mean by less than 1e-5).

On CUDA the source is a `torch.Generator` on the device (Philox: random numbers are nearly free
there) and states, probabilities and random numbers never leave the device. It is also what a
CUDA graph can draw from: a Philox state is a seed and an offset, so a graph that registers the
generator (`samplers.gibbs.SweepGraph`) reads both at each replay and advances the offset as
the eager kernels would, and `source_state` / `restore_source` save and restore it unchanged. A `torch.Generator`
is accepted on the CPU too (it reproduces the original float32-uniform kernel bit for bit).

Everything here takes a *source*: a `WordStream`, a `torch.Generator`, or, for a batched kernel
call, a sequence of them (one per leading batch element, so that each batch element keeps its
own reproducible stream whatever it is batched with).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np
import torch

from samplers.base import seeded_generator

GRAIN = 65536.0  # 2^16 levels of a 16-bit uniform


class WordStream:
    """Seeded stream of random 16-bit integers from numpy's SFC64, drawn in bulk (CPU)."""

    device = torch.device("cpu")

    def __init__(self, seed: int | None = None):
        self._bits = np.random.SFC64(seed)  # None: seeded from OS entropy

    def words16(self, count: int) -> torch.Tensor:
        """`count` independent uniform integers in [0, 2^16) as a flat uint16 tensor."""
        raw = self._bits.random_raw(-(-count // 4))
        return torch.from_numpy(raw.view(np.uint16)[:count])

    def floats(self, count: int) -> torch.Tensor:
        """`count` float64 uniforms in [0, 1) with 53 random bits each."""
        return torch.from_numpy(np.random.Generator(self._bits).random(count))

    def seed_word(self) -> int:
        """One 63-bit integer, to seed a generator derived from this stream."""
        return self._bits.random_raw() >> 1

    def state_dict(self) -> dict:
        state = self._bits.state
        return {"kind": "sfc64", "state": [int(x) for x in state["state"]["state"]],
                "has_uint32": int(state["has_uint32"]), "uinteger": int(state["uinteger"])}

    def load_state_dict(self, state: dict) -> None:
        self._bits.state = {
            "bit_generator": "SFC64",
            "state": {"state": np.array(state["state"], dtype=np.uint64)},
            "has_uint32": state["has_uint32"],
            "uinteger": state["uinteger"],
        }


Source = Union[WordStream, torch.Generator]


def make_source(device: torch.device | str, seed: int | None) -> Source:
    """The fast seeded source for `device`: a `WordStream` on the CPU, else a torch.Generator
    on the device. `seed` None draws the seed from OS entropy."""
    device = torch.device(device)
    if device.type == "cpu":
        return WordStream(seed)
    return seeded_generator(device, seed)


def derive_source(device: torch.device | str, generator: Source | None) -> Source:
    """A source for `device` driven by `generator`: the generator itself when it already suits
    the device, else a fresh source seeded by one draw from it (so a caller's torch.Generator
    keeps deciding every result, and advances)."""
    device = torch.device(device)
    if generator is None:
        return make_source(device, None)
    if device.type == "cpu" and isinstance(generator, WordStream):
        return generator
    if device.type != "cpu" and isinstance(generator, torch.Generator) \
            and generator.device.type == device.type:
        return generator
    if isinstance(generator, WordStream):
        return make_source(device, generator.seed_word())
    seed = torch.randint(0, 2**62, (), generator=generator, device=generator.device)
    return make_source(device, int(seed))  # one read before any kernel runs


def _words16(source, shape: tuple[int, ...]) -> torch.Tensor:
    if isinstance(source, WordStream):
        return source.words16(int(np.prod(shape))).view(shape)
    parts = [_words16(s, shape[1:]) for s in source]  # one stream per batch element
    return torch.stack(parts)


def bernoulli_(probs: torch.Tensor, source, out: torch.Tensor) -> torch.Tensor:
    """out ← 1[uniform < probs], elementwise; `probs` is overwritten. Returns `out`."""
    if isinstance(source, torch.Generator):
        u = torch.rand(probs.shape, generator=source, device=probs.device, dtype=probs.dtype)
        return torch.lt(u, probs, out=out)
    if isinstance(source, Sequence) and isinstance(source[0], torch.Generator):
        u = torch.stack([torch.rand(probs.shape[1:], generator=s, device=probs.device,
                                    dtype=probs.dtype) for s in source])
        return torch.lt(u, probs, out=out)
    threshold = probs.mul_(GRAIN).sub_(0.5)  # u < 65536·p − ½: p rounded to the 2^-16 grid
    return torch.lt(_words16(source, tuple(probs.shape)), threshold, out=out)


def uniform(source: Source, count: int, device, dtype=torch.float64) -> torch.Tensor:
    """`count` uniforms in [0, 1) on `device` (for resampling offsets and the like)."""
    if isinstance(source, torch.Generator):
        return torch.rand(count, generator=source, device=device, dtype=dtype)
    return source.floats(count).to(device=device, dtype=dtype)


def fair_states(source: Source, shape: tuple[int, ...], device, dtype) -> torch.Tensor:
    """Independent fair 0/1 states of `shape` (uniform initial chains)."""
    if isinstance(source, torch.Generator):
        return torch.randint(0, 2, shape, generator=source, device=device).to(dtype)
    half = torch.full(shape, 0.5, device=device, dtype=dtype)
    return bernoulli_(half, source, torch.empty(shape, device=device, dtype=dtype))


def source_state(source: Source) -> dict:
    """A plain, picklable description of the source's state."""
    if isinstance(source, WordStream):
        return source.state_dict()
    return {"kind": "torch", "device": source.device.type, "state": source.get_state()}


def restore_source(state, device: torch.device | str) -> Source:
    """The source `source_state` described, on `device`. A legacy torch generator state (a
    ByteTensor) is accepted; a CPU stream restored for CUDA seeds a device generator from it."""
    device = torch.device(device)
    if isinstance(state, torch.Tensor):
        state = {"kind": "torch", "device": device.type, "state": state}
    if state["kind"] == "sfc64":
        stream = WordStream(0)
        stream.load_state_dict(state)
        return stream if device.type == "cpu" else derive_source(device, stream)
    gen = torch.Generator(device=state["device"])
    gen.set_state(state["state"])
    return gen
