"""The training loop, read top to bottom: schedule, negative phase, loss, step, log, evaluate,
checkpoint. The sampler is an argument reached only through the `samplers.Sampler` protocol.

Seeds (spec D5): one root seed spawns independent streams for parameter init, data order and
dynamic binarisation, posterior noise, the prior sampler and evaluation (AIS, IW samples).
Exact resume (D4): `checkpoint_last.pt` holds model, optimiser, step, config, sampler state,
every generator state, the data position, the best validation NLL and the latest log Z.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

import samplers
from dvae_q import checkpoint, data, figures, logz, methods, networks
from dvae_q import metrics as metrics_file
from dvae_q.config import Config
from dvae_q.errors import BadInput, RunFailure
from dvae_q.evaluate import evaluate_nll
from dvae_q.model import DVAE, parameter_groups
from dvae_q.schedule import kl_weight, learning_rate, torch_adam_eps

SEED_STREAMS = ("init", "data", "posterior", "sampler", "eval")
FULL_BUDGET_STEPS = 1_000_000


def seed_streams(root: int) -> dict[str, int]:
    """Independent 63-bit seeds for each consumer, spawned from the root seed."""
    children = np.random.SeedSequence(root).spawn(len(SEED_STREAMS))
    return {
        name: int(child.generate_state(1, np.uint64)[0] >> np.uint64(1))
        for name, child in zip(SEED_STREAMS, children)
    }


def _generator(seed: int, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BadInput(f"config key 'device': '{name}' is not a torch device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadInput("config key 'device': CUDA was requested but is not available here")
    return device


def make_sampler(cfg: Config, seed: int) -> samplers.Sampler:
    """The configured sampler with its options; the run supplies its seed and topology to
    whichever options declare them, unless the config sets them."""
    run = {"seed": seed % (2**32)}
    if cfg.topology is not None:
        run["topology"] = cfg.topology
    return samplers.get(cfg.sampler, run=run, **cfg.sampler_options.get(cfg.sampler, {}))


def prior_mask(cfg: Config, num_left: int, num_right: int) -> torch.Tensor | None:
    """The coupling mask of a hardware-restricted prior, or None for the dense RBM."""
    if cfg.topology is None:
        return None
    import topologies

    return topologies.load(cfg.topology).coupling_mask(num_left, num_right)


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


def build(cfg: Config) -> Parts:
    device = resolve_device(cfg.device)
    seeds = seed_streams(cfg.seed)
    x_mean = torch.as_tensor(data.training_mean(cfg.dataset), dtype=torch.float32)
    batches = data.training_batches(
        cfg.dataset, cfg.batch_size, seeds["data"], limit=cfg.train_limit, device=device
    )
    eval_data = {}
    for split in cfg.eval_splits:
        images = data.load_binarized(cfg.dataset, split)[: cfg.eval_limit]
        eval_data[split] = torch.tensor(images, dtype=torch.float32, device=device)
    structure = networks.get_structure(cfg.structure)
    num_latent = cfg.num_latent or structure.num_latent
    beta = cfg.beta if cfg.beta is not None else methods.default_beta(
        cfg.dataset, cfg.structure, cfg.method
    )
    mask = prior_mask(cfg, num_latent // 2, num_latent // 2)
    # parameter init draws from a forked global RNG seeded from the run's init stream, so the
    # caller's global RNG state is left as it was
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeds["init"])
        model = DVAE(
            cfg.structure,
            cfg.method,
            beta=beta,
            x_mean=x_mean,
            num_latent=num_latent,
            prior_mask=mask,
            mean_field_sweeps=cfg.mean_field_sweeps,
            power_exact_gradient=cfg.power_exact_gradient,
        )
    model.to(device)
    optimizer = torch.optim.Adam(
        parameter_groups(model, cfg.weight_decay),
        lr=cfg.learning_rate,
        betas=(0.9, 0.999),
        eps=torch_adam_eps(cfg.adam_eps_tf, 1),
    )
    sampler = make_sampler(cfg, seeds["sampler"])
    return Parts(
        cfg=cfg,
        device=device,
        model=model,
        optimizer=optimizer,
        sampler=sampler,
        batches=batches,
        eval_data=eval_data,
        posterior_gen=_generator(seeds["posterior"], device),
        eval_gen=_generator(seeds["eval"], device),
        beta=beta,
        seeds=seeds,
    )


def estimate_log_z(model: DVAE, cfg: Config, gen: torch.Generator) -> logz.LogZEstimate:
    """AIS estimate of the prior's log Z (spec §7), the `log Z` of every reported NLL."""
    return logz.ais_log_z(model.prior.snapshot(), num_temps=cfg.ais_num_temps,
                          num_chains=cfg.ais_num_chains, generator=gen)


