"""`dvae-q reproduce`: cell selection, the poster's table, the report's numbers and ranking
check against independent computations, and two cells on a local Ray instance where one is
killed mid-run and the rerun resumes it from its checkpoint while the finished one is skipped."""

import csv
import hashlib
import io
import itertools
import json
import os
import signal

import numpy as np
import pytest
import yaml

from dvae_q.cli.main import main
from dvae_q.progress import Reporter
from dvae_q.table import paper as paper_table
from dvae_q.table import ranking
from dvae_q.table import report as reproduction_report
from dvae_q.table.cells import Request, expand, parse_variant, plan, select, steps_for
from dvae_q.table.reproduce import reproduce
from dvae_q.table.scheduler import Hardware, cell_resources
from dvae_q.training.rundir import RunDir

BMNIST = "binarized_mnist"

# --- the poster's table -----------------------------------------------------------------------


def test_poster_table_has_48_cells_with_dvaes_power_best_in_every_row():
    assert len(paper_table.TABLE) == 48 and len(paper_table.poster_cells()) == 48
    assert paper_table.published(BMNIST, "dvaes_power", 25) == 82.85
    assert paper_table.published("omniglot", "dvae_spike_exp", 1) == 103.10
    assert paper_table.published(BMNIST, "dvaes_power", 2) is None
    # the poster marks column H (DVAE# power) as the best of every row
    for dataset, k in itertools.product(("binarized_mnist", "omniglot"), (1, 5, 25)):
        row = paper_table.row(dataset, k)
        assert len(row) == 8 and min(row, key=row.get) == "dvaes_power"


# --- selecting cells ------------------------------------------------------------------------


def test_budget_is_a_fraction_of_the_paper_steps():
    assert steps_for(None, 0.01) == 10_000 and steps_for(200, None) == 200
    assert steps_for(None, None) is None
    for bad in ((1, 0.1), (None, 0.0), (None, 2.0), (0, None)):
        with pytest.raises(ValueError):
            steps_for(*bad)


