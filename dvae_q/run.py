"""The Python run API: train from a config, load a finished (or running) run, sample and
evaluate it — the library behind `dvae-q train`, `eval` and `sample`.

    import dvae_q
    run = dvae_q.fit("smoke", {"steps": 40}, run_dir="runs/smoke")   # train, then load
    run = dvae_q.load_run("runs/smoke")                             # best checkpoint
    run.model, run.config, run.step, run.results
    images = run.sample(16)                     # decoded prior samples, (16, 784) in [0, 1]
    report = run.evaluate("test", iw_samples=100, ais_temps=300, ais_chains=256)

Loading a run builds the model alone from its config and checkpoint (no training data, no
optimiser), reading only files that cannot run code (YAML and a weights-only checkpoint).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import torch

import samplers
from dvae_q.data import datasets as data
from dvae_q.errors import BadInput
from dvae_q.evaluation import scores
from dvae_q.progress import Reporter
from dvae_q.training import build, checkpoint
from dvae_q.training.config import Config, load_config
from dvae_q.training.rundir import RunDir


class Run:
    """A run directory's model at one checkpoint, with its config."""

    def __init__(self, path: str | os.PathLike, which: str = "best"):
        if which not in ("best", "last"):
            raise BadInput(f"checkpoint must be 'best' or 'last', got {which!r}")
        self.dir = RunDir(path)
        self.config: Config = self.dir.read_config()
        self.checkpoint_path = self.dir.checkpoint_path(which)
        self.state = checkpoint.load(self.checkpoint_path)
        self.step: int = int(self.state["step"])
        self.seeds = build.seed_streams(self.config.seed)
        self.model = build.model(self.config, None, self.seeds["init"])
        try:
            self.model.load_state_dict(self.state["model"])
        except (RuntimeError, KeyError) as exc:
            raise BadInput(f"{self.checkpoint_path} does not match {self.dir.config_file} "
                           f"({type(exc).__name__}); was the config edited?") from None
        self.model.eval()

    def __repr__(self) -> str:
        return f"Run({str(self.dir.path)!r}, step={self.step})"

    @property
    def path(self) -> Path:
        return self.dir.path

    @property
    def results(self) -> dict | None:
        """The final evaluation (results.json) of a complete run, else None."""
        import json

        if not self.dir.is_complete():
            return None
        return json.loads(self.dir.results_file.read_text())

    def prior(self) -> samplers.BipartiteModel:
        """The trained RBM prior as the samplers see it."""
        return self.model.prior.snapshot()

    def sampler(self, name: str | None = None) -> samplers.Sampler:
        """The run's sampler continuing its own chains, or another one (`name`) started fresh."""
        name = name or self.config.sampler
        smp = build.sampler(self.config, self.seeds["sampler"], name)
        if name == self.config.sampler and self.state.get("sampler"):
            smp.load_state_dict(self.state["sampler"])
        return smp

    @torch.no_grad()
    def sample(self, num: int, sampler: str | samplers.Sampler | None = None) -> torch.Tensor:
        """`num` prior samples decoded to pixel probabilities, (num, 784) in [0, 1]."""
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise BadInput("the number of samples must be a positive integer")
        smp = sampler if isinstance(sampler, samplers.Sampler) else self.sampler(sampler)
        z = smp.sample(self.prior(), num, device=next(self.model.parameters()).device)
        return torch.sigmoid(self.model.decode(z)).cpu()

    def test_images(self, num: int) -> torch.Tensor:
        """The first `num` binary test images of the run's dataset, (num, 784) float32."""
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise BadInput("the number of images must be a positive integer")
        return data.to_tensor(data.load_binarized(self.config.dataset, "test")[:num])

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixel probabilities of the discrete model's reconstruction of binary images x."""
        x = x.to(next(self.model.parameters()).device, torch.float32)
        z = self.model.binary_posterior(x, generator)[0]
        return torch.sigmoid(self.model.decode(z)).cpu()

    def evaluate(self, split: str = "test", *, iw_samples: int = 4000, ais_temps: int = 1000,
                 ais_chains: int = 1024, limit: int | None = None, bracket: bool = True,
                 reporter: Reporter | None = None) -> dict:
        """Discrete-model NLL of `split` with `iw_samples` importance samples, its log Z (AIS,
        and with `bracket` the reverse-AIS upper end) and the NLL interval they imply."""
        _check_eval_args(split, iw_samples, ais_temps, ais_chains, limit)
        cfg = self.config
        device = next(self.model.parameters()).device
        images = data.load_binarized(cfg.dataset, split)[:limit]
        x = torch.tensor(images, dtype=torch.float32, device=device)
        gen = build.generator(self.seeds["eval"], device)
        kwargs = dict(num_temps=ais_temps, num_chains=ais_chains, generator=gen, reporter=reporter)
        both = scores.log_z(self.model, **kwargs) if bracket else None
        ais = both.lower if both else scores.ais(self.model, **kwargs)
        found = scores.nll(self.model, {split: x}, {split: iw_samples}, ais.log_z,
                           batch_size=cfg.eval_batch_size, sample_chunk=cfg.eval_sample_chunk,
                           generator=gen, reporter=reporter)
        nll = found[f"{split}_nll"]
        record = scores.bracket_record(both, found, f"of {self.path}") if both else {}
        low, high = record.get(f"{split}_nll_low"), record.get(f"{split}_nll_high")
        return {
            "run_dir": str(self.path), "checkpoint": self.checkpoint_path.name, "step": self.step,
            "split": split, "num_points": int(x.shape[0]), "iw_samples": iw_samples,
            "nll": nll, "elbo": found[f"{split}_elbo"],
            "log_z_ais": ais.log_z, "log_z_ais_stderr": ais.stderr,
            "log_z_raise": both.upper.log_z if both else None,
            "log_z_raise_stderr": both.upper.stderr if both else None,
            "bracket_inverted": bool(both.inverted) if both else None,
            # NLL moves one for one with log Z: AIS − 3 se .. RAISE + 3 se, unless inverted
            "nll_interval": None if low is None else [low, high],
        }


