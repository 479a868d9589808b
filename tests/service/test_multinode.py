"""The service on a multi-node Ray cluster, simulated on this machine: `ray.cluster_utils.Cluster`
starts several raylets on loopback, each with its own custom resource, and the service is
pinned to node A by one (`dvae-q serve --resource`).

A trainer "on node B" is a Ray task pinned to B by B's resource that runs `dvae-q train`'s own
entry point (`dvae_q.cli.main.main`, so exit codes and stderr lines are the CLI's) with
`--sampler remote`, in a fresh worker process (max_calls=1). A task is used rather than a
driver subprocess because a trainer must live on its node: when the node is removed, its
workers die with it, as a trainer dies with its machine. Drivers started beside the test would
all attach to the head's raylet (several raylets on one address cannot be told apart by a
driver), so killing "node B" would not touch them.

Bit-identity is checked as in test_service.py: the final checkpoint's model, optimiser and
chains against a run of the same seed with the local `gibbs` sampler (packing off).
"""

import contextlib
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from clusters import private_cluster
from runs import assert_same_run

from dvae_q.cli.main import main
from dvae_q.training import checkpoint, metrics

ray = pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[2]
# one Ray-heavy group at a time: a multi-node cluster beside the other Ray tests on 2 cores
# slowed heads' start-up past Ray's own waits
pytestmark = [pytest.mark.xdist_group("ray_service"), pytest.mark.slow]
GIBBS = ["--set", "sampler_options.gibbs.num_chains=64", "--set", "sampler_options.gibbs.sweeps=5"]
STEPS = 30
# every 4th step: a restart then rebuilds a session up to 3 draws older than the trainer, which
# only the client's replay of those draws makes exact
CHECKPOINT_EVERY = 4
WAIT_S = 240  # the longest any one wait in these tests may take (a bounded poll)


def _train_args(run: Path, seed: int, *extra: str) -> list[str]:
    return ["train", "--config", "smoke", "--run-dir", str(run), "--quiet", "--seed", str(seed),
            "--set", f"steps={STEPS}", "--set", f"checkpoint_every={CHECKPOINT_EVERY}",
            "--set", "eval_every=1000000", "--set", "log_every=1", "--set", "eval_limit=20",
            "--set", "eval_iw_samples=4", "--set", "final_iw_samples=4", *extra]


def _remote(service: str, *extra: str) -> list[str]:
    return ["--sampler", "remote", "--set", f"sampler_options.remote.service={service}",
            "--set", "sampler_options.remote.reconnect_timeout_s=120", *extra]


def _trainer(argv: list[str]) -> tuple[int, str, str]:
    """The body of a trainer task: `dvae-q train ARGV` in this worker; (exit code, stderr,
    the node it ran on)."""
    import torch as worker_torch

    from dvae_q.cli.main import main as cli_main

    worker_torch.set_num_threads(1)  # as the reference runs (OMP_NUM_THREADS=1): same rounding
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli_main(argv)
    return code, err.getvalue(), ray.get_runtime_context().get_node_id()


def _pinned(client: int, call: int):
    """Biases of ±800 pin every unit (σ(±800) is exactly 1 or 0 in float32): the samples are
    the bits of (client, call), so a lost or mixed-up reply shows."""
    from samplers import BipartiteModel

    bits = [[float((v >> i) & 1) for i in range(16)] for v in (client * 4099 + 1, call)]
    left, right = (torch.tensor(b) * 1600 - 800 for b in bits)
    return BipartiteModel(left, right, torch.zeros(16, 16))


def _load_client(service: str, client: int, calls: int, limit_s: float) -> dict:
    """One load client in its own worker process: up to `calls` draws of its pinned models,
    for at most `limit_s`; the replies that did not match, and the node it ran on."""
    import samplers

    torch.set_num_threads(1)
    sampler = samplers.get("remote", service=service, label=f"load-{client}")
    wrong, done = [], 0
    deadline = time.monotonic() + limit_s
    try:
        while done < calls and time.monotonic() < deadline:
            model = _pinned(client, done)
            z = sampler.sample(model, 64)
            want = torch.cat([model.a_left > 0, model.a_right > 0]).float()
            if not torch.equal(z, want.expand(64, -1)):
                wrong.append(done)
            done += 1
    finally:
        sampler.close()
    return {"client": client, "calls": done, "wrong": wrong,
            "node": ray.get_runtime_context().get_node_id()}


