"""Planning `dvae-q reproduce`: which cells to run (dataset × structure × method × K × seed,
optionally under a named variant of extra config keys), each cell's config, and what its run
directory already says (complete, to resume, new). The plan is recorded in the output folder's
cells.json, merged over invocations."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from dvae_q.errors import BadInput
from dvae_q.model.methods import METHODS
from dvae_q.training.config import parse_override
from storage.files import write_atomic

if TYPE_CHECKING:  # config and run directories pull in torch: imported where they are used
    from dvae_q.training.config import Config

PAPER_STEPS = 1_000_000
MANIFEST = "cells.json"
CELL_KEYS = ("dataset", "structure", "method", "k")
# chosen by the command's own flags, never by --set
RESERVED = (*CELL_KEYS, "seed", "device")
# keys that may differ between the run directory and a rerun: hardware, not the experiment
HARDWARE_KEYS = ("device",)
NAME = re.compile(r"[A-Za-z0-9_]+")


@dataclass(frozen=True)
class Variant:
    """Extra cells: every selected cell again with these `key=value` overrides (YAML values)."""

    name: str
    overrides: tuple[str, ...]

    def cell_fields(self) -> dict:
        """The overrides that change which cell this is (dataset, structure, method, K)."""
        fields = {}
        for item in self.overrides:
            key, value = parse_override(item)
            if key in CELL_KEYS:
                fields[key] = value
        return fields

    def config_overrides(self) -> list[str]:
        return [o for o in self.overrides if o.partition("=")[0] not in CELL_KEYS]


def parse_variant(text: str) -> Variant:
    """`NAME:KEY=VALUE,KEY=VALUE` (a comma starts a new pair only before `KEY=`)."""
    name, sep, body = text.partition(":")
    if not sep or not NAME.fullmatch(name) or not body:
        raise BadInput(f"--variant expects NAME:KEY=VALUE[,KEY=VALUE...] with NAME of letters, "
                       f"digits and _, got '{text}'")
    pairs = tuple(p.strip() for p in re.split(r",(?=\s*[A-Za-z_][\w.]*=)", body))
    for pair in pairs:
        key = pair.partition("=")[0]
        if "=" not in pair or not re.fullmatch(r"[A-Za-z_][\w.]*", key):
            raise BadInput(f"--variant {name}: expected KEY=VALUE, got '{pair}'")
        if key == "seed":
            raise BadInput(f"--variant {name}: seeds are chosen with --seeds")
    variant = Variant(name, pairs)
    fields = variant.cell_fields()
    if "k" in fields and (isinstance(fields["k"], bool) or not isinstance(fields["k"], int)):
        raise BadInput(f"--variant {name}: k must be an integer")
    if any(not isinstance(fields[key], str) for key in fields if key != "k"):
        raise BadInput(f"--variant {name}: dataset, structure and method are names")
    return variant


@dataclass(frozen=True)
class Cell:
    dataset: str
    structure: str
    method: str
    k: int
    seed: int = 0
    variant: str | None = None

    @property
    def name(self) -> str:
        """The run directory's name: <dataset>-<structure>-<method>-k<K>[-<variant>]-seed<S>."""
        tail = f"-{self.variant}" if self.variant else ""
        return f"{self.dataset}-{self.structure}-{self.method}-k{self.k}{tail}-seed{self.seed}"

    def describe(self) -> dict:
        return {"dataset": self.dataset, "structure": self.structure, "method": self.method,
                "k": self.k, "seed": self.seed, "variant": self.variant}


def parse_choices(text: str, choices: Sequence[str], what: str) -> list[str]:
    """A comma-separated list of names, or `all`."""
    if text.strip() == "all":
        return list(choices)
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in choices]
    if bad or not items:
        raise BadInput(f"--{what}: '{bad[0] if bad else text}' is not one of "
                       f"{', '.join(choices)} (or all)")
    return list(dict.fromkeys(items))


def parse_ints(text: str, what: str, least: int) -> list[int]:
    """A comma-separated list of integers >= least."""
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise BadInput(f"--{what} expects integers separated by commas, got '{text}'") from None
    if not values or min(values) < least:
        raise BadInput(f"--{what} expects integers >= {least}, got '{text}'")
    return list(dict.fromkeys(values))


def select(datasets, structures, methods, ks) -> list[tuple[str, str, str, int]]:
    """Every (dataset, structure, method, K) of the product, methods in the poster's order."""
    methods = sorted(methods, key=_method_order)
    return [(d, s, m, k) for d in datasets for s in structures for m in methods for k in ks]


