"""The Python run API (dvae_q.fit / dvae_q.load_run) and what a run directory records:
one metrics row per logged step, every numeric sampler fact under sampler/, TensorBoard."""

import json

import pytest
import torch

import dvae_q
import samplers
from dvae_q.cli.main import main
from dvae_q.data import datasets as data
from dvae_q.training import metrics

SMOKE = "smoke"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("api") / "run"
    run = dvae_q.fit(SMOKE, {"steps": 10, "eval_every": 5, "log_every": 5, "tensorboard": True},
                     run_dir=path)
    return run


def test_fit_returns_the_loaded_run_with_its_results(smoke_run):
    run = smoke_run
    assert run.step in (5, 10) and run.config.steps == 10 and run.config.eval_every == 5
    assert run.results["steps"] == 10 and run.results["test_nll"] > 0
    assert isinstance(run.model, torch.nn.Module) and not run.model.training
    again = dvae_q.load_run(run.path, "last")
    assert again.step == 10
    # the loaded weights are the checkpoint's, bit for bit
    state = torch.load(run.path / "checkpoint_last.pt", weights_only=False)["model"]
    for key, value in again.model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_loading_a_run_reads_no_training_data(smoke_run, monkeypatch):
    def no_training_data(*args, **kwargs):
        raise AssertionError("the training set was read")

    monkeypatch.setattr(data, "training_mean", no_training_data)
    monkeypatch.setattr(data, "training_batches", no_training_data)
    run = dvae_q.load_run(smoke_run.path)
    images = run.sample(6)
    assert images.shape == (6, 784) and 0 <= float(images.min()) and float(images.max()) <= 1
    report = run.evaluate("valid", iw_samples=4, ais_temps=20, ais_chains=16, limit=30)
    assert report["num_points"] == 30 and report["nll"] > 0
    assert report["log_z_raise"] is not None


def test_python_evaluation_is_the_cli_evaluation(smoke_run, capsys):
    report = dvae_q.load_run(smoke_run.path).evaluate(
        "test", iw_samples=5, ais_temps=30, ais_chains=16, limit=25)
    assert main(["eval", str(smoke_run.path), "--iw-samples", "5", "--ais-temps", "30",
                 "--ais-chains", "16", "--eval-limit", "25"]) == 0
    capsys.readouterr()
    record = json.loads((smoke_run.path / "eval_test_k5_best_first25.json").read_text())
    assert record == report  # same seeds, same numbers: the CLI is a thin layer


def test_one_row_per_step_with_evaluation_merged(smoke_run):
    rows = metrics.read(smoke_run.path / "metrics.csv")
    steps = [int(r["step"]) for r in rows]
    assert steps == [5, 10]  # log_every = eval_every = 5: evaluation in the same rows
    for row in rows:
        assert row["loss"] and row["valid_nll"] and row["log_z"]


def test_tensorboard_event_files_hold_the_scalars(smoke_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(smoke_run.path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/recon", "eval/valid_nll", "sampler/chain_sweeps"} <= tags
    assert [e.step for e in events.Scalars("eval/valid_nll")] == [5, 10]


@pytest.mark.parametrize("name", ["gibbs", "neal", "pa"])
def test_every_numeric_sampler_fact_is_logged(tmp_path, name):
    """Whatever a backend reports (gibbs chain_sweeps, neal spin_updates, pa populations, ...)
    reaches metrics.csv under sampler/, without the metrics code knowing the backend."""
    run = tmp_path / name
    assert main(["train", "--config", SMOKE, "--sampler", name, "--run-dir", str(run), "--quiet",
                 "--set", "steps=2", "--set", "log_every=1", "--set", "eval_every=2"]) == 0
    model = samplers.BipartiteModel(torch.zeros(8), torch.zeros(8), torch.zeros(8, 8))
    info = samplers.get(name, seed=0).draw(model, 4).info
    numeric = {k for k, v in info.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert numeric  # the reference itself must be non-empty
    header = metrics.read(run / "metrics.csv")[0].keys()
    assert {f"sampler/{k}" for k in numeric} <= set(header)


def test_fit_takes_a_dict_config_and_rejects_bad_keys(tmp_path):
    with pytest.raises(dvae_q.run.BadInput, match="did you mean 'steps'"):
        dvae_q.fit(SMOKE, {"stepz": 3}, run_dir=tmp_path / "x")
    assert not (tmp_path / "x").exists()
    cfg = dvae_q.run.resolve({"dataset": "binarized_mnist", "structure": "1-layer-lin"}, ["k=3"])
    assert (cfg.structure, cfg.k) == ("1-layer-lin", 3)


def test_results_carry_the_log_z_bracket_and_the_nll_interval_it_implies(smoke_run):
    results = smoke_run.results
    low, high = results["test_nll_interval"]
    # NLL moves one for one with log Z: the interval is the bracket shifted by the NLL
    assert low == pytest.approx(results["test_nll"] - 3 * results["log_z_stderr"])
    assert high == pytest.approx(results["test_nll"] + results["log_z_upper"] - results["log_z"]
                                 + 3 * results["log_z_upper_stderr"])
    assert results["log_z_inverted"] is False and low <= results["test_nll"] <= high


def test_an_inverted_bracket_is_flagged_and_never_reported_as_a_bound(caplog):
    from dvae_q.evaluation import logz, scores

    lower = logz.LogZEstimate(414.8, 0.05, None)
    upper = logz.LogZEstimate(411.0, 0.05, None)   # reverse AIS below AIS: chains in minor modes
    record = scores.bracket_record(logz.Bracket(lower, upper), {"test_nll": 90.0}, "in a test")
    assert record["log_z_inverted"] == 1.0
    assert not any(key.endswith(("_low", "_high")) for key in record)
    assert "inverted" in caplog.text
    fine = scores.bracket_record(logz.Bracket(lower, logz.LogZEstimate(414.9, 0.05, None)),
                                 {"test_nll": 90.0}, "in a test")
    assert fine["log_z_inverted"] == 0.0 and fine["test_nll_low"] < 90.0 < fine["test_nll_high"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks loading without a GPU")
def test_a_run_trained_on_a_gpu_loads_on_a_machine_without_one(smoke_run, tmp_path, caplog):
    import shutil

    import yaml

    copy = tmp_path / "gpu-run"
    shutil.copytree(smoke_run.path, copy)
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["device"] = "cuda"
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    run = dvae_q.load_run(copy)
    assert run.config.device == "cpu" and "not available here" in caplog.text
    assert run.sample(2).shape == (2, 784)
