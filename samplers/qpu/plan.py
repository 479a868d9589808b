"""The programming plan: which qubits carry a model of a given size, and the Ising problem sent.

A plan is made once per RBM size and solver: in native mode the model's units are the qubits of
the topology's native region (`Topology.native_rbm`); in embedded mode they are chains of the
topology's cached embedding, sent through `FixedEmbeddingComposite`. Either way the qubits (and,
natively, the couplers) must exist on the solver's working graph, which can lack some that the
topology file does not list as broken.

**Tiles.** Each call programs `tiles` disjoint copies of that problem (`tiling`), chosen among
the copies the topology's layout offers that are whole on the solver; copy 0 is always the
prior's own region or embedding. In embedded mode the copies are one problem of tiles·units
variables sent through one `FixedEmbeddingComposite`, so chain strength (torque compensation of
identical copies), chain-break resolution and answers that resolve lazily are Ocean's as before.
`ParallelEmbeddingComposite` does the same tiling but resolves the answer before returning and
has no chain-break options, so it would serialise calls meant to be in flight together.

**Scaling.** The model p(z) ∝ exp(−β·E(z)) with E(z) = −a·z − z_Lᵀ W z_R is written in spins
(z = (s + 1)/2) from arrays, O(couplers), and multiplied by 1/β_eff: a QPU that samples
exp(−β_eff·E_prog) then samples exp(−β·E). The constant offset is dropped (it changes nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

import dimod
import numpy as np
import torch

from samplers.model import BipartiteModel
from samplers.qpu import tiling
from samplers.qpu.errors import QPUConfigError


@dataclass
class Plan:
    """How one RBM size is programmed on one solver: `tiles` copies of one problem per call."""

    region: list                 # one copy's variables: qubits (native) or units (embedded)
    labels: list                 # the sent problem's variables, copy after copy
    tiles: int
    rows: np.ndarray             # left unit of every programmed coupling
    cols: np.ndarray             # right unit of every programmed coupling (0-based on the right)
    mask: np.ndarray | None      # native coupling mask (bool); None when embedded (dense)
    num_qubits: int              # qubits programmed per call, all copies
    sampler: object              # the range guard, or FixedEmbeddingComposite around it
    embedded: bool
    copies: list = None          # per copy: its qubits (native: one per unit, in unit order)
    num_left: int = 0            # left units of the RBM
    verified_mask: tuple | None = None  # (tensor identity, version) of a mask already checked

    @property
    def label_array(self) -> np.ndarray:
        return np.asarray(self.labels, dtype=np.int64)


def working_graph(solver) -> tuple[set, set]:
    return set(solver.nodelist), {frozenset(e) for e in solver.edgelist}


def choose_tiles(usable: list, tiles, what: str) -> list:
    """All usable copies (`tiles` = 'auto') or the first `tiles` of them."""
    if tiles == "auto":
        return usable
    if tiles > len(usable):
        raise QPUConfigError(
            f"sampler 'qpu' option 'tiles': {tiles} copies of the {what} requested, but only "
            f"{len(usable)} fit on the solver's working graph; use tiles: auto or fewer"
        )
    return usable[:tiles]


def native_plan(topology, num_left: int, num_right: int, guard, tiles="auto") -> Plan:
    left, right, mask = topology.native_rbm(num_left, num_right)
    region = left + right
    rows, cols = np.nonzero(mask.numpy())
    working = working_graph(guard)
    couplers = [(region[i], region[num_left + j]) for i, j in zip(rows, cols)]
    require_on_solver(topology, working, set(region), couplers)
    usable = [c for c in tiling.native_tiles(topology, num_left, num_right)
              if tiling.on_solver(c, zip(c[rows], c[cols + num_left]), *working)]
    chosen = choose_tiles(usable, tiles, f"{num_left}+{num_right} native RBM")
    labels = np.concatenate(chosen).tolist()
    return Plan(region=region, labels=labels, tiles=len(chosen), rows=rows, cols=cols,
                mask=mask.numpy() != 0, num_qubits=len(labels), sampler=guard, embedded=False,
                copies=[c.tolist() for c in chosen], num_left=num_left)


def embedded_plan(topology, num_left: int, num_right: int, guard, tiles="auto") -> Plan:
    from dwave.system import FixedEmbeddingComposite

    working = working_graph(guard)
    copies = tiling.embedded_tiles(topology, num_left, num_right)
    require_on_solver(topology, working, {q for c in copies[0].values() for q in c}, [])
    graph = topology.graph()

    def present(copy):
        qubits = [q for chain in copy.values() for q in chain]
        return tiling.on_solver(qubits, graph.subgraph(qubits).edges, *working)

    usable = [copies[0]] + [c for c in copies[1:] if present(c)]
    chosen = choose_tiles(usable, tiles, f"{num_left}+{num_right} embedded RBM")
    units = num_left + num_right
    # copy t's unit u is variable t·units + u of the problem sent through the embedding
    union = {t * units + u: chain for t, copy in enumerate(chosen) for u, chain in copy.items()}
    rows, cols = np.nonzero(np.ones((num_left, num_right)))
    return Plan(region=list(range(units)), labels=list(range(len(chosen) * units)),
                tiles=len(chosen), rows=rows, cols=cols, mask=None,
                num_qubits=sum(len(c) for c in union.values()),
                sampler=FixedEmbeddingComposite(guard, union), embedded=True,
                copies=[[q for u in sorted(c) for q in c[u]] for c in chosen], num_left=num_left)


def require_on_solver(topology, working: tuple[set, set], qubits: set, couplers: list) -> None:
    """One-line QPUConfigError naming the first qubit or coupler the solver lacks."""
    nodes, edges = working
    missing = sorted(qubits - nodes)
    if missing:
        raise QPUConfigError(
            f"sampler 'qpu': qubit {missing[0]} ({len(missing)} in all) of topology "
            f"'{topology.name}' is absent on the solver (dead qubit); list the solver's missing "
            "qubits under broken_qubits in the topology file"
        )
    dead = [p for p in couplers if frozenset(p) not in edges]
    if dead:
        raise QPUConfigError(
            f"sampler 'qpu': coupler {dead[0]} ({len(dead)} in all) of topology "
            f"'{topology.name}' is absent on the solver; list it under broken_couplers in the "
            "topology file"
        )


def _fits_mask(model: BipartiteModel, plan: Plan) -> bool:
    """Whether the model's own mask lies within the plan's couplers (then so does W). Checked
    once per mask tensor and version, since training passes the same buffer every step."""
    mask = model.mask
    if mask is None:
        return False
    key = (mask.data_ptr(), mask._version, tuple(mask.shape), str(mask.device))
    if plan.verified_mask != key:
        if bool((mask.detach().cpu().numpy()[~plan.mask] != 0).any()):
            return False
        plan.verified_mask = key
    return True


def coupler_weights(model: BipartiteModel, plan: Plan, topology_name: str) -> np.ndarray:
    """W at the plan's couplers (float64); an error if W couples units with no coupler."""
    w = model.W.detach()
    # only the couplers' values are gathered: O(couplers), not O(n_left·n_right)
    wv = w[torch.as_tensor(plan.rows, device=w.device), torch.as_tensor(plan.cols, device=w.device)]
    if plan.mask is not None and not _fits_mask(model, plan) \
            and torch.count_nonzero(w) != torch.count_nonzero(wv):
        outside = (w.cpu().numpy() != 0) & ~plan.mask
        i, j = np.argwhere(outside)[0]
        raise QPUConfigError(
            f"sampler 'qpu': the model couples units {i} and {model.num_left + j}, which have no "
            f"coupler on topology '{topology_name}'; train with its coupling mask"
        )
    return wv.cpu().double().numpy()


