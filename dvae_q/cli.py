"""The `dvae-q` command line: argument parsing and exit codes over the library's calls.

Errors are mapped to exit codes here and only here: bad input (config, flag, data file,
topology, checkpoint, token) is one stderr line and exit 2; a runtime failure is one line (with
the last good checkpoint) and exit 1; Ctrl-C is one line and exit 130; bugs keep their
traceback. Heavy modules are imported inside the commands, after the error mapping is in place.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dvae_q import __version__
from dvae_q.errors import BadInput, DvaeqError, RunFailure

DEMO_CONFIG = "demo"
DESCRIPTION = ("Train, evaluate and sample discrete variational autoencoders with Boltzmann "
               "priors (DVAE, DVAE++, DVAE#), with the prior sampled by block Gibbs, population "
               "annealing, simulated annealing, exact enumeration, any dimod sampler or a "
               "D-Wave quantum annealer.")


class _Parser(argparse.ArgumentParser):
    """argparse that raises BadInput instead of printing usage and exiting, and shows every
    option's default in --help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        command = self.prog.removeprefix("dvae-q").strip()
        raise BadInput(f"{command}: {message}" if command else message)


def _reporter(args):
    """Progress on stderr for this command (a bar on a terminal, plain lines in a log), with
    the library's log records routed through it; silent with --quiet."""
    from dvae_q.progress import Reporter, configure_logging

    reporter = Reporter(quiet=bool(getattr(args, "quiet", False)))
    configure_logging(reporter)
    return reporter


# --- data -------------------------------------------------------------------------------


def _cmd_data_fetch(args) -> int:
    from dvae_q.data_fetch import fetch

    with _reporter(args).task(f"fetch {args.name}", unit="B") as progress:
        result = fetch(args.name, data_dir=args.data_dir, base_url=args.url, progress=progress)
    print(f"stored {result.path}")
    for file_name, digest in result.downloaded.items():
        print(f"  {file_name}: sha256 {digest}")
    return 0


def _cmd_data_info(args) -> int:
    from dvae_q import data

    names = [args.name] if args.name else list(data.DATASETS)
    for name in names:
        variant = data.dataset_variant(name, args.data_dir)
        sizes = []
        for split in data.SPLITS:
            images = data.load_dataset(name, split, args.data_dir)
            scale = 1.0 if data.is_binary(name) else 255.0
            sizes.append(f"{split} {images.shape[0]} (mean {images.mean() / scale:.4f})")
        print(f"{name} [{variant}]: " + ", ".join(sizes) + "; content hashes verified")
    return 0


# --- configs and training -----------------------------------------------------------------


def _cmd_configs(args) -> int:
    from dvae_q.config import REPO_CONFIGS, describe, describe_keys

    if args.keys:
        for key, kind, default, meaning in describe_keys():
            print(f"{key:22s} {kind:12s} {default:28s} {meaning}")
        return 0
    for path in sorted(REPO_CONFIGS.rglob("*.yaml")):
        name = path.relative_to(REPO_CONFIGS).with_suffix("")
        print(f"{str(name):34s} {describe(path)}")
    return 0


def _overrides(args) -> list[str]:
    overrides = list(args.set or [])
    for flag, key in (("sampler", "sampler"), ("topology", "topology"), ("seed", "seed")):
        value = getattr(args, flag)
        if value is not None:  # an empty --sampler '' is refused by the config, not ignored
            overrides.append(f"{key}={value}")
    return overrides


def _print_results(results: dict, run_dir: Path) -> None:
    test, valid = results.get("test_nll"), results.get("valid_nll")
    parts = []
    if test is not None:
        parts.append(f"test NLL {test:.2f} nats (K_eval={results['iw_samples'].get('test')})")
    if valid is not None:
        parts.append(f"valid NLL {valid:.2f}")
    parts.append(f"log Z {results['log_z']:.3f} ± {results['log_z_stderr']:.3f} (AIS)")
    if results.get("log_z_inverted"):
        parts.append("log Z bracket INVERTED (reverse AIS below AIS): no NLL interval claimed")
    elif results.get("test_nll_interval"):
        low, high = results["test_nll_interval"]
        parts.append(f"test NLL in [{low:.2f}, {high:.2f}] by the log Z bracket")
    print(f"{results['dataset_variant']} {results['structure']} {results['method']} "
          f"K={results['k']}: " + ", ".join(parts))
    print(f"run directory: {run_dir}")


