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
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from topologies import strict_yaml

HERE = Path(__file__).resolve().parent
FAMILIES = ("chimera", "pegasus", "zephyr")
MODES = ("native", "embedded", "dense")
EMBEDDERS = ("biclique", "minorminer")
MAX_SHAPE = 32
TOP_KEYS = ("name", "description", "family", "shape", "mode", "embedder", "qpu",
            "broken_qubits", "broken_couplers")


class TopologyError(ValueError):
    """A topology file or request that cannot be used; the message is one line naming the fix."""


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


@dataclass(frozen=True)
class Topology:
    """A validated topology file. Graph-derived results are cached per (family, shape)."""

    name: str
    mode: str
    family: str | None = None
    shape: tuple[int, ...] = ()
    embedder: str = "biclique"
    description: str = ""
    qpu: types.MappingProxyType = field(default_factory=lambda: types.MappingProxyType({}))
    source: str = ""
    broken_qubits: tuple[int, ...] = ()                 # absent on the target chip
    broken_couplers: tuple[tuple[int, int], ...] = ()

    def graph(self):
        """The perfect-yield hardware graph (networkx, integer labels). Shared: do not mutate."""
        if self.family is None:
            raise TopologyError(f"topology '{self.name}' is dense and has no hardware graph")
        return _graph(self.family, self.shape, self.broken_qubits, self.broken_couplers)

    def bipartite_sides(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """All qubits of the two sides of the native bipartite subgraph, sorted by label."""
        return _bipartite(self.family, self.shape, self.broken_qubits, self.broken_couplers)[:2]

    def native_rbm(self, num_left: int | None = None, num_right: int | None = None):
        """(left_qubits, right_qubits, mask) of a native RBM; mask is (n_left, n_right) float32.

        None takes the whole side. Smaller sizes take a connected region grown breadth-first from
        the lowest-labelled left qubit, adding a qubit only while its side has room.
        """
        if self.mode != "native":
            raise TopologyError(f"topology '{self.name}' is {self.mode}, not native")
        left, right, mask = _native(self.name, self.family, self.shape, self.broken_qubits,
                                    self.broken_couplers, num_left, num_right)
        return list(left), list(right), torch.from_numpy(mask.copy())

    def coupling_mask(self, num_left: int, num_right: int) -> torch.Tensor | None:
        """The prior's fixed coupling mask: native → hardware mask; dense, embedded → None."""
        if self.mode == "native":
            return self.native_rbm(num_left, num_right)[2]
        if self.mode == "embedded":
            # fail early (at config time) if the dense RBM cannot be embedded at all
            self.embedding(num_left, num_right)
        return None

    def embedding(self, num_left: int, num_right: int, cache_dir=None) -> dict[int, tuple]:
        """Chains {unit: qubits} embedding the dense K_{n_left,n_right} RBM (embedded mode).

        Units are 0..n_left−1 (left) then n_left.. (right). Computed once, cached on disk
        under `cache_dir` (default $DVAEQ_CACHE_DIR or the user cache) and validated on load.
        """
        if self.mode != "embedded":
            raise TopologyError(f"topology '{self.name}' is {self.mode}, not embedded")
        from topologies.embedding import cached_embedding

        return cached_embedding(self, num_left, num_right, cache_dir)

    def mock_kwargs(self) -> dict:
        """Keyword arguments that make a MockDWaveSampler of this hardware graph (broken
        couplers as tuples: the mock drops an edge only if it finds it as a tuple)."""
        if self.family is None:
            raise TopologyError(f"topology '{self.name}' is dense; no QPU can sample it")
        return {"topology_type": self.family, "topology_shape": list(self.shape),
                "broken_nodes": list(self.broken_qubits) or None,
                "broken_edges": [tuple(e) for e in self.broken_couplers] or None}


@lru_cache(maxsize=8)
def _graph(family: str, shape: tuple[int, ...], broken_qubits=(), broken_couplers=()):
    import dwave.graphs as dg

    if family == "chimera":
        g = dg.chimera_graph(*shape)
    elif family == "pegasus":
        g = dg.pegasus_graph(shape[0])
    else:
        g = dg.zephyr_graph(*shape)
    g.remove_edges_from(broken_couplers)
    g.remove_nodes_from(broken_qubits)
    return g


@lru_cache(maxsize=8)
def _bipartite(family: str, shape: tuple[int, ...], broken_qubits=(), broken_couplers=()):
    """(side-0 qubits, side-1 qubits, bipartite edge array (E, 2) as (side 0, side 1))."""
    import dwave.graphs as dg

    g = _graph(family, shape, broken_qubits, broken_couplers)
    if family == "chimera":
        side = {q: dg.chimera_two_color(d["chimera_index"]) for q, d in g.nodes(data=True)}
    else:
        # Pegasus/Zephyr are not bipartite (odd couplers and cycles); the internal couplers,
        # joining qubits of different orientation u, form a bipartite subgraph with sides by u
        key = f"{family}_index"
        side = {q: d[key][0] for q, d in g.nodes(data=True)}
    edges = np.array([(u, v) if side[u] == 0 else (v, u) for u, v in g.edges if side[u] != side[v]],
                     dtype=np.int64)
    left = tuple(sorted(q for q, s in side.items() if s == 0))
    right = tuple(sorted(q for q, s in side.items() if s == 1))
    return left, right, edges


@lru_cache(maxsize=16)
def _native(name, family, shape, broken_qubits, broken_couplers, num_left, num_right):
    left_all, right_all, edges = _bipartite(family, shape, broken_qubits, broken_couplers)
    n_l = len(left_all) if num_left is None else num_left
    n_r = len(right_all) if num_right is None else num_right
    if n_l < 1 or n_r < 1:
        raise TopologyError(f"topology '{name}': an RBM needs >= 1 unit per side, got {n_l}+{n_r}")
    if n_l > len(left_all) or n_r > len(right_all):
        raise TopologyError(
            f"topology '{name}': RBM {n_l}+{n_r} is larger than the hardware's native "
            f"{len(left_all)}+{len(right_all)}; shrink the RBM or use a bigger topology"
        )
    if n_l == len(left_all) and n_r == len(right_all):
        left, right = list(left_all), list(right_all)
    else:
        left, right = _grow_region(name, left_all, edges, n_l, n_r)
    li = {q: i for i, q in enumerate(left)}
    ri = {q: j for j, q in enumerate(right)}
    mask = np.zeros((n_l, n_r), dtype=np.float32)
    keep = [(li[u], ri[v]) for u, v in edges if u in li and v in ri]
    if keep:
        rows, cols = np.array(keep).T
        mask[rows, cols] = 1.0
    return tuple(left), tuple(right), mask


def _grow_region(name, left_all, edges, n_l, n_r):
    adj: dict[int, list[int]] = {}
    for u, v in edges:
        adj.setdefault(int(u), []).append(int(v))
        adj.setdefault(int(v), []).append(int(u))
    left_set = set(left_all)
    quota = {True: n_l, False: n_r}
    taken: dict[bool, list[int]] = {True: [], False: []}
    seed = left_all[0]
    taken[True].append(seed)
    seen, queue = {seed}, deque([seed])
    while queue and (len(taken[True]) < n_l or len(taken[False]) < n_r):
        for v in sorted(adj.get(queue.popleft(), ())):
            if v in seen:
                continue
            seen.add(v)
            side = v in left_set
            if len(taken[side]) < quota[side]:
                taken[side].append(v)
                queue.append(v)
    if len(taken[True]) < n_l or len(taken[False]) < n_r:
        raise TopologyError(
            f"topology '{name}': no connected region with {n_l}+{n_r} units "
            f"(reached {len(taken[True])}+{len(taken[False])}); use more balanced sides"
        )
    return sorted(taken[True]), sorted(taken[False])


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
        full = _graph(family, shape)
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
