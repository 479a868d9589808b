"""Helpers the tests of several rooms share for whole training runs: kill a run once its
checkpoint reaches a step, and compare two runs' checkpoints tensor by tensor."""

import signal
import time
from pathlib import Path

import torch

from dvae_q.training import checkpoint


def wait_for_step(run: Path, step: int, timeout_s: float = 300.0) -> None:
    """Until `run`'s last checkpoint holds `step` or later (or `timeout_s` passes)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if checkpoint.load(run / checkpoint.LAST)["step"] >= step:
                return
        except Exception:  # not written yet, or being replaced
            pass
        time.sleep(0.05)


def kill_at_step(proc, run: Path, step: int) -> int:
    """SIGKILL the training process `proc` once its checkpoint reaches `step`; the step its last
    checkpoint holds afterwards."""
    wait_for_step(run, step)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return checkpoint.load(run / checkpoint.LAST)["step"]


def tensors(tree, prefix: str = "") -> dict:
    """Every tensor of a nested checkpoint entry, by path."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) \
        if isinstance(tree, (list, tuple)) else ()
    out = {}
    for key, value in items:
        out.update(tensors(value, f"{prefix}/{key}"))
    return out


def assert_same_run(local_run: Path, remote_run: Path, steps: int) -> None:
    """Both runs ended at `steps` with bit-identical model, optimiser and chains; the second's
    sampler state is a remote session's (chains under ['state'])."""
    a = checkpoint.load(local_run / checkpoint.LAST)
    b = checkpoint.load(remote_run / checkpoint.LAST)
    assert a["step"] == b["step"] == steps
    for part in ("model", "optimizer"):
        ta, tb = tensors(a[part]), tensors(b[part])
        assert ta.keys() == tb.keys() and ta
        for key in ta:
            assert torch.equal(ta[key], tb[key]), (part, key)
    assert torch.equal(a["sampler"]["chains"], b["sampler"]["state"]["chains"])
