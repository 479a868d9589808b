"""The hardware graphs themselves (from dwave.graphs), their native bipartite subgraph and the
connected regions a smaller native RBM takes. Cached per (family, shape, broken qubits and
couplers), so every Topology of one chip shares one graph."""

from __future__ import annotations

from collections import deque
from functools import lru_cache

import numpy as np

from topologies.errors import TopologyError


@lru_cache(maxsize=8)
def hardware_graph(family: str, shape: tuple[int, ...], broken_qubits=(), broken_couplers=()):
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
def bipartite(family: str, shape: tuple[int, ...], broken_qubits=(), broken_couplers=()):
    """(side-0 qubits, side-1 qubits, bipartite edge array (E, 2) as (side 0, side 1))."""
    import dwave.graphs as dg

    g = hardware_graph(family, shape, broken_qubits, broken_couplers)
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
def native_region(name, family, shape, broken_qubits, broken_couplers, num_left, num_right):
    left_all, right_all, edges = bipartite(family, shape, broken_qubits, broken_couplers)
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
        left, right = grow_region(name, left_all, edges, n_l, n_r)
    li = {q: i for i, q in enumerate(left)}
    ri = {q: j for j, q in enumerate(right)}
    mask = np.zeros((n_l, n_r), dtype=np.float32)
    keep = [(li[u], ri[v]) for u, v in edges if u in li and v in ri]
    if keep:
        rows, cols = np.array(keep).T
        mask[rows, cols] = 1.0
    return tuple(left), tuple(right), mask


def grow_region(name, left_all, edges, n_l, n_r):
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
