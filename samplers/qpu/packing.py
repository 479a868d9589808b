"""Several models in one QPU call (`QPUSampler.draw_tiled`), each on copies of its own.

A call programs disjoint copies of the chip's native region (or of the embedding) and every
read gives one sample per copy (`tiling`). Here the copies are shared out between several
models, possibly with different parameters and β, so that requests of several trainers (the
sampling service's sessions) cost one call. No coupler joins two copies, so each model's
samples are those of its own problem, independent of the other models'.

**Layout.** Copies are dealt one at a time, each to the model that would otherwise need the
most reads, ⌈n_s / c_s⌉ for n_s samples on c_s copies (a model without a copy first, in the
given order; ties go to the earlier model). Models of one size share that size's tiles, the
ones a single draw would use (equal requests: copy t carries model t mod S). Native models of
several sizes choose among every placement of their regions the topology offers
(`tiling.native_candidates`, those whole on the solver), nearest first, each copy avoiding the
qubits of those placed before, up to `tiles` copies in all. A model left without a copy (the
chip, or `tiles`, is full) goes into a further call, as do embedded models of another size
(each size has its own embedding composite).

**Schedule.** A call reads as a single draw of its *binding* model would: the model needing the
most reads, `timing.reads_per_call(n_s, num_reads, c_s)`; every other model then gets at least
the samples it asked for, the surplus of the last read dropped.

**Accounting.** Each model's info carries its share of the call's QPU access time, reported
(`qpu_access_time_us`) and by the timing model (`estimated_qpu_access_time_us`): the fraction
of the call's programmed qubits that its copies hold (`qpu_access_time_share`; with models of
one size, its copies over all copies). The shares sum to the call's total. `num_qpu_calls`,
`num_reads`, `timing` and `retries` are the call's, which every model in it took part in; each
read gave the model `tiles` samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import dimod
import numpy as np

from samplers.model import BipartiteModel
from samplers.qpu import plan as plans
from samplers.qpu import tiling
from samplers.qpu.errors import QPURangeError


@dataclass
class Part:
    """The copies of one RBM size in a call: which model each copy carries."""

    plan: plans.Plan             # the size's plan: coupler layout, and the sampler to call
    labels: list                 # per copy: its variables (native: qubits, in unit order)
    qubits: list                 # per copy: the qubits it occupies
    owners: list                 # per copy: the index of the model it carries


@dataclass
class Pack:
    """One call's problem: parts side by side. Where calls are concerned it answers as a `Plan`
    does (`sampler`, `embedded`, `label_array`, `tiles`, `num_qubits`); its `tiles` are those
    of its binding model, which set the call's reads."""

    parts: list
    models: list                 # indices of the models this call carries, in order
    binding: int                 # the model needing the most reads
    tiles: int

    @property
    def sampler(self):
        return self.parts[0].plan.sampler

    @property
    def embedded(self) -> bool:
        return self.parts[0].plan.embedded

    @property
    def labels(self) -> list:
        return [v for part in self.parts for copy in part.labels for v in copy]

    @property
    def label_array(self) -> np.ndarray:
        return np.asarray(self.labels, dtype=np.int64)

    @property
    def num_qubits(self) -> int:
        return sum(len(q) for part in self.parts for q in part.qubits)

    def copies_of(self, s: int) -> int:
        return sum(part.owners.count(s) for part in self.parts)

    def qubits_of(self, s: int) -> int:
        return sum(len(q) for part in self.parts for q, o in zip(part.qubits, part.owners) if o == s)


def sample_counts(models: list, num_samples) -> list:
    """Samples wanted per model: one count for all, or one per model."""
    if not models:
        raise ValueError("draw_tiled needs at least one model")
    if isinstance(num_samples, (list, tuple)):
        if len(num_samples) != len(models):
            raise ValueError(f"draw_tiled: {len(num_samples)} sample counts for {len(models)} models")
        return list(num_samples)
    return [num_samples] * len(models)


# ---- layout --------------------------------------------------------------------------------

