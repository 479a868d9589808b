"""The `dvae-q` command line. Errors are mapped to exit codes here and only here:
bad input (config, flag, data file, topology, token) -> one stderr line, exit 2;
a runtime failure -> message (and the last good checkpoint), exit 1; bugs keep their traceback."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from dvae_q.errors import BadInput, DvaeqError

DEMO_CONFIG = "demo"


class _Parser(argparse.ArgumentParser):
    """argparse that raises BadInput instead of printing usage and exiting."""

    def error(self, message):
        raise BadInput(f"{self.prog}: {message}")


def _input_error_types() -> tuple[type[BaseException], ...]:
    """Input errors of the sibling packages, which do not depend on dvae_q."""
    types: list[type[BaseException]] = [BadInput]
    try:
        from samplers import SamplerOptionError

        types.append(SamplerOptionError)
    except ImportError:
        pass
    try:
        from topologies import TopologyError

        types.append(TopologyError)
    except ImportError:
        pass
    return tuple(types)


# --- data -------------------------------------------------------------------------------


def _cmd_data_fetch(args) -> int:
    from dvae_q.data_fetch import fetch

    result = fetch(args.name, data_dir=args.data_dir, base_url=args.url)
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
    from dvae_q.config import REPO_CONFIGS, describe

    for path in sorted(REPO_CONFIGS.rglob("*.yaml")):
        name = path.relative_to(REPO_CONFIGS).with_suffix("")
        print(f"{str(name):34s} {describe(path)}")
    return 0


def _resolved_config(args):
    from dvae_q.config import load_config

    overrides = list(args.set or [])
    if args.sampler:
        overrides.append(f"sampler={args.sampler}")
    if args.topology:
        overrides.append(f"topology={args.topology}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    return load_config(args.config, overrides)


def _default_run_dir(cfg) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.dataset}-{cfg.structure}-{cfg.method}-k{cfg.k}-{stamp}"


def _run_training(cfg, run_dir: Path, resume: bool, quiet: bool) -> dict:
    from dvae_q import train

    parts = train.build(cfg)  # everything validated before the run directory exists
    created = not run_dir.exists()
    try:
        return train.train(cfg, run_dir, resume=resume, quiet=quiet, parts=parts)
    except BadInput:
        if created and not resume:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _print_results(results: dict, run_dir: Path) -> None:
    test = results.get("test_nll")
    valid = results.get("valid_nll")
    k_test = results["iw_samples"].get("test")
    parts = []
    if test is not None:
        parts.append(f"test NLL {test:.2f} nats (K_eval={k_test})")
    if valid is not None:
        parts.append(f"valid NLL {valid:.2f}")
    parts.append(f"log Z {results['log_z']:.3f} ± {results['log_z_stderr']:.3f} (AIS)")
    print(f"{results['dataset_variant']} {results['structure']} {results['method']} "
          f"K={results['k']}: " + ", ".join(parts))
    print(f"run directory: {run_dir}")


def _cmd_train(args) -> int:
    from dvae_q.config import config_from_dict

    quiet = args.quiet or bool(os.environ.get("CI"))
    if args.resume:
        if args.config or args.set or args.sampler or args.topology or args.seed is not None:
            raise BadInput("--resume continues a run with its own config; drop the other flags")
        run_dir = Path(args.resume)
        cfg_file = run_dir / "config.yaml"
        if not cfg_file.is_file():
            raise BadInput(f"{run_dir} is not a run directory (no config.yaml)")
        import yaml

        cfg = config_from_dict(yaml.safe_load(cfg_file.read_text()))
        if (run_dir / "results.json").is_file():
            print(f"{run_dir} is complete; see results.json")
            return 0
        results = _run_training(cfg, run_dir, resume=True, quiet=quiet)
    else:
        if not args.config:
            raise BadInput("train needs --config FILE (or --resume RUN_DIR)")
        cfg = _resolved_config(args)
        run_dir = Path(args.run_dir) if args.run_dir else _default_run_dir(cfg)
        if run_dir.exists() and any(run_dir.iterdir()):
            raise BadInput(f"run directory {run_dir} exists; continue it with --resume {run_dir}")
        results = _run_training(cfg, run_dir, resume=False, quiet=quiet)
    _print_results(results, run_dir)
    return 0


def _load_run(run_dir: Path, which: str = "best"):
    """A run's resolved config, its best (or last) checkpoint and that checkpoint's path."""
    import yaml

    from dvae_q import checkpoint
    from dvae_q.config import config_from_dict

    cfg_file = run_dir / "config.yaml"
    if not cfg_file.is_file():
        raise BadInput(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = config_from_dict(yaml.safe_load(cfg_file.read_text()))
    name = checkpoint.BEST if which == "best" else checkpoint.LAST
    path = run_dir / name
    if which == "best" and not path.is_file():
        path = run_dir / checkpoint.LAST
    state = checkpoint.load(path)
    return cfg, state, path


def _cmd_eval(args) -> int:
    from dvae_q import logz, train
    from dvae_q.config import config_from_dict

    run_dir = Path(args.run_dir)
    cfg, state, path = _load_run(run_dir, args.checkpoint)
    overrides = cfg.to_dict()
    overrides["eval_splits"] = [args.split]
    if args.eval_limit is not None:
        overrides["eval_limit"] = args.eval_limit
    cfg = config_from_dict(overrides)
    parts = train.build(cfg)
    parts.model.load_state_dict(state["model"])
    parts.model.eval()
    gen = parts.eval_gen
    prior = parts.model.prior.snapshot()
    sizes = dict(num_temps=args.ais_temps, num_chains=args.ais_chains, generator=gen)
    if args.no_raise:
        ais, bracket = logz.ais_log_z(prior, **sizes), None
    else:  # RAISE starts from the AIS end states resampled by their weights
        both = logz.bracket(prior, **sizes)
        ais, bracket = both.lower, both.upper
    scores = train.evaluate_splits(parts, {args.split: args.iw_samples}, ais.log_z)
    nll = scores[f"{args.split}_nll"]
    record = {
        "run_dir": str(run_dir),
        "checkpoint": path.name,
        "step": state["step"],
        "split": args.split,
        "num_points": int(parts.eval_data[args.split].shape[0]),
        "iw_samples": args.iw_samples,
        "nll": nll,
        "elbo": scores[f"{args.split}_elbo"],
        "log_z_ais": ais.log_z,
        "log_z_ais_stderr": ais.stderr,
        "log_z_raise": bracket.log_z if bracket else None,
        "log_z_raise_stderr": bracket.stderr if bracket else None,
        # NLL moves one for one with log Z: the RAISE estimate gives the other end of the bracket
        "nll_with_raise_log_z": nll + (bracket.log_z - ais.log_z) if bracket else None,
    }
    out = run_dir / f"eval_{args.split}_k{args.iw_samples}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    line = (
        f"{args.split} NLL {nll:.3f} nats (K_eval={args.iw_samples}, "
        f"{record['num_points']} points, step {state['step']}), "
        f"log Z {ais.log_z:.3f} ± {ais.stderr:.3f} (AIS)"
    )
    if bracket:
        line += f", RAISE {bracket.log_z:.3f} ± {bracket.stderr:.3f} → NLL ≤ {record['nll_with_raise_log_z']:.3f}"
    print(line)
    return 0


def _cmd_sample(args) -> int:
    import torch

    from dvae_q import figures, train
    from dvae_q.config import config_from_dict

    run_dir = Path(args.run_dir)
    cfg, state, _ = _load_run(run_dir, args.checkpoint)
    if args.num < 1:
        raise BadInput("--num must be positive")
    raw = cfg.to_dict()
    if args.sampler:
        raw["sampler"] = args.sampler
    cfg = config_from_dict(raw)
    parts = train.build(cfg)
    parts.model.load_state_dict(state["model"])
    if not args.sampler and state.get("sampler"):
        parts.sampler.load_state_dict(state["sampler"])  # continue the run's own chains
    parts.model.eval()
    z = parts.sampler.sample(parts.model.prior.snapshot(), args.num, device=parts.device)
    with torch.no_grad():
        images = torch.sigmoid(parts.model.decode(z)).cpu().numpy()
    out = Path(args.out)
    if out.parent and not out.parent.exists():
        raise BadInput(f"folder {out.parent} does not exist")
    figures.save_image_grid(images, out)
    print(f"wrote {args.num} decoded prior samples ({cfg.sampler}) to {out}")
    return 0


def _cmd_demo(args) -> int:
    from dvae_q.config import load_config

    cfg = load_config(DEMO_CONFIG)
    run_dir = Path(args.run_dir) if args.run_dir else _default_run_dir(cfg).with_name(
        "demo-" + time.strftime("%Y%m%d-%H%M%S")
    )
    print(
        f"dvae-q demo: DVAE# ({cfg.method}, K={cfg.k}, {cfg.structure}) on {cfg.dataset} with "
        f"--sampler {cfg.sampler}, {cfg.steps} steps.\nThis is a SHORT budget on a CPU, not the "
        f"paper's 1M steps: its NLL is far above the published table.\nEvaluation uses "
        f"{cfg.final_iw_samples} importance samples on {cfg.eval_limit or 'all'} test points "
        f"(the paper: 4000 on all 10,000) and AIS with {cfg.ais_num_temps} temperatures x "
        f"{cfg.ais_num_chains} chains.",
        flush=True,
    )
    results = _run_training(cfg, run_dir, resume=False, quiet=args.quiet or bool(os.environ.get("CI")))
    _print_results(results, run_dir)
    grids = sorted(run_dir.glob("samples_*.png"))
    print(f"prior samples: {grids[-1] if grids else '-'}\ntraining curves: {run_dir / 'curves.png'}")
    return 0


def _cmd_calibrate(args) -> int:
    from samplers.temperature import calibrate_cli

    report = calibrate_cli(
        topology=args.topology,
        sampler=args.sampler,
        num_reads=args.num_reads,
        seed=args.seed,
        child_sampler=args.child_sampler,
    )
    print(report)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dvae-q", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    data_cmd = commands.add_parser("data", help="inspect or download the datasets")
    data_sub = data_cmd.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    fetch = data_sub.add_parser("fetch", help="download canonical files, convert and verify")
    fetch.add_argument("name", choices=["binarized_mnist", "omniglot"])
    fetch.add_argument("--data-dir", help="where to store (default: $DVAEQ_DATA_DIR or cache)")
    fetch.add_argument("--url", help="base URL of a mirror instead of the canonical location")
    fetch.set_defaults(func=_cmd_data_fetch)
    info = data_sub.add_parser("info", help="load, verify and summarise the datasets")
    info.add_argument("name", nargs="?", choices=["binarized_mnist", "omniglot"])
    info.add_argument("--data-dir", help="folder holding the files (default: $DVAEQ_DATA_DIR)")
    info.set_defaults(func=_cmd_data_info)

    cfgs = commands.add_parser("configs", help="list the shipped experiment configs")
    cfgs.set_defaults(func=_cmd_configs)

    train = commands.add_parser("train", help="train a model (or --resume a run)")
    train.add_argument("--config", help="config YAML path or shipped name (see `dvae-q configs`)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a killed or unfinished run")
    train.add_argument("--sampler", help="prior sampler: gibbs, pa, neal, exact, dimod, qpu")
    train.add_argument("--topology", help="hardware topology name or YAML file")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    train.add_argument("--run-dir", help="run directory (default: runs/<name>-<time>)")
    train.add_argument("--seed", type=int, help="root seed")
    train.add_argument("--quiet", action="store_true", help="no progress bar (CI logs)")
    train.set_defaults(func=_cmd_train)

    ev = commands.add_parser("eval", help="AIS log Z (+ RAISE bracket) and discrete-model NLL")
    ev.add_argument("run_dir")
    ev.add_argument("--iw-samples", type=int, default=4000)
    ev.add_argument("--split", choices=["valid", "test"], default="test")
    ev.add_argument("--checkpoint", choices=["best", "last"], default="best")
    ev.add_argument("--ais-temps", type=int, default=1000)
    ev.add_argument("--ais-chains", type=int, default=1024)
    ev.add_argument("--eval-limit", type=int, help="evaluate only the first N points")
    ev.add_argument("--no-raise", action="store_true", help="skip the reverse-AIS bracket")
    ev.set_defaults(func=_cmd_eval)

    sm = commands.add_parser("sample", help="decoded prior samples as an image grid")
    sm.add_argument("run_dir")
    sm.add_argument("--num", type=int, default=100)
    sm.add_argument("--sampler", help="another sampler than the run's")
    sm.add_argument("--checkpoint", choices=["best", "last"], default="best")
    sm.add_argument("--out", required=True, help="PNG file to write")
    sm.set_defaults(func=_cmd_sample)

    cal = commands.add_parser("calibrate", help="estimate a sampler's effective temperature")
    cal.add_argument("--topology", required=True, help="topology name or YAML file")
    cal.add_argument("--sampler", default="qpu")
    cal.add_argument("--num-reads", type=int, default=1000)
    cal.add_argument("--seed", type=int, default=0)
    cal.add_argument("--child-sampler", help="import path of a structured dimod sampler factory")
    cal.set_defaults(func=_cmd_calibrate)

    demo = commands.add_parser("demo", help="the main job of `make demo`: a short training run")
    demo.add_argument("--run-dir", default=None)
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    input_errors = _input_error_types()
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except input_errors as exc:
        print(f"dvae-q: error: {exc}", file=sys.stderr)
        return 2
    except DvaeqError as exc:
        print(f"dvae-q: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("dvae-q: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