def ising(model: BipartiteModel, plan: Plan, beta_eff: float, topology_name: str):
    """(h, J at the plan's couplers) of β·E/β_eff in spins, as float64 arrays."""
    wv = coupler_weights(model, plan, topology_name)
    a = torch.cat([model.a_left, model.a_right]).detach().cpu().double().numpy()
    n_l = model.num_left
    field = np.bincount(plan.rows, weights=wv, minlength=model.num_units)
    field += np.bincount(plan.cols + n_l, weights=wv, minlength=model.num_units)
    scale = float(model.beta) / beta_eff
    return -scale * (a / 2 + field / 4), -scale * wv / 4


def to_bqm(plan: Plan, h: np.ndarray, quad: np.ndarray, num_left: int,
           copies: int | None = None) -> dimod.BinaryQuadraticModel:
    """The SPIN BQM of (h, J) on the plan's first `copies` copies (default: all of them)."""
    copies = plan.tiles if copies is None else copies
    offsets = (np.arange(copies) * len(plan.region))[:, None]
    rows = (plan.rows[None, :] + offsets).ravel()
    cols = (plan.cols[None, :] + num_left + offsets).ravel()
    return dimod.BinaryQuadraticModel.from_numpy_vectors(
        np.tile(h, copies), (rows, cols, np.tile(quad, copies)), 0.0, dimod.SPIN,
        variable_order=plan.labels[:copies * len(plan.region)]
    )


def decode(answer: dimod.SampleSet, plan: Plan) -> tuple[np.ndarray, np.ndarray | None]:
    """(spins, one row per read in the plan's label order; chain-break fraction per read or None)."""
    spins = answer.record.sample
    found = np.asarray(answer.variables, dtype=np.int64)
    wanted = plan.label_array
    if not np.array_equal(found, wanted):
        pos = np.argsort(found)
        spins = spins[:, pos[np.searchsorted(found[pos], wanted)]]
    counts = answer.record.num_occurrences
    breaks = answer.record.chain_break_fraction if plan.embedded else None
    if np.any(counts != 1):
        spins = np.repeat(spins, counts, axis=0)
        breaks = None if breaks is None else np.repeat(breaks, counts)
    return spins, breaks


def per_tile(spins: np.ndarray, breaks: np.ndarray | None, plan: Plan):
    """Reads (R, tiles·units) as samples (R·tiles, units), read after read, copy after copy
    (row r·tiles + t is copy t of read r); chain-break fractions repeated to match."""
    samples = spins.reshape(len(spins) * plan.tiles, len(plan.region))
    return samples, None if breaks is None else np.repeat(breaks, plan.tiles)
