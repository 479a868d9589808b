"""The Sampler protocol, declared options, and the registry behind `samplers.get`.

A sampler turns a `BipartiteModel` snapshot into binary samples:

    sample(model, num_samples, *, device=None, dtype=None) -> Tensor (num_samples, n_L + n_R)

with values in {0., 1.} on the requested device and dtype (default: the model's). There is no
gradient through a sampler. Persistent state (chains, particles, generator) survives across
calls and round-trips through `state_dict()` / `load_state_dict()`, so a training checkpoint
restores the exact next samples. After each call `info` holds facts about it under keys shared by
all backends ('time_s', 'beta', 'num_samples', 'mean_energy') plus backend extras.

Each backend declares its options once in `parameters` (STYLE §2): `get()` validates names,
types and ranges against that declaration, so a bad option is one line naming it.
"""

from __future__ import annotations

import importlib
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from samplers.model import BipartiteModel


MEAN_ENERGY_SAMPLES = 100


class SamplerOptionError(ValueError):
    """Unknown sampler name, unknown option, or an option of the wrong type or range."""


@dataclass(frozen=True)
class Option:
    """One declared sampler option: default, accepted types, an optional range check and doc."""

    default: Any
    types: tuple = (int,)
    check: Callable[[Any], bool] | None = None
    doc: str = ""
    nullable: bool = False


def positive(v) -> bool:
    return v > 0


def non_negative(v) -> bool:
    return v >= 0


def fraction(v) -> bool:
    return 0 <= v <= 1


SEED = Option(None, (int,), non_negative, "seed >= 0", nullable=True)


def seeded_generator(device: torch.device | str, seed: int | None) -> torch.Generator:
    """A torch.Generator on `device`, seeded with `seed`, or from OS entropy when it is None."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


class Sampler:
    """Base class of all backends. Subclasses set `name`, `parameters` and implement `_sample`."""

    name: ClassVar[str] = ""
    parameters: ClassVar[dict[str, Option]] = {}
    boltzmann: ClassVar[bool] = True  # False for optimisers wrapped by the dimod adapter

    def __init__(self, **options):
        self.options = validate_options(type(self), options)
        self.info: dict = {}

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({shown})"

    def sample(
        self,
        model: BipartiteModel,
        num_samples: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        if not isinstance(model, BipartiteModel):
            raise TypeError(f"sample() needs a samplers.BipartiteModel, got {type(model).__name__}")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        device = torch.device(device) if device is not None else model.device
        if device.type == "meta" or model.device.type == "meta":
            # meta tensors hold no values, so there is nothing to sample from or into
            raise ValueError("samplers need real tensors: the model or the requested device is 'meta'")
        dtype = dtype or model.dtype
        if not dtype.is_floating_point:
            raise ValueError(f"samples are returned as a floating dtype, not {dtype}")
        start = time.perf_counter()
        self.info = {}
        z = self._sample(model, num_samples)
        z = z.to(device=device, dtype=dtype)
        if "mean_energy" not in self.info:
            # a diagnostic, so a subset suffices: on a 5,640-qubit chip the energy of 1,000
            # samples is a dense product that would cost a sixth of a QPU call
            head = z[:MEAN_ENERGY_SAMPLES].to(model.device, model.dtype)
            with torch.no_grad():
                self.info["mean_energy"] = float(model.energy(head).mean())
        self.info.update(
            time_s=time.perf_counter() - start,
            beta=float(model.beta),
            num_samples=num_samples,
        )
        return z

    def _sample(self, model: BipartiteModel, num_samples: int) -> torch.Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Persistent state for checkpoints; stateless backends return {}."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{self.name} sampler has no state to restore")


def validate_options(cls: type[Sampler], options: dict) -> dict:
    """Defaults plus `options`, each checked against the class's declared `parameters`."""
    declared = cls.parameters
    unknown = sorted(set(options) - set(declared))
    if unknown:
        raise SamplerOptionError(
            f"sampler '{cls.name}' has no option {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(sorted(declared))}"
        )
    out = {}
    for key, opt in declared.items():
        value = options.get(key, opt.default)
        if value is None and (opt.nullable or opt.default is None):
            out[key] = None
            continue
        if isinstance(value, bool) and bool not in opt.types:
            ok = False
        else:
            ok = isinstance(value, opt.types)
        if not ok:
            names = "/".join(t.__name__ for t in opt.types)
            raise SamplerOptionError(
                f"sampler '{cls.name}' option '{key}': {value!r} is not {names}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise SamplerOptionError(f"sampler '{cls.name}' option '{key}': {value!r} is not finite")
        if opt.check is not None and not opt.check(value):
            raise SamplerOptionError(
                f"sampler '{cls.name}' option '{key}': {value!r} is out of range ({opt.doc})"
            )
        out[key] = value
    return out


# name -> "module:Class", imported on first use so that `import samplers` stays light
REGISTRY = {
    "gibbs": "samplers.gibbs:GibbsSampler",
    "pa": "samplers.population_annealing:PopulationAnnealingSampler",
    "neal": "samplers.neal:NealSampler",
    "exact": "samplers.exact:ExactSampler",
    "dimod": "samplers.dimod_sampler:DimodSampler",
    "qpu": "samplers.qpu:QPUSampler",
}


def available() -> tuple[str, ...]:
    return tuple(REGISTRY)


def sampler_class(name: str) -> type[Sampler]:
    if name not in REGISTRY:
        raise SamplerOptionError(f"unknown sampler '{name}'; known: {', '.join(REGISTRY)}")
    module, _, cls = REGISTRY[name].partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            raise SamplerOptionError(f"sampler '{name}' is not available in this installation") from None
        raise


def declared_options(name: str) -> dict[str, Option]:
    """The options sampler `name` accepts (name -> Option)."""
    return dict(sampler_class(name).parameters)


def get(name: str, **options) -> Sampler:
    """Build the sampler registered as `name` with validated `options`."""
    return sampler_class(name)(**options)
