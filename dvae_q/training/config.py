"""Experiment configuration: one flat, typed, validated block of settings.

Defaults reproduce the DVAE# paper's protocol (1M steps, batch 100, Adam 3e-3 with TF-semantics
ε and the piecewise-constant schedule, KL warm-up over 30 %, 1000 prior samples per step,
evaluation every 20k steps with K = 100 and a final test with K = 4000, AIS with 1000
temperatures × 1024 chains). A YAML file overrides only what differs; `--set key=value`
overrides a single key with the same validator (values are parsed as YAML, so `k=5`,
`beta=null`, `sampler_options.gibbs.num_chains=500` all work). Unknown keys (with the nearest
valid one suggested), wrong types and impossible values are `BadInput` errors naming the key.
A value is never echoed back unless it is a number: a config may carry a mistyped secret.
Credentials are refused anywhere in a config, because configs are copied into run directories
and checkpoints. The resolved config is what the run directory and every checkpoint record.
The checks that look across keys or at this machine are in `dvae_q.training.config_checks`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from dvae_q.errors import BadInput
from dvae_q.model.methods import METHODS
from dvae_q.training.config_checks import check_consistency, name_shown
from topologies import strict_yaml

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"

DATASETS = ("binarized_mnist", "omniglot")
STRUCTURES = ("1-layer-lin", "1-layer-nonlin", "2-layer-nonlin", "4-layer-nonlin")


def _positive(v):
    return v > 0


def _non_negative(v):
    return v >= 0


def _fraction(v):
    return 0 <= v <= 1


def _at_least_two(v):
    return v >= 2


def _doc(text: str, **extra) -> dict:
    return {"doc": text, **extra}


@dataclass
class Config:
    # --- model ---
    dataset: str = field(default="binarized_mnist", metadata=_doc(
        "binarized_mnist or omniglot", choices=DATASETS))
    structure: str = field(default="4-layer-nonlin", metadata=_doc(
        "encoder/decoder structure of the paper", choices=STRUCTURES))
    method: str = field(default="dvaes_power", metadata=_doc(
        "one column of the DVAE# table (see README)", choices=tuple(METHODS)))
    k: int = field(default=1, metadata=_doc("training samples per data point", check=_positive))
    beta: float | None = field(default=None, metadata=_doc(
        "smoothing parameter β; null: the paper's value for dataset, structure and method",
        check=_positive))
    num_latent: int | None = field(default=None, metadata=_doc(
        "latent units N (even); null: the structure's own", check=_positive))
    mean_field_sweeps: int = field(default=5, metadata=_doc(
        "mean-field sweeps for log Z(ζ) of the overlapping relaxations", check=_positive))
    power_exact_gradient: bool = field(default=False, metadata=_doc(
        "power relaxation: implicit gradient from the exact CDF instead of the ε-floored one"))
    gi_exact_log_q: bool = field(default=False, metadata=_doc(
        "Gaussian-integral posterior: exact log(1 − q) instead of the published clip q ≤ 1 − 1e−4"))
    # --- optimisation ---
    steps: int = field(default=1_000_000, metadata=_doc("training steps", check=_positive))
    batch_size: int = field(default=100, metadata=_doc("data points per step", check=_positive))
    learning_rate: float = field(default=3e-3, metadata=_doc("peak Adam learning rate",
                                                             check=_positive))
    lr_boundaries: list = field(default_factory=lambda: [0.02, 0.6, 0.75, 0.95], metadata=_doc(
        "fractions of `steps` where the learning-rate factor changes"))
    lr_factors: list = field(default_factory=lambda: [0.1, 1.0, 1 / 3, 0.1, 1 / 33], metadata=_doc(
        "learning-rate multipliers, one more than boundaries"))
    adam_eps_tf: float = field(default=1e-3, metadata=_doc(
        "Adam ε in TensorFlow's semantics (added before bias correction)", check=_positive))
    weight_decay: float = field(default=1e-4, metadata=_doc(
        "coupled L2 on weights, BatchNorm γ and the RBM's W", check=_non_negative))
    kl_warmup_fraction: float = field(default=0.3, metadata=_doc(
        "KL weight rises linearly from 0 to 1 over this fraction of `steps`", check=_fraction))
    # --- prior sampling ---
    sampler: str = field(default="gibbs", metadata=_doc(
        "prior sampler: gibbs, pa, neal, exact, dimod, qpu, remote"))
    num_negative_samples: int = field(default=1000, metadata=_doc(
        "prior samples per step (the negative phase)", check=_positive))
    sampler_options: dict = field(default_factory=dict, metadata=_doc(
        "options per sampler name, validated by that sampler; the chosen sampler's entry is "
        "used and its declared defaults fill the rest"))
    topology: str | None = field(default=None, metadata=_doc(
        "hardware topology name or YAML path; null: the dense RBM of the paper"))
    prefetch: bool = field(default=False, metadata=_doc(
        "submit the next step's prior samples before this step's forward/backward (samples one "
        "step stale; only for samplers with calls in flight, e.g. qpu)"))
    max_qpu_access_time_s: float | None = field(default=None, metadata=_doc(
        "QPU access-time budget of the run: training stops cleanly when it is spent", check=_positive))
    start_over_budget: bool = field(default=False, metadata=_doc(
        "start even when the projected QPU access time exceeds max_qpu_access_time_s"))
    # --- evaluation ---
    eval_every: int | None = field(default=None, metadata=_doc(
        "steps between evaluations; null: 20,000, or 10,000 when steps ≤ 100,000",
        check=_positive))
    eval_iw_samples: int = field(default=100, metadata=_doc(
        "importance samples per point at in-training evaluations", check=_positive))
    final_iw_samples: int = field(default=4000, metadata=_doc(
        "importance samples per test point at the final evaluation", check=_positive))
    eval_batch_size: int = field(default=1000, metadata=_doc(
        "points per evaluation batch", check=_positive))
    eval_sample_chunk: int = field(default=100, metadata=_doc(
        "importance samples evaluated together per point", check=_positive))
    ais_num_temps: int = field(default=1000, metadata=_doc(
        "AIS inverse temperatures (≥ 2: one is the base distribution alone)", check=_at_least_two))
    ais_num_chains: int = field(default=1024, metadata=_doc(
        "AIS chains (≥ 2: one gives no error bar)", check=_at_least_two))
    eval_splits: list = field(default_factory=lambda: ["valid", "test"], metadata=_doc(
        "splits evaluated during training: valid and/or test"))
    # --- run ---
    seed: int = field(default=0, metadata=_doc("root seed of every random stream",
                                               check=_non_negative))
    device: str = field(default="cpu", metadata=_doc("torch device of the model: cpu, cuda, cuda:1"))
    compile: bool | None = field(default=None, metadata=_doc(
        "the encoder and decoder of the training step through torch.compile (inductor); null: "
        "on CUDA only. Evaluation stays eager; checkpoints are the same either way"))
    train_limit: int | None = field(default=None, metadata=_doc(
        "use the first N training rows (smoke runs); null: all", check=_positive))
    eval_limit: int | None = field(default=None, metadata=_doc(
        "use the first N rows of each evaluation split; null: all", check=_positive))
    log_every: int = field(default=100, metadata=_doc("steps between metrics rows",
                                                      check=_positive))
    checkpoint_every: int = field(default=1000, metadata=_doc(
        "steps between checkpoints (also at every evaluation)", check=_positive))
    tensorboard: bool | None = field(default=None, metadata=_doc(
        "write TensorBoard event files beside metrics.csv; null: when tensorboard is installed"))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def describe_keys() -> list[tuple[str, str, str, str]]:
    """(key, type, default, meaning) of every config key, for `dvae-q configs --keys`."""
    rows = []
    for f in dataclasses.fields(Config):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        choices = f.metadata.get("choices")
        meaning = f.metadata.get("doc", "")
        if choices:
            meaning += f" ({' | '.join(choices)})"
        rows.append((f.name, str(f.type), "null" if default is None else repr(default), meaning))
    return rows


def _type_ok(value: Any, annotation: str) -> bool:
    # annotations are strings under `from __future__ import annotations`
    allowed = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,),
               "list": (list,), "dict": (dict,)}
    parts = [p.strip() for p in annotation.split("|")]
    if value is None:
        return "None" in parts
    for part in parts:
        if part == "None":
            continue
        if isinstance(value, bool) and part != "bool":
            continue  # YAML `true` is not a number
        if isinstance(value, allowed[part]):
            return True
    return False


def _shown(value: Any) -> str:
    """How a bad value appears in a message: numbers as themselves, anything else by type only
    (a string could be a secret typed into the wrong key)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)
    if value is None or isinstance(value, bool):
        return "null" if value is None else str(value).lower()
    return f"a {type(value).__name__} value"