def _cmd_train(args) -> int:
    from dvae_q import run as run_api
    from dvae_q.rundir import RunDir

    if args.resume:
        if args.config or args.set or args.sampler is not None or args.topology is not None \
                or args.seed is not None or args.run_dir:
            raise BadInput("--resume continues a run with its own config; drop the other flags")
        run_dir = Path(args.resume)
        RunDir(run_dir).read_config()  # a clear error for a folder that is not a run
        if RunDir(run_dir).is_complete():
            print(f"{run_dir} is complete; see {run_dir / 'results.json'}")
            return 0
        run = run_api.fit(run_dir=run_dir, resume=True, reporter=_reporter(args))
    else:
        if not args.config:
            raise BadInput("train needs --config FILE (or --resume RUN_DIR)")
        cfg = run_api.resolve(args.config, _overrides(args))
        run_dir = Path(args.run_dir) if args.run_dir else run_api.default_run_dir(cfg)
        run = run_api.fit(cfg, run_dir=run_dir, reporter=_reporter(args))
    _print_results(run.results, run_dir)
    return 0


def _cmd_eval(args) -> int:
    from dvae_q.run import load_run
    from topologies.cache import write_atomic

    run = load_run(args.run_dir, args.checkpoint)
    record = run.evaluate(args.split, iw_samples=args.iw_samples, ais_temps=args.ais_temps,
                          ais_chains=args.ais_chains, limit=args.eval_limit,
                          bracket=not args.no_raise, reporter=_reporter(args))
    line = (f"{args.split} NLL {record['nll']:.3f} nats (K_eval={args.iw_samples}, "
            f"{record['num_points']} points, step {record['step']}), "
            f"log Z {record['log_z_ais']:.3f} ± {record['log_z_ais_stderr']:.3f} (AIS)")
    if record["nll_interval"] is not None:
        low, high = record["nll_interval"]
        line += (f", RAISE {record['log_z_raise']:.3f} ± {record['log_z_raise_stderr']:.3f}; "
                 f"NLL in [{low:.3f}, {high:.3f}] (log Z from AIS − 3 se to RAISE + 3 se)")
    elif record["bracket_inverted"]:
        line += (f"; RAISE {record['log_z_raise']:.3f} ± {record['log_z_raise_stderr']:.3f} is "
                 "BELOW AIS beyond their errors: the bracket is inverted and no bound is claimed")
    print(line, flush=True)  # the result first: a read-only shared run still gets its answer
    limit = f"_first{args.eval_limit}" if args.eval_limit is not None else ""
    out = run.path / f"eval_{args.split}_k{args.iw_samples}_{args.checkpoint}{limit}.json"
    try:
        write_atomic(out, json.dumps(record, indent=2) + "\n")
    except OSError as exc:
        raise RunFailure(f"the evaluation is above, but {out} could not be written "
                         f"({exc.strerror or type(exc).__name__})") from None
    return 0


def _write(out: Path, save, *args, **kwargs) -> None:
    try:
        save(*args, **kwargs)
    except OSError as exc:
        raise BadInput(f"cannot write {out} ({exc.strerror or type(exc).__name__})") from None


def _cmd_sample(args) -> int:
    from dvae_q import figures
    from dvae_q.run import load_run

    out = Path(args.out)
    if out.is_dir():
        raise BadInput(f"--out {out} is a folder; give a PNG file name")
    if not out.parent.is_dir():
        raise BadInput(f"folder {out.parent} does not exist")
    if out.suffix.lower() != ".png":
        raise BadInput(f"--out {out}: the grid is written as PNG; give a .png file name")
    run = load_run(args.run_dir, args.checkpoint)
    cfg = run.config
    if args.reconstructions:
        inputs = run.test_images(args.num)
        caption = (f"step {run.step:,} · {cfg.method} K={cfg.k} · test images (left) and the "
                   "discrete model's reconstructions (right)")
        _write(out, figures.save_reconstructions, inputs.numpy(),
               run.reconstruct(inputs).numpy(), out, caption=caption)
        print(f"wrote {args.num} test images and their reconstructions to {out}")
        return 0
    name = args.sampler or cfg.sampler
    images = run.sample(args.num, args.sampler)
    caption = f"step {run.step:,} · {cfg.method} K={cfg.k} · sampler {name} · decoded prior samples"
    _write(out, figures.save_image_grid, images.numpy(), out, caption=caption)
    print(f"wrote {args.num} decoded prior samples ({name}) to {out}")
    return 0


def _cmd_demo(args) -> int:
    import time

    from dvae_q import run as run_api

    cfg = run_api.resolve(DEMO_CONFIG)
    run_dir = Path(args.run_dir) if args.run_dir else \
        Path("runs") / ("demo-" + time.strftime("%Y%m%d-%H%M%S"))
    print(
        f"dvae-q demo: DVAE# ({cfg.method}, K={cfg.k}, {cfg.structure}) on {cfg.dataset} with "
        f"--sampler {cfg.sampler}, {cfg.steps} steps.\nThis is a SHORT budget on a CPU, not the "
        f"paper's 1M steps: its NLL is far above the published table.\nEvaluation uses "
        f"{cfg.final_iw_samples} importance samples on {cfg.eval_limit or 'all'} test points "
        f"(the paper: 4000 on all 10,000) and AIS with {cfg.ais_num_temps} temperatures x "
        f"{cfg.ais_num_chains} chains.",
        flush=True,
    )
    run = run_api.fit(cfg, run_dir=run_dir, reporter=_reporter(args))
    _print_results(run.results, run_dir)
    grids = sorted(run_dir.glob("samples_*.png"))
    print(f"prior samples: {grids[-1] if grids else '-'}\ntraining curves: {run_dir / 'curves.png'}")
    return 0


