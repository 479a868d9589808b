"""The argument parsers of `dvae-q`: one builder per command, every option's default shown in
--help, and parse errors raised as BadInput (one line, exit 2) instead of argparse's usage dump."""

from __future__ import annotations

import argparse

from dvae_q import __version__
from dvae_q.cli import commands as commands_
from dvae_q.errors import BadInput

DESCRIPTION = ("Train, evaluate and sample discrete variational autoencoders with Boltzmann "
               "priors (DVAE, DVAE++, DVAE#), with the prior sampled by block Gibbs, population "
               "annealing, simulated annealing, exact enumeration, any dimod sampler or a "
               "D-Wave quantum annealer.")


class Parser(argparse.ArgumentParser):
    """argparse that raises BadInput instead of printing usage and exiting, and shows every
    option's default in --help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        command = self.prog.removeprefix("dvae-q").strip()
        raise BadInput(f"{command}: {message}" if command else message)


def _add_run_options(p, *, run_dir_help: str) -> None:
    p.add_argument("--config", help="config YAML path or shipped name (see `dvae-q configs`)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key (repeatable; values are YAML)")
    p.add_argument("--sampler", help="prior sampler: gibbs, pa, neal, exact, dimod, qpu, remote")
    p.add_argument("--topology", help="hardware topology name or YAML file (restricts the prior)")
    p.add_argument("--seed", type=int, help="root seed of every random stream")
    p.add_argument("--run-dir", help=run_dir_help)
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _data_parsers(commands) -> None:
    data_cmd = commands.add_parser("data", help="inspect or download the datasets",
                                   description="Inspect or download the datasets.")
    data_sub = data_cmd.add_subparsers(dest="data_command", required=True, parser_class=Parser)
    fetch = data_sub.add_parser("fetch", help="download canonical files, convert and verify",
                                description="Download the canonical files, convert and verify them.")
    fetch.add_argument("name", choices=["binarized_mnist", "omniglot"], help="dataset")
    fetch.add_argument("--data-dir", help="where to store (default: $DVAEQ_DATA_DIR or cache)")
    fetch.add_argument("--url", help="base URL of a mirror instead of the canonical location")
    fetch.add_argument("--quiet", action="store_true", help="no progress output")
    fetch.set_defaults(func=commands_.cmd_data_fetch)
    info = data_sub.add_parser("info", help="load, verify and summarise the datasets",
                               description="Load, verify and summarise the datasets.")
    info.add_argument("name", nargs="?", choices=["binarized_mnist", "omniglot"],
                      help="dataset (default: both)")
    info.add_argument("--data-dir", help="folder holding the files (default: $DVAEQ_DATA_DIR)")
    info.set_defaults(func=commands_.cmd_data_info)


def _configs_parser(commands) -> None:
    cfgs = commands.add_parser("configs", help="list the shipped configs, or every config key",
                               description="List the shipped experiment configs, or every key.")
    cfgs.add_argument("--keys", action="store_true",
                      help="list every config key with its type, default and meaning")
    cfgs.set_defaults(func=commands_.cmd_configs)


def _train_parser(commands) -> None:
    train = commands.add_parser("train", help="train a model (or --resume a run)",
                                description="Train a model from a config, or continue a run.")
    _add_run_options(train, run_dir_help="run directory (default: runs/<name>-<time>)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a killed or unfinished run")
    train.set_defaults(func=commands_.cmd_train)


def _eval_parser(commands) -> None:
    ev = commands.add_parser("eval", help="log Z bracket and discrete-model NLL of a run",
                             description="AIS log Z (with the reverse-AIS upper end) and the "
                                         "discrete model's NLL of a run's checkpoint.")
    ev.add_argument("run_dir", help="run directory")
    ev.add_argument("--iw-samples", type=int, default=4000, help="importance samples per point")
    ev.add_argument("--split", choices=["valid", "test"], default="test", help="data split")
    ev.add_argument("--checkpoint", choices=["best", "last"], default="best", help="which one")
    ev.add_argument("--ais-temps", type=int, default=1000, help="AIS inverse temperatures (>= 2)")
    ev.add_argument("--ais-chains", type=int, default=1024, help="AIS chains (>= 2)")
    ev.add_argument("--eval-limit", type=int, help="evaluate only the first N points")
    ev.add_argument("--no-raise", action="store_true", help="skip the reverse-AIS upper end")
    ev.add_argument("--quiet", action="store_true", help="no progress output")
    ev.set_defaults(func=commands_.cmd_eval)


def _sample_parser(commands) -> None:
    sm = commands.add_parser("sample", help="decoded prior samples as an image grid",
                             description="Draw prior samples of a run and decode them to images.")
    sm.add_argument("run_dir", help="run directory")
    sm.add_argument("--num", type=int, default=100, help="number of samples")
    sm.add_argument("--sampler", help="another sampler than the run's (default: the run's)")
    sm.add_argument("--checkpoint", choices=["best", "last"], default="best", help="which one")
    sm.add_argument("--out", required=True, help="PNG file to write")
    sm.add_argument("--reconstructions", action="store_true",
                    help="instead: the first NUM test images beside their reconstructions")
    sm.set_defaults(func=commands_.cmd_sample)


def _calibrate_parser(commands) -> None:
    cal = commands.add_parser("calibrate", help="estimate a sampler's effective temperature",
                              description="Estimate a sampler's effective inverse temperature "
                                          "on a probe RBM of a topology.")
    cal.add_argument("--topology", required=True, help="topology name or YAML file")
    cal.add_argument("--sampler", default="qpu", help="sampler to calibrate")
    cal.add_argument("--num-reads", type=int, default=1000, help="samples per estimate")
    cal.add_argument("--seed", type=int, default=0, help="seed of the probe and the estimate")
    cal.add_argument("--child-sampler", help="import path of a structured dimod sampler factory")
    cal.add_argument("--estimator", choices=["mpl", "energy", "both"], default="mpl",
                     help="pseudo-likelihood, energy matching, or both with a disagreement check")
    cal.add_argument("--bootstrap", type=int, default=100, help="bootstrap replicates (>= 20)")
    cal.add_argument("--max-iterations", type=int, default=5, help="calibration rounds (>= 1)")
    cal.add_argument("--shim", action="store_true",
                     help="also learn the qpu sampler's flux-bias shim and print its residual")
    cal.add_argument("--fit-hamiltonian", action="store_true",
                     help="also fit the device's effective h and J, pre-distort, and print the "
                          "effective-vs-model error before and after")
    cal.add_argument("--correction-rounds", type=int, default=5,
                     help="calls after calibration that the corrections learn from (>= 1)")
    cal.add_argument("--quiet", action="store_true", help="no progress output")
    cal.set_defaults(func=commands_.cmd_calibrate)


def _demo_parser(commands) -> None:
    demo = commands.add_parser("demo", help="the main job of `make demo`: a short training run",
                               description="A short DVAE# training run on binarized MNIST.")
    demo.add_argument("--run-dir", default=None, help="run directory (default: runs/demo-<time>)")
    demo.add_argument("--quiet", action="store_true", help="no progress output")
    demo.set_defaults(func=commands_.cmd_demo)


def _run_parsers(commands) -> None:
    _configs_parser(commands)
    _train_parser(commands)
    _eval_parser(commands)
    _sample_parser(commands)
    _calibrate_parser(commands)
    _demo_parser(commands)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="dvae-q", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"dvae-q {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser,
                                     metavar="COMMAND")
    _data_parsers(commands)
    _run_parsers(commands)
    from dvae_q.cli import service as service_cli
    service_cli.add_commands(commands)
    from dvae_q.cli import reproduce
    reproduce.add_command(commands)
    return parser
