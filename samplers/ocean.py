"""Local backends as Ocean samplers: `samplers.as_dimod(name, **options)` is a `dimod.Sampler`.

    import dimod, samplers
    sampler = samplers.as_dimod("gibbs", num_chains=1000, sweeps=50)
    bqm = dimod.BinaryQuadraticModel({"a": 0.5, "b": -0.2}, {("a", "b"): -1.0}, 0.0, "SPIN")
    sampleset = sampler.sample(bqm, num_reads=100, seed=0)

**Distribution.** Samples follow exp(−E_bqm(x)) — the BQM's own energy at β = 1, offset
irrelevant — in the BQM's vartype and labels, `num_reads` rows, with energies.

**Bipartite only.** The backends sample bipartite Boltzmann machines. The two sides are found by
two-colouring the BQM's interaction graph (breadth-first from each component's first variable in
the BQM's order, so the same BQM always gives the same sides); in each component the smaller
colour class goes left, so `exact` enumerates as few units as it can, and variables without
couplings go right. An interaction within one side (an odd cycle, e.g. a triangle) raises
`NotBipartiteError` naming it. Interactions with bias exactly 0 do not count.

**Calls are independent.** Each `sample()` builds a fresh backend with the call's `seed` (or the
constructor's, or OS entropy), so persistent chains never leak from one problem into the next,
and the same seed gives the same sampleset. Backend options given to the constructor are defaults;
`sample()` accepts each of them per call too.
"""

from __future__ import annotations

import dimod
import networkx as nx
import numpy as np
import torch

import samplers
from samplers.base import SamplerOptionError
from samplers.model import BipartiteModel

LOCAL_BACKENDS = ("gibbs", "pa", "neal", "exact", "dimod")


class NotBipartiteError(dimod.exceptions.BinaryQuadraticModelStructureError):
    """The BQM has an interaction within one side of every bipartition (an odd cycle)."""


def _interaction_graph(bqm) -> nx.Graph:
    graph = nx.Graph()
    graph.add_nodes_from(bqm.variables)
    graph.add_edges_from((u, v) for (u, v), bias in bqm.quadratic.items() if bias != 0)
    return graph


def bipartition(bqm) -> tuple[list, list]:
    """(left, right) labels of a bipartite BQM, deterministic for a given BQM (see module doc)."""
    graph = _interaction_graph(bqm)
    side = {}
    for root in bqm.variables:
        if root in side or graph.degree(root) == 0:
            continue
        depth = nx.single_source_shortest_path_length(graph, root)
        odd = sum(d % 2 for d in depth.values())
        flip = odd < len(depth) - odd  # the smaller colour class goes left (side 0)
        side.update({v: (d % 2) ^ flip for v, d in depth.items()})
    for u, v in graph.edges:
        if side[u] == side[v]:
            raise NotBipartiteError(
                f"the BQM is not bipartite: coupling ({u!r}, {v!r}) lies inside one side "
                "(an odd cycle); these samplers need a bipartite interaction graph")
    left = [v for v in bqm.variables if side.get(v) == 0]
    right = [v for v in bqm.variables if side.get(v, 1) == 1]
    return left, right


def bqm_model(bqm) -> tuple[BipartiteModel, list]:
    """The BQM as a BipartiteModel with energy E_bqm − offset (β = 1), and its labels in column
    order (left, then right)."""
    binary = bqm.change_vartype(dimod.BINARY, inplace=False)
    for (u, v), bias in list(binary.quadratic.items()):
        if bias == 0:
            binary.remove_interaction(u, v)
    left, right = bipartition(binary)
    return BipartiteModel.from_bqm(binary, left, right, beta=1.0), left + right


class BackendSampler(dimod.Sampler):
    """A local backend of `samplers` behind dimod's Sampler API (see the module docstring)."""

    def __init__(self, name: str, **options):
        if name not in LOCAL_BACKENDS:
            raise SamplerOptionError(
                f"as_dimod: {name!r} is not a local backend; known: {', '.join(LOCAL_BACKENDS)} "
                "(the qpu backend already drives a dimod sampler: use that one directly)")
        self.name = name
        self.options = samplers.check_options(name, options)
        backend = samplers.get(name, **self.options)  # fails now, not at the first call
        self._parameters = {"num_reads": [], "seed": []}
        self._parameters.update({k: [] for k in samplers.declared_options(name) if k != "seed"})
        self._properties = {"backend": name, "beta": 1.0, "boltzmann": bool(backend.boltzmann),
                            "bipartite_only": True}

    @property
    def parameters(self) -> dict:
        return self._parameters

    @property
    def properties(self) -> dict:
        return self._properties

    def __repr__(self) -> str:
        shown = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"as_dimod({self.name!r}{shown})"

    def sample(self, bqm, num_reads: int = 1, seed: int | None = None, **options):
        """`num_reads` samples of exp(−E_bqm) as a SampleSet in the BQM's vartype and labels."""
        if isinstance(num_reads, bool) or not isinstance(num_reads, int) or num_reads < 1:
            raise ValueError(f"num_reads must be a positive int, got {num_reads!r}")
        if len(bqm.variables) == 0:
            empty = np.empty((num_reads, 0), dtype=np.int8)
            return dimod.SampleSet.from_samples_bqm((empty, []), bqm, info={"backend": self.name})
        model, labels = bqm_model(bqm)
        call = {**self.options, **options}
        if seed is not None:
            call["seed"] = seed
        z, info = samplers.get(self.name, **call).draw(model, num_reads, dtype=torch.float64)
        values = z.numpy().astype(np.int8)
        if bqm.vartype is dimod.SPIN:
            values = 2 * values - 1
        # the backend's mean_energy is in the model's units (no BQM offset): the sampleset's own
        # energies are the ones to use
        info = {"backend": self.name, **{k: v for k, v in info.items()
                                         if np.isscalar(v) and k != "mean_energy"}}
        return dimod.SampleSet.from_samples_bqm((values, labels), bqm, info=info)


def as_dimod(name: str, **options) -> BackendSampler:
    """A `dimod.Sampler` sampling exp(−E_bqm) of bipartite BQMs with the local backend `name`
    (gibbs, pa, neal, exact, dimod) and its options (validated now)."""
    return BackendSampler(name, **options)
