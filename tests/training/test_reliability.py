"""Runs that fail, are killed, interrupted or raced: exit statuses, the last good checkpoint,
the run-directory lock, and resume from any state a killed start-up can leave."""

import errno
import fcntl
import http.server
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
import yaml

from dvae_q.cli.main import main
from dvae_q.run import default_run_dir
from dvae_q.training import checkpoint
from dvae_q.training import loop as train
from dvae_q.training.config import load_config

SMOKE = "smoke"
SECRET = "DEV-dvaeqfake0secret0token0123456789abcdef"


def _one_line(capsys, code, expected):
    err = capsys.readouterr().err
    assert code == expected, err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def _finite_checkpoint(path):
    state = checkpoint.load(path)
    assert checkpoint.non_finite(state) == []
    return state


@pytest.mark.parametrize("override", ["learning_rate=1e30", "beta=1e30"])
def test_divergence_stops_with_a_finite_last_checkpoint(tmp_path, capsys, override):
    """A run that diverges (a huge learning rate; a β so large that Adam's moments overflow
    while the loss stays finite) exits 1 and its last checkpoint holds only finite tensors."""
    run = tmp_path / "run"
    code = main(["train", "--config", SMOKE, "--run-dir", str(run), "--quiet", "--set", override,
                 "--set", "checkpoint_every=2", "--set", "eval_every=100"])
    err = _one_line(capsys, code, 1)
    assert "checkpoint_last.pt" in err and ("non-finite" in err or "loss became" in err)
    state = _finite_checkpoint(run / "checkpoint_last.pt")
    assert state["step"] % 2 == 0


def test_sampler_value_and_memory_errors_are_runtime_failures(tmp_path, monkeypatch, capsys):
    from samplers.gibbs import GibbsSampler

    for error in (ValueError("child sampler rejected the problem"), MemoryError()):
        def failing(self, model, num_samples, error=error):
            raise error

        monkeypatch.setattr(GibbsSampler, "_sample", failing)
        run = tmp_path / type(error).__name__
        code = main(["train", "--config", SMOKE, "--run-dir", str(run), "--quiet"])
        err = _one_line(capsys, code, 1)
        assert type(error).__name__ in err and "checkpoint_last.pt" in err
        assert checkpoint.load(run / "checkpoint_last.pt")["step"] == 0


def test_full_disk_during_a_checkpoint_is_one_line_and_resume_stays_exact(tmp_path, monkeypatch,
                                                                          capsys):
    straight = tmp_path / "straight"
    args = ["--quiet", "--set", "steps=6", "--set", "checkpoint_every=2", "--set", "eval_every=6"]
    assert main(["train", "--config", SMOKE, "--run-dir", str(straight), *args]) == 0
    capsys.readouterr()
    real_save, calls = torch.save, {"n": 0}

    def full_disk(obj, handle, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # step-0 checkpoint, step 2, then the disk is full at step 4
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, handle, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk)
    run = tmp_path / "run"
    err = _one_line(capsys, main(["train", "--config", SMOKE, "--run-dir", str(run), *args]), 1)
    assert "No space left on device" in err and "previous checkpoint is intact" in err
    assert not list(run.glob(".checkpoint_*"))
    monkeypatch.setattr(torch, "save", real_save)
    assert checkpoint.load(run / "checkpoint_last.pt")["step"] == 2
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    a, b = checkpoint.load(straight / "checkpoint_last.pt"), checkpoint.load(run / "checkpoint_last.pt")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_an_interrupted_start_up_leaves_no_directory(tmp_path, monkeypatch, capsys):
    real = checkpoint.save_atomic

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_atomic", interrupted)
    code = main(["train", "--config", SMOKE, "--run-dir", str(tmp_path / "run"), "--quiet"])
    assert code == 130 and "interrupted" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(checkpoint, "save_atomic", real)


