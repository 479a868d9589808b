"""Training from the CLI and the Python API: runs, resume, errors, sampler-agnosticism."""

import json
import os
import subprocess
import sys

import pytest
import torch
from runs import kill_at_step

from dvae_q.cli.main import main
from dvae_q.errors import RunFailure
from dvae_q.training import checkpoint, metrics
from dvae_q.training import loop as train
from dvae_q.training import parts as parts_api
from dvae_q.training.config import METHODS, load_config

SMOKE = "smoke"


def test_short_training_lowers_the_validation_bound(tmp_path):
    cfg = load_config(
        SMOKE,
        ["steps=150", "eval_every=150", "train_limit=2000", "eval_limit=200", "eval_splits=[valid]"],
    )
    parts = parts_api.build_parts(cfg)
    parts.model.eval()
    before = parts_api.evaluate_splits(
        parts, {"valid": cfg.eval_iw_samples}, parts_api.estimate_log_z(parts.model, cfg, parts.eval_gen).log_z
    )["valid_nll"]
    parts.model.train()
    results = train.train(cfg, tmp_path / "run", quiet=True, parts=parts)
    # from an untrained ~550 nats the bound must fall by a wide margin in 150 steps
    assert results["valid_nll"] < before - 50, (before, results["valid_nll"])
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.csv", "checkpoint_last.pt", "checkpoint_best.pt",
                 "results.json", "curves.png", "samples_0000150.png"):
        assert (run / name).is_file(), name
    rows = metrics.read(run / "metrics.csv")
    assert rows[-1]["valid_nll"] != "" and float(rows[0]["lr"]) > 0