class Nodes:
    """The test cluster: a head without CPUs (the driver's), trainer nodes b and c, and the
    service's node(s), added and removed by the tests."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.node = {}

    def add(self, name: str, cpus: int = 1, **resources) -> None:
        self.node[name] = self.cluster.add_node(num_cpus=cpus, resources=resources or None)

    def id(self, name: str) -> str:
        return self.node[name].node_id

    def remove(self, name: str) -> None:
        self.cluster.remove_node(self.node.pop(name))

    def load_client(self, node: str, *args):
        task = ray.remote(max_retries=0, max_calls=1)(_load_client)
        return task.options(num_cpus=1, resources={f"node_{node}": 1}).remote(*args)

    def trainer(self, node: str, argv: list[str]):
        task = ray.remote(max_retries=0, max_calls=1)(_trainer)
        return task.options(num_cpus=1, resources={f"node_{node}": 1}).remote(argv)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """A multi-node cluster for this module (see tests/clusters.py), with trainer nodes b and c;
    torn down afterwards."""
    from samplers.service import NAMESPACE

    with private_cluster(sys.modules[__name__], tmp_path_factory.mktemp("token"), NAMESPACE,
                         "dqm") as cluster:
        found = Nodes(cluster)
        for name in ("b", "c"):
            found.add(name, cpus=8, **{f"node_{name}": 8})
        yield found


@pytest.fixture
def service(nodes, capsys):
    """service(name, *flags, packing=False): node A (resource svc) and a gibbs service pinned
    to it; stopped, and its nodes removed, afterwards."""
    from samplers.service import actor

    started = []

    def start(name, *flags, packing=False):
        nodes.add("a", svc=1)
        argv = ["serve", "--sampler", "gibbs", "--name", name, "--num-cpus", "1",
                "--resource", "svc=1", *GIBBS, *flags, *([] if packing else ["--no-packing"])]
        assert main(argv) == 0, capsys.readouterr().err
        started.append(name)
        return name

    yield start
    for name in started:
        if name in actor.names():
            actor.stop(name)
    for name in [n for n in nodes.node if n.startswith("a")]:
        nodes.remove(name)


@pytest.fixture(scope="module")
def local_runs(tmp_path_factory):
    """The references: trainings with the local `gibbs` sampler, seeds 1 and 2, in
    subprocesses started at once; waiting for them is the caller's."""
    root = tmp_path_factory.mktemp("local")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = {s: subprocess.Popen([sys.executable, "-m", "dvae_q.cli.main",
                                  *_train_args(root / f"seed{s}", s, "--sampler", "gibbs")],
                                 cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True) for s in (1, 2)}

    done = {}

    def wait(seed):
        if seed not in done:
            _, err = procs[seed].communicate(timeout=WAIT_S)
            assert procs[seed].returncode == 0, err
            done[seed] = root / f"seed{seed}"
        return done[seed]

    yield wait
    for proc in procs.values():
        proc.kill()
        proc.communicate()


def _rows(run: Path) -> list[dict]:
    try:
        return metrics.read(run / "metrics.csv")
    except (OSError, ValueError, KeyError):  # not written yet, or a row being written
        return []