def evaluate_splits(parts: Parts, num_samples: dict[str, int], log_z: float) -> dict:
    """Discrete-model NLL and ELBO of each evaluation split, with `num_samples[split]` IW draws."""
    out = {}
    cfg = parts.cfg
    for split, count in num_samples.items():
        result = evaluate_nll(
            parts.model,
            parts.eval_data[split],
            log_z,
            num_samples=count,
            batch_size=cfg.eval_batch_size,
            sample_chunk=cfg.eval_sample_chunk,
            generator=parts.eval_gen,
        )
        out[f"{split}_nll"] = result.nll
        out[f"{split}_elbo"] = result.elbo
    return out


def save_samples(parts: Parts, negatives: torch.Tensor, path: Path) -> None:
    """Decode the first 100 sampler states (spec §4) and write them as an image grid."""
    model = parts.model
    was_training = model.training
    model.eval()
    with torch.no_grad():
        images = torch.sigmoid(model.decode(negatives[:100].to(parts.device)))
    model.train(was_training)
    figures.save_image_grid(images.cpu().numpy(), path)


def _state(parts: Parts, step: int, extra: dict) -> dict:
    return {
        "step": step,
        "config": parts.cfg.to_dict(),
        "model": parts.model.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "sampler": parts.sampler.state_dict(),
        "data": parts.batches.state_dict(),
        "posterior_gen": parts.posterior_gen.get_state(),
        "eval_gen": parts.eval_gen.get_state(),
        **extra,
    }


def _restore(parts: Parts, state: dict) -> None:
    parts.model.load_state_dict(state["model"])
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.sampler.load_state_dict(state["sampler"])
    parts.batches.load_state_dict(state["data"])
    parts.posterior_gen.set_state(state["posterior_gen"])
    parts.eval_gen.set_state(state["eval_gen"])


def write_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _step_metrics(result, sampler_info: dict) -> dict:
    row = {k: float(v) for k, v in result.metrics.items()}
    for key, value in sampler_info.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            row[f"sampler_{key}"] = float(value)
    return row


