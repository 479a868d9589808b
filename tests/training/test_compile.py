"""`compile: true` on the CPU (inductor): the compiled step is the eager step up to float
rounding, a compiled run trains through the CLI, its checkpoints are plain state dicts that an
uncompiled model loads, and a killed compiled run resumes bit for bit.

Inductor compiles C++ kernels on first use (seconds per graph here), so these tests use the
smoke config (1-layer-nonlin, 16 latent units, batch 20, K = 2): the smallest model that still
has the BatchNorm and tanh layers the compiler fuses.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from runs import kill_at_step
from torch._dynamo.utils import counters

from dvae_q.cli.main import main
from dvae_q.errors import BadInput
from dvae_q.run import load_run
from dvae_q.training import build, checkpoint, metrics
from dvae_q.training import parts as parts_api
from dvae_q.training.config import load_config

SMOKE = "smoke"


def _one_step(compile_on: bool):
    """Parts of the smoke config and the gradients of their first training step."""
    cfg = load_config(SMOKE, [f"compile={str(compile_on).lower()}"])
    parts = parts_api.build_parts(cfg)
    negatives = parts.sampler.sample(parts.model.prior.snapshot(), cfg.num_negative_samples)
    result = parts.model(next(parts.batches), negatives, k=cfg.k, kappa=0.5,
                         generator=parts.posterior_gen)
    result.loss.backward()
    return parts, result


def test_compiled_step_agrees_with_eager_and_keeps_plain_state_dicts():
    """Same seeds, so the same batch, negative samples and posterior noise: loss, every
    gradient and BatchNorm's running statistics of one step agree within float32 rounding.

    Tolerances: inductor reorders the reductions (BatchNorm over the 40 rows, the likelihood
    over 784 pixels) and evaluates tanh and log1p with its own vectorised code, each a few
    float32 ulps (6e-8 relative); BatchNorm's backward over 40 rows amplifies them. Measured
    here: loss 1.3e-7 relative, gradients 4.6e-6 of the largest gradient, running statistics
    1.2e-7. The bounds leave 20-80x headroom, while a wrong layer or a dropped term moves these
    numbers by 1e-2 or more. (Relative to each tensor's own largest entry would not do: the
    biases before BatchNorm have exact gradient 0, and both paths give rounding noise there.)
    """
    torch._dynamo.reset()  # a graph compiled by an earlier test would not be compiled again
    graphs, breaks = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
    plain, want = _one_step(False)
    compiled, got = _one_step(True)
    # dynamo's own counts: the encoder and the decoder each became one graph, without breaks
    assert counters["stats"]["unique_graphs"] - graphs >= 2
    assert sum(counters["graph_break"].values()) == breaks
    assert abs(got.loss.item() - want.loss.item()) <= 1e-5 * abs(want.loss.item())
    grads = {n: p.grad for n, p in plain.model.named_parameters() if p.grad is not None}
    largest = max(g.abs().max().item() for g in grads.values())
    compiled_grads = {n: p.grad for n, p in compiled.model.named_parameters()}
    for name, grad in grads.items():
        assert (compiled_grads[name] - grad).abs().max().item() <= 1e-4 * largest, name
    buffers = dict(plain.model.named_buffers())
    for name, b in compiled.model.named_buffers():
        assert (b - buffers[name]).abs().max().item() <= 1e-6 * (1 + buffers[name].abs().max()), name
    # the compiled model's state dict is the plain one, key for key, and loads both ways
    assert list(compiled.model.state_dict()) == list(plain.model.state_dict())
    assert not any("_orig_mod" in key for key in compiled.model.state_dict())
    compiled.model.load_state_dict(plain.model.state_dict())
    plain.model.load_state_dict(compiled.model.state_dict())


def test_compile_key_resolves_per_device_and_needs_a_compiler(monkeypatch):
    assert build.compiles(load_config(SMOKE)) is False  # null: on CUDA only
    assert build.compiles(load_config(SMOKE, ["compile=true"])) is True
    monkeypatch.setenv("CXX", "/no/such/compiler")
    with pytest.raises(BadInput, match="'compile'.*C\\+\\+ compiler"):
        parts_api.build_parts(load_config(SMOKE, ["compile=true"]))
    parts_api.build_parts(load_config(SMOKE, ["compile=false"]))  # nothing to compile


def test_compiled_run_trains_through_the_cli_and_loads_uncompiled(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", SMOKE, "--set", "compile=true", "--run-dir", str(run),
                 "--quiet", "--set", "steps=6", "--set", "eval_every=3", "--set",
                 "log_every=1"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["steps_done"] == 6 and torch.isfinite(torch.tensor(results["test_nll"]))
    losses = [float(r["loss"]) for r in metrics.read(run / "metrics.csv") if r["loss"]]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    state = checkpoint.load(run / "checkpoint_last.pt")
    assert state["config"]["compile"] is True
    assert not any("_orig_mod" in key for key in state["model"])
    loaded = load_run(run, "last")  # built plain: the run API never compiles
    assert all(not hasattr(m, "_torchdynamo_orig_callable")
               for m in (loaded.model.decoder.forward, loaded.model.encoder.group_output))
    capsys.readouterr()
    assert main(["eval", str(run), "--iw-samples", "4", "--eval-limit", "20",
                 "--ais-temps", "20", "--ais-chains", "32"]) == 0
    assert "test NLL" in capsys.readouterr().out


def _train_cmd(run, steps):
    return [sys.executable, "-m", "dvae_q.cli.main", "train", "--config", SMOKE, "--run-dir",
            str(run), "--quiet", "--set", "compile=true", "--set", f"steps={steps}",
            "--set", "checkpoint_every=1", "--set", "eval_every=1000000", "--set", "log_every=1"]


def test_killed_compiled_run_resumes_to_identical_parameters(tmp_path):
    """N steps, SIGKILL, resume to 2N == an uninterrupted 2N run, bit for bit, compile on: the
    resumed process compiles the same kernels again. The straight run goes alongside the one
    that is killed (one thread each, so the two cores are not oversubscribed)."""
    n = 8
    env = dict(os.environ, OMP_NUM_THREADS="1")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    quiet = dict(env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    uninterrupted = subprocess.Popen(_train_cmd(straight, 2 * n), **quiet)
    proc = subprocess.Popen(_train_cmd(killed, 2 * n), **quiet)
    reached = kill_at_step(proc, killed, n)
    assert n <= reached < 2 * n, "the kill must interrupt the run"
    resumed = subprocess.run([sys.executable, "-m", "dvae_q.cli.main", "train", "--resume",
                              str(killed), "--quiet"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert uninterrupted.wait() == 0, uninterrupted.stderr.read()

    a = checkpoint.load(straight / "checkpoint_last.pt")
    b = checkpoint.load(killed / "checkpoint_last.pt")
    assert a["step"] == b["step"] == 2 * n
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    ra = [r["loss"] for r in metrics.read(straight / "metrics.csv") if r["loss"]]
    rb = [r["loss"] for r in metrics.read(killed / "metrics.csv") if r["loss"]]
    assert len(rb) == 2 * n and ra == rb