def _check_value(key: str, value: Any) -> Any:
    f = FIELDS[key]
    if isinstance(value, str) and f.type.startswith("float"):
        # YAML 1.1 reads `1e-3` (no dot) as a string; accept it as the number it means
        try:
            value = float(value)
        except ValueError:
            pass
    if not _type_ok(value, f.type):
        raise BadInput(f"config key '{key}': expected {f.type}, got {_shown(value)}")
    if value is None:
        return value
    if f.type.startswith("float") and isinstance(value, int):
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise BadInput(f"config key '{key}': {value!r} is not finite")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        hint = difflib.get_close_matches(str(value), choices, n=1)
        did = f"; did you mean '{hint[0]}'?" if hint else ""
        raise BadInput(f"config key '{key}': {name_shown(str(value))} is not one of "
                       f"{', '.join(choices)}{did}")
    check = f.metadata.get("check")
    if check and not check(value):
        raise BadInput(f"config key '{key}': {_shown(value)} is out of range ({check.__name__[1:]})")
    return value


def _unknown_key(key: str) -> BadInput:
    hint = difflib.get_close_matches(key, list(FIELDS), n=1)
    did = f"; did you mean '{hint[0]}'?" if hint else "; see `dvae-q configs --keys`"
    return BadInput(f"unknown config key {name_shown(key)}{did}")


