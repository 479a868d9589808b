"""Training with a QPU sampler: prefetch (the next step's draw in flight during this step's
forward/backward), exact resume with a draw in flight, the QPU access-time budget and the
run's QPU accounting. The QPU is MockDWaveSampler with a thermal substitute behind a fixed
per-call latency (samplers.testing:latency_mock)."""

import json

import pytest
import torch

from dvae_q.cli.main import main
from dvae_q.training import checkpoint, metrics
from dvae_q.training import loop as train
from dvae_q.training import parts as parts_api
from dvae_q.training.config import load_config


def _qpu_overrides(latency=0.02, per_problem_seed=True, **extra):
    kwargs = ("{topology: chimera_c4, beta: 5.0, seed: 0, latency_s: %s, per_problem_seed: %s}"
              % (latency, str(per_problem_seed).lower()))
    overrides = ["sampler=qpu", "topology=chimera_c4", "checkpoint_every=1", "eval_every=1000",
                 "sampler_options.qpu.child_sampler=samplers.testing:latency_mock",
                 f"sampler_options.qpu.child_kwargs={kwargs}",
                 "sampler_options.qpu.beta_eff=5.0", "sampler_options.qpu.num_reads=64"]
    return overrides + [f"{k}={v}" for k, v in extra.items()]


@pytest.mark.parametrize("prefetch", [False, True])
def test_prefetch_keeps_the_next_draw_in_flight_during_forward_and_backward(tmp_path, prefetch):
    """Structural, not timed: while a step computes, the next step's QPU calls are submitted
    and unresolved with prefetch, and none are without it."""
    cfg = load_config("smoke", _qpu_overrides(steps=6, prefetch=prefetch))
    parts = parts_api.build_parts(cfg)
    forward, seen = parts.model.forward, []

    def recording(*args, **kwargs):
        seen.append(parts.sampler.in_flight)
        return forward(*args, **kwargs)

    parts.model.forward = recording
    train.train(cfg, tmp_path / "run", quiet=True, parts=parts)
    assert len(seen) == 6
    if prefetch:
        assert all(n >= 1 for n in seen[:-1]) and seen[-1] == 0  # nothing left after the last
    else:
        assert seen == [0] * 6


def _train_argv(run, steps, **extra):
    argv = ["train", "--config", "smoke", "--run-dir", str(run), "--quiet"]
    for item in _qpu_overrides(steps=steps, log_every=1, prefetch="true", **extra):
        argv += ["--set", item]
    return argv


def test_prefetch_resume_continues_exactly_with_the_draw_in_flight(tmp_path, monkeypatch):
    """Killed after 4 of 8 steps with a draw in flight, a resumed run resubmits that draw (its
    prior is in the checkpoint) and ends bit-identical to an uninterrupted run. The mock's
    answers are a function of the problem programmed, as a restarted process needs."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main(_train_argv(straight, 8)) == 0
    original = train._account

    def killed_in_step_five(cfg, carry, info):
        original(cfg, carry, info)
        if carry.step == 4:  # step 5 is under way; step 4's checkpoint is on disk
            raise KeyboardInterrupt

    monkeypatch.setattr(train, "_account", killed_in_step_five)
    assert main(_train_argv(killed, 8)) == 130
    monkeypatch.setattr(train, "_account", original)
    state = checkpoint.load(killed / "checkpoint_last.pt")
    assert state["step"] == 4 and state["in_flight"] is not None
    assert main(["train", "--resume", str(killed), "--quiet"]) == 0
    a, b = checkpoint.load(straight / "checkpoint_last.pt"), checkpoint.load(killed / "checkpoint_last.pt")
    assert a["step"] == b["step"] == 8
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    losses = lambda run: [r["loss"] for r in metrics.read(run / "metrics.csv")]  # noqa: E731
    assert losses(straight) == losses(killed)


def test_the_qpu_budget_stops_training_cleanly_and_is_recorded(tmp_path, capsys):
    # the mock reports a fixed 8550.28 µs of QPU access per call, one call per step here
    run = tmp_path / "run"
    argv = _train_argv(run, 50, max_qpu_access_time_s=0.03, start_over_budget="true")
    assert main(argv) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["steps_done"] == 4 and "budget" in results["stopped_early"]
    totals = results["qpu_totals"]
    assert totals["num_qpu_calls"] == 4 and totals["qpu_access_time_us"] == pytest.approx(4 * 8550.28)
    assert checkpoint.load(run / "checkpoint_last.pt")["step"] == 4
    assert "test_nll" in results  # the final evaluation still ran
    assert [int(r["step"]) for r in metrics.read(run / "metrics.csv")] == [1, 2, 3, 4]


def test_a_run_projected_past_its_budget_is_refused_before_it_starts(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(_train_argv(run, 50, max_qpu_access_time_s=0.03))
    err = capsys.readouterr().err
    assert code == 2 and "QPU access time" in err and "start_over_budget" in err
    assert not run.exists()


def test_prefetch_is_refused_for_a_sampler_without_calls_in_flight(tmp_path, capsys):
    code = main(["train", "--config", "smoke", "--run-dir", str(tmp_path / "r"), "--quiet",
                 "--set", "prefetch=true"])
    assert code == 2 and "prefetch" in capsys.readouterr().err
