"""Experiment configuration: one flat, typed, validated block of settings.

Defaults reproduce the DVAE# paper's protocol (spec §5, §7). A YAML file overrides only what
differs; `--set key=value` overrides a single key with the same validator (values are parsed as
YAML, so `k=5`, `beta=null`, `sampler_options.gibbs.num_chains=500` all work). Unknown keys,
wrong types and impossible values are `BadInput` errors naming the key. The resolved config is
what the run directory and every checkpoint record.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dvae_q.errors import BadInput

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"

DATASETS = ("binarized_mnist", "omniglot")
STRUCTURES = ("1-layer-lin", "1-layer-nonlin", "2-layer-nonlin", "4-layer-nonlin")
METHODS = (
    "dvae_spike_exp",
    "dvaepp_exp",
    "dvaepp_power",
    "dvaes_gi",
    "dvaes_gauss",
    "dvaes_exp",
    "dvaes_unexp",
    "dvaes_power",
)


def _positive(v):
    return v > 0


def _non_negative(v):
    return v >= 0


def _fraction(v):
    return 0 <= v <= 1


@dataclass
class Config:
    # --- model (spec §3, §4, §1.7) ---
    dataset: str = field(default="binarized_mnist", metadata={"choices": DATASETS})
    structure: str = field(default="4-layer-nonlin", metadata={"choices": STRUCTURES})
    method: str = field(default="dvaes_power", metadata={"choices": METHODS})
    k: int = field(default=1, metadata={"check": _positive, "doc": "training samples per point"})
    beta: float | None = field(
        default=None, metadata={"check": _positive, "doc": "null: spec §1.7 table default"}
    )
    num_latent: int | None = field(
        default=None, metadata={"check": _positive, "doc": "null: the structure's default"}
    )
    mean_field_sweeps: int = field(default=5, metadata={"check": _positive})
    power_exact_gradient: bool = False
    gi_exact_log_q: bool = field(
        default=False,
        metadata={"doc": "GI posterior: exact log(1 − q) instead of the published clip q ≤ 1 − 1e−4"},
    )
    # --- optimisation (spec §5) ---
    steps: int = field(default=1_000_000, metadata={"check": _positive})
    batch_size: int = field(default=100, metadata={"check": _positive})
    learning_rate: float = field(default=3e-3, metadata={"check": _positive})
    lr_boundaries: list = field(
        default_factory=lambda: [0.02, 0.6, 0.75, 0.95],
        metadata={"doc": "fractions of `steps` where the LR factor changes"},
    )
    lr_factors: list = field(
        default_factory=lambda: [0.1, 1.0, 1 / 3, 0.1, 1 / 33],
        metadata={"doc": "LR multipliers, one more than boundaries"},
    )
    adam_eps_tf: float = field(
        default=1e-3, metadata={"check": _positive, "doc": "TF-semantics Adam epsilon"}
    )
    weight_decay: float = field(default=1e-4, metadata={"check": _non_negative})
    kl_warmup_fraction: float = field(default=0.3, metadata={"check": _fraction})
    # --- prior sampling (spec §2.6) ---
    sampler: str = "gibbs"
    num_negative_samples: int = field(default=1000, metadata={"check": _positive})
    sampler_options: dict = field(
        default_factory=dict,
        metadata={"doc": "options per sampler name, validated by that sampler; the chosen "
                         "sampler's entry is used and its declared defaults fill the rest"},
    )
    topology: str | None = field(
        default=None, metadata={"doc": "hardware topology name or YAML path; null: dense RBM"}
    )
    # --- evaluation (spec §7) ---
    eval_every: int | None = field(
        default=None,
        metadata={"check": _positive, "doc": "null: 20,000 steps, or 10,000 when steps ≤ 100,000"},
    )
    eval_iw_samples: int = field(default=100, metadata={"check": _positive})
    final_iw_samples: int = field(default=4000, metadata={"check": _positive})
    eval_batch_size: int = field(default=1000, metadata={"check": _positive})
    eval_sample_chunk: int = field(default=100, metadata={"check": _positive})
    ais_num_temps: int = field(default=1000, metadata={"check": _positive})
    ais_num_chains: int = field(default=1024, metadata={"check": _positive})
    eval_splits: list = field(default_factory=lambda: ["valid", "test"])
    # --- run ---
    seed: int = field(default=0, metadata={"check": _non_negative})
    device: str = "cpu"
    train_limit: int | None = field(
        default=None, metadata={"check": _positive, "doc": "use the first N training rows"}
    )
    eval_limit: int | None = field(
        default=None, metadata={"check": _positive, "doc": "use the first N eval rows"}
    )
    log_every: int = field(default=100, metadata={"check": _positive})
    checkpoint_every: int = field(default=1000, metadata={"check": _positive})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def _type_ok(value: Any, annotation: str) -> bool:
    # annotations are strings under `from __future__ import annotations`
    allowed = {
        "str": (str,),
        "int": (int,),
        "float": (int, float),
        "bool": (bool,),
        "list": (list,),
        "dict": (dict,),
    }
    parts = [p.strip() for p in annotation.split("|")]
    if value is None:
        return "None" in parts
    for part in parts:
        if part == "None":
            continue
        types = allowed[part]
        if isinstance(value, bool) and part != "bool":
            continue  # YAML `true` is not a number
        if isinstance(value, types):
            return True
    return False


def _check_value(key: str, value: Any) -> Any:
    f = FIELDS[key]
    if isinstance(value, str) and f.type.startswith("float"):
        # YAML 1.1 reads `1e-3` (no dot) as a string; accept it as the number it means
        try:
            value = float(value)
        except ValueError:
            pass
    if not _type_ok(value, f.type):
        raise BadInput(f"config key '{key}': {value!r} is not of type {f.type}")
    if value is None:
        return value
    if f.type.startswith("float") and isinstance(value, int):
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise BadInput(f"config key '{key}': {value!r} is not finite")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise BadInput(f"config key '{key}': {value!r} is not one of {', '.join(choices)}")
    check = f.metadata.get("check")
    if check and not check(value):
        raise BadInput(f"config key '{key}': {value!r} is out of range ({check.__name__[1:]})")
    return value


def _check_consistency(cfg: Config) -> None:
    if cfg.eval_every is None:  # spec §7: every 20k steps, every 10k for runs of ≤ 100k steps
        cfg.eval_every = 10_000 if cfg.steps <= 100_000 else 20_000
    if len(cfg.lr_factors) != len(cfg.lr_boundaries) + 1:
        raise BadInput("config key 'lr_factors' must have one entry more than 'lr_boundaries'")
    if sorted(cfg.lr_boundaries) != cfg.lr_boundaries or not all(
        isinstance(b, (int, float)) and 0 <= b <= 1 for b in cfg.lr_boundaries
    ):
        raise BadInput("config key 'lr_boundaries' must be increasing fractions in [0, 1]")
    if not all(isinstance(f, (int, float)) and f > 0 for f in cfg.lr_factors):
        raise BadInput("config key 'lr_factors' must be positive numbers")
    _check_sampler(cfg)
    bad = [s for s in cfg.eval_splits if s not in ("valid", "test")]
    if bad or not cfg.eval_splits:
        raise BadInput("config key 'eval_splits' must list 'valid' and/or 'test'")
    if cfg.num_latent is not None and cfg.num_latent % 2:
        raise BadInput("config key 'num_latent' must be even (the RBM has two equal halves)")


def _check_sampler(cfg: Config) -> None:
    """The sampler name and every `sampler_options.<name>` entry, checked by the samplers
    package itself (each backend owns its options), and the topology's QPU defaults."""
    import samplers

    if cfg.sampler not in samplers.available():
        raise BadInput(f"config key 'sampler': unknown sampler '{cfg.sampler}'; "
                       f"known: {', '.join(samplers.available())}")
    for name, opts in cfg.sampler_options.items():
        if not isinstance(opts, dict):
            raise BadInput(f"config key 'sampler_options.{name}' must be a mapping of options")
        try:
            samplers.check_options(name, opts)
        except samplers.SamplerOptionError as exc:
            raise BadInput(f"config key 'sampler_options.{name}': {exc}") from None
    if cfg.topology is not None:
        import topologies

        try:
            samplers.sampler_class("qpu").topology_defaults(topologies.load(cfg.topology))
        except samplers.SamplerOptionError as exc:
            raise BadInput(f"config key 'topology': {exc}") from None