def _apply(cfg: Config, key: str, value: Any) -> None:
    head, _, rest = key.partition(".")
    if head not in FIELDS:
        raise _unknown_key(head)
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
    if path.is_dir():
        raise BadInput(f"config '{name_or_path}' is a folder, not a YAML file")
    raise BadInput(f"config file '{name_or_path}' not found (see `dvae-q configs`)")


def read_yaml(path: Path, what: str = "a config file") -> Any:
    """A YAML file read strictly (UTF-8, no duplicate keys); BadInput naming it otherwise."""
    try:
        return strict_yaml.load_file(path)
    except strict_yaml.YAMLFileError as exc:
        raise BadInput(str(exc)) from None


def parse_override(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise BadInput("--set expects key=value")
    try:
        value = strict_yaml.loads(text, f"--set {key.strip()}") if text else None
    except strict_yaml.YAMLFileError:
        raise BadInput(f"--set {key.strip()}: cannot parse the value as YAML") from None
    return key.strip(), value


def load_config(path: str | Path | Mapping | None = None,
                overrides: Sequence[str] | Mapping = ()) -> Config:
    """Defaults, then the YAML file or mapping (if any), then the overrides (`key=value`
    strings as on the command line, or a {key: value} mapping); validated."""
    cfg = Config()
    if isinstance(path, Mapping):
        raw = dict(path)
    elif path is not None:
        file = resolve_config_path(str(path))
        raw = read_yaml(file) or {}
        if not isinstance(raw, dict):
            raise BadInput(f"{file}: a config file is a mapping of keys to values")
    else:
        raw = {}
    raw.pop("description", None)  # one-line summary shown by `dvae-q configs`
    for key, value in raw.items():
        _apply(cfg, str(key), value)
    pairs = overrides.items() if isinstance(overrides, Mapping) else map(parse_override, overrides)
    for key, value in pairs:
        _apply(cfg, str(key), value)
    check_consistency(cfg)
    return cfg


def config_from_dict(raw: Mapping) -> Config:
    """Rebuild a resolved config (from a run directory or checkpoint), validating it again."""
    if not isinstance(raw, Mapping):
        raise BadInput("a resolved config is a mapping of keys to values")
    return load_config(raw)


def describe(path: Path) -> str:
    """The one-line description a config file carries (its `description` key)."""
    try:
        raw = strict_yaml.load_file(path) or {}
    except strict_yaml.YAMLFileError:
        return "(unreadable)"
    return str(raw.get("description", "")) if isinstance(raw, dict) else "(not a mapping)"
