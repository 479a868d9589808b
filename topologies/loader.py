"""Read and validate topology YAML files into frozen `Topology` objects.

A topology file names a hardware graph family and shape (the graph itself comes from
`dwave.graphs`), how the prior uses it, and defaults for the QPU sampler:

    family: pegasus          # chimera | pegasus | zephyr (omit for mode: dense)
    shape: [16]              # chimera [m] | [m, n] | [m, n, t]; pegasus [m]; zephyr [m] | [m, t]
    mode: native             # native | embedded | dense
    embedder: biclique       # embedded mode only: biclique (constructive) | minorminer
    broken_qubits: [17, 301] # optional: qubits absent on the target chip (from its nodelist)
    broken_couplers: [[5, 9]] # optional: couplers absent on the target chip
    description: free text
    qpu:                     # defaults for `samplers.get("qpu", topology=...)`, validated by
                             # that sampler (it owns its options), not here
      solver: {topology__type: pegasus}   # a solver name or a feature filter; null: client default
      num_reads: 1000
      annealing_time: 20                  # µs
      programming_thermalization: 1000    # µs
      readout_thermalization: 0           # µs
      chain_strength: null                # embedded mode; null: uniform torque compensation
      chain_break_method: majority_vote   # majority_vote | discard | weighted_random
      beta_eff: 5.0                       # first guess of the QPU's inverse temperature

Modes:
* native — the RBM lives on the hardware graph, one qubit per unit. Couplings exist only where a
  coupler joins the two sides of a bipartite subgraph: Chimera's two colours, or the internal
  (vertical–horizontal) couplers of Pegasus/Zephyr. `coupling_mask` gives the prior that mask, so
  a trained prior is QPU-sampleable with no chains.
* embedded — a dense RBM is minor-embedded with chains (`topologies.embedding`).
* dense — no hardware restriction (classical samplers only).
"""

from __future__ import annotations

import types
from pathlib import Path

from topologies import graphs, strict_yaml
from topologies.errors import TopologyError
from topologies.topology import Topology

HERE = Path(__file__).resolve().parent
FAMILIES = ("chimera", "pegasus", "zephyr")
MODES = ("native", "embedded", "dense")
EMBEDDERS = ("biclique", "minorminer")
MAX_SHAPE = 32
TOP_KEYS = ("name", "description", "family", "shape", "mode", "embedder", "qpu",
            "broken_qubits", "broken_couplers")


def _check_shape(family: str, shape, where: str) -> tuple[int, ...]:
    allowed = {"chimera": (1, 3), "pegasus": (1, 1), "zephyr": (1, 2)}[family]
    if (not isinstance(shape, (list, tuple)) or not allowed[0] <= len(shape) <= allowed[1]
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape)):
        forms = {"chimera": "[m], [m, n] or [m, n, t]", "pegasus": "[m]", "zephyr": "[m] or [m, t]"}
        raise TopologyError(f"{where}: shape {shape!r} is impossible for {family}; use {forms[family]}")
    minimum = 2 if family == "pegasus" else 1
    if shape[0] < minimum or any(s < 1 for s in shape):
        raise TopologyError(
            f"{where}: shape {list(shape)} is impossible for {family} (m >= {minimum}, all sizes >= 1)"
        )
    if any(s > MAX_SHAPE for s in shape):
        # the graph is built in memory: a shape like [100000] would take hours and all the RAM
        raise TopologyError(
            f"{where}: shape {list(shape)} is too large; sizes up to {MAX_SHAPE} are supported "
            "(today's chips are at most 16)"
        )
    return tuple(shape)


def _label(q) -> bool:
    return isinstance(q, int) and not isinstance(q, bool) and q >= 0


def known() -> list[str]:
    """Names of the topology files shipped with the package."""
    return sorted(p.stem for p in HERE.glob("*.yaml"))


def _resolve(path_or_name) -> Path:
    text = str(path_or_name)
    shipped = HERE / f"{text}.yaml"
    if "/" not in text and not text.endswith((".yaml", ".yml")) and shipped.is_file():
        return shipped
    path = Path(text).expanduser()
    if path.is_file():
        return path
    raise TopologyError(
        f"unknown topology '{text}': not a shipped name ({', '.join(known())}) nor a YAML file"
    )