def _check_eval_args(split, iw_samples, ais_temps, ais_chains, limit) -> None:
    if split not in ("valid", "test"):
        raise BadInput(f"split must be 'valid' or 'test', got {split!r}")
    for name, value, least in (("iw_samples", iw_samples, 1), ("ais_temps", ais_temps, 2),
                               ("ais_chains", ais_chains, 2),
                               ("limit", 1 if limit is None else limit, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            # one temperature is the base distribution alone and one chain has no error bar:
            # the estimate would be printed as exact while meaning nothing
            raise BadInput(f"{name} must be an integer >= {least}")


def load_run(path: str | os.PathLike, which: str = "best") -> Run:
    """The run in `path` at its best (or last) checkpoint."""
    return Run(path, which)


def resolve(config: str | os.PathLike | Mapping | Config | None = None,
            overrides: Sequence[str] | Mapping | None = None) -> Config:
    """A validated Config from a shipped name or YAML path (or a mapping, or a Config), with
    overrides as `key=value` strings or a {key: value} mapping."""
    if isinstance(config, Config):
        config = config.to_dict()
    return load_config(config, overrides or ())


def default_run_dir(cfg: Config) -> Path:
    """runs/<dataset>-<structure>-<method>-k<K>-<time>, unique even within one second."""
    import time

    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{cfg.dataset}-{cfg.structure}-{cfg.method}-k{cfg.k}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def fit(config: str | os.PathLike | Mapping | Config | None = None,
        overrides: Sequence[str] | Mapping | None = None, *, run_dir: str | os.PathLike | None = None,
        resume: bool = False, quiet: bool = True, reporter: Reporter | None = None) -> Run:
    """Train a run (or continue one with `resume=True`, from its own config) and return it
    loaded at its best checkpoint, with `.results` holding the final evaluation. Progress is
    silent unless `quiet=False` (or a `dvae_q.progress.Reporter` is given)."""
    from dvae_q.training import loop as train

    if resume:
        if run_dir is None:
            raise BadInput("resume needs the run directory")
        if config is not None or overrides:
            raise BadInput("a resumed run continues with its own config; give no other config")
        cfg = RunDir(run_dir).read_config()
    else:
        cfg = resolve(config, overrides)
        run_dir = run_dir or default_run_dir(cfg)
    if not (resume and RunDir(run_dir).is_complete()):
        train.train(cfg, Path(run_dir), resume=resume, quiet=quiet, reporter=reporter)
    return load_run(run_dir)
