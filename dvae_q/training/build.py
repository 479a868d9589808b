"""The pieces of a run, built from a resolved config: seeds, model, optimiser, sampler.

Everything here validates before anything is written, so a run directory is only created for
a config that can run. Loading a finished run builds the model alone (no training data, no
optimiser): the data mean the model depends on is part of its state dict.

Seeds: one root seed spawns independent streams for parameter init, data order and dynamic
binarisation, posterior noise, the prior sampler and evaluation (AIS, IW samples).

With `compile` on (`compiles`), the networks of a run built for training go through
torch.compile (`compile_networks`); a model built for loading stays plain, so a run trained
with it loads and evaluates anywhere.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import numpy as np
import torch

import samplers
from dvae_q.errors import BadInput
from dvae_q.model import methods, networks
from dvae_q.model.dvae import DVAE, parameter_groups
from dvae_q.model.networks import NUM_PIXELS
from dvae_q.training.config import Config
from dvae_q.training.schedule import torch_adam_eps

SEED_STREAMS = ("init", "data", "posterior", "sampler", "eval")


def seed_streams(root: int) -> dict[str, int]:
    """Independent 63-bit seeds for each consumer, spawned from the root seed."""
    children = np.random.SeedSequence(root).spawn(len(SEED_STREAMS))
    return {
        name: int(child.generate_state(1, np.uint64)[0] >> np.uint64(1))
        for name, child in zip(SEED_STREAMS, children)
    }


def generator(seed: int, device: torch.device | str) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def num_latent(cfg: Config) -> int:
    return cfg.num_latent or networks.get_structure(cfg.structure).num_latent


def smoothing_beta(cfg: Config) -> float:
    """The config's β, or the paper's value for its dataset, structure and method."""
    if cfg.beta is not None:
        return cfg.beta
    return methods.default_beta(cfg.dataset, cfg.structure, cfg.method)


def prior_mask(cfg: Config, num_left: int, num_right: int) -> torch.Tensor | None:
    """The coupling mask of a hardware-restricted prior, or None for the dense RBM."""
    if cfg.topology is None:
        return None
    import topologies

    return topologies.load(cfg.topology).coupling_mask(num_left, num_right)


def model(cfg: Config, x_mean: torch.Tensor | None, init_seed: int) -> DVAE:
    """The DVAE of `cfg` on its device. `x_mean` None: a placeholder, for a model whose state
    dict (which holds the data mean) is loaded next."""
    n = num_latent(cfg)
    mask = prior_mask(cfg, n // 2, n // 2)
    if x_mean is None:
        x_mean = torch.full((NUM_PIXELS,), 0.5)
    # parameter init draws from a forked global RNG seeded from the run's init stream, so the
    # caller's global RNG state is left as it was
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        net = DVAE(cfg.structure, cfg.method, beta=smoothing_beta(cfg), x_mean=x_mean,
                   num_latent=n, prior_mask=mask, mean_field_sweeps=cfg.mean_field_sweeps,
                   power_exact_gradient=cfg.power_exact_gradient,
                   gi_exact_log_q=cfg.gi_exact_log_q)
    return net.to(torch.device(cfg.device))


def compiles(cfg: Config) -> bool:
    """Whether the run's networks go through torch.compile: the config's `compile`, or, when it
    is null, on CUDA only. A GPU step of small kernels is bound by their launches, which fusing
    removes; on a CPU the same fusion saved ~17 % of forward+backward in one trial, less than
    the compile (tens of seconds per process) costs a short run."""
    if cfg.compile is not None:
        return cfg.compile
    return torch.device(cfg.device).type == "cuda"


def check_compiler(cfg: Config) -> None:
    """What inductor needs before the first step compiles, so that its absence is one line
    before a run directory exists rather than a compiler traceback at step 1."""
    if not compiles(cfg):
        return
    if torch.device(cfg.device).type == "cuda":
        if importlib.util.find_spec("triton") is None:
            raise BadInput("config key 'compile': torch.compile on CUDA needs triton, which is not "
                           "installed; install it or set compile: false")
        return
    # inductor builds its CPU kernels with $CXX (default g++) when they are first called
    if shutil.which(os.environ.get("CXX") or "g++") is None:
        raise BadInput("config key 'compile': torch.compile on the CPU needs a C++ compiler "
                       "(g++, or $CXX) and none was found; install one or set compile: false")


# the network calls of a training step: the encoder's group outputs (shared first layer or row
# by row) and the decoder; the relaxation's draws take a generator and stay outside
COMPILED_CALLS = (("encoder", "group_output_shared"), ("encoder", "group_output"),
                  ("decoder", "forward"))


def compile_networks(net: DVAE) -> DVAE:
    """`net` with the calls of COMPILED_CALLS replaced, on these instances, by their
    torch.compile'd versions (inductor). The modules and parameters stay the same objects, so
    the state dict keeps its plain keys (no `_orig_mod.` prefix): checkpoints load into compiled
    and plain models alike, and the optimiser sees the same parameters."""
    for module_name, method in COMPILED_CALLS:
        module = getattr(net, module_name)
        setattr(module, method, torch.compile(getattr(module, method)))
    return net


def optimizer(cfg: Config, net: DVAE) -> torch.optim.Optimizer:
    return torch.optim.Adam(parameter_groups(net, cfg.weight_decay), lr=cfg.learning_rate,
                            betas=(0.9, 0.999), eps=torch_adam_eps(cfg.adam_eps_tf, 1))


def sampler(cfg: Config, seed: int, name: str | None = None) -> samplers.Sampler:
    """The configured sampler (or `name` with its config entry); the run supplies its seed and
    topology to whichever options declare them, unless the config sets them."""
    name = name or cfg.sampler
    run = {"seed": seed % (2**32)}
    if cfg.topology is not None:
        run["topology"] = cfg.topology
    return samplers.get(name, run=run, **cfg.sampler_options.get(name, {}))


def _available_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def largest_tensors(cfg: Config) -> dict[str, int]:
    """Float32 counts of the config's largest tensors, by what holds them: the training step
    (B·K rows, each holding the image, the latents and every hidden layer, for forward and
    backward) and the sampler's and AIS's states. A lower estimate of what a run needs."""
    structure = networks.get_structure(cfg.structure)
    n = num_latent(cfg)
    hidden = structure.width * structure.hidden_layers * (structure.num_groups + 1)
    per_row = 2 * (2 * NUM_PIXELS + 6 * n + 3 * hidden)
    return {
        "the training step (batch_size × k rows)": cfg.batch_size * cfg.k * per_row,
        "the prior samples (num_negative_samples)": cfg.num_negative_samples * n * 2,
        "AIS (ais_num_chains)": cfg.ais_num_chains * n * 4,
    }


def check_memory(cfg: Config) -> None:
    """Refuse, before anything is written, a config whose largest tensors cannot fit.

    A lower estimate of the training step (B·K rows, each holding the image, the latents and
    every hidden layer, for forward and backward, float32) and of the sampler's and AIS's
    states; only a config whose lower estimate already exceeds the available memory is refused,
    so no runnable config is turned away.
    """
    available = _available_bytes(torch.device(cfg.device))
    if available is None:
        return
    what, count = max(largest_tensors(cfg).items(), key=lambda item: item[1])
    if count * 4 > available:
        raise BadInput(f"config needs at least {count * 4 / 2**30:.1f} GiB for {what}, more than "
                       f"the {available / 2**30:.1f} GiB available; lower it")
