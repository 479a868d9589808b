"""The Sampler protocol, declared options, and the registry behind `samplers.get`.

A sampler turns a `BipartiteModel` snapshot into binary samples:

    draw(model, num_samples, *, device=None, dtype=None) -> SampleResult(samples, info)
    sample(model, num_samples, ...) -> samples             # the same, without the info

`samples` is (num_samples, n_L + n_R) with values in {0., 1.} on the requested device and dtype
(default: the model's). There is no gradient through a sampler. `info` describes that one call
under keys shared by all backends ('time_s', 'beta', 'num_samples', 'mean_energy') plus backend
extras; it is returned with the samples, never kept on the sampler, so one sampler object can
serve callers one after another without their facts mixing. Persistent state (chains,
particles, generator, a temperature scaling) survives across calls and round-trips through
`state_dict()` / `load_state_dict()`, so a training checkpoint restores the exact next samples.

Each backend declares its options once in `parameters`: `get()` fills defaults and validates
names, types and ranges against that declaration, so a bad option is one line naming it, and
`check_options()` validates a partial mapping (a config entry, a topology file's defaults) with
the same rules. Options that a run supplies (its seed, its topology) say so with `run_key`, and
`get(name, run={...})` fills them without the caller knowing which backend takes which.

A second protocol, `TemperatureScaled`, is implemented by samplers whose temperature is a
programmable scaling (the QPU backend programs β·E/β_eff); calibration uses it by type.
"""

from __future__ import annotations

import importlib
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, NamedTuple, Protocol, runtime_checkable

import torch

from samplers.model import BipartiteModel

# the mean-energy diagnostic looks at this many samples: on a 5,640-qubit chip the energy of all
# 1,000 reads is a dense product that would cost a sixth of a QPU call
MEAN_ENERGY_SAMPLES = 100


class SamplerOptionError(ValueError):
    """Unknown sampler name, unknown option, or an option of the wrong type or range."""


class SamplerFailure(RuntimeError):
    """A sampler could not deliver at run time (a device, a cloud service, a remote process);
    the message is one line and free of secrets."""


@dataclass(frozen=True)
class Option:
    """One declared sampler option: default, accepted types, an optional range check and doc.

    `run_key` names a value the run supplies ("seed", "topology"): `get(name, run=...)` fills
    the option from it when the caller did not set the option itself.
    """

    default: Any
    types: tuple = (int,)
    check: Callable[[Any], bool] | None = None
    doc: str = ""
    nullable: bool = False
    run_key: str | None = None


def positive(v) -> bool:
    return v > 0


def non_negative(v) -> bool:
    return v >= 0


SEED = Option(None, (int,), non_negative, "seed >= 0", nullable=True, run_key="seed")


def seeded_generator(device: torch.device | str, seed: int | None) -> torch.Generator:
    """A torch.Generator on `device`, seeded with `seed`, or from OS entropy when it is None."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def check_request(model, num_samples, device, dtype) -> tuple[torch.device, torch.dtype]:
    """What `draw` checks before any work (also before a submission): the model, the count,
    the device and dtype of the samples; returns the (device, dtype) to use."""
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
    return device, dtype


class SampleResult(NamedTuple):
    """What one `draw` returns: the samples and the facts about that call."""

    samples: torch.Tensor
    info: dict


@runtime_checkable
class TemperatureScaled(Protocol):
    """A sampler that samples exp(−β_eff·E_prog) and programs E_prog = β·E/β_eff, so that its
    temperature is corrected by changing the scaling (the QPU backend)."""

    beta_eff: float

    def set_beta_eff(self, beta_eff: float) -> None:
        """Use `beta_eff` for the scaling from the next call on."""

    def measure_beta_eff(self, num_bootstrap: int | None = None, seed: int | None = None):
        """β̂ (a `samplers.temperature.BetaEstimate`) of the last call's samples against the
        problem it actually programmed."""

    def estimated_access_time_us(self, model: BipartiteModel, num_samples: int) -> float:
        """Device access time of `draw(model, num_samples)` by the vendor's timing model (µs)."""


