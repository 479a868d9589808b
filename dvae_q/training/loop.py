"""The training loop, read top to bottom: schedule, negative phase, loss, step, guard, log,
evaluate, checkpoint. The sampler is reached only through the `samplers.Sampler` protocol.

Exact resume: `checkpoint_last.pt` holds model, optimiser, step, config, sampler state, every
generator state, the data position, the best validation NLL and the latest log Z; a run killed
at any moment continues from it bit for bit. Only finite states are ever checkpointed: the loss,
the parameters and the optimiser's moments are checked every step, and a run that goes
non-finite stops (RunFailure, exit 1) naming the last good checkpoint.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

import samplers
from dvae_q.data import datasets as data
from dvae_q.errors import BadInput, RunFailure
from dvae_q.evaluation import figures, scores
from dvae_q.progress import Reporter, format_duration
from dvae_q.training import checkpoint
from dvae_q.training import metrics as metrics_file
from dvae_q.training import resume as resuming
from dvae_q.training.config import Config
from dvae_q.training.parts import Parts, bracket_log_z, build_parts, evaluate_splits, save_samples
from dvae_q.training.resume import QPU_TOTALS, Carry
from dvae_q.training.rundir import RunDir
from dvae_q.training.schedule import kl_weight, learning_rate, torch_adam_eps

FULL_BUDGET_STEPS = 1_000_000
log = logging.getLogger(__name__)
# errors a sampler raises for a failure of the device, the cloud or the model it was handed;
# other exception types are bugs and keep their traceback
SAMPLER_FAILURES = (RuntimeError, ValueError, MemoryError, OSError)


def _finite(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> bool:
    """Every parameter and every optimiser moment is finite (one fused reduction)."""
    tensors = [p for p in model.parameters()]
    tensors += [v for s in optimizer.state.values() for v in s.values()
                if isinstance(v, torch.Tensor) and v.is_floating_point()]
    return bool(torch.stack([t.detach().isfinite().all() for t in tensors]).all())


def _budget_check(parts: Parts, reporter: Reporter, carry: Carry) -> None:
    """Say what the rest of the run will cost in QPU access time (the vendor's timing model),
    and refuse to start past `max_qpu_access_time_s` unless told to."""
    cfg, sampler = parts.cfg, parts.sampler
    if not isinstance(sampler, samplers.TemperatureScaled):
        return
    try:
        per_step = sampler.estimated_access_time_us(parts.model.prior.snapshot(),
                                                    cfg.num_negative_samples) / 1e6
    except SAMPLER_FAILURES as exc:
        if isinstance(exc, samplers.SamplerOptionError):  # the user's to fix: exit 2
            raise
        raise RunFailure(f"sampler '{cfg.sampler}' failed while estimating QPU time "
                         f"({type(exc).__name__}: {_one_line(exc)})") from exc
    projected = per_step * (cfg.steps - carry.step)
    log.info("projected QPU access time of the %s remaining steps: %s (%.1f ms per step; "
             "Ocean's timing model, network and queueing not included)",
             f"{cfg.steps - carry.step:,}", format_duration(projected), 1e3 * per_step)
    budget = cfg.max_qpu_access_time_s
    if budget is not None and not cfg.start_over_budget:
        left = budget - carry.qpu["qpu_access_time_us"] / 1e6
        if projected > left:
            raise BadInput(f"the run needs about {format_duration(projected)} of QPU access time, "
                           f"more than the {format_duration(max(left, 0.0))} left of "
                           f"max_qpu_access_time_s; lower steps or set start_over_budget: true")


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
    try:
        parts.sampler.preflight()
    except SAMPLER_FAILURES as exc:
        if isinstance(exc, samplers.SamplerOptionError):
            raise
        raise RunFailure(f"sampler '{cfg.sampler}' is not reachable ({type(exc).__name__}: "
                         f"{_one_line(exc)})") from exc
    if cfg.prefetch and not isinstance(parts.sampler, samplers.Submitting):
        raise BadInput(f"config key 'prefetch': sampler '{cfg.sampler}' has no calls in flight to "
                       "overlap (prefetch helps a qpu sampler); set prefetch: false")
    if not resume:
        _budget_check(parts, reporter, Carry())
    try:
        carry = resuming.start(parts, run, resume)
        if resume and carry.stopped is None:  # a run stopped at its budget only finishes
            _budget_check(parts, reporter, carry)
        return _train_and_finish(parts, run, reporter, carry, resume)
    except OSError as exc:  # a full disk or a folder that became read-only, outside checkpoints
        raise RunFailure(f"cannot write in {run.path} ({exc.strerror or type(exc).__name__}); "
                         f"the last good checkpoint is {run.last}") from None
    finally:
        run.unlock()
        parts.sampler.close()  # a cloud client or a service session is released


def _train_and_finish(parts: Parts, run: RunDir, reporter: Reporter, carry: Carry,
                      resume: bool) -> dict:
    cfg = parts.cfg
    board = cfg.tensorboard if cfg.tensorboard is not None else metrics_file.tensorboard_available()
    metrics = metrics_file.MetricsWriter(run.metrics_file, resume_step=carry.step if resume else None,
                                         tensorboard=board)
    try:
        with reporter.task("train", total=cfg.steps, initial=carry.step, unit="steps") as bar:
            _loop(parts, run, metrics, bar, reporter, carry)
    finally:
        metrics.close()
    return finish(parts, run, carry, reporter)


def _negative_phase(parts: Parts, carry: Carry, run: RunDir):
    """This step's prior samples and their info. With prefetch, the draw submitted at the start
    of the previous step (so one step stale) is collected and this step's prior is submitted
    at once, to be sampled while this step computes."""
    cfg, sampler, n = parts.cfg, parts.sampler, parts.cfg.num_negative_samples
    try:
        if not cfg.prefetch:
            return sampler.draw(parts.model.prior.snapshot(), n, device=parts.device)
        if carry.pending is None:  # the first step, or a resume: submit what was in flight
            prior = _prior_from(carry.in_flight) if carry.in_flight else parts.model.prior.snapshot()
            carry.pending = sampler.submit(prior, n, device=parts.device)
        result = carry.pending.result()
        carry.pending = carry.in_flight = None
        if carry.step + 1 < cfg.steps:  # no draw left in flight (and billed) after the last step
            now = parts.model.prior.snapshot()
            carry.pending = sampler.submit(now, n, device=parts.device)
            carry.in_flight = {"a_left": now.a_left, "a_right": now.a_right, "W": now.W,
                               "mask": now.mask, "beta": now.beta}
        return result
    except SAMPLER_FAILURES as exc:  # cloud failures after retries, out of memory, ...
        raise RunFailure(f"sampler '{cfg.sampler}' failed at step {carry.step} "
                         f"({type(exc).__name__}: {_one_line(exc)}); the last good checkpoint "
                         f"is {run.last}") from exc


def _prior_from(record: dict) -> samplers.BipartiteModel:
    return samplers.BipartiteModel(record["a_left"], record["a_right"], record["W"],
                                   record["mask"], record["beta"])


def _optimise(parts: Parts, carry: Carry, run: RunDir, negatives, kappa: float, check: bool):
    """Forward, backward and step; with `check`, RunFailure if the loss, a parameter or a
    moment is not finite (a host synchronisation on a GPU, so there it is done on the steps
    that log or checkpoint: no non-finite state is ever written)."""
    model, optimizer = parts.model, parts.optimizer
    latest = carry.log_z["log_z"] if carry.log_z else None  # labels 'kl'/'approx_bound' honest
    result = model(next(parts.batches), negatives, k=parts.cfg.k, kappa=kappa, log_z_value=latest,
                   generator=parts.posterior_gen)
    if check and not torch.isfinite(result.loss):
        raise RunFailure(f"loss became {result.loss.item()} at step {carry.step}; training "
                         f"stopped, the last good checkpoint is {run.last}")
    optimizer.zero_grad(set_to_none=True)
    result.loss.backward()
    optimizer.step()
    if check and not _finite(model, optimizer):
        raise RunFailure(f"parameters or optimiser state became non-finite at step {carry.step} "
                         f"(learning rate or β too large?); the last good checkpoint is {run.last}")
    return result


def _account(cfg: Config, carry: Carry, info: dict) -> None:
    """Add this step's QPU use to the run's totals; stop at the budget."""
    for key in QPU_TOTALS:
        value = info.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            carry.qpu[key] += float(value)
    spent = carry.qpu["qpu_access_time_us"] / 1e6
    if cfg.max_qpu_access_time_s is not None and spent >= cfg.max_qpu_access_time_s:
        carry.stopped = (f"QPU access-time budget spent ({spent:.3f} s of "
                         f"{cfg.max_qpu_access_time_s:g} s) at step {carry.step + 1:,}")


def _evaluate(parts: Parts, carry: Carry, run: RunDir, reporter: Reporter, negatives, row: dict,
              snapshot) -> dict:
    """AIS log Z, then validation/test NLL of the discrete model; keeps the best checkpoint."""
    cfg, model, done = parts.cfg, parts.model, carry.step
    model.eval()
    bracket = bracket_log_z(model, cfg, parts.eval_gen, reporter)
    est = bracket.lower
    carry.log_z = {"log_z": est.log_z, "stderr": est.stderr}
    found = evaluate_splits(parts, {s: cfg.eval_iw_samples for s in parts.eval_data}, est.log_z,
                            reporter)
    model.train()
    save_samples(parts, negatives, run.path / f"samples_{done:07d}.png", done)
    row.update(**scores.bracket_record(bracket, found, f"at step {done}"), **found)
    figures.save_curves(metrics_file.read(run.metrics_file) + [_strings(row)],
                        run.path / "curves.png", **_curve_labels(cfg))
    score = found.get("valid_nll", found.get("test_nll"))
    if score < carry.best_valid_nll:
        carry.best_valid_nll = score
        checkpoint.save_atomic(snapshot(), run.best)
    return found


def _step_row(carry: Carry, result, lr: float, kappa: float, sampler_info: dict) -> dict:
    """The metrics row of the step just done: schedule, the objective's honest metrics and
    every numeric fact the sampler reported (under sampler/)."""
    return {"step": carry.step, "wall_time_s": carry.wall_time_s, "loss": result.loss.item(),
            "lr": lr, "kappa": kappa, **{k: float(v) for k, v in result.metrics.items()},
            **metrics_file.sampler_columns(sampler_info)}


def _loop(parts: Parts, run: RunDir, metrics, bar, reporter: Reporter, carry: Carry) -> None:
    cfg, model = parts.cfg, parts.model

    def snapshot() -> dict:
        try:  # a remote sampler's state comes over the network: the service may be gone
            return resuming.snapshot(parts, carry.step, carry.record())
        except SAMPLER_FAILURES as exc:
            raise RunFailure(f"sampler '{cfg.sampler}' failed while its state was saved at step "
                             f"{carry.step} ({type(exc).__name__}: {_one_line(exc)}); the last "
                             f"good checkpoint is {run.last}") from exc

    model.train()
    tick = time.perf_counter()
    while carry.step < cfg.steps and carry.stopped is None:
        # --- schedule for this step (pure functions of the global step) ---
        step = carry.step
        lr = learning_rate(step, cfg.steps, cfg.learning_rate, cfg.lr_boundaries, cfg.lr_factors)
        kappa = kl_weight(step, cfg.steps, cfg.kl_warmup_fraction)
        for group in parts.optimizer.param_groups:
            group["lr"], group["eps"] = lr, torch_adam_eps(cfg.adam_eps_tf, step + 1)

        # --- negative phase, then forward, backward, step ---
        negatives, sampler_info = _negative_phase(parts, carry, run)
        _account(cfg, carry, sampler_info)
        done = step + 1
        # a budget stop (set by _account) evaluates and checkpoints this step too
        evaluating = done % cfg.eval_every == 0 or done == cfg.steps or carry.stopped is not None
        logging_row = done % cfg.log_every == 0 or evaluating
        saving = done % cfg.checkpoint_every == 0 or evaluating
        result = _optimise(parts, carry, run, negatives, kappa,
                           check=parts.device.type == "cpu" or logging_row or saving)
        carry.step = done

        # --- log: one row per logged step, evaluation merged into it ---
        now = time.perf_counter()
        carry.wall_time_s += now - tick
        row = None
        if logging_row:
            row = _step_row(carry, result, lr, kappa, sampler_info)
        if evaluating:
            found = _evaluate(parts, carry, run, reporter, negatives, row, snapshot)
            bar.set_postfix(recon=row.get("recon"),
                            **{k: v for k, v in found.items() if k.endswith("_nll")})
        elif row is not None:
            bar.set_postfix(recon=row.get("recon"))
        if row is not None:
            metrics.write(row)

        # --- checkpoint ---
        if saving:
            checkpoint.save_atomic(snapshot(), run.last)
        tick = time.perf_counter()
        bar.update(1)
    if carry.stopped:
        log.warning("training stopped: %s; checkpoint %s", carry.stopped, run.last)


def _strings(row: dict) -> dict:
    return {k: "" if v is None else str(v) for k, v in row.items()}


def _curve_labels(cfg: Config, final: dict | None = None) -> dict:
    """Keyword arguments of figures.save_curves that say what each curve is."""
    return {"eval_k": {s: cfg.eval_iw_samples for s in cfg.eval_splits}, "final": final,
            "title": f"{cfg.dataset} {cfg.structure} {cfg.method} K={cfg.k} · sampler {cfg.sampler}"}


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def finish(parts: Parts, run: RunDir, carry: Carry, reporter: Reporter | None = None) -> dict:
    """Final evaluation: best-validation weights, fresh AIS, test with many samples."""
    cfg = parts.cfg
    best = checkpoint.load(run.checkpoint_path("best"))
    parts.model.load_state_dict(best["model"])
    parts.model.eval()
    bracket = bracket_log_z(parts.model, cfg, parts.eval_gen, reporter)
    counts = {s: cfg.eval_iw_samples for s in parts.eval_data}
    if "test" in counts:
        counts["test"] = cfg.final_iw_samples
    found = evaluate_splits(parts, counts, bracket.lower.log_z, reporter)
    record = scores.bracket_record(bracket, found, "at the final evaluation")
    final = {s: (carry.step, found[f"{s}_nll"], k) for s, k in counts.items()}
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
        **record,
        "log_z_inverted": bool(record["log_z_inverted"]),
        "iw_samples": counts,
        **found,
        **{f"{s}_nll_interval": [record[f"{s}_nll_low"], record[f"{s}_nll_high"]]
           for s in counts if f"{s}_nll_low" in record},
        "eval_limit": cfg.eval_limit,
        "train_limit": cfg.train_limit,
        "wall_time_s": carry.wall_time_s,
        "steps_done": carry.step,
        "stopped_early": carry.stopped,
        "qpu_totals": {k: v for k, v in carry.qpu.items() if v} or None,
        "seeds": parts.seeds,
        "full_budget": cfg.steps >= FULL_BUDGET_STEPS and cfg.final_iw_samples >= 4000,
    }
    run.write_results(results)
    return results
