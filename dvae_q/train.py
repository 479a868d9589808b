"""The training loop, read top to bottom: schedule, negative phase, loss, step, guard, log,
evaluate, checkpoint. The sampler is reached only through the `samplers.Sampler` protocol.

Exact resume: `checkpoint_last.pt` holds model, optimiser, step, config, sampler state, every
generator state, the data position, the best validation NLL and the latest log Z; a run killed
at any moment continues from it bit for bit. Only finite states are ever checkpointed: the loss,
the parameters and the optimiser's moments are checked every step, and a run that goes
non-finite stops (RunFailure, exit 1) naming the last good checkpoint.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import samplers
from dvae_q import build, checkpoint, data, figures, scores
from dvae_q import metrics as metrics_file
from dvae_q.config import Config, refuse_token
from dvae_q.errors import BadInput, RunFailure
from dvae_q.model import DVAE
from dvae_q.progress import Reporter
from dvae_q.rundir import RunDir
from dvae_q.schedule import kl_weight, learning_rate, torch_adam_eps

FULL_BUDGET_STEPS = 1_000_000
# errors a sampler raises for a failure of the device, the cloud or the model it was handed;
# other exception types are bugs and keep their traceback
SAMPLER_FAILURES = (RuntimeError, ValueError, MemoryError, OSError)


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
    device = torch.device(cfg.device)
    seeds = build.seed_streams(cfg.seed)
    x_mean = torch.as_tensor(data.training_mean(cfg.dataset), dtype=torch.float32)
    batches = data.training_batches(cfg.dataset, cfg.batch_size, seeds["data"],
                                    limit=cfg.train_limit, device=device)
    model = build.model(cfg, x_mean, seeds["init"])
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


def evaluate_splits(parts: Parts, num_samples: dict[str, int], log_z: float,
                    reporter=None) -> dict:
    """Discrete-model NLL and ELBO of each evaluation split, with `num_samples[split]` IW draws."""
    cfg = parts.cfg
    return scores.nll(parts.model, parts.eval_data, num_samples, log_z,
                      batch_size=cfg.eval_batch_size, sample_chunk=cfg.eval_sample_chunk,
                      generator=parts.eval_gen, reporter=reporter)


def save_samples(parts: Parts, negatives: torch.Tensor, path: Path, step: int) -> None:
    """Decode the first 100 sampler states and write them as a captioned image grid."""
    model, cfg = parts.model, parts.cfg
    was_training = model.training
    model.eval()
    with torch.no_grad():
        images = torch.sigmoid(model.decode(negatives[:100].to(parts.device)))
    model.train(was_training)
    caption = (f"step {step:,} · {cfg.method} K={cfg.k} · sampler {cfg.sampler} · decoded "
               "prior samples")
    figures.save_image_grid(images.cpu().numpy(), path, caption=caption)


def _state(parts: Parts, step: int, extra: dict) -> dict:
    return {
        "step": step,
        "config": parts.cfg.to_dict(),
        "model": parts.model.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "sampler_name": parts.cfg.sampler,
        "sampler": parts.sampler.state_dict(),
        "data": parts.batches.state_dict(),
        "posterior_gen": parts.posterior_gen.get_state(),
        "eval_gen": parts.eval_gen.get_state(),
        **extra,
    }


def _restore(parts: Parts, state: dict, path: Path) -> None:
    """Load a checkpoint into freshly built parts; a checkpoint that does not belong to this
    config (another size, another sampler, a damaged file) is one BadInput line."""
    name = state.get("sampler_name", parts.cfg.sampler)
    if name != parts.cfg.sampler:
        raise BadInput(f"{path} holds the state of sampler '{name}', but the run's config says "
                       f"'{parts.cfg.sampler}'; restore config.yaml or start a new run")
    try:
        parts.model.load_state_dict(state["model"])
        parts.optimizer.load_state_dict(state["optimizer"])
        parts.sampler.load_state_dict(state["sampler"])
        parts.batches.load_state_dict(state["data"])
        parts.posterior_gen.set_state(state["posterior_gen"])
        parts.eval_gen.set_state(state["eval_gen"])
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise BadInput(f"{path} does not match the run's config.yaml "
                       f"({type(exc).__name__}); was the config edited?") from None


def _finite(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> bool:
    """Every parameter and every optimiser moment is finite (one fused reduction)."""
    tensors = [p for p in model.parameters()]
    tensors += [v for s in optimizer.state.values() for v in s.values()
                if isinstance(v, torch.Tensor) and v.is_floating_point()]
    return bool(torch.stack([t.detach().isfinite().all() for t in tensors]).all())


def _start(parts: Parts, run: RunDir, resume: bool) -> tuple[int, float, float, dict | None]:
    """Lock (and for a new run, create) the directory; (step, best valid NLL, wall, log Z)."""
    if not resume:
        refuse_token(parts.cfg)
        first = _state(parts, 0, {"best_valid_nll": math.inf, "wall_time_s": 0.0, "log_z": None})
        run.create(parts.cfg, first)
        return 0, math.inf, 0.0, None
    run.lock()
    if not run.last.is_file():  # a directory with a config and no checkpoint starts at step 0
        return 0, math.inf, 0.0, None
    state = checkpoint.load(run.last)
    _restore(parts, state, run.last)
    return state["step"], state["best_valid_nll"], state["wall_time_s"], state["log_z"]


def train(cfg: Config, run_dir: Path, *, resume: bool = False, quiet: bool = False,
          parts: Parts | None = None, reporter: Reporter | None = None) -> dict:
    """Train (or continue) the run in `run_dir`; returns the final results dict.

    Builds and validates everything before the run directory is created, so bad input leaves
    nothing behind. A non-finite state raises RunFailure naming the last good checkpoint.
    Progress goes to `reporter` (default: stderr, silent with `quiet`).
    """
    reporter = reporter or Reporter(quiet=quiet)
    run = RunDir(run_dir)
    if not resume:
        run.check_new()
    parts = parts or build_parts(cfg)
    parts.sampler.preflight()
    try:
        start, best_valid, wall, log_z_est = _start(parts, run, resume)
        board = cfg.tensorboard if cfg.tensorboard is not None else metrics_file.tensorboard_available()
        metrics = metrics_file.MetricsWriter(run.metrics_file, resume_step=start if resume else None,
                                             tensorboard=board)
        try:
            with reporter.task("train", total=cfg.steps, initial=start, unit="steps") as bar:
                wall = _loop(parts, run, metrics, bar, reporter, start, best_valid, wall,
                             log_z_est)
        finally:
            metrics.close()
        return finish(parts, run, wall, reporter)
    finally:
        run.unlock()


def _loop(parts: Parts, run: RunDir, metrics, bar, reporter: Reporter, start: int,
          best_valid: float, wall: float, log_z_est: dict | None) -> float:
    cfg, model, optimizer, sampler = parts.cfg, parts.model, parts.optimizer, parts.sampler

    def snapshot(step: int) -> dict:
        try:  # a remote sampler's state comes over the network: the service may be gone
            return _state(parts, step, {"best_valid_nll": best_valid, "wall_time_s": wall,
                                        "log_z": log_z_est})
        except SAMPLER_FAILURES as exc:
            raise RunFailure(f"sampler '{cfg.sampler}' failed while its state was saved at step "
                             f"{step} ({type(exc).__name__}: {_one_line(exc)}); the last good "
                             f"checkpoint is {run.last}") from exc

    model.train()
    tick = time.perf_counter()
    for step in range(start, cfg.steps):
        # --- schedule for this step (pure functions of the global step) ---
        lr = learning_rate(step, cfg.steps, cfg.learning_rate, cfg.lr_boundaries, cfg.lr_factors)
        kappa = kl_weight(step, cfg.steps, cfg.kl_warmup_fraction)
        for group in optimizer.param_groups:
            group["lr"], group["eps"] = lr, torch_adam_eps(cfg.adam_eps_tf, step + 1)

        # --- negative phase: samples of the current prior, from whichever sampler this is ---
        try:
            negatives, sampler_info = sampler.draw(model.prior.snapshot(), cfg.num_negative_samples,
                                                   device=parts.device)
        except SAMPLER_FAILURES as exc:  # cloud failures after retries, out of memory, ...
            raise RunFailure(f"sampler '{cfg.sampler}' failed at step {step} "
                             f"({type(exc).__name__}: {_one_line(exc)}); the last good checkpoint "
                             f"is {run.last}") from exc

        # --- forward, backward, step ---
        latest = log_z_est["log_z"] if log_z_est else None  # labels 'kl'/'approx_bound' honest
        result = model(next(parts.batches), negatives, k=cfg.k, kappa=kappa, log_z_value=latest,
                       generator=parts.posterior_gen)
        if not torch.isfinite(result.loss):
            raise RunFailure(f"loss became {result.loss.item()} at step {step}; training stopped, "
                             f"the last good checkpoint is {run.last}")
        optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        optimizer.step()
        if not _finite(model, optimizer):
            raise RunFailure(f"parameters or optimiser state became non-finite at step {step} "
                             f"(learning rate or β too large?); the last good checkpoint is "
                             f"{run.last}")
        done = step + 1

        # --- log: one row per logged step, evaluation merged into it ---
        now = time.perf_counter()
        wall += now - tick
        tick = now
        evaluating = done % cfg.eval_every == 0 or done == cfg.steps
        row = None
        if done % cfg.log_every == 0 or evaluating:
            row = {"step": done, "wall_time_s": wall, "loss": result.loss.item(), "lr": lr,
                   "kappa": kappa, **{k: float(v) for k, v in result.metrics.items()},
                   **metrics_file.sampler_columns(sampler_info)}

        # --- evaluate: AIS log Z, then validation/test NLL of the discrete model ---
        if evaluating:
            model.eval()
            est = estimate_log_z(model, cfg, parts.eval_gen, reporter)
            log_z_est = {"log_z": est.log_z, "stderr": est.stderr}
            found = evaluate_splits(parts, {s: cfg.eval_iw_samples for s in parts.eval_data},
                                    est.log_z, reporter)
            model.train()
            save_samples(parts, negatives, run.path / f"samples_{done:07d}.png", done)
            row.update(log_z=est.log_z, log_z_stderr=est.stderr, **found)
            score = found.get("valid_nll", found.get("test_nll"))
            bar.set_postfix(recon=row.get("recon"), **{k: v for k, v in found.items()
                                                       if k.endswith("_nll")})
            figures.save_curves(metrics_file.read(run.metrics_file) + [_strings(row)],
                                run.path / "curves.png", **_curve_labels(cfg))
            if score < best_valid:
                best_valid = score
                checkpoint.save_atomic(snapshot(done), run.best)
            tick = time.perf_counter()
        if row is not None:
            metrics.write(row)
            if not evaluating:
                bar.set_postfix(recon=row.get("recon"))

        # --- checkpoint ---
        if done % cfg.checkpoint_every == 0 or evaluating:
            checkpoint.save_atomic(snapshot(done), run.last)
        bar.update(1)
    return wall


def _strings(row: dict) -> dict:
    return {k: "" if v is None else str(v) for k, v in row.items()}


def _curve_labels(cfg: Config, final: dict | None = None) -> dict:
    """Keyword arguments of figures.save_curves that say what each curve is."""
    return {"eval_k": {s: cfg.eval_iw_samples for s in cfg.eval_splits}, "final": final,
            "title": f"{cfg.dataset} {cfg.structure} {cfg.method} K={cfg.k} · sampler {cfg.sampler}"}


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def finish(parts: Parts, run: RunDir, wall_time_s: float, reporter: Reporter | None = None) -> dict:
    """Final evaluation: best-validation weights, fresh AIS, test with many samples."""
    cfg = parts.cfg
    best = checkpoint.load(run.checkpoint_path("best"))
    parts.model.load_state_dict(best["model"])
    parts.model.eval()
    est = estimate_log_z(parts.model, cfg, parts.eval_gen, reporter)
    counts = {s: cfg.eval_iw_samples for s in parts.eval_data}
    if "test" in counts:
        counts["test"] = cfg.final_iw_samples
    found = evaluate_splits(parts, counts, est.log_z, reporter)
    final = {s: (cfg.steps, found[f"{s}_nll"], k) for s, k in counts.items()}
    figures.save_curves(metrics_file.read(run.metrics_file), run.path / "curves.png",
                        **_curve_labels(cfg, final))
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
        **found,
        "eval_limit": cfg.eval_limit,
        "train_limit": cfg.train_limit,
        "wall_time_s": wall_time_s,
        "seeds": parts.seeds,
        "full_budget": cfg.steps >= FULL_BUDGET_STEPS and cfg.final_iw_samples >= 4000,
    }
    run.write_results(results)
    return results