def _apply(cfg: Config, key: str, value: Any) -> None:
    head, _, rest = key.partition(".")
    if head not in FIELDS:
        raise BadInput(f"unknown config key '{head}'")
    if not rest:
        value = _check_value(head, value)
        if isinstance(value, dict):
            # a mapping merges into the defaults, so a file can set one sampler's options
            # without erasing the others'
            for sub, sub_value in value.items():
                _apply(cfg, f"{head}.{sub}", sub_value)
            return
        setattr(cfg, head, value)
        return
    if FIELDS[head].type != "dict":
        raise BadInput(f"config key '{head}' has no sub-key '{rest}'")
    target = getattr(cfg, head)
    *parents, leaf = rest.split(".")
    for p in parents:
        target = target.setdefault(p, {})
        if not isinstance(target, dict):
            raise BadInput(f"config key '{key}': '{p}' is not a mapping")
    if isinstance(value, dict) and isinstance(target.get(leaf), dict):
        target[leaf].update(value)
    else:
        target[leaf] = value


def resolve_config_path(name_or_path: str) -> Path:
    """A path, or the name of a shipped config (with or without `.yaml`) under configs/."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    for candidate in (REPO_CONFIGS / name_or_path, REPO_CONFIGS / f"{name_or_path}.yaml"):
        if candidate.is_file():
            return candidate
    raise BadInput(f"config file '{name_or_path}' not found (see `dvae-q configs`)")


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Defaults, then the YAML file (if any), then `key=value` overrides; validated."""
    cfg = Config()
    if path is not None:
        file = resolve_config_path(str(path))
        try:
            raw = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            line = getattr(getattr(exc, "problem_mark", None), "line", None)
            where = f" (line {line + 1})" if line is not None else ""
            raise BadInput(f"{file}: not valid YAML{where}") from None
        if not isinstance(raw, dict):
            raise BadInput(f"{file}: a config file is a mapping of keys to values")
        raw.pop("description", None)  # one-line summary shown by `dvae-q configs`
        for key, value in raw.items():
            _apply(cfg, str(key), value)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise BadInput(f"--set expects key=value, got '{item}'")
        try:
            value = yaml.safe_load(text) if text else None
        except yaml.YAMLError:
            raise BadInput(f"--set {key}: cannot parse value '{text}'") from None
        _apply(cfg, key.strip(), value)
    _check_consistency(cfg)
    return cfg


def config_from_dict(raw: dict) -> Config:
    """Rebuild a resolved config (from a run directory or checkpoint), validating it again."""
    cfg = Config()
    for key, value in raw.items():
        _apply(cfg, key, value)
    _check_consistency(cfg)
    return cfg


def describe(path: Path) -> str:
    """The one-line description a config file carries (its `description` key)."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return "(unreadable)"
    return str(raw.get("description", "")) if isinstance(raw, dict) else "(not a mapping)"