def test_poster_table_dry_run_lists_48_cells(capsys, tmp_path):
    assert main(["reproduce", "--table", "poster", "--budget", "0.01", "--out",
                 str(tmp_path / "r"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "48 cells: 0 complete, 0 to resume, 48 to start"
    cells = [line for line in lines[:-1] if line.startswith("new")]
    assert len(cells) == 48 and all("(10,000 steps" in c and "4-layer-nonlin" in c for c in cells)
    assert not (tmp_path / "r").exists()  # a dry run writes nothing


def test_a_variant_adds_one_ablation_cell_with_its_keys(tmp_path):
    variant = parse_variant("exact_grad:method=dvaes_power,power_exact_gradient=true")
    cells = expand(select([BMNIST], ["1-layer-nonlin"], ["dvaes_power", "dvaes_gi"], [1]),
                   [0, 1], [variant])
    names = [c.name for c in cells]
    assert names == [
        "binarized_mnist-1-layer-nonlin-dvaes_gi-k1-seed0",
        "binarized_mnist-1-layer-nonlin-dvaes_gi-k1-seed1",
        "binarized_mnist-1-layer-nonlin-dvaes_power-k1-seed0",
        "binarized_mnist-1-layer-nonlin-dvaes_power-k1-seed1",
        "binarized_mnist-1-layer-nonlin-dvaes_power-k1-exact_grad-seed0",
        "binarized_mnist-1-layer-nonlin-dvaes_power-k1-exact_grad-seed1",
    ]
    planned = plan(Request(cells, tmp_path / "r", variants=[variant], steps=300,
                           overrides=["final_iw_samples=1000"]))
    configs = {p.cell.name: p.config for p in planned}
    assert configs[names[4]]["power_exact_gradient"] is True
    assert configs[names[2]]["power_exact_gradient"] is False
    assert {c["steps"] for c in configs.values()} == {300}
    assert {c["final_iw_samples"] for c in configs.values()} == {1000}
    assert configs[names[1]]["seed"] == 1 and configs[names[0]]["method"] == "dvaes_gi"
    # a comma inside a value does not split it: only ",KEY=" starts a new pair
    lists = parse_variant("lr:lr_boundaries=[0.1,0.5],lr_factors=[1,1,1]")
    assert lists.overrides == ("lr_boundaries=[0.1,0.5]", "lr_factors=[1,1,1]")


def test_cells_take_an_equal_share_of_cpus_or_one_gpu_each():
    hw = Hardware()
    assert cell_resources(hw, 9, {"CPU": 2.0}, 2) == ({"num_cpus": 1, "num_gpus": 0}, {}, 1)
    assert cell_resources(hw, 2, {"CPU": 16.0}, 16) == ({"num_cpus": 8, "num_gpus": 0}, {}, 8)
    # a 2-node cluster of 4 CPUs each: a share never exceeds the largest node
    assert cell_resources(hw, 1, {"CPU": 8.0}, 4)[2] == 4
    gpu = cell_resources(hw, 48, {"CPU": 16.0, "GPU": 4.0}, 16)
    assert gpu == ({"num_cpus": 1, "num_gpus": 1}, {"device": "cuda"}, 1)
    assert cell_resources(Hardware(num_gpus=0), 48, {"CPU": 16.0, "GPU": 4.0}, 16)[1] == {}
    with pytest.raises(ValueError, match="largest Ray node has 4 CPUs"):
        cell_resources(Hardware(cpus_per_cell=6), 2, {"CPU": 8.0}, 4)


@pytest.mark.parametrize("argv, message", [
    (["--table", "poster", "--dataset", BMNIST], "--table poster selects the cells itself"),
    (["--dataset", BMNIST, "--structure", "1-layer-nonlin", "--method", "all"], "needs --k"),
    (["--table", "poster", "--steps", "10", "--budget", "0.1"], "--steps or --budget"),
    (["--table", "poster", "--set", "method=dvaes_gi"], "--set method: chosen by --method"),
    (["--table", "poster", "--set", "stepz=3"], "unknown config key 'stepz'"),
    (["--table", "poster", "--variant", "bad name:k=1"], "--variant expects NAME:KEY=VALUE"),
    (["--table", "poster", "--variant", "v:seed=3"], "seeds are chosen with --seeds"),
    (["--table", "poster", "--seeds", "0,x"], "--seeds expects integers"),
    (["--table", "poster", "--num-cpus", "0"], "--num-cpus must be >= 1"),
    (["--table", "poster", "--set", "device=cuda"], "--set device: chosen by --device"),
    (["--table", "poster", "--device", "cuda", "--cells-per-gpu", "0"], "between 1 and 10000"),
    (["--table", "poster", "--cells-per-gpu", "2"], "give --device cuda with it"),
    (["--table", "poster", "--retries", "-1"], "--retries must be >= 0"),
    (["--table", "poster", "--address", "nowhere"], "is not host:port or ray://host:port"),
    (["--table", "poster", "--address", "127.0.0.1:1"], "nothing answers at Ray address"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    assert main(["reproduce", *argv, "--out", str(tmp_path / "r"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_a_run_directory_made_with_another_config_is_refused(capsys, tmp_path):
    out = tmp_path / "r"
    argv = ["reproduce", "--config", "smoke", "--dataset", BMNIST, "--structure",
            "1-layer-nonlin", "--method", "dvaes_power", "--k", "2", "--out", str(out)]
    cells = expand(select([BMNIST], ["1-layer-nonlin"], ["dvaes_power"], [2]), [0])
    made = plan(Request(cells, out, config="smoke", steps=7))[0]
    made.run_dir.mkdir(parents=True)
    (made.run_dir / "config.yaml").write_text(yaml.safe_dump(made.config))
    assert main([*argv, "--steps", "7", "--dry-run"]) == 0  # the same flags: it would resume
    assert capsys.readouterr().out.startswith("resume ")
    assert main([*argv, "--steps", "40", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "was made with another config" in err and "steps" in err


# --- the report -------------------------------------------------------------------------------


def _results(dataset, structure, method, k, nll, seed=0, **extra):
    return {"dataset": dataset, "dataset_variant": extra.pop("variant_label", dataset),
            "structure": structure, "method": method, "k": k, "steps": 10_000, "test_nll": nll,
            "valid_nll": nll + 1, "log_z": 200.0 + seed, "log_z_stderr": 0.05,
            "iw_samples": {"valid": 100, "test": 1000}, "eval_limit": None, "train_limit": None,
            "wall_time_s": 600.0, "best_step": 10_000, **extra}


def _folder(tmp_path, runs: list[tuple[dict, dict]]):
    """An output folder with a cells.json and a results.json per (cell, results)."""
    out = tmp_path / "out"
    cells = {}
    for cell, results in runs:
        name = (f"{cell['dataset']}-{cell['structure']}-{cell['method']}-k{cell['k']}"
                f"{'-' + cell['variant'] if cell.get('variant') else ''}-seed{cell['seed']}")
        cells[name] = {"variant": None, "variant_overrides": [], **cell}
        (out / name).mkdir(parents=True)
        (out / name / "results.json").write_text(json.dumps(results))
    (out / "cells.json").write_text(json.dumps({"cells": cells, "commands": ["dvae-q x"]}))
    return out


def _cell(dataset, structure, method, k, seed=0, variant=None):
    return {"dataset": dataset, "structure": structure, "method": method, "k": k, "seed": seed,
            "variant": variant}


def _brute_force_ranks(ours, poster):
    """Kendall's τ from concordant/discordant pairs and Spearman's ρ from rank differences
    (no ties), computed by hand as the reference."""
    n = len(ours)
    pairs = list(itertools.combinations(range(n), 2))
    signs = [np.sign(ours[i] - ours[j]) * np.sign(poster[i] - poster[j]) for i, j in pairs]
    tau = (signs.count(1) - signs.count(-1)) / len(pairs)
    rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    d = rank(ours) - rank(poster)
    return tau, 1 - 6 * float((d**2).sum()) / (n * (n**2 - 1)), signs.count(-1)


def test_rank_check_matches_brute_force_on_random_orders():
    rng = np.random.default_rng(3)
    poster = paper_table.row(BMNIST, 5)
    methods = list(paper_table.COLUMNS)
    for _ in range(20):
        values = rng.normal(95, 2, size=8)
        ours = dict(zip(methods, values))
        check = ranking.rank_check(ours, poster)
        tau, rho, discordant = _brute_force_ranks(values, np.array([poster[m] for m in methods]))
        assert check.kendall_tau == pytest.approx(tau) and check.spearman_rho == pytest.approx(rho)
        assert len(check.inversions) == discordant
        for inv in check.inversions:
            assert poster[inv.better] < poster[inv.worse] and ours[inv.better] > ours[inv.worse]


def test_report_shows_published_numbers_gaps_and_one_inversion(tmp_path):
    # ours = poster + 10 nats everywhere, except H and G swapped: exactly one inversion
    poster = paper_table.row(BMNIST, 1)
    ours = {m: v + 10 for m, v in poster.items()}
    ours["dvaes_power"], ours["dvaes_unexp"] = ours["dvaes_unexp"], ours["dvaes_power"]
    runs = [(_cell(BMNIST, "4-layer-nonlin", m, 1), _results(BMNIST, "4-layer-nonlin", m, 1, v))
            for m, v in ours.items() if m != "dvaes_gi"]
    # two seeds for column D, half a nat either side of its value: mean and sd over seeds
    runs += [(_cell(BMNIST, "4-layer-nonlin", "dvaes_gi", 1, seed=s),
              _results(BMNIST, "4-layer-nonlin", "dvaes_gi", 1, ours["dvaes_gi"] + d, seed=s))
             for s, d in ((0, -0.5), (1, 0.5))]
    out = _folder(tmp_path, runs)
    path = reproduction_report.write(out)
    text = path.read_text()
    for m, v in poster.items():  # every published number of the row, beside its gap
        gap = ours[m] - v
        row = next(line for line in text.splitlines() if f"| {paper_table.LETTERS[m]} {m} |" in line)
        assert f"| {v:.2f} | {gap:+.2f} |" in row
    assert "| 94.30 ± 0.71 (n=2) |" in text  # 93.80 and 94.80: sd = 1/√2
    # one adjacent swap of 8: τ = (27 − 1)/28, ρ = 1 − 6·2/(8·63)
    assert f"Kendall τ = {26 / 28:.3f}, Spearman ρ = {1 - 12 / 504:.3f}" in text
    assert "1 of 28 pairs in the other order" in text
    assert "H (dvaes_power) before G (dvaes_unexp) on the poster (by 0.17)" in text
    assert "one seed: no spread to judge it by" in text
    assert (out / "reproduction.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_flags_what_differs_from_the_poster_and_shows_a_bracket(tmp_path):
    runs = [
        (_cell("omniglot", "1-layer-nonlin", "dvaes_power", 5),
         _results("omniglot", "1-layer-nonlin", "dvaes_power", 5, 110.0, log_z_upper=200.4,
                  variant_label="OMNIGLOT-28", eval_limit=500)),
        (_cell("omniglot", "1-layer-nonlin", "dvaes_power", 5, variant="exact_grad"),
         _results("omniglot", "1-layer-nonlin", "dvaes_power", 5, 109.0, log_z_upper=200.2,
                  variant_label="OMNIGLOT-28")),
    ]
    out = _folder(tmp_path, runs)
    (out / "omniglot-1-layer-nonlin-dvaes_gi-k5-seed0").mkdir()  # killed before finishing
    manifest = json.loads((out / "cells.json").read_text())
    manifest["cells"]["omniglot-1-layer-nonlin-dvaes_gi-k5-seed0"] = _cell(
        "omniglot", "1-layer-nonlin", "dvaes_gi", 5)
    (out / "cells.json").write_text(json.dumps(manifest))
    text = reproduction_report.write(out).read_text()
    assert "OMNIGLOT-28" in text and "10,000 (1 %) of the paper's 1M steps" in text
    assert "Cells of 1-layer-nonlin (marked †)" in text and "| 99.24 † | +10.76 |" in text
    assert "only the first 500 test images" in text and "1000 importance samples" in text
    # the bracket: NLL moves one for one with log Z, so the upper end is 110 + 0.4
    assert "log Z ≤ 200.40, NLL [110.00, 110.40]" in text
    # a variant is not a poster cell: no published number, compared with its base cell
    assert "dvaes_power [exact_grad] | 5 | 10,000 | 109.00 |" in text
    assert "109.00 against 110.00 without the variant (-1.00 nats)" in text
    assert "omniglot-1-layer-nonlin-dvaes_gi-k5-seed0: not finished (rerun to resume)" in text


# --- two cells on Ray, one killed -------------------------------------------------------------

ray_group = pytest.mark.xdist_group("ray_service")  # one Ray at a time on one xdist worker
STEPS = 120
SMALL = ["checkpoint_every=10", "log_every=1", "eval_every=1000000", "eval_limit=20",
         "eval_iw_samples=4", "final_iw_samples=4", "tensorboard=false"]
VICTIM = "binarized_mnist-1-layer-nonlin-dvaepp_power-k2-seed0"
SURVIVOR = "binarized_mnist-1-layer-nonlin-dvaes_power-k2-seed0"


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A bounded local Ray instance (2 CPUs) for this module, shut down after it. Its workers
    inherit this environment, so they get the test cache folder, not the user's."""
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DVAEQ_CACHE_DIR", str(tmp_path_factory.mktemp("ray-cache")))
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
        try:
            yield ray
        finally:
            ray.shutdown()


def _files(path):
    """{relative path: (sha256, mtime_ns)} of every file under path."""
    return {str(f.relative_to(path)): (hashlib.sha256(f.read_bytes()).hexdigest(),
                                       f.stat().st_mtime_ns)
            for f in sorted(path.rglob("*")) if f.is_file()}


def _metric_rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [(int(r["step"]), r["wall_time_s"], r["loss"]) for r in csv.DictReader(handle)]


def _run_killing_the_victim(request) -> int:
    """Run both cells, SIGKILL the worker process training the victim once it is past its
    step-20 checkpoint; the victim's checkpointed step."""
    from dvae_q.training import checkpoint

    killed = {}

    def kill_victim(kind, name, state):
        if kind == "progress" and name == VICTIM and not killed and state["step"] >= 22:
            os.kill(state["pid"], signal.SIGKILL)
            killed.update(state)

    log = io.StringIO()
    # no retries: the killed cell stays failed, and the rerun is what resumes it
    outcomes, _ = reproduce(request, Hardware(retries=0),
                            reporter=Reporter(log, mode="lines", interval_s=0.0),
                            on_event=kill_victim)
    status = {o.cell.name: o for o in outcomes}
    assert killed, "the victim finished before it could be killed"
    assert status[SURVIVOR].status == "done" and status[VICTIM].status == "failed"
    text = log.getvalue()
    assert f"FAILED {VICTIM}: its worker process died" in text and f"done {SURVIVOR}" in text
    assert "running=" in text and "queued=" in text and "2 cells:" in text
    assert (request.out / "errors" / f"{VICTIM}.txt").is_file()
    saved = checkpoint.load(request.out / VICTIM / checkpoint.LAST)["step"]
    assert 20 <= saved < STEPS and saved % 10 == 0
    return saved


def _check_a_locked_cell_fails_alone(out, capsys):
    """While another process holds the victim's run directory, the command fails that cell in
    one line with exit status 1 and leaves both directories as they were."""
    holder = RunDir(out / VICTIM)
    holder.lock()  # as the directory's owner it removes a temporary file the kill left behind
    before = _files(out)
    try:
        assert main(_cli(out)) == 1
    finally:
        holder.unlock()
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and f"FAILED {VICTIM}: BadInput: run directory" in err
    assert "1 of 2 cells failed" in err and "in use by another process" in err
    after = _files(out)
    assert all(after[f] == before[f] for f in before if f.startswith((VICTIM, SURVIVOR)))


@ray_group
def test_a_killed_cell_resumes_from_its_checkpoint_and_a_finished_one_is_skipped(
        local_ray, tmp_path, capsys):
    out = tmp_path / "rep"
    cells = expand(select([BMNIST], ["1-layer-nonlin"], ["dvaes_power", "dvaepp_power"], [2]),
                   [0])
    request = Request(cells, out, config="smoke", overrides=SMALL, steps=STEPS)
    saved = _run_killing_the_victim(request)
    orphan = out / VICTIM / ".checkpoint_last.pt.killed.tmp"  # as if the kill hit a save
    orphan.write_bytes(b"half a checkpoint")
    before_rows = [r for r in _metric_rows(out / VICTIM) if r[0] <= saved]
    survivor_files = _files(out / SURVIVOR)
    _check_a_locked_cell_fails_alone(out, capsys)

    events = []
    second, report = reproduce(request, on_event=lambda *e: events.append(e))
    status = {o.cell.name: o for o in second}
    assert status[SURVIVOR].status == "skipped" and _files(out / SURVIVOR) == survivor_files
    assert status[VICTIM].status == "done" and status[VICTIM].resumed_from == saved
    started = [e for e in events if e[0] == "started"]
    # only the victim ran, and its training loop began at the checkpoint's step, not at 0
    assert [(e[1], e[2]["initial"]) for e in started] == [(VICTIM, saved)]
    rows = _metric_rows(out / VICTIM)
    assert [r[0] for r in rows] == list(range(1, STEPS + 1))  # no step lost or repeated
    assert [r for r in rows if r[0] <= saved] == before_rows  # the first attempt's rows kept
    results = json.loads((out / VICTIM / "results.json").read_text())
    assert results["steps"] == STEPS and results["method"] == "dvaepp_power"
    assert not (out / "errors" / f"{VICTIM}.txt").exists() and not orphan.exists()
    assert "2 finished runs" in report.read_text() and "Unfinished" not in report.read_text()
    assert main(_cli(out)) == 0  # all complete: nothing runs
    assert "0 trained, 2 already complete, 0 failed" in capsys.readouterr().out


def _cli(out):
    return ["reproduce", "--config", "smoke", "--dataset", BMNIST, "--structure",
            "1-layer-nonlin", "--method", "dvaepp_power,dvaes_power", "--k", "2", "--steps",
            str(STEPS), *[x for item in SMALL for x in ("--set", item)], "--out", str(out),
            "--quiet"]


LOCAL_SOCKETS = r'''
import json, re, subprocess, sys
from pathlib import Path

import ray
from dvae_q.table.scheduler import Hardware, connected


def tree(root):
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" ", 1)
            children.setdefault(int(rest.rsplit(")", 1)[1].split()[1]), []).append(int(pid))
        except (OSError, IndexError, ValueError):
            pass
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo += children.get(pid, [])
    return found


with connected(Hardware(num_cpus=1, num_gpus=0)):
    @ray.remote
    def where():
        return ray.util.get_node_ip_address()

    ip = ray.get(where.remote())
    mine = tree(int(sys.argv[1]))
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    sockets = [line.split()[3] for line in out.splitlines()
               if {int(p) for p in re.findall(r"pid=(\d+)", line)} & mine]
    print(json.dumps({"ip": ip, "sockets": sockets}))
'''


@ray_group
def test_reproduces_local_ray_instance_listens_on_loopback_only(tmp_path):
    """The Ray instance `reproduce` starts for itself (no --address): its task runs on a node
    at 127.0.0.1, and every socket of its processes (the driver, GCS, raylet, agents,
    workers) listens on loopback only."""
    import subprocess
    import sys

    pytest.importorskip("ray")
    script = tmp_path / "local.py"
    script.write_text(LOCAL_SOCKETS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    import shutil
    import tempfile

    ray_tmp = tempfile.mkdtemp(prefix="dq", dir="/tmp")  # Ray's socket paths must be short
    env.update(HOME=str(tmp_path), RAY_TMPDIR=ray_tmp, OMP_NUM_THREADS="1")
    wrapper = ("import os, runpy, sys; sys.argv = ['x', str(os.getpid())]; "
               f"runpy.run_path({str(script)!r})")
    try:
        done = subprocess.run([sys.executable, "-c", wrapper], env=env, capture_output=True,
                              text=True, timeout=240)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["ip"] == "127.0.0.1"
    hosts = [s.rpartition(":")[0].strip("[]").removeprefix("::ffff:") for s in found["sockets"]]
    assert len(hosts) >= 3, found                     # gcs, raylet, workers at least
    assert all(h.startswith("127.") or h == "::1" for h in hosts), found
