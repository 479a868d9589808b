"""`dvae-q reproduce` on a multi-node Ray cluster, simulated on this machine with
`ray.cluster_utils.Cluster`: a head without CPUs (the driver's) and three one-CPU nodes, each
a raylet of its own on loopback, with token authentication and a private RAY_TMPDIR.

* A node is removed while it trains a cell: Ray runs the cell again on another node, the retry
  resumes from the cell's last checkpoint (the dead attempt's flock ended with its process, so
  the retry is not refused as a second writer), and the report's numbers are those of a
  single-node run of the same cells (a separate `dvae-q reproduce` on a local Ray instance,
  started beside it; gibbs sampler and one thread per cell, so training is deterministic).
* A node that does not see the output folder. The simulation: the node's raylet is started
  (`ray start --block`) in a mount namespace of its own (`unshare -rm`) in which an empty tmpfs
  is mounted over the output folder's parent. Its workers see the same path as the driver but
  another file system there, which is what a folder on the driver's local disk looks like from
  another machine. Nothing in dvae-q is told about it: the probe reads what the node sees.
  Skipped where unprivileged user namespaces are not allowed.
* GPU placement with `--device cuda --cells-per-gpu 3` on a node that declares two GPUs it does
  not have (`num_gpus=2`): tasks with the cell task's own options (resources from
  `cell_resources`, `task_options`) are held at a barrier, which only opens if six of them run
  at once, and report the GPU Ray gave each. This shows Ray's fractional accounting of our
  shares (3 per GPU, CUDA_VISIBLE_DEVICES set to that GPU); it does not show that a cell trains
  on CUDA, which needs a real GPU.
"""

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from clusters import private_cluster

from dvae_q.cli.main import main
from dvae_q.progress import Reporter
from dvae_q.table.cells import Request, expand, select
from dvae_q.table.placement import Hardware, cell_resources
from dvae_q.table.reproduce import reproduce
from dvae_q.table.scheduler import largest_node_cpus, task_options
from dvae_q.training import checkpoint, metrics

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.xdist_group("ray_service"), pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
BMNIST, STRUCTURE = "binarized_mnist", "1-layer-nonlin"
METHODS = ("dvaes_power", "dvaepp_power", "dvaes_unexp")
STEPS = 60
SMALL = ["checkpoint_every=10", "log_every=1", "eval_every=1000000", "eval_limit=20",
         "eval_iw_samples=4", "final_iw_samples=4", "tensorboard=false", "ais_num_temps=10"]
VICTIM = f"{BMNIST}-{STRUCTURE}-dvaepp_power-k2-seed0"
WAIT_S = 240  # the longest any one wait may take (a bounded poll)


def _cell_flags(out: Path) -> list[str]:
    return ["--config", "smoke", "--dataset", BMNIST, "--structure", STRUCTURE, "--method",
            ",".join(METHODS), "--k", "2", "--steps", str(STEPS),
            *[x for item in SMALL for x in ("--set", item)], "--out", str(out), "--quiet"]


class Nodes:
    def __init__(self, cluster):
        self.cluster, self.node = cluster, {}

    def add(self, name: str, **args) -> None:
        self.node[name] = self.cluster.add_node(**args)

    def remove_id(self, node_id: str) -> None:
        name = next(n for n, node in self.node.items() if node.node_id == node_id)
        self.cluster.remove_node(self.node.pop(name))


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """The cluster for this module (see tests/clusters.py), with a test cache folder the
    raylets' workers inherit, and three 1-CPU nodes; torn down afterwards."""
    with private_cluster(sys.modules[__name__], tmp_path_factory.mktemp("token"),
                         "dvae-q-reproduce", "dqr",
                         DVAEQ_CACHE_DIR=str(tmp_path_factory.mktemp("cache"))) as cluster:
        found = Nodes(cluster)
        for name in ("b", "c", "d"):
            found.add(name, num_cpus=1)
        cluster.wait_for_nodes()
        yield found


def _single_node_run(out: Path) -> subprocess.Popen:
    """`dvae-q reproduce` of the same cells on a local one-CPU Ray instance of its own."""
    tmp = tempfile.mkdtemp(prefix="dqs", dir="/tmp")
    env = dict(os.environ, RAY_TMPDIR=tmp)
    env.pop("RAY_ADDRESS", None)
    argv = [sys.executable, "-m", "dvae_q.cli.main", "reproduce", *_cell_flags(out),
            "--num-cpus", "1", "--num-gpus", "0", "--cpus-per-cell", "1"]
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.ray_tmp = tmp
    return proc


def _numbers(report: Path) -> tuple[list[str], list[str]]:
    """The report's cell rows, and its run rows without the training time."""
    lines = report.read_text().splitlines()
    cells = [line for line in lines if f" | {STRUCTURE} | " in line]
    runs = [line.rsplit("|", 2)[0] for line in lines if line.startswith(f"| {BMNIST}-")]
    return cells, runs


