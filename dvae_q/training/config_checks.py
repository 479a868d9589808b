"""The checks of a resolved config that look across keys or at this machine: the learning-rate
schedule and the splits, the latent size, the device, credentials, and the sampler with its
options (checked by the samplers package, which owns them). Each
failure is one `BadInput` line naming the key; a value is never echoed back unless it is a
number or looks like a name (a config may carry a mistyped secret)."""

from __future__ import annotations

import difflib
import math
import os
import re
from typing import TYPE_CHECKING

from dvae_q.errors import BadInput
from dvae_q.training.secrets import dwave_token, refuse_secrets

if TYPE_CHECKING:
    from dvae_q.training.config import Config

SPLITS = ("valid", "test")


def name_shown(value: str) -> str:
    """A mistyped name (of a sampler, method, ...) as it appears in a message: quoted when it
    looks like a name and is not the D-Wave token, otherwise not shown."""
    token = dwave_token()  # slow, but only on this error path
    if re.fullmatch(r"[A-Za-z0-9_.:/+-]{1,40}", value) and not (token and token in value):
        return f"'{value}'"
    return "(value not shown)"


def check_consistency(cfg: Config) -> None:
    if cfg.eval_every is None:  # every 20k steps, every 10k for runs of ≤ 100k steps
        cfg.eval_every = 10_000 if cfg.steps <= 100_000 else 20_000
    if len(cfg.lr_factors) != len(cfg.lr_boundaries) + 1:
        raise BadInput("config key 'lr_factors' must have one entry more than 'lr_boundaries'")
    if not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b <= 1
               for b in cfg.lr_boundaries) or sorted(cfg.lr_boundaries) != cfg.lr_boundaries:
        raise BadInput("config key 'lr_boundaries' must be increasing fractions in [0, 1]")
    if not all(isinstance(f, (int, float)) and not isinstance(f, bool) and f > 0
               and math.isfinite(f) for f in cfg.lr_factors):
        raise BadInput("config key 'lr_factors' must be positive numbers")
    bad = [s for s in cfg.eval_splits if s not in SPLITS]
    if bad or not cfg.eval_splits or len(set(cfg.eval_splits)) != len(cfg.eval_splits):
        raise BadInput("config key 'eval_splits' must list 'valid' and/or 'test'")
    if cfg.num_latent is not None and cfg.num_latent % 2:
        raise BadInput("config key 'num_latent' must be even (the RBM has two equal halves)")
    _check_device(cfg.device)
    # the environment's token here; the dwave config file's too (a slower lookup) when a run
    # directory is about to be written: `refuse_token`
    refuse_secrets(cfg.to_dict(), "", os.environ.get("DWAVE_API_TOKEN"))
    _check_sampler(cfg)


def _check_device(name: str) -> None:
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise BadInput("config key 'device': not a torch device (cpu, cuda, cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        # 'meta' holds no values; other backends are untested with the samplers
        raise BadInput(f"config key 'device': '{device.type}' is not supported; use cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadInput("config key 'device': CUDA was requested but is not available here")
    if device.type == "cuda" and device.index is not None \
            and device.index >= torch.cuda.device_count():
        raise BadInput(f"config key 'device': there is no CUDA device {device.index} here")


def _check_sampler(cfg: Config) -> None:
    """The sampler name and every `sampler_options.<name>` entry, checked by the samplers
    package itself (each backend owns its options), and the topology's QPU defaults."""
    import samplers

    if cfg.sampler not in samplers.available():
        hint = difflib.get_close_matches(cfg.sampler, samplers.available(), n=1)
        did = f"; did you mean '{hint[0]}'?" if hint else ""
        raise BadInput(f"config key 'sampler': unknown sampler {name_shown(cfg.sampler)}; "
                       f"known: {', '.join(samplers.available())}{did}")
    for name, opts in cfg.sampler_options.items():
        if not isinstance(opts, dict):
            raise BadInput(f"config key 'sampler_options.{name}' must be a mapping of options")
        try:
            samplers.check_options(name, opts)
        except samplers.SamplerOptionError as exc:
            raise BadInput(f"config key 'sampler_options.{name}': {exc}") from None
    if cfg.topology is not None:
        import topologies

        try:
            samplers.sampler_class("qpu").topology_defaults(topologies.load(cfg.topology))
        except samplers.SamplerOptionError as exc:
            raise BadInput(f"config key 'topology': {exc}") from None