@runtime_checkable
class Submitting(Protocol):
    """A sampler whose calls can be in flight while the caller works (the QPU backend): the
    training loop's opt-in `prefetch` uses it. Draws complete in submission order, and
    `state_dict()` holds no trace of a draw still pending."""

    def submit(self, model: BipartiteModel, num_samples: int, *, device=None, dtype=None):
        """Start `draw(model, num_samples)`; `.result()` of the returned object gives its
        SampleResult."""


class Sampler:
    """Base class of all backends. Subclasses set `name`, `parameters` and implement `_sample`,
    which returns (samples, info) for that call."""

    name: ClassVar[str] = ""
    parameters: ClassVar[dict[str, Option]] = {}
    boltzmann: ClassVar[bool] = True  # False for optimisers wrapped by the dimod adapter

    def __init__(self, **options):
        self.options = validate_options(type(self), options)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({shown})"

    def draw(
        self,
        model: BipartiteModel,
        num_samples: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> SampleResult:
        device, dtype = check_request(model, num_samples, device, dtype)
        start = time.perf_counter()
        z, info = self._sample(model, num_samples)
        z = z.to(device=device, dtype=dtype)
        info = dict(info)
        if "mean_energy" not in info:
            head = z[:MEAN_ENERGY_SAMPLES].to(model.device, model.dtype)
            with torch.no_grad():
                info["mean_energy"] = float(model.energy(head).mean())
        info.update(time_s=time.perf_counter() - start, beta=float(model.beta),
                    num_samples=num_samples)
        return SampleResult(z, info)

    def sample(self, model: BipartiteModel, num_samples: int, *,
               device: torch.device | str | None = None,
               dtype: torch.dtype | None = None) -> torch.Tensor:
        """`draw(...).samples`: the samples alone."""
        return self.draw(model, num_samples, device=device, dtype=dtype).samples

    def _sample(self, model: BipartiteModel, num_samples: int) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def preflight(self) -> None:
        """Check, without network access or side effects, what would make the first call fail
        for reasons the user must fix (e.g. missing credentials); raise SamplerOptionError.
        Training calls it before it creates a run directory. Local backends need nothing."""

    def close(self) -> None:
        """Release what the sampler holds outside the process (a cloud client, a service
        session); local backends hold nothing."""

    def state_dict(self) -> dict:
        """Persistent state for checkpoints; stateless backends return {}."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{self.name} sampler has no state to restore")


def _type_names(opt: Option) -> str:
    return "/".join("any object" if t is object else t.__name__ for t in opt.types)


def _check_one(cls: type[Sampler], key: str, opt: Option, value):
    """`value` checked against `opt`; the message names the option and what it expects, and
    shows the value only when it is a number (a string could be a secret)."""
    if value is None and (opt.nullable or opt.default is None):
        return None
    if isinstance(value, bool) and bool not in opt.types:
        ok = False
    else:
        ok = isinstance(value, opt.types)
    if not ok:
        raise SamplerOptionError(
            f"sampler '{cls.name}' option '{key}': not {_type_names(opt)} "
            f"(got {type(value).__name__}; value not shown)"
        )
    shown = repr(value) if isinstance(value, (int, float)) else "the value"
    if isinstance(value, float) and not math.isfinite(value):
        raise SamplerOptionError(f"sampler '{cls.name}' option '{key}': {shown} is not finite")
    if opt.check is not None and not opt.check(value):
        raise SamplerOptionError(
            f"sampler '{cls.name}' option '{key}': {shown} is out of range ({opt.doc})"
        )
    return value


def _reject_unknown(cls: type[Sampler], options: Mapping) -> None:
    unknown = sorted(set(options) - set(cls.parameters))
    if unknown:
        raise SamplerOptionError(
            f"sampler '{cls.name}' has no option {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(sorted(cls.parameters))}"
        )


def validate_options(cls: type[Sampler], options: Mapping) -> dict:
    """Defaults plus `options`, each checked against the class's declared `parameters`."""
    _reject_unknown(cls, options)
    return {key: _check_one(cls, key, opt, options.get(key, opt.default))
            for key, opt in cls.parameters.items()}


# top-level packages an import path in a config may name; a config or run directory someone
# shared must not make dvae-q import code of its choosing (e.g. a module beside it on sys.path)
TRUSTED_IMPORTS = ("samplers", "dwave", "dimod")
TRUSTED_IMPORTS_ENV = "DVAEQ_TRUSTED_IMPORTS"


def _installed(module: str) -> bool:
    """Whether `module`'s file lies in an installed package (site-packages) or in this
    `samplers` package, and not in some folder that happens to be on sys.path."""
    import importlib.util
    import site
    import sysconfig
    from pathlib import Path

    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return True  # it does not import at all: import_object says so next
    if spec is None or spec.origin is None:
        return True
    paths = sysconfig.get_paths()
    roots = {paths["purelib"], paths["platlib"], *site.getsitepackages(),
             str(Path(__file__).resolve().parent)}
    origin = Path(spec.origin).resolve()
    return any(origin.is_relative_to(Path(root).resolve()) for root in roots)


def import_object(spec: str, what: str):
    """The object an import path names ("module:attr", or "module.attr"), from a trusted
    package (TRUSTED_IMPORTS, plus the comma-separated packages in $DVAEQ_TRUSTED_IMPORTS).
    SamplerOptionError, naming `what`, for anything else or anything that does not import."""
    import os

    module, sep, attr = spec.partition(":")
    if not sep:
        module, _, attr = spec.rpartition(".")
    if not module or not attr:
        raise SamplerOptionError(f"{what}: not an import path 'module:name'")
    extra = [p.strip() for p in os.environ.get(TRUSTED_IMPORTS_ENV, "").split(",") if p.strip()]
    top = module.split(".")[0]
    outside = SamplerOptionError(
        f"{what}: '{module}' is outside the trusted packages ({', '.join(TRUSTED_IMPORTS)}); "
        f"add its package to {TRUSTED_IMPORTS_ENV} if you trust it"
    )
    if top not in (*TRUSTED_IMPORTS, *extra):
        raise outside
    if top not in extra and not _installed(module):
        # `dwave` is a namespace package: a `dwave/` folder beside a shared run directory (on
        # sys.path as the working folder) would add modules to it
        raise outside
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError):
        raise SamplerOptionError(f"{what}: cannot import '{spec}'") from None


