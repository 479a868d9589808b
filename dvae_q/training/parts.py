"""The parts of a run (config, device, model, optimiser, sampler, data, generators), built and
validated from a config before anything is written, and what the loop asks of them besides a
step: the log Z estimates, the evaluation of each split and the decoded prior samples.

With `compile` on, evaluation still runs the networks eagerly: its calls come in other shapes
than the step's (chunks of points × importance samples, a larger final K) and in eval mode, so
each would compile anew, while its large batches keep a GPU busy without fusion.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

import samplers
from dvae_q.data import datasets as data
from dvae_q.evaluation import figures, scores
from dvae_q.model.dvae import DVAE
from dvae_q.training import build
from dvae_q.training.config import Config


@dataclass
class Parts:
    """Everything a run is made of, built and validated before anything is written."""

    cfg: Config
    device: torch.device
    model: DVAE
    optimizer: torch.optim.Optimizer
    sampler: samplers.Sampler
    batches: data.BatchIterator
    eval_data: dict[str, torch.Tensor]
    posterior_gen: torch.Generator
    eval_gen: torch.Generator
    beta: float
    seeds: dict[str, int]


def load_eval_data(cfg: Config, splits, device) -> dict[str, torch.Tensor]:
    return {split: torch.tensor(data.load_binarized(cfg.dataset, split)[: cfg.eval_limit],
                                dtype=torch.float32, device=device) for split in splits}


def build_parts(cfg: Config) -> Parts:
    build.check_memory(cfg)
    build.check_compiler(cfg)
    device = torch.device(cfg.device)
    seeds = build.seed_streams(cfg.seed)
    x_mean = torch.as_tensor(data.training_mean(cfg.dataset), dtype=torch.float32)
    batches = data.training_batches(cfg.dataset, cfg.batch_size, seeds["data"],
                                    limit=cfg.train_limit, device=device)
    model = build.model(cfg, x_mean, seeds["init"])
    if build.compiles(cfg):
        build.compile_networks(model)
    return Parts(cfg=cfg, device=device, model=model, optimizer=build.optimizer(cfg, model),
                 sampler=build.sampler(cfg, seeds["sampler"]), batches=batches,
                 eval_data=load_eval_data(cfg, cfg.eval_splits, device),
                 posterior_gen=build.generator(seeds["posterior"], device),
                 eval_gen=build.generator(seeds["eval"], device),
                 beta=build.smoothing_beta(cfg), seeds=seeds)


def estimate_log_z(model: DVAE, cfg: Config, gen: torch.Generator, reporter=None):
    """AIS estimate of the prior's log Z, the `log Z` of every reported NLL."""
    return scores.ais(model, num_temps=cfg.ais_num_temps, num_chains=cfg.ais_num_chains,
                      generator=gen, reporter=reporter)


def bracket_log_z(model: DVAE, cfg: Config, gen: torch.Generator, reporter=None):
    """The prior's log Z bracket (AIS lower, reverse AIS upper)."""
    return scores.log_z(model, num_temps=cfg.ais_num_temps, num_chains=cfg.ais_num_chains,
                        generator=gen, reporter=reporter)


def evaluate_splits(parts: Parts, num_samples: dict[str, int], log_z: float,
                    reporter=None) -> dict:
    """Discrete-model NLL and ELBO of each evaluation split, with `num_samples[split]` IW draws."""
    cfg = parts.cfg
    with torch.compiler.set_stance("force_eager"):  # see the module docstring
        return scores.nll(parts.model, parts.eval_data, num_samples, log_z,
                          batch_size=cfg.eval_batch_size, sample_chunk=cfg.eval_sample_chunk,
                          generator=parts.eval_gen, reporter=reporter)


def save_samples(parts: Parts, negatives: torch.Tensor, path: Path, step: int) -> None:
    """Decode the first 100 sampler states and write them as a captioned image grid."""
    model, cfg = parts.model, parts.cfg
    was_training = model.training
    model.eval()
    with torch.no_grad(), torch.compiler.set_stance("force_eager"):  # see the module docstring
        images = torch.sigmoid(model.decode(negatives[:100].to(parts.device)))
    model.train(was_training)
    caption = (f"step {step:,} · {cfg.method} K={cfg.k} · sampler {cfg.sampler} · decoded "
               "prior samples")
    figures.save_image_grid(images.cpu().numpy(), path, caption=caption)