def train(
    cfg: Config,
    run_dir: Path,
    *,
    resume: bool = False,
    quiet: bool = False,
    parts: Parts | None = None,
) -> dict:
    """Train (or continue) the run in `run_dir`; returns the final results dict.

    Builds and validates everything before the run directory is created, so bad input leaves
    nothing behind. A non-finite loss raises RunFailure naming the last good checkpoint.
    """
    from tqdm import tqdm

    run_dir = Path(run_dir)
    parts = parts or build(cfg)
    last_path, best_path = run_dir / checkpoint.LAST, run_dir / checkpoint.BEST
    if resume:
        state = checkpoint.load(last_path)
        _restore(parts, state)
        start, best_valid, wall, log_z_est = (
            state["step"],
            state["best_valid_nll"],
            state["wall_time_s"],
            state["log_z"],
        )
    else:
        if run_dir.exists() and any(run_dir.iterdir()):
            raise BadInput(f"run directory {run_dir} exists; continue it with --resume {run_dir}")
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(cfg, run_dir / "config.yaml")
        start, best_valid, wall, log_z_est = 0, math.inf, 0.0, None
    metrics = metrics_file.MetricsWriter(run_dir / "metrics.csv", resume_step=start if resume else None)

    def snapshot(step: int) -> dict:
        return _state(
            parts,
            step,
            {"best_valid_nll": best_valid, "wall_time_s": wall, "log_z": log_z_est},
        )

    if not resume:
        checkpoint.save_atomic(snapshot(0), last_path)

    model, optimizer, sampler = parts.model, parts.optimizer, parts.sampler
    model.train()
    last_valid = None
    bar = tqdm(total=cfg.steps, initial=start, disable=quiet, dynamic_ncols=True, unit="step")
    tick = time.perf_counter()
    negatives = None
    for step in range(start, cfg.steps):
        # --- schedule for this step (pure functions of the global step) ---
        lr = learning_rate(step, cfg.steps, cfg.learning_rate, cfg.lr_boundaries, cfg.lr_factors)
        kappa = kl_weight(step, cfg.steps, cfg.kl_warmup_fraction)
        eps = torch_adam_eps(cfg.adam_eps_tf, step + 1)
        for group in optimizer.param_groups:
            group["lr"], group["eps"] = lr, eps

        # --- negative phase: samples of the current prior, from whichever sampler this is ---
        try:
            negatives, sampler_info = sampler.draw(
                model.prior.snapshot(), cfg.num_negative_samples, device=parts.device
            )
        except RuntimeError as exc:  # cloud failures after retries, out of memory, ...
            bar.close()
            raise RunFailure(
                f"sampler '{cfg.sampler}' failed at step {step} ({type(exc).__name__}: {exc}); "
                f"the last good checkpoint is {last_path}"
            ) from exc

        # --- forward, backward, step ---
        x = next(parts.batches)
        latest = log_z_est["log_z"] if log_z_est else None  # labels 'kl'/'approx_bound' honest
        result = model(x, negatives, k=cfg.k, kappa=kappa, log_z_value=latest,
                       generator=parts.posterior_gen)
        if not torch.isfinite(result.loss):
            bar.close()
            raise RunFailure(
                f"loss became {result.loss.item()} at step {step}; training stopped, the last "
                f"good checkpoint is {last_path}"
            )
        optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        optimizer.step()
        done = step + 1

        # --- log ---
        now = time.perf_counter()
        wall += now - tick
        tick = now
        if done % cfg.log_every == 0 or done == cfg.steps:
            row = {"step": done, "wall_time_s": wall, "loss": result.loss.item(), "lr": lr}
            row.update(kappa=kappa, **_step_metrics(result, sampler_info))
            metrics.write(row)
            bar.set_postfix(loss=f"{row['loss']:.2f}", val_nll=last_valid or "-", refresh=False)

        # --- evaluate: AIS log Z, then validation/test NLL of the discrete model ---
        if done % cfg.eval_every == 0 or done == cfg.steps:
            model.eval()
            est = estimate_log_z(model, cfg, parts.eval_gen)
            log_z_est = {"log_z": est.log_z, "stderr": est.stderr}
            scores = evaluate_splits(
                parts, {s: cfg.eval_iw_samples for s in parts.eval_data}, est.log_z
            )
            model.train()
            save_samples(parts, negatives, run_dir / f"samples_{done:07d}.png")
            row = {"step": done, "wall_time_s": wall, "log_z": est.log_z}
            row.update(log_z_stderr=est.stderr, **scores)
            metrics.write(row)
            score = scores.get("valid_nll", scores.get("test_nll"))
            last_valid = f"{score:.2f}"
            if score < best_valid:
                best_valid = score
                checkpoint.save_atomic(snapshot(done), best_path)
            tick = time.perf_counter()

        # --- checkpoint ---
        if done % cfg.checkpoint_every == 0 or done % cfg.eval_every == 0 or done == cfg.steps:
            checkpoint.save_atomic(snapshot(done), last_path)
        bar.update(1)
    bar.close()
    return finish(parts, run_dir, wall)


def finish(parts: Parts, run_dir: Path, wall_time_s: float) -> dict:
    """Final evaluation (spec §7): best-validation weights, fresh AIS, test with many samples."""
    cfg = parts.cfg
    results_path = run_dir / "results.json"
    best = checkpoint.load(run_dir / checkpoint.BEST)
    parts.model.load_state_dict(best["model"])
    parts.model.eval()
    est = estimate_log_z(parts.model, cfg, parts.eval_gen)
    counts = {s: cfg.eval_iw_samples for s in parts.eval_data}
    if "test" in counts:
        counts["test"] = cfg.final_iw_samples
    scores = evaluate_splits(parts, counts, est.log_z)
    figures.save_curves(metrics_file.read(run_dir / "metrics.csv"), run_dir / "curves.png")
    results = {
        "dataset": cfg.dataset,
        "dataset_variant": data.dataset_variant(cfg.dataset),
        "structure": cfg.structure,
        "method": cfg.method,
        "k": cfg.k,
        "beta": parts.beta,
        "sampler": cfg.sampler,
        "topology": cfg.topology,
        "steps": cfg.steps,
        "best_step": best["step"],
        "log_z": est.log_z,
        "log_z_stderr": est.stderr,
        "iw_samples": counts,
        **scores,
        "eval_limit": cfg.eval_limit,
        "train_limit": cfg.train_limit,
        "wall_time_s": wall_time_s,
        "seeds": parts.seeds,
        "full_budget": cfg.steps >= FULL_BUDGET_STEPS and cfg.final_iw_samples >= 4000,
    }
    tmp = results_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, results_path)
    return results
