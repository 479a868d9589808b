"""Tiles: disjoint copies of one programmed problem on the same chip, sampled by the same anneal.

A QPU call costs ~15 ms of programming plus ~0.25 ms per read whatever the problem's size, so a
200+200 native RBM (400 of Pegasus P16's 5,640 qubits) wastes most of every anneal. Copies of
it on disjoint qubits give one sample per copy per read; with no coupler programmed between
copies they are independent samples of the same distribution.

A copy is the image of the problem's qubits under a translation of the chip's lattice: dwave.graphs'
sublattice mappings of the chip's graph onto itself at every offset of its coordinates (Chimera
cells; Pegasus cells and the thirds of a cell between its three sub-lattices; Zephyr half-cells).
A translation is only a candidate: it is kept when it maps the qubits to distinct qubits of the
topology's graph and every coupler the problem needs onto a coupler, so a copy carries exactly
the prior's mask (the region `Topology.native_rbm` grew is irregular, and the chip's boundary
and broken qubits cut some translations). For embedded problems the copy must also be an exact
copy of the chains' hardware subgraph (no extra couplers), so that chain couplings and the split
of each J over inter-chain couplers are the same on every copy.

Copies are packed greedily, nearest offsets first, starting with the problem itself (copy 0, the
prior's own region or embedding). The layout depends only on the topology file; a solver lacking
some qubit or coupler loses exactly the copies that use it (`on_solver`). Regions of several
sizes placed side by side in one call (`packing`) choose among all of a region's placements,
overlapping or not (`native_candidates`).
"""

from __future__ import annotations

from itertools import product

import numpy as np

_CACHE: dict = {}


def _offsets(topology) -> list[tuple]:
    """Every offset of the family's sublattice mappings that could keep a region on the chip,
    nearest first."""
    shape = topology.shape
    if topology.family == "chimera":
        m, n = shape[0], (shape[1] if len(shape) > 1 else shape[0])
        found = list(product(range(1 - m, m), range(1 - n, n)))
    elif topology.family == "pegasus":
        m = shape[0]
        found = list(product(range(3), range(-m, m), range(-m, m)))
    else:
        m = shape[0]
        found = list(product(range(-2 * m, 2 * m + 1), repeat=2))
    return sorted(found, key=lambda o: (abs(o[-2]) + abs(o[-1]), o))


def _mappings(topology, graph):
    import dwave.graphs as dg

    make = getattr(dg, f"{topology.family}_sublattice_mappings")
    return make(graph, graph, _offsets(topology))


def _image(mapping, qubits, nodes, used: set) -> list | None:
    """The qubits' images, or None when one leaves the graph (or the coordinates) or lands on
    a qubit another copy already uses."""
    out = []
    for q in qubits:
        try:
            image = mapping(int(q))
        except (ValueError, KeyError, IndexError):
            return None
        if image not in nodes or image in used:
            return None
        out.append(image)
    return out


def _induced_edges(graph, qubits) -> int:
    chosen = set(qubits)
    return sum(1 for q in chosen for v in graph.adj[q] if v in chosen) // 2


def _copies(topology, qubits: np.ndarray, pairs: np.ndarray, exact: bool,
            disjoint: bool) -> list[np.ndarray]:
    """Images of `qubits` under the layout's translations, nearest first, whose `pairs` (index
    pairs into `qubits`) all land on couplers (with `exact`: copies of the induced subgraph
    exactly); with `disjoint`, each one kept only if it avoids the qubits of those kept before."""
    graph = topology.graph()
    nodes = graph.nodes
    wanted = _induced_edges(graph, qubits) if exact else None
    found, used = [], set()
    for mapping in _mappings(topology, graph):
        image = _image(mapping, qubits, nodes, used)
        if image is None or len(set(image)) < len(image):
            continue
        if not all(graph.has_edge(image[a], image[b]) for a, b in pairs):
            continue
        if exact and _induced_edges(graph, image) != wanted:
            continue
        found.append(np.asarray(image, dtype=np.int64))
        if disjoint:
            used.update(image)
    return found


def pack(topology, qubits: np.ndarray, pairs: np.ndarray, exact: bool = False) -> list[np.ndarray]:
    """Disjoint copies of `qubits` (copy 0 is `qubits` itself) whose `pairs` (index pairs into
    `qubits`) all land on couplers; with `exact`, copies of the induced subgraph exactly."""
    tiles = _copies(topology, qubits, pairs, exact, disjoint=True)
    if not tiles or not np.array_equal(tiles[0], qubits):
        raise AssertionError("the identity offset must come first and fit")  # a bug, not input
    return tiles


def _key(topology, *rest) -> tuple:
    return (topology.family, topology.shape, topology.broken_qubits, topology.broken_couplers,
            *rest)


def native_tiles(topology, num_left: int, num_right: int) -> tuple[np.ndarray, ...]:
    """Qubits of each copy of the native RBM region, in the region's unit order (left, right)."""
    key = _key(topology, "native", num_left, num_right)
    if key not in _CACHE:
        left, right, mask = topology.native_rbm(num_left, num_right)
        rows, cols = np.nonzero(mask.numpy())
        pairs = np.stack([rows, cols + len(left)], axis=1)
        _CACHE[key] = tuple(pack(topology, np.asarray(left + right, dtype=np.int64), pairs))
    return _CACHE[key]


def native_candidates(topology, num_left: int, num_right: int) -> tuple[np.ndarray, ...]:
    """Every copy of the native RBM region the layout offers, nearest first, overlapping or
    not: what regions of several sizes placed side by side choose from (`samplers.qpu.packing`).
    Copies in the region's unit order; the first is the region itself."""
    key = _key(topology, "candidates", num_left, num_right)
    if key not in _CACHE:
        left, right, mask = topology.native_rbm(num_left, num_right)
        rows, cols = np.nonzero(mask.numpy())
        pairs = np.stack([rows, cols + len(left)], axis=1)
        region = np.asarray(left + right, dtype=np.int64)
        _CACHE[key] = tuple(_copies(topology, region, pairs, exact=False, disjoint=False))
    return _CACHE[key]


def embedded_tiles(topology, num_left: int, num_right: int) -> tuple[dict, ...]:
    """Copies of the cached embedding of the dense RBM, as {unit: chain} per copy."""
    key = _key(topology, "embedded", topology.embedder, num_left, num_right)
    if key not in _CACHE:
        embedding = topology.embedding(num_left, num_right)
        units = sorted(embedding)
        qubits = np.asarray([q for u in units for q in embedding[u]], dtype=np.int64)
        where = {int(q): i for i, q in enumerate(qubits)}
        graph = topology.graph()
        pairs = np.asarray([(where[a], where[b]) for a in where for b in graph.adj[a]
                            if b in where and where[a] < where[b]], dtype=np.int64).reshape(-1, 2)
        sizes = np.cumsum([0] + [len(embedding[u]) for u in units])
        _CACHE[key] = tuple(
            {u: tuple(int(q) for q in image[sizes[i]:sizes[i + 1]]) for i, u in enumerate(units)}
            for image in pack(topology, qubits, pairs, exact=True))
    return _CACHE[key]


def on_solver(qubits, couplers, nodes: set, edges: set) -> bool:
    """Whether all `qubits` and `couplers` ((u, v) pairs) are on the solver's working graph
    (`edges` holds frozensets)."""
    return all(int(q) in nodes for q in qubits) and \
        all(frozenset((int(u), int(v))) in edges for u, v in couplers)
