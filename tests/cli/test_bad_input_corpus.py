"""The bad-input corpus (tests/bad_inputs/cases.yaml): every bad config, topology, data file,
run directory and argument list gives exit 2 (or 1 for runtime failures), exactly one line on
stderr, no traceback, no new directory, and the D-Wave token in no output and no file."""

import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import dvae_q
from dvae_q.cli.main import main

HERE = Path(__file__).resolve().parent / "bad_inputs"
CASES = yaml.safe_load((HERE / "cases.yaml").read_text())
SECRET = "DEV-dvaeqfake0secret0token0123456789abcdef"


class Evil:
    """Unpickling this runs `touch <marker>`: a payload a shared checkpoint could carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def unfinished_run(tmp_path_factory):
    """A smoke run stopped after 4 of 8 steps (results.json removed), with both checkpoints."""
    path = tmp_path_factory.mktemp("corpus") / "run"
    dvae_q.fit("smoke", {"steps": 4, "eval_every": 2}, run_dir=path)
    (path / "results.json").unlink()
    config = yaml.safe_load((path / "config.yaml").read_text())
    config["steps"] = 8
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _fill(value, places: dict):
    if isinstance(value, str):
        for key, text in places.items():
            value = value.replace("{" + key + "}", text)
        return value
    return [_fill(v, places) for v in value]


def _prepare_run(case, source: Path, target: Path, marker: Path, places: dict) -> None:
    shutil.copytree(source, target)
    for name, text in (case.get("run_files") or {}).items():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_text(_fill(text, places))
    if case.get("run_config"):
        config = yaml.safe_load((target / "config.yaml").read_text())
        config.update(case["run_config"])
        (target / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for name in case.get("evil") or []:
        torch.save({"model": Evil(marker), "step": 0}, target / name)


def _tree(root: Path) -> set:
    return {p.relative_to(root) for p in root.rglob("*") if p.is_dir()}


def _files_text(root: Path):
    for path in root.rglob("*"):
        if path.is_file():
            yield path, path.read_bytes()


@pytest.mark.parametrize("case", CASES, ids=[" ".join(map(str, c["argv"]))[:70] for c in CASES])
def test_bad_input_gives_one_line_and_its_exit_status(case, unfinished_run, tmp_path, monkeypatch,
                                                       capsys):
    work = tmp_path / "work"
    work.mkdir()
    run = tmp_path / "run"
    marker = work / "PWNED"
    places = {"in": str(HERE), "tmp": str(work), "run": str(run), "secret": SECRET}
    _prepare_run(case, unfinished_run, run, marker, places)
    monkeypatch.chdir(run if case.get("cwd") == "run" else work)
    if case.get("cwd") == "run":  # as `python -m` would: the working folder is importable
        monkeypatch.syspath_prepend(str(run))
    monkeypatch.setenv("DWAVE_API_TOKEN", SECRET)
    for key, value in (case.get("env") or {}).items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, _fill(value, places))
    before = _tree(tmp_path)

    code = main(_fill(case["argv"], places))

    out, err = capsys.readouterr()
    assert code == case["exit"], err
    assert err.count("\n") == 1 and err.startswith("dvae-q: error: "), err
    assert "Traceback" not in err and case["needle"] in err, err
    assert _tree(tmp_path) == before, "a directory was left behind"
    assert not marker.exists(), "code from a shared file was executed"
    assert SECRET not in out + err
    for path, content in _files_text(tmp_path):
        assert SECRET.encode() not in content, path