def test_a_cell_whose_node_dies_resumes_on_another_node_and_reports_as_a_single_node_run(
        nodes, tmp_path):
    out, ref_out = tmp_path / "cluster", tmp_path / "single"
    single = _single_node_run(ref_out)
    try:
        killed = {}

        def kill_victims_node(kind, name, state):
            if kind == "progress" and name == VICTIM and not killed and state["step"] >= 22:
                nodes.remove_id(state["node"])
                killed.update(state, saved=checkpoint.load(out / VICTIM / checkpoint.LAST)["step"])

        events, log = [], io.StringIO()
        started = time.monotonic()
        cells = expand(select([BMNIST], [STRUCTURE], list(METHODS), [2]), [0])
        request = Request(cells, out, config="smoke", overrides=SMALL, steps=STEPS)
        outcomes, report = reproduce(
            request, Hardware(cpus_per_cell=1), reporter=Reporter(log, mode="lines",
                                                                  interval_s=0.0),
            on_event=lambda *e: (events.append(e), kill_victims_node(*e)))
        cluster_s = time.monotonic() - started
        _, err = single.communicate(timeout=WAIT_S)
        assert single.returncode == 0, err
    finally:
        single.kill()
        single.communicate()
        shutil.rmtree(single.ray_tmp, ignore_errors=True)
        nodes.add("d2", num_cpus=1)  # for the tests after this one
    print(f"cluster run with a killed node: {cluster_s:.1f} s")
    assert killed, "the victim finished before its node could be removed"
    text = log.getvalue()
    assert [o.status for o in outcomes] == ["done"] * 3, text
    assert "FAILED" not in text and "attempt 2 (its worker or node died)" in text
    first, retry = [e[2] for e in events if e[0] == "started" and e[1] == VICTIM]
    assert (first["attempt"], retry["attempt"]) == (1, 2) and first["node"] == killed["node"]
    assert retry["node"] != killed["node"]  # the retry ran on another node, alive
    # it resumed from the checkpoint the dead attempt left, not from step 0
    assert 20 <= killed["saved"] < STEPS and retry["initial"] == killed["saved"]
    steps = [int(r["step"]) for r in metrics.read(out / VICTIM / "metrics.csv")]
    assert steps == list(range(1, STEPS + 1))  # no step lost or repeated
    ours, reference = _numbers(report), _numbers(ref_out / "reproduction.md")
    assert len(ours[0]) == 3 and len(ours[1]) == 3
    assert ours == reference
    for cell in cells:  # and to the last bit, not only as printed
        mine, theirs = (json.loads((o / cell.name / "results.json").read_text())
                        for o in (out, ref_out))
        for key in ("test_nll", "valid_nll", "log_z", "log_z_stderr", "log_z_upper"):
            assert mine[key] == theirs[key], (cell.name, key)


def _hold(barrier, n: int) -> tuple[list, str]:
    """A stand-in for a cell: wait until n of us run at once; the GPU Ray gave this task."""
    ray.get(barrier.arrive.remote())
    deadline = time.monotonic() + WAIT_S
    while ray.get(barrier.count.remote()) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    return ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES", "")


class Barrier:
    def __init__(self):
        self.n = 0

    def arrive(self):
        self.n += 1

    def count(self):
        return self.n


def test_cells_per_gpu_three_share_each_of_two_gpus(nodes):
    nodes.add("gpu", num_cpus=6, num_gpus=2)  # GPUs Ray counts; there is no CUDA behind them
    try:
        hw = Hardware(device="cuda", cells_per_gpu=3)
        resources, hardware, threads = cell_resources(hw, 6, ray.cluster_resources(),
                                                      largest_node_cpus(ray))
        assert (resources, hardware, threads) == ({"num_cpus": 1, "num_gpus": 0.3333},
                                                  {"device": "cuda"}, 1)
        barrier = ray.remote(num_cpus=0)(Barrier).remote()
        task = ray.remote(**task_options(hw, resources))(_hold).options(**resources)
        got = ray.get([task.remote(barrier, 6) for _ in range(6)], timeout=WAIT_S)
        assert ray.get(barrier.count.remote()) == 6
        ids = sorted(str(i) for gpu_ids, _ in got for i in gpu_ids)
        assert ids == ["0", "0", "0", "1", "1", "1"]  # three cells on each GPU
        assert all(visible == ",".join(map(str, gpu_ids)) for gpu_ids, visible in got)
    finally:
        nodes.cluster.remove_node(nodes.node.pop("gpu"))


def _unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _alive(resource: str) -> list[dict]:
    return [n for n in ray.nodes() if n["Alive"] and n["Resources"].get(resource)]


def test_a_node_that_does_not_see_the_output_folder_is_one_line_and_exit_2(nodes, tmp_path,
                                                                           capsys):
    if not _unshare_works():
        pytest.skip("unprivileged user and mount namespaces are not allowed here")
    hidden = tmp_path / "driver-only"
    hidden.mkdir()
    ray_bin = str(Path(sys.executable).with_name("ray"))
    start = (f"mount -t tmpfs tmpfs {hidden} && exec {ray_bin} start --block --address "
             f"{nodes.cluster.address} --num-cpus 1 --resources '{{\"island\": 1}}'")
    island = subprocess.Popen(["unshare", "-rm", "sh", "-c", start], env=dict(os.environ),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + WAIT_S
        while not _alive("island"):
            assert island.poll() is None, "the island node did not start"
            assert time.monotonic() < deadline, "the island node did not join"
            time.sleep(0.2)
        node_id = _alive("island")[0]["NodeID"]
        out = hidden / "rep"
        assert main(["reproduce", *_cell_flags(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert re.search(rf"the output folder {re.escape(str(out))} is not visible from node "
                         rf"{node_id[:12]} \(.*\): reproduce on a cluster needs a shared file "
                         "system", err), err
        assert not out.exists() and list(hidden.iterdir()) == []  # nothing written
    finally:
        os.killpg(island.pid, signal.SIGTERM)
        try:
            island.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(island.pid, signal.SIGKILL)
            island.wait()
        deadline = time.monotonic() + WAIT_S
        while _alive("island") and time.monotonic() < deadline:  # the others' probes skip it
            time.sleep(0.5)
