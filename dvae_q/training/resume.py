"""What a checkpoint holds and how a run continues from it, bit for bit: the parts' own states
(`snapshot`, `restore`), the loop's carried values (`Carry`) and the start of a new or resumed
run (`start`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from dvae_q.errors import BadInput
from dvae_q.training import checkpoint
from dvae_q.training.parts import Parts
from dvae_q.training.rundir import RunDir
from dvae_q.training.secrets import refuse_token


def snapshot(parts: Parts, step: int, extra: dict) -> dict:
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


def restore(parts: Parts, state: dict, path: Path) -> None:
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


@dataclass
class Carry:
    """What a step hands to the next and a checkpoint records besides the parts' own state."""

    step: int = 0
    best_valid_nll: float = math.inf
    wall_time_s: float = 0.0
    log_z: dict | None = None
    qpu: dict = field(default_factory=lambda: dict.fromkeys(QPU_TOTALS, 0.0))
    in_flight: dict | None = None      # prefetch: the prior of the draw submitted, as tensors
    pending: object = None             # prefetch: that draw (not checkpointed: resubmitted)
    stopped: str | None = None         # why training stopped before `steps`, if it did

    def record(self) -> dict:
        return {"best_valid_nll": self.best_valid_nll, "wall_time_s": self.wall_time_s,
                "log_z": self.log_z, "qpu_totals": dict(self.qpu), "in_flight": self.in_flight,
                "stopped": self.stopped}


# sampler info keys summed over a run: QPU use, for budgets and results.json
QPU_TOTALS = ("qpu_access_time_us", "estimated_qpu_access_time_us", "num_qpu_calls",
              "num_reads", "num_samples_drawn")


def start(parts: Parts, run: RunDir, resume: bool) -> Carry:
    """Lock (and for a new run, create) the directory; what the run continues from."""
    if not resume:
        refuse_token(parts.cfg)
        run.create(parts.cfg, snapshot(parts, 0, Carry().record()))
        return Carry()
    run.lock()
    if not run.last.is_file():  # a directory with a config and no checkpoint starts at step 0
        return Carry()
    state = checkpoint.load(run.last)
    restore(parts, state, run.last)
    try:
        carry = Carry(step=int(state["step"]), best_valid_nll=float(state["best_valid_nll"]),
                      wall_time_s=float(state["wall_time_s"]), log_z=state["log_z"],
                      in_flight=state.get("in_flight"), stopped=state.get("stopped"))
        carry.qpu.update(state.get("qpu_totals") or {})
    except (KeyError, TypeError, ValueError):
        raise BadInput(f"{run.last} is not a complete dvae-q checkpoint") from None
    return carry
