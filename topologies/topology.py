"""`Topology`: a validated topology file (see `topologies.loader` for the format) and what the
prior and the QPU sampler ask of it: the hardware graph, the native RBM's qubits and coupling
mask, the embedding of a dense RBM, and the mock sampler's keyword arguments."""

from __future__ import annotations

import types
from dataclasses import dataclass, field

import torch

from topologies import embedding, graphs
from topologies.errors import TopologyError


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
        return graphs.hardware_graph(self.family, self.shape, self.broken_qubits, self.broken_couplers)

    def bipartite_sides(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """All qubits of the two sides of the native bipartite subgraph, sorted by label."""
        return graphs.bipartite(self.family, self.shape, self.broken_qubits,
                                self.broken_couplers)[:2]

    def native_rbm(self, num_left: int | None = None, num_right: int | None = None):
        """(left_qubits, right_qubits, mask) of a native RBM; mask is (n_left, n_right) float32.

        None takes the whole side. Smaller sizes take a connected region grown breadth-first from
        the lowest-labelled left qubit, adding a qubit only while its side has room.
        """
        if self.mode != "native":
            raise TopologyError(f"topology '{self.name}' is {self.mode}, not native")
        left, right, mask = graphs.native_region(self.name, self.family, self.shape,
                                                 self.broken_qubits, self.broken_couplers,
                                                 num_left, num_right)
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
        return embedding.cached_embedding(self, num_left, num_right, cache_dir)

    def mock_kwargs(self) -> dict:
        """Keyword arguments that make a MockDWaveSampler of this hardware graph (broken
        couplers as tuples: the mock drops an edge only if it finds it as a tuple)."""
        if self.family is None:
            raise TopologyError(f"topology '{self.name}' is dense; no QPU can sample it")
        return {"topology_type": self.family, "topology_shape": list(self.shape),
                "broken_nodes": list(self.broken_qubits) or None,
                "broken_edges": [tuple(e) for e in self.broken_couplers] or None}