@pytest.mark.parametrize("structure", ["1-layer-nonlin", "4-layer-nonlin", "1-layer-lin"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_without_nan(tmp_path, method, structure):
    if structure == "1-layer-lin" and method not in ("dvaes_power", "dvae_spike_exp"):
        pytest.skip("the linear structure is covered by two methods")
    cfg = load_config(SMOKE, [f"method={method}", f"structure={structure}", "steps=6",
                              "eval_every=6", "k=3",
                              "eval_limit=20", "eval_iw_samples=4", "final_iw_samples=4",
                              "log_every=1", "eval_splits=[valid]"])
    results = train.train(cfg, tmp_path / method, quiet=True)
    rows = metrics.read(tmp_path / method / "metrics.csv")
    losses = [float(r["loss"]) for r in rows if r["loss"]]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    assert torch.isfinite(torch.tensor(results["valid_nll"]))


@pytest.mark.parametrize("sampler", ["gibbs", "neal", "exact"])
def test_training_is_sampler_agnostic(tmp_path, sampler):
    run = tmp_path / sampler
    code = main(["train", "--config", SMOKE, "--sampler", sampler, "--run-dir", str(run),
                 "--set", "steps=10", "--set", "eval_every=10", "--quiet"])
    assert code == 0
    results = json.loads((run / "results.json").read_text())
    assert results["sampler"] == sampler and results["steps"] == 10


def _one_line_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("dvae-q: error:") and "Traceback" not in err
    return err


def test_bad_input_exits_2_with_one_line_and_no_run_dir(tmp_path, capsys):
    run = tmp_path / "run"
    cases = [
        (["train", "--config", SMOKE, "--set", "stpes=3"], "stpes"),
        (["train", "--config", SMOKE, "--set", "k=-1"], "'k'"),
        (["train", "--config", "no/such/config"], "not found"),
        (["train", "--config", SMOKE, "--sampler", "nosuch"], "nosuch"),
        (["train", "--config", SMOKE, "--set", "sampler_options.gibbs.bogus=1"], "bogus"),
        (["train", "--config", SMOKE, "--topology", str(tmp_path / "none.yaml")], "none.yaml"),
        (["train", "--config", SMOKE, "--set", "device=cuda:7"], "device"),
        (["train"], "--config"),
        (["train", "--config", SMOKE, "--frobnicate"], "frobnicate"),
        (["eval", str(tmp_path / "nothing")], "not a run directory"),
        (["sample", str(tmp_path / "nothing"), "--out", "x.png"], "not a run directory"),
    ]
    for argv, needle in cases:
        err = _one_line_error(capsys, argv + ["--run-dir", str(run)] if argv[0] == "train" and len(argv) > 1 else argv)
        assert needle in err, (argv, err)
        assert not run.exists()


def test_nan_stops_training_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = load_config(SMOKE, ["steps=20", "checkpoint_every=5", "eval_every=100"])
    parts = parts_api.build_parts(cfg)
    forward = parts.model.forward
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        out = forward(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 8:
            return type(out)(out.loss * float("nan"), out.metrics)
        return out

    monkeypatch.setattr(parts.model, "forward", poisoned)
    run = tmp_path / "run"
    with pytest.raises(RunFailure, match=r"loss became nan at step 7.*checkpoint_last\.pt"):
        train.train(cfg, run, quiet=True, parts=parts)
    state = checkpoint.load(run / "checkpoint_last.pt")
    assert state["step"] == 5
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def _train_cmd(run, steps):
    return [sys.executable, "-m", "dvae_q.cli.main", "train", "--config", SMOKE, "--run-dir", str(run),
            "--quiet", "--set", f"steps={steps}", "--set", "checkpoint_every=1",
            "--set", "eval_every=1000000", "--set", "log_every=1"]


def test_killed_run_resumes_to_identical_parameters(tmp_path):
    """N steps, SIGKILL, resume to 2N == an uninterrupted 2N run, bit for bit (CPU)."""
    n = 12
    env = dict(os.environ, OMP_NUM_THREADS="1")
    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(straight, 2 * n), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(killed, 2 * n), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    reached = kill_at_step(proc, killed, n)
    assert n <= reached < 2 * n, "the kill must interrupt the run"
    resumed = subprocess.run([sys.executable, "-m", "dvae_q.cli.main", "train", "--resume", str(killed),
                              "--quiet"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr

    a = checkpoint.load(straight / "checkpoint_last.pt")
    b = checkpoint.load(killed / "checkpoint_last.pt")
    assert a["step"] == b["step"] == 2 * n
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    steps = [int(r["step"]) for r in metrics.read(killed / "metrics.csv") if r["loss"]]
    assert steps == list(range(1, 2 * n + 1))  # no lost or duplicated rows
    ra = [r["loss"] for r in metrics.read(straight / "metrics.csv") if r["loss"]]
    rb = [r["loss"] for r in metrics.read(killed / "metrics.csv") if r["loss"]]
    assert ra == rb


def test_eval_and_sample_commands(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", SMOKE, "--run-dir", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--iw-samples", "8", "--eval-limit", "30",
                 "--ais-temps", "50", "--ais-chains", "64"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0 and "test NLL" in out and "RAISE" in out
    record = json.loads((run / "eval_test_k8_best_first30.json").read_text())
    assert record["num_points"] == 30 and record["nll"] > 0
    png = tmp_path / "grid.png"
    assert main(["sample", str(run), "--num", "16", "--sampler", "exact", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["configs"]) == 0
    listing = capsys.readouterr().out
    assert "binarized_mnist/4-layer-nonlin" in listing and "omniglot/1-layer-lin" in listing


def test_training_with_the_qpu_sampler_against_the_thermal_mock(tmp_path):
    """--sampler qpu on a native Chimera prior, the QPU replaced by MockDWaveSampler with a
    thermal substitute: the same loop, the prior's mask from the topology, β_eff logged."""
    run = tmp_path / "qpu"
    argv = ["train", "--config", SMOKE, "--sampler", "qpu", "--topology", "chimera_c4",
            "--run-dir", str(run), "--quiet", "--set", "steps=10", "--set", "eval_every=10",
            "--set", "sampler_options.qpu.child_sampler=samplers.testing:thermal_mock",
            "--set", "sampler_options.qpu.child_kwargs={topology: chimera_c4, beta: 5.0, seed: 0}",
            "--set", "sampler_options.qpu.beta_eff=5.0"]
    assert main(argv) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["sampler"] == "qpu" and results["topology"] == "chimera_c4"
    rows = [r for r in metrics.read(run / "metrics.csv") if r["loss"]]
    assert rows and all(float(r["sampler/beta_eff"]) == 5.0 for r in rows)
    assert all(float(r["sampler/chain_break_fraction"]) == 0.0 for r in rows)  # native: no chains
    state = checkpoint.load(run / "checkpoint_last.pt")
    mask = state["model"]["prior.mask"]
    import topologies

    expected = topologies.load("chimera_c4").coupling_mask(8, 8)
    assert torch.equal(mask, torch.as_tensor(expected, dtype=mask.dtype))
    # the mock enforces the hardware graph: any coupling off the mask would have raised
    assert 0 < float(mask.mean()) < 1


def test_sampler_failure_is_a_runtime_failure_with_the_checkpoint(tmp_path, monkeypatch, capsys):
    """A sampler that fails mid-run (e.g. the cloud after its retries) exits 1, one message,
    naming the last good checkpoint, which stays loadable."""
    from samplers.gibbs import GibbsSampler

    calls = {"n": 0}
    original = GibbsSampler._sample

    def flaky(self, model, num_samples):
        calls["n"] += 1
        if calls["n"] == 13:
            raise RuntimeError("solver went away")
        return original(self, model, num_samples)

    monkeypatch.setattr(GibbsSampler, "_sample", flaky)
    run = tmp_path / "run"
    code = main(["train", "--config", SMOKE, "--run-dir", str(run), "--quiet",
                 "--set", "checkpoint_every=5", "--set", "eval_every=100"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert "solver went away" in err and "checkpoint_last.pt" in err
    assert checkpoint.load(run / "checkpoint_last.pt")["step"] == 10


def test_calibrate_command(capsys, monkeypatch, tmp_path):
    assert main(["calibrate", "--topology", "chimera_c4", "--num-reads", "300",
                 "--child-sampler", "samplers.testing:thermal_mock"]) == 0
    out = capsys.readouterr().out
    beta = float(out.split("beta_eff:")[1].split("±")[0])
    assert abs(beta - 5.0) / 5.0 < 0.05  # the thermal mock's true β_eff is 5
    assert "chain-break fraction" in out and "QPU access time" in out
    # no token anywhere: one line, exit 2, before any network use
    monkeypatch.delenv("DWAVE_API_TOKEN", raising=False)
    empty = tmp_path / "dwave.conf"
    empty.write_text("")
    monkeypatch.setenv("DWAVE_CONFIG_FILE", str(empty))
    err = _one_line_error(capsys, ["calibrate", "--topology", "chimera_c4", "--num-reads", "30"])
    assert "token" in err
