"""The commands of `dvae-q` over the run API: each takes the parsed arguments and returns an exit
status, raising BadInput or RunFailure for `main` to map. Heavy modules are imported inside each
command, so `dvae-q --help` stays fast."""

from __future__ import annotations

import json
from pathlib import Path

from dvae_q.errors import BadInput, RunFailure

DEMO_CONFIG = "demo"


def reporter_for(args):
    """Progress on stderr for this command (a bar on a terminal, plain lines in a log), with
    the library's log records routed through it; silent with --quiet."""
    from dvae_q.logs import configure_logging
    from dvae_q.progress import Reporter

    reporter = Reporter(quiet=bool(getattr(args, "quiet", False)))
    configure_logging(reporter)
    return reporter


# --- data -------------------------------------------------------------------------------


def cmd_data_fetch(args) -> int:
    from dvae_q.data.fetch import fetch

    with reporter_for(args).task(f"fetch {args.name}", unit="B") as progress:
        result = fetch(args.name, data_dir=args.data_dir, base_url=args.url, progress=progress)
    print(f"stored {result.path}")
    for file_name, digest in result.downloaded.items():
        print(f"  {file_name}: sha256 {digest}")
    return 0


def cmd_data_info(args) -> int:
    from dvae_q.data import datasets as data

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


def cmd_configs(args) -> int:
    from dvae_q.training.config import REPO_CONFIGS, describe, describe_keys

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


def cmd_train(args) -> int:
    from dvae_q import run as run_api
    from dvae_q.training.rundir import RunDir

    if args.resume:
        if args.config or args.set or args.sampler is not None or args.topology is not None \
                or args.seed is not None or args.run_dir:
            raise BadInput("--resume continues a run with its own config; drop the other flags")
        run_dir = Path(args.resume)
        RunDir(run_dir).read_config()  # a clear error for a folder that is not a run
        if RunDir(run_dir).is_complete():
            print(f"{run_dir} is complete; see {run_dir / 'results.json'}")
            return 0
        run = run_api.fit(run_dir=run_dir, resume=True, reporter=reporter_for(args))
    else:
        if not args.config:
            raise BadInput("train needs --config FILE (or --resume RUN_DIR)")
        cfg = run_api.resolve(args.config, _overrides(args))
        run_dir = Path(args.run_dir) if args.run_dir else run_api.default_run_dir(cfg)
        run = run_api.fit(cfg, run_dir=run_dir, reporter=reporter_for(args))
    _print_results(run.results, run_dir)
    return 0


def cmd_eval(args) -> int:
    from dvae_q.run import load_run
    from storage.files import write_atomic

    run = load_run(args.run_dir, args.checkpoint)
    record = run.evaluate(args.split, iw_samples=args.iw_samples, ais_temps=args.ais_temps,
                          ais_chains=args.ais_chains, limit=args.eval_limit,
                          bracket=not args.no_raise, reporter=reporter_for(args))
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


def cmd_sample(args) -> int:
    from dvae_q.evaluation import figures
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


def cmd_demo(args) -> int:
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
    run = run_api.fit(cfg, run_dir=run_dir, reporter=reporter_for(args))
    _print_results(run.results, run_dir)
    grids = sorted(run_dir.glob("samples_*.png"))
    print(f"prior samples: {grids[-1] if grids else '-'}\ntraining curves: {run_dir / 'curves.png'}")
    return 0


def cmd_calibrate(args) -> int:
    from samplers import SamplerFailure
    from samplers.temperature import TemperatureEstimationError, calibrate_cli

    if args.seed < 0:
        raise BadInput("calibrate: --seed must be >= 0")
    try:
        with reporter_for(args).task("calibrate", unit="sampler calls") as progress:
            report = calibrate_cli(topology=args.topology, sampler=args.sampler, progress=progress,
                                   num_reads=args.num_reads, seed=args.seed,
                                   child_sampler=args.child_sampler, estimator=args.estimator,
                                   num_bootstrap=args.bootstrap,
                                   max_iterations=args.max_iterations, shim=args.shim,
                                   fit_hamiltonian=args.fit_hamiltonian,
                                   correction_rounds=args.correction_rounds)
    except (SamplerFailure, TemperatureEstimationError) as exc:
        raise RunFailure(f"calibration failed: {exc}") from None
    print(report)
    return 0