def _wait_for_rows(runs: list[Path], rows: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while not all(len(_rows(run)) >= rows for run in runs):
        assert time.monotonic() < deadline, f"trainers did not reach {rows} steps"
        time.sleep(0.05)


def _result(ref) -> tuple[int, str, str]:
    return ray.get(ref, timeout=WAIT_S)


def _assert_died_with_its_node(ref) -> None:
    try:
        ray.get(ref, timeout=WAIT_S)
    except ray.exceptions.GetTimeoutError:
        raise AssertionError("the trainer outlived its node") from None
    except ray.exceptions.RayError:
        return
    raise AssertionError("the trainer finished before its node was removed")


def _service_node(name: str) -> str:
    from samplers.service import actor

    return actor.call(actor.find(name), "status")["node"]


def _column(run: Path, key: str) -> list[float]:
    return [float(row[key]) for row in _rows(run) if row.get(key) not in (None, "")]


def test_two_trainers_on_other_nodes_match_local_runs_bit_for_bit(nodes, service, local_runs,
                                                                  tmp_path, capsys):
    name = service("spread")
    runs = {s: tmp_path / f"seed{s}" for s in (1, 2)}
    refs = [nodes.trainer(node, _train_args(runs[s], s, *_remote(name)))
            for node, s in (("b", 1), ("c", 2))]
    ran_on = []
    for ref in refs:
        code, err, node = _result(ref)
        assert code == 0, err
        ran_on.append(node)
    assert ran_on == [nodes.id("b"), nodes.id("c")]
    assert _service_node(name) == nodes.id("a")
    assert main(["service", "status", name]) == 0
    assert f"node {nodes.id('a')[:12]}, resources svc=1" in capsys.readouterr().out
    for seed, run in runs.items():
        assert_same_run(local_runs(seed), run, STEPS)


def test_killed_trainer_resumes_exactly_on_another_node(nodes, service, local_runs, tmp_path):
    """A trainer on node b is killed (its node removed); resumed on node c, it ends where an
    uninterrupted run ends."""
    name = service("resume")
    run = tmp_path / "killed"
    ref = nodes.trainer("b", _train_args(run, 1, *_remote(name)))
    _wait_for_rows([run], STEPS // 2)
    nodes.remove("b")
    _assert_died_with_its_node(ref)
    nodes.add("b", cpus=8, node_b=8)  # for the tests after this one
    reached = checkpoint.load(run / checkpoint.LAST)["step"]
    assert reached < STEPS, "the kill must interrupt the run"
    code, err, _ = _result(nodes.trainer("c", ["train", "--resume", str(run), "--quiet"]))
    assert code == 0, err
    assert_same_run(local_runs(1), run, STEPS)


def test_service_node_killed_with_restarts_trainers_reconnect_exactly(nodes, service, local_runs,
                                                                      tmp_path):
    """Node A dies mid-training; Ray restarts the service on A' (same resource); each trainer
    rebuilds its session from its last saved state plus the draws since (replayed) and ends
    bit-identical to an uninterrupted local run."""
    name = service("phoenix", "--max-restarts", "2")
    nodes.add("a2", svc=1)  # where Ray can bring it back
    runs = {s: tmp_path / f"seed{s}" for s in (1, 2)}
    refs = [nodes.trainer(node, _train_args(runs[s], s, *_remote(name)))
            for node, s in (("b", 1), ("c", 2))]
    _wait_for_rows(list(runs.values()), 6)
    nodes.remove("a")
    for ref in refs:
        code, err, _ = _result(ref)
        assert code == 0, err
    assert _service_node(name) == nodes.id("a2")
    for seed, run in runs.items():
        reconnects = _column(run, "sampler/service_reconnects")
        assert reconnects[-1] == 1 and reconnects[0] == 0, "the kill must interrupt the run"
        assert_same_run(local_runs(seed), run, STEPS)


def test_service_node_killed_without_restarts_stops_trainers_with_exit_1(nodes, service,
                                                                         tmp_path):
    name = service("mortal")
    runs = {s: tmp_path / f"seed{s}" for s in (1, 2)}
    long = ["--set", "steps=100000"]
    refs = [nodes.trainer(node, _train_args(runs[s], s, *_remote(name), *long))
            for node, s in (("b", 1), ("c", 2))]
    _wait_for_rows(list(runs.values()), CHECKPOINT_EVERY + 1)
    nodes.remove("a")
    for run, ref in zip(runs.values(), refs):
        code, err, _ = _result(ref)
        lines = err.strip().splitlines()
        assert code == 1 and len(lines) == 1, err
        assert "sampling service 'mortal' is gone" in lines[0]
        assert str(run / checkpoint.LAST) in lines[0]
        assert checkpoint.load(run / checkpoint.LAST)["step"] >= CHECKPOINT_EVERY


def test_trainer_node_killed_its_session_is_reclaimed_the_other_finishes(nodes, service,
                                                                         local_runs, tmp_path):
    from samplers.service import actor

    name = service("reaper")
    runs = {s: tmp_path / f"seed{s}" for s in (1, 2)}
    short = ["--set", "sampler_options.remote.session_timeout_s=3"]
    doomed = nodes.trainer("b", _train_args(runs[1], 1, *_remote(name, *short),
                                            "--set", "steps=100000"))
    survivor = nodes.trainer("c", _train_args(runs[2], 2, *_remote(name, *short)))
    _wait_for_rows([runs[1]], 3)
    nodes.remove("b")
    _assert_died_with_its_node(doomed)
    nodes.add("b", cpus=8, node_b=8)
    code, err, _ = _result(survivor)
    assert code == 0, err
    assert_same_run(local_runs(2), runs[2], STEPS)
    deadline = time.monotonic() + WAIT_S
    while True:  # the survivor closed its session; the dead trainer's goes after 3 s unheard
        status = actor.call(actor.find(name), "status")
        if not status["sessions"]:
            break
        assert time.monotonic() < deadline, status["sessions"]
        time.sleep(0.2)
    assert status["counters"]["sessions_dropped"] == 1
    assert status["counters"]["sessions_opened"] == 2


def test_sixteen_clients_on_two_nodes_lose_and_mix_nothing(nodes, service):
    """16 clients, each its own process, 8 on each trainer node, against one packed gibbs
    service for a bounded time: every call answered with its own pattern, and the service
    counted exactly the calls the clients made."""
    from samplers.service import actor

    # packing on: it is what could mix sessions
    name = service("load", "--set", "sampler_options.gibbs.sweeps=2", packing=True)
    refs = [nodes.load_client("bc"[c % 2], name, c, 25, 60.0) for c in range(16)]
    results = [ray.get(ref, timeout=WAIT_S) for ref in refs]
    assert [r["wrong"] for r in results] == [[]] * 16
    assert {r["node"] for r in results} == {nodes.id("b"), nodes.id("c")}
    made = sum(r["calls"] for r in results)
    assert all(r["calls"] >= 1 for r in results)
    status = actor.call(actor.find(name), "status")
    assert status["total"]["calls"] == made and status["total"]["samples"] == 64 * made
    c = status["counters"]
    # every request went through exactly one device call: alone, or packed with others
    assert c["device_calls"] - c["packed_calls"] + c["packed_requests"] == made
    assert c["packed_calls"] > 0  # concurrent clients did meet in packed calls
