"""The command line explains itself: version, help with defaults, errors prefixed once,
suggestions for mistyped keys, and `configs --keys`."""

import dataclasses

import pytest

from dvae_q import __version__
from dvae_q.cli.main import main
from dvae_q.cli.parsers import build_parser
from dvae_q.training.config import Config


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"dvae-q {__version__}"


def _subparsers(parser):
    for action in parser._actions:  # argparse keeps subcommands here; no public accessor
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in _subparsers(sub))


def test_every_option_has_help_and_shows_its_default():
    parser = build_parser()
    assert parser.description.endswith(".") and len(parser.description.split()) > 8
    for name, sub in _subparsers(parser):
        assert sub.description, name
        for action in sub._actions:
            if action.dest == "help" or action.__class__.__name__ == "_SubParsersAction":
                continue
            assert action.help, (name, action.dest)
        text = sub.format_help()
        if any(a.default not in (None, False) and a.dest != "help" for a in sub._actions):
            assert "(default:" in text, name


def test_errors_are_prefixed_once(capsys):
    assert main(["train", "--frobnicate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dvae-q: error: ") and err.count("dvae-q") == 1


def test_a_mistyped_key_suggests_the_nearest_one(capsys):
    assert main(["train", "--config", "smoke", "--set", "stepz=3"]) == 2
    assert "unknown config key 'stepz'; did you mean 'steps'?" in capsys.readouterr().err


def test_configs_keys_lists_every_key_with_type_default_and_meaning(capsys):
    assert main(["configs", "--keys"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines]
    assert names == [f.name for f in dataclasses.fields(Config)]
    assert all(len(line.split()) >= 4 for line in lines)  # key, type, default, meaning
    steps = next(line for line in lines if line.startswith("steps "))
    assert "1000000" in steps and "training steps" in steps