def _cmd_calibrate(args) -> int:
    from samplers import SamplerFailure
    from samplers.temperature import TemperatureEstimationError, calibrate_cli

    if args.seed < 0:
        raise BadInput("calibrate: --seed must be >= 0")
    try:
        with _reporter(args).task("calibrate", unit="sampler calls") as progress:
            report = calibrate_cli(topology=args.topology, sampler=args.sampler, progress=progress,
                                   num_reads=args.num_reads, seed=args.seed,
                                   child_sampler=args.child_sampler, estimator=args.estimator,
                                   num_bootstrap=args.bootstrap,
                                   max_iterations=args.max_iterations)
    except (SamplerFailure, TemperatureEstimationError) as exc:
        raise RunFailure(f"calibration failed: {exc}") from None
    print(report)
    return 0


# --- the parser ---------------------------------------------------------------------------


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
    data_sub = data_cmd.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    fetch = data_sub.add_parser("fetch", help="download canonical files, convert and verify",
                                description="Download the canonical files, convert and verify them.")
    fetch.add_argument("name", choices=["binarized_mnist", "omniglot"], help="dataset")
    fetch.add_argument("--data-dir", help="where to store (default: $DVAEQ_DATA_DIR or cache)")
    fetch.add_argument("--url", help="base URL of a mirror instead of the canonical location")
    fetch.add_argument("--quiet", action="store_true", help="no progress output")
    fetch.set_defaults(func=_cmd_data_fetch)
    info = data_sub.add_parser("info", help="load, verify and summarise the datasets",
                               description="Load, verify and summarise the datasets.")
    info.add_argument("name", nargs="?", choices=["binarized_mnist", "omniglot"],
                      help="dataset (default: both)")
    info.add_argument("--data-dir", help="folder holding the files (default: $DVAEQ_DATA_DIR)")
    info.set_defaults(func=_cmd_data_info)


def _configs_parser(commands) -> None:
    cfgs = commands.add_parser("configs", help="list the shipped configs, or every config key",
                               description="List the shipped experiment configs, or every key.")
    cfgs.add_argument("--keys", action="store_true",
                      help="list every config key with its type, default and meaning")
    cfgs.set_defaults(func=_cmd_configs)


def _train_parser(commands) -> None:
    train = commands.add_parser("train", help="train a model (or --resume a run)",
                                description="Train a model from a config, or continue a run.")
    _add_run_options(train, run_dir_help="run directory (default: runs/<name>-<time>)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a killed or unfinished run")
    train.set_defaults(func=_cmd_train)


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
    ev.set_defaults(func=_cmd_eval)


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
    sm.set_defaults(func=_cmd_sample)


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
    cal.add_argument("--quiet", action="store_true", help="no progress output")
    cal.set_defaults(func=_cmd_calibrate)


def _demo_parser(commands) -> None:
    demo = commands.add_parser("demo", help="the main job of `make demo`: a short training run",
                               description="A short DVAE# training run on binarized MNIST.")
    demo.add_argument("--run-dir", default=None, help="run directory (default: runs/demo-<time>)")
    demo.add_argument("--quiet", action="store_true", help="no progress output")
    demo.set_defaults(func=_cmd_demo)


def _run_parsers(commands) -> None:
    _configs_parser(commands)
    _train_parser(commands)
    _eval_parser(commands)
    _sample_parser(commands)
    _calibrate_parser(commands)
    _demo_parser(commands)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dvae-q", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"dvae-q {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser,
                                     metavar="COMMAND")
    _data_parsers(commands)
    _run_parsers(commands)
    from dvae_q import service_cli
    service_cli.add_commands(commands)
    from dvae_q import reproduce
    reproduce.add_command(commands)
    return parser


def _input_error_types() -> tuple[type[BaseException], ...]:
    """Input errors of the sibling packages, which do not depend on dvae_q (both ValueErrors)."""
    from samplers import SamplerOptionError
    from topologies import TopologyError

    return SamplerOptionError, TopologyError


def _say(message: object) -> None:
    text = " ".join(str(message).split())  # one line, whatever the message held
    print(f"dvae-q: error: {text}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except KeyboardInterrupt:
        print("dvae-q: interrupted", file=sys.stderr)
        return 130
    except DvaeqError as exc:  # BadInput (2) and RunFailure (1)
        _say(exc)
        return exc.exit_code
    except ValueError as exc:
        if isinstance(exc, _input_error_types()):
            _say(exc)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
