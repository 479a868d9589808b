"""Where `dvae-q reproduce` puts its cells (`dvae_q.table.placement`): CPU shares, whole and
shared GPUs, the hardware flags' checks, whether N cells fit in a GPU's memory; and the run
directory's lock as a retried cell meets it (held by a live process, left by a dead one)."""

import os
import subprocess
import sys

import pytest

from dvae_q.cli.main import main
from dvae_q.table.cells import Request, expand, select
from dvae_q.table.placement import (
    GPU_UNITS,
    Hardware,
    cell_resources,
    check_fits,
    check_flags,
    gpu_share,
)
from dvae_q.training.rundir import RunDir

BMNIST = "binarized_mnist"
HOLDER = """
import sys, time
from dvae_q.training.rundir import RunDir
rd = RunDir(sys.argv[1]); rd.lock()
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_device_cuda_gives_each_cell_one_gpu_or_a_share_of_one():
    cluster = {"CPU": 16.0, "GPU": 2.0}
    one = cell_resources(Hardware(device="cuda"), 48, cluster, 16)
    assert one == ({"num_cpus": 1, "num_gpus": 1}, {"device": "cuda"}, 1)
    four = cell_resources(Hardware(device="cuda", cells_per_gpu=4), 48, cluster, 16)
    assert four == ({"num_cpus": 1, "num_gpus": 0.25}, {"device": "cuda"}, 1)
    # --device cpu on a machine with GPUs: CPU shares, the config's device untouched
    assert cell_resources(Hardware(device="cpu"), 2, cluster, 16) == (
        {"num_cpus": 8, "num_gpus": 0}, {}, 8)
    with pytest.raises(ValueError, match="the Ray cluster has no GPUs"):
        cell_resources(Hardware(device="cuda"), 2, {"CPU": 16.0}, 16)


@pytest.mark.parametrize("n", [3, 6, 7, 9, 11, 13, 97])
def test_n_shares_fit_in_one_gpu_in_rays_units(n):
    # Ray keeps resources as whole units of 1/10000: N shares must add up to at most one GPU
    units = round(gpu_share(n) * GPU_UNITS)
    assert units * n <= GPU_UNITS < (units + 1) * n  # N fit, and the share is the largest that does


@pytest.mark.parametrize("hw, message", [
    (Hardware(cells_per_gpu=0, device="cuda"), "--cells-per-gpu must be between 1 and 10000"),
    (Hardware(cells_per_gpu=20000, device="cuda"), "--cells-per-gpu must be between 1"),
    (Hardware(cells_per_gpu=2), "give --device cuda with it"),
    (Hardware(cells_per_gpu=2, device="cpu"), "give --device cuda with it"),
    (Hardware(device="tpu"), "--device: 'tpu' is not one of cpu, cuda"),
    (Hardware(device="cuda", num_gpus=0), "--device cuda with --num-gpus 0"),
    (Hardware(retries=-1), "--retries must be >= 0"),
])
def test_bad_hardware_flags_are_refused(hw, message):
    with pytest.raises(ValueError, match=message):
        check_flags(hw)


def _configs(**overrides):
    cells = expand(select([BMNIST], ["1-layer-nonlin"], ["dvaes_power"], [2]), [0])
    items = [f"{k}={v}" for k, v in overrides.items()]
    return [Request(cells, None, config="smoke", overrides=items).cell_config(cells[0])]


def test_cells_per_gpu_is_refused_when_n_cells_cannot_fit_in_the_gpu():
    smoke = _configs()
    check_fits(1, None, smoke)  # memory unknown (a GPU torch cannot see): no check
    check_fits(8, 80 * 2**30, smoke)
    # a CUDA context alone takes more than 200 MiB: 200 of them cannot share 40 GiB
    with pytest.raises(ValueError, match="--cells-per-gpu 200: a cell needs at least"):
        check_fits(200, 40 * 2**30, smoke)
    # B·K = 400,000 rows of 784 float32 pixels, forward and backward, take 2.5 GB: more than
    # a 2 GiB GPU, where one smoke cell fits
    check_fits(1, 2 * 2**30, smoke)
    big = _configs(batch_size=200_000)  # K = 2, the cell's
    check_fits(1, 2**34, big)
    with pytest.raises(ValueError, match="so at most 0 fit"):
        check_fits(1, 2 * 2**30, big)


def test_device_cuda_without_a_gpu_is_one_line_and_writes_nothing(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "r"
    argv = ["reproduce", "--config", "smoke", "--dataset", BMNIST, "--structure",
            "1-layer-nonlin", "--method", "dvaes_power", "--k", "2", "--steps", "5", "--out",
            str(out), "--device", "cuda"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device cuda: this machine has no CUDA GPU" in err
    assert not out.exists()


def _hold(run_dir, seconds):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_retry_waits_for_a_holder_that_goes_and_names_one_that_stays(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = _hold(run_dir, 60)
    try:
        with pytest.raises(ValueError, match=rf"in use by another process \(pid {holder.pid} "
                                             r"on host [^)]+\)"):
            RunDir(run_dir).lock(wait_s=0.5)
    finally:
        holder.kill()  # SIGKILL: the holder dies without unlocking
        holder.wait()
    # the kernel ended its lock with it: nothing stale is left to clear
    rd = RunDir(run_dir)
    rd.lock()
    rd.unlock()
    leaving = _hold(run_dir, 1.0)  # holds it a second more, then exits
    try:
        rd.lock(wait_s=60)  # the retry's wait: taken once the holder has gone
        assert leaving.wait(timeout=60) == 0
        assert f"(pid {os.getpid()} on host " in RunDir(run_dir).holder()
    finally:
        rd.unlock()
        leaving.kill()
        leaving.wait()