# name -> "module:Class", imported on first use so that `import samplers` stays light
REGISTRY = {
    "gibbs": "samplers.gibbs:GibbsSampler",
    "pa": "samplers.population_annealing:PopulationAnnealingSampler",
    "neal": "samplers.neal:NealSampler",
    "exact": "samplers.exact:ExactSampler",
    "dimod": "samplers.dimod_sampler:DimodSampler",
    "qpu": "samplers.qpu:QPUSampler",
    "remote": "samplers.remote:RemoteSampler",
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


def check_options(name: str, options: Mapping) -> dict:
    """A partial mapping of options for sampler `name` (e.g. a config's `sampler_options.<name>`)
    validated with the sampler's own rules; defaults are not filled in."""
    cls = sampler_class(name)
    if not isinstance(options, Mapping):
        raise SamplerOptionError(f"sampler '{name}': options must be a mapping, "
                                 f"got {type(options).__name__}")
    _reject_unknown(cls, options)
    return {key: _check_one(cls, key, cls.parameters[key], value) for key, value in options.items()}


def get(name: str, *, run: Mapping | None = None, **options) -> Sampler:
    """Build the sampler registered as `name` with validated `options`.

    `run` holds values the run supplies (e.g. {"seed": 3, "topology": "chimera_c4"}); each
    fills the option that declares it as its `run_key`, unless `options` already sets it.
    """
    cls = sampler_class(name)
    for key, opt in cls.parameters.items():
        if opt.run_key and run and opt.run_key in run and key not in options:
            options[key] = run[opt.run_key]
    return cls(**options)