def plan_copies(plan: plans.Plan) -> list[tuple[list, list]]:
    """(labels, qubits) of each of a plan's copies."""
    units = len(plan.region)
    return [(plan.labels[t * units:(t + 1) * units], plan.copies[t]) for t in range(plan.tiles)]


def native_candidates(topology, plan: plans.Plan, working: tuple[set, set]) -> list[tuple]:
    """(labels, qubits) of every placement of a native plan's region that is whole on the
    solver's working graph (`working`: nodes, frozenset edges), nearest first."""
    rows, cols = plan.rows, plan.cols
    num_left = plan.num_left
    out = []
    for c in tiling.native_candidates(topology, num_left, len(plan.region) - num_left):
        if tiling.on_solver(c, zip(c[rows], c[cols + num_left]), *working):
            out.append((c.tolist(), c.tolist()))
    return out


def _need(n: int, copies: int) -> float:
    return math.inf if copies == 0 else -(-n // copies)


def deal(needs: list[int], shapes: list, candidates: dict, cap: int | None) -> list[list[int]]:
    """Per model, the indices into candidates[its shape] of the copies it gets: each next copy
    to the model needing the most reads, the first candidate of its shape clear of the qubits
    already taken; a model with no candidate left is full."""
    got = [[] for _ in needs]
    full, used, pos = set(), set(), {shape: 0 for shape in shapes}
    while len(full) < len(needs) and (cap is None or sum(map(len, got)) < cap):
        s = max((i for i in range(len(needs)) if i not in full),
                key=lambda i: (_need(needs[i], len(got[i])), -i))
        shape, options = shapes[s], candidates[shapes[s]]
        while pos[shape] < len(options) and not used.isdisjoint(options[pos[shape]][1]):
            pos[shape] += 1  # taken qubits stay taken: a skipped candidate never fits again
        if pos[shape] == len(options):
            full.add(s)
            continue
        got[s].append(pos[shape])
        used.update(options[pos[shape]][1])
        pos[shape] += 1
    return got


def _pack(index: list[int], needs: list[int], shapes: list, candidates: dict,
          plan_of: dict, got: list[list[int]]) -> Pack:
    parts = {}
    for k, s in enumerate(index):
        for c in got[k]:
            part = parts.setdefault(shapes[k], Part(plan_of[shapes[k]], [], [], []))
            labels, qubits = candidates[shapes[k]][c]
            part.labels.append(labels)
            part.qubits.append(qubits)
            part.owners.append(s)
    placed = [k for k in range(len(index)) if got[k]]
    binding = max(placed, key=lambda k: (_need(needs[k], len(got[k])), -k))
    return Pack(list(parts.values()), [index[k] for k in placed], index[binding],
                len(got[binding]))


def layout(shapes: list, needs: list[int], plan_of: dict, candidates_of, cap: int | None,
           one_size_only: bool) -> list[Pack]:
    """The calls that carry models of `shapes` ((num_left, num_right) each) wanting `needs`
    samples: `plan_of[shape]` is the size's plan, `candidates_of(shape, mixed)` its copies to
    choose from; `one_size_only` (embedded) puts each size in calls of its own."""
    todo, packs = list(range(len(shapes))), []
    while todo:
        sizes = list(dict.fromkeys(shapes[i] for i in todo))
        if one_size_only:
            sizes = sizes[:1]
        index = [i for i in todo if shapes[i] in sizes]
        mixed = len(sizes) > 1
        candidates = {shape: candidates_of(shape, mixed) for shape in sizes}
        sub_shapes, sub_needs = [shapes[i] for i in index], [needs[i] for i in index]
        got = deal(sub_needs, sub_shapes, candidates, cap if mixed else None)
        if not any(got):
            raise AssertionError("a call with no copy placed")  # a bug: one model always fits
        packs.append(_pack(index, sub_needs, sub_shapes, candidates, plan_of, got))
        todo = [i for i in todo if i not in packs[-1].models]
    return packs


# ---- the problem and its answer ------------------------------------------------------------

def fields(models: list[BipartiteModel], plan_of: dict, beta_eff: float, topology_name: str,
           guard, check: bool) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """(h, J at the couplers, clipped fraction) of each model's β·E/β_eff. With `check`
    (native mode, where these are the values programmed), each model is range-checked on its
    own, so an error names the model; embedded problems are checked whole, chains included, by
    the range guard when sent."""
    out = []
    for s, model in enumerate(models):
        plan = plan_of[(model.num_left, model.num_right)]
        h, quad = plans.ising(model, plan, beta_eff, topology_name)
        fraction = 0.0
        if check:
            try:
                _, fraction = guard.program(plans.to_bqm(plan, h, quad, model.num_left, copies=1))
            except QPURangeError as exc:
                detail = str(exc).removeprefix("sampler 'qpu': ")
                raise QPURangeError(f"sampler 'qpu': model {s} of the tiled draw: {detail}") from None
        out.append((h, quad, fraction))
    return out


def problem(pack: Pack, values: list) -> dimod.BinaryQuadraticModel:
    """The SPIN BQM of the call: on every copy, the fields and couplings of the model it
    carries (`values[s]` = (h, J, _)), copy after copy in the pack's label order."""
    linear, rows, cols, quad, offset = [], [], [], [], 0
    for part in pack.parts:
        plan = part.plan
        units, num_left = len(plan.region), plan.num_left
        for owner in part.owners:
            h, j, _ = values[owner]
            linear.append(h)
            rows.append(plan.rows + offset)
            cols.append(plan.cols + num_left + offset)
            quad.append(j)
            offset += units
    cat = np.concatenate
    return dimod.BinaryQuadraticModel.from_numpy_vectors(
        cat(linear), (cat(rows), cat(cols), cat(quad)), 0.0, dimod.SPIN,
        variable_order=pack.labels)


def split(pack: Pack, reads: np.ndarray, read_breaks: np.ndarray | None,
          wanted: dict) -> dict:
    """Per model s of the call: (its first `wanted[s]` samples as spins, read after read and
    copy after copy over its own copies; their chain-break fractions, or None)."""
    out, offset = {}, 0
    for part in pack.parts:
        units, copies = len(part.plan.region), len(part.owners)
        block = reads[:, offset:offset + copies * units].reshape(len(reads), copies, units)
        for s in dict.fromkeys(part.owners):
            mine = [t for t, owner in enumerate(part.owners) if owner == s]
            samples = block[:, mine].reshape(-1, units)[:wanted[s]]
            breaks = None if read_breaks is None else np.repeat(read_breaks, len(mine))[:wanted[s]]
            out[s] = (samples, breaks)
        offset += copies * units
    return out


def model_info(pack: Pack, s: int, acc: dict, reads_returned: int, estimate_us: float,
               clipped: float, breaks: np.ndarray | None) -> dict:
    """Model s's facts about the call: its copies and qubits, the call's calls, reads and
    timing, and its share of the QPU access time (its qubits over the call's)."""
    share = pack.qubits_of(s) / pack.num_qubits
    reported = acc["timing"].get("qpu_access_time")
    copies = pack.copies_of(s)
    return {
        "chain_break_fraction": 0.0 if breaks is None else float(breaks.mean()),
        "timing": dict(acc["timing"]), "retries": acc["retries"], "clipped_fraction": clipped,
        "num_qpu_calls": acc["num_qpu_calls"], "num_reads": acc["num_reads"],
        "num_samples_drawn": reads_returned * copies, "tiles": copies,
        "qubits_used": pack.qubits_of(s), "qubits_available": acc["qubits_available"],
        "qpu_access_time_us": None if reported is None else share * reported,
        "estimated_qpu_access_time_us": share * estimate_us, "qpu_access_time_share": share,
        "packed_models": len(pack.models),
        "packed_tiles": sum(len(part.owners) for part in pack.parts),
        "packed_qubits": pack.num_qubits, "call_qpu_access_time_us": reported,
        "call_estimated_qpu_access_time_us": estimate_us,
    }