def _read(path: Path, where: str) -> dict:
    try:
        data = strict_yaml.load_file(path, where)
    except strict_yaml.YAMLFileError as exc:
        raise TopologyError(str(exc)) from None
    if not isinstance(data, dict):
        raise TopologyError(f"{where}: expected a mapping of keys, got {type(data).__name__}")
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise TopologyError(f"{where}: unknown key '{unknown[0]}'; accepted: {', '.join(TOP_KEYS)}")
    return data


def _graph_kind(data: dict, where: str) -> tuple[str, str | None, tuple[int, ...], str]:
    """(mode, family, shape, embedder), checked together."""
    mode = data.get("mode")
    if mode not in MODES:
        raise TopologyError(f"{where}: mode {mode!r} must be one of {', '.join(MODES)}")
    family = data.get("family")
    if mode == "dense":
        if family is not None or data.get("shape") is not None:
            raise TopologyError(f"{where}: mode dense takes no family or shape")
        shape: tuple[int, ...] = ()
    else:
        if family not in FAMILIES:
            raise TopologyError(f"{where}: unknown family {family!r}; use {', '.join(FAMILIES)}")
        shape = _check_shape(family, data.get("shape"), where)
    embedder = data.get("embedder", "biclique")
    if embedder not in EMBEDDERS:
        raise TopologyError(f"{where}: embedder {embedder!r} must be one of {', '.join(EMBEDDERS)}")
    if "embedder" in data and mode != "embedded":
        raise TopologyError(f"{where}: 'embedder' only applies to mode embedded")
    return mode, family, shape, embedder


def _broken(data: dict, mode: str, family, shape, where: str) -> tuple[list, list]:
    """The file's broken qubits and couplers, each checked to exist on the perfect chip."""
    broken_qubits = data.get("broken_qubits") or []
    broken_couplers = data.get("broken_couplers") or []
    if (broken_qubits or broken_couplers) and mode == "dense":
        raise TopologyError(f"{where}: a dense topology has no qubits to mark broken")
    if not (isinstance(broken_qubits, list) and all(_label(q) for q in broken_qubits)):
        raise TopologyError(f"{where}: broken_qubits must be a list of qubit labels (integers)")
    if not (isinstance(broken_couplers, list) and all(
            isinstance(c, list) and len(c) == 2 and all(map(_label, c)) for c in broken_couplers)):
        raise TopologyError(f"{where}: broken_couplers must be a list of [qubit, qubit] pairs")
    if broken_qubits or broken_couplers:
        full = graphs.hardware_graph(family, shape)
        missing = [q for q in broken_qubits if q not in full] + \
            [c for c in broken_couplers if not full.has_edge(*c)]
        if missing:
            raise TopologyError(f"{where}: broken {missing[0]} is not in {family}{list(shape)}")
    return broken_qubits, broken_couplers


def load(path_or_name) -> Topology:
    """Load a shipped topology by name (topologies/<name>.yaml) or a YAML file by path."""
    if isinstance(path_or_name, Topology):
        return path_or_name
    path = _resolve(path_or_name)
    where = f"topology file {path}"
    data = _read(path, where)
    mode, family, shape, embedder = _graph_kind(data, where)
    qpu = data.get("qpu") or {}
    if not isinstance(qpu, dict):
        raise TopologyError(f"{where}: 'qpu' must be a mapping of QPU defaults")
    if qpu and mode == "dense":
        raise TopologyError(f"{where}: a dense topology has no QPU defaults")
    broken_qubits, broken_couplers = _broken(data, mode, family, shape, where)
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise TopologyError(f"{where}: 'name' must be a non-empty string")
    return Topology(
        name=name, mode=mode, family=family, shape=shape, embedder=embedder,
        description=str(data.get("description", "")), qpu=types.MappingProxyType(dict(qpu)),
        source=str(path), broken_qubits=tuple(sorted(broken_qubits)),
        broken_couplers=tuple(sorted(tuple(sorted(c)) for c in broken_couplers)),
    )