def _method_order(method: str) -> int:
    return list(METHODS).index(method)


def expand(selection, seeds: Sequence[int], variants: Sequence[Variant] = ()) -> list[Cell]:
    """Cells for every selected tuple and seed, then the variants' (duplicates dropped)."""
    cells = []
    for variant in (None, *variants):
        for dataset, structure, method, k in selection:
            fields = dict(dataset=dataset, structure=structure, method=method, k=k)
            fields.update(variant.cell_fields() if variant else {})
            cells += [Cell(**fields, seed=s, variant=variant and variant.name) for s in seeds]
    return list(dict.fromkeys(cells))


def steps_for(steps: int | None, budget: float | None) -> int | None:
    """Training steps from --steps, or from --budget as a fraction of the paper's 1M steps (the
    schedule's boundaries and the KL warm-up are fractions of `steps`, so they compress too)."""
    if steps is not None and budget is not None:
        raise BadInput("give --steps or --budget, not both")
    if budget is not None:
        if not 0 < budget <= 1:
            raise BadInput("--budget is a fraction of the paper's 1M steps, in (0, 1]")
        return max(1, round(budget * PAPER_STEPS))
    if steps is not None and steps < 1:
        raise BadInput("--steps must be >= 1")
    return steps


@dataclass
class Request:
    """One `dvae-q reproduce`: what to run, where, and with which settings."""

    cells: list[Cell]
    out: Path
    config: str | None = None  # base config; default: the shipped <dataset>/<structure>
    overrides: list[str] = field(default_factory=list)
    variants: list[Variant] = field(default_factory=list)
    steps: int | None = None
    command: str | None = None

    def check_overrides(self) -> None:
        for item in self.overrides:
            key = item.partition("=")[0].strip()
            if key in RESERVED or (key == "steps" and self.steps is not None):
                flag = {"k": "--k", "seed": "--seeds", "steps": "--steps"}.get(key, f"--{key}")
                raise BadInput(f"--set {key}: chosen by {flag}, not --set")

    def cell_config(self, cell: Cell) -> Config:
        from dvae_q.run import resolve

        variant = next((v for v in self.variants if v.name == cell.variant), None)
        items = [*self.overrides, *(variant.config_overrides() if variant else [])]
        items += [f"{key}={value}" for key, value in cell.describe().items() if key != "variant"]
        items += [f"steps={self.steps}"] if self.steps is not None else []
        try:
            return resolve(self.config or f"{cell.dataset}/{cell.structure}", items)
        except BadInput as exc:
            raise BadInput(f"cell {cell.name}: {exc}") from None


@dataclass
class Planned:
    cell: Cell
    run_dir: Path
    config: dict
    state: str  # "complete", "resume" or "new"


def plan(request: Request) -> list[Planned]:
    """Each cell's resolved config and the state of its run directory; BadInput (before
    anything runs) for a bad config or a directory made with another config."""
    request.check_overrides()
    out = request.out.resolve()
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {request.out} exists and is not a folder")
    planned = []
    for cell in request.cells:
        cfg = request.cell_config(cell).to_dict()
        run_dir = out / cell.name
        planned.append(Planned(cell, run_dir, cfg, _state(run_dir, cfg)))
    return planned


def _state(run_dir: Path, cfg: dict) -> str:
    from dvae_q.training.rundir import RunDir

    rd = RunDir(run_dir)
    if not run_dir.exists() or (run_dir.is_dir() and not any(run_dir.iterdir())):
        return "new"
    stored = rd.read_config().to_dict()  # BadInput if it is not a run directory
    differ = [k for k in cfg if k not in HARDWARE_KEYS and stored.get(k) != cfg[k]]
    if differ:
        raise BadInput(f"{run_dir} was made with another config ({', '.join(differ[:4])} "
                       "differ); rerun with the same flags, or choose another --out")
    return "complete" if rd.is_complete() else "resume"


def write_manifest(out: Path, planned: Sequence[Planned], request: Request) -> None:
    """Record which run directory is which cell (merged with earlier invocations)."""
    path = out / MANIFEST
    manifest = {"cells": {}, "commands": []}
    if path.is_file():
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):
            raise BadInput(f"{path} is not readable JSON; move it aside to continue") from None
    variants = {v.name: list(v.overrides) for v in request.variants}
    for item in planned:
        entry = item.cell.describe()
        entry["variant_overrides"] = variants.get(item.cell.variant, [])
        manifest["cells"][item.cell.name] = entry
    if request.command:
        manifest["commands"] = [*manifest.get("commands", []), request.command][-20:]
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(manifest, indent=2) + "\n")