def test_sigint_during_start_up_is_one_line(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "dvae_q.cli.main", "train", "--config", SMOKE,
                             "--run-dir", str(tmp_path / "run"), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # during start-up: once the run directory is being assembled (a signal during Python's own
    # start-up, before any dvae-q code runs, cannot be handled by dvae-q)
    for _ in range(2400):
        if any(tmp_path.iterdir()) or proc.poll() is not None:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    # 130 from main, or death by SIGINT itself (-2) when the signal lands where Python re-raises
    # it at exit: a shell shows 130 for both; what matters is one line and no traceback
    assert proc.returncode in (130, -signal.SIGINT), (proc.returncode, err)
    assert err.strip() == "dvae-q: interrupted", err


def test_a_directory_with_a_config_and_no_checkpoint_resumes_from_step_zero(tmp_path):
    cfg = load_config(SMOKE, ["steps=6", "eval_every=6"])
    straight = tmp_path / "straight"
    train.train(cfg, straight, quiet=True)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.yaml").write_text((straight / "config.yaml").read_text())
    assert main(["train", "--resume", str(bare), "--quiet"]) == 0
    a, b = checkpoint.load(straight / "checkpoint_last.pt"), checkpoint.load(bare / "checkpoint_last.pt")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_a_second_process_on_a_run_directory_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = load_config(SMOKE, ["steps=4", "eval_every=4"])
    train.train(cfg, run, quiet=True)
    (run / "results.json").unlink()
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["steps"] = 100000
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.Popen([sys.executable, "-m", "dvae_q.cli.main", "train", "--resume", str(run),
                             "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(1200):  # until the other process holds the lock (at most 60 s)
            with open(run / ".lock") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(handle, fcntl.LOCK_UN)
                except BlockingIOError:
                    break
            time.sleep(0.05)
        else:
            pytest.fail("the first process never took the run directory's lock")
        err = _one_line(capsys, main(["train", "--resume", str(run), "--quiet"]), 2)
        assert "in use by another process" in err
        assert proc.poll() is None  # the run that holds the directory carries on
    finally:
        proc.kill()
        proc.wait()


def test_orphaned_temporary_checkpoints_are_removed_on_resume(tmp_path):
    run = tmp_path / "run"
    train.train(load_config(SMOKE, ["steps=2", "eval_every=2"]), run, quiet=True)
    (run / "results.json").unlink()
    orphan = run / ".checkpoint_last.pt.abc123.tmp"
    orphan.write_bytes(b"half a checkpoint")
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert not orphan.exists()


class _InterruptingFile:
    """A file that delivers Ctrl-C to this process once part of the checkpoint is written."""

    def __init__(self, handle):
        self.handle, self.written = handle, 0

    def write(self, data):
        self.written += len(data)
        if self.written > 100_000:
            signal.raise_signal(signal.SIGINT)
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def test_ctrl_c_in_the_middle_of_a_checkpoint_write_is_an_interrupt(tmp_path, monkeypatch):
    # an interrupt inside torch's zip writer makes its clean-up fail with an unrelated RuntimeError
    target = tmp_path / "checkpoint_last.pt"
    checkpoint.save_atomic({"model": {}, "step": 1}, target)
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda *a: _InterruptingFile(real_fdopen(*a)))
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_atomic({"model": {"w": torch.zeros(200_000)}, "step": 2}, target)
    # the interrupt waited for the write to finish: a complete new checkpoint and no temporary file
    assert checkpoint.load(target)["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_last.pt"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_default_run_directories_do_not_collide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(SMOKE)
    first = default_run_dir(cfg)
    first.mkdir(parents=True)
    assert default_run_dir(cfg) != first


def test_checkpoints_get_the_permissions_of_other_run_files(tmp_path):
    run = tmp_path / "run"
    train.train(load_config(SMOKE, ["steps=2", "eval_every=2"]), run, quiet=True)
    mode = lambda p: (run / p).stat().st_mode & 0o777  # noqa: E731
    assert mode("checkpoint_last.pt") == mode("metrics.csv") == mode("config.yaml")


def test_a_token_from_the_dwave_config_file_is_refused_in_a_config(tmp_path, monkeypatch, capsys):
    conf = tmp_path / "dwave.conf"
    conf.write_text(f"[defaults]\ntoken = {SECRET}\n")
    monkeypatch.delenv("DWAVE_API_TOKEN", raising=False)
    monkeypatch.setenv("DWAVE_CONFIG_FILE", str(conf))
    run = tmp_path / "run"
    code = main(["train", "--config", SMOKE, "--run-dir", str(run), "--quiet",
                 "--set", f"sampler_options.dimod.sample_kwargs={{label: {SECRET}}}"])
    err = _one_line(capsys, code, 2)
    assert "token" in err and SECRET not in err and not run.exists()


class _Unauthorised(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the http.server API
        body = b'{"error_code": 401, "error_msg": "Invalid token or access denied"}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_calibrate_against_a_refusing_cloud_is_one_line(tmp_path, monkeypatch, capsys):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unauthorised)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        conf = tmp_path / "dwave.conf"
        conf.write_text("")
        monkeypatch.setenv("DWAVE_CONFIG_FILE", str(conf))
        monkeypatch.setenv("DWAVE_API_TOKEN", SECRET)
        monkeypatch.setenv("DWAVE_API_ENDPOINT", f"http://127.0.0.1:{server.server_port}/sapi/v2/")
        code = main(["calibrate", "--topology", "chimera_c4", "--num-reads", "30"])
        err = _one_line(capsys, code, 1)
        assert "calibration failed" in err and SECRET not in err
    finally:
        server.shutdown()
