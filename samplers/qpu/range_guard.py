"""`RangeGuardComposite`: a dimod composite that checks (or clips) a problem's h and J against its
child's `h_range`/`j_range` before forwarding it.

A real QPU refuses out-of-range values only with `auto_scale=False` and says little about which
term was at fault; `MockDWaveSampler` does not check at all. The backend programs with
`auto_scale=False` (its scaling is the temperature correction), so the guard is where a too-large
β/β_eff or chain strength becomes one clear error, or is clipped on request.

What a call programmed travels with that call's answer, not on the composite: the returned
SampleSet's `info` carries `programmed_bqm` (the BQM as sent, clipping included) and
`clipped_fraction`, so calls in flight at the same time cannot overwrite each other's record.
"""

from __future__ import annotations

import dimod
import numpy as np

from samplers.qpu.errors import QPUConfigError, QPURangeError

POLICIES = ("error", "clip")


def _range(properties: dict, key: str) -> tuple[float, float]:
    if key not in properties:
        raise QPUConfigError(f"sampler 'qpu': the child sampler has no '{key}' property")
    lo, hi = properties[key]
    return float(lo), float(hi)


def within_range(value: np.ndarray, correction: np.ndarray, bounds) -> tuple[np.ndarray, ...]:
    """(the correction, cut so that value + correction stays in bounds where value is in them
    (where it is not, the range guard's policy decides); which were cut). How the shim's
    offsets and the Hamiltonian fit's correction are added to a problem the guard then sends."""
    lo, hi = bounds
    inside = (value >= lo) & (value <= hi)
    total = value + correction
    cut = inside & ((total < lo) | (total > hi))
    out = np.where(cut, np.clip(total, lo, hi) - value, correction)
    return np.where(inside, out, 0.0), cut


class RangeGuardComposite(dimod.ComposedSampler, dimod.Structured):
    """Forwards SPIN problems whose h, J lie within the child's ranges; `policy` says what to do
    with the others: 'error' raises `QPURangeError` naming the worst term, 'clip' clips them."""

    def __init__(self, child, policy: str = "error"):
        if policy not in POLICIES:
            raise ValueError(f"range policy must be one of {POLICIES}, got {policy!r}")
        self._children = [child]
        self.policy = policy
        self.h_range = _range(child.properties, "h_range")
        self.j_range = _range(child.properties, "j_range")

    @property
    def children(self) -> list:
        return self._children

    # structured exactly like the child: the guard adds checks, not structure
    @property
    def nodelist(self) -> list:
        return self.child.nodelist

    @property
    def edgelist(self) -> list:
        return self.child.edgelist

    @property
    def parameters(self) -> dict:
        return self.child.parameters.copy()

    @property
    def properties(self) -> dict:
        return {"child_properties": self.child.properties.copy(), "range_policy": self.policy,
                "h_range": list(self.h_range), "j_range": list(self.j_range)}

    def program(self, bqm) -> tuple[dimod.BinaryQuadraticModel, float]:
        """(the SPIN BQM to send, fraction of its terms that were out of range)."""
        if bqm.vartype is not dimod.SPIN:
            bqm = bqm.change_vartype(dimod.SPIN, inplace=False)
        # the order asked for explicitly: without one, dimod sorts the labels, and a tiled
        # problem's are not sorted, so the vectors would not line up with `labels`
        labels = list(bqm.variables)
        h, (row, col, j), offset = bqm.to_numpy_vectors(variable_order=labels)
        over_h = (h < self.h_range[0]) | (h > self.h_range[1])
        over_j = (j < self.j_range[0]) | (j > self.j_range[1])
        fraction = float(over_h.sum() + over_j.sum()) / max(len(h) + len(j), 1)
        if not (over_h.any() or over_j.any()):
            return bqm, fraction
        if self.policy == "error":
            raise QPURangeError(self._describe(h, (row, col, j), labels, over_h, over_j))
        return dimod.BinaryQuadraticModel.from_numpy_vectors(
            np.clip(h, *self.h_range), (row, col, np.clip(j, *self.j_range)), offset, dimod.SPIN,
            variable_order=labels), fraction

    def sample(self, bqm, **parameters) -> dimod.SampleSet:
        """The child's answer to the programmed problem; it resolves lazily if the child's does,
        with `programmed_bqm` and `clipped_fraction` added to its info."""
        programmed, fraction = self.program(bqm)
        response = self.child.sample(programmed, **parameters)

        def annotate(answer):
            answer.resolve()
            answer.info.update(programmed_bqm=programmed, clipped_fraction=fraction)
            return answer

        return dimod.SampleSet.from_future(response, annotate)

    def _describe(self, h, quadratic, labels, over_h, over_j) -> str:
        row, col, j = quadratic

        def excess(v, rng):
            return np.maximum(rng[0] - v, v - rng[1])

        eh = np.where(over_h, excess(h, self.h_range), -np.inf)
        ej = np.where(over_j, excess(j, self.j_range), -np.inf)
        if len(ej) and (not len(eh) or ej.max() > eh.max()):
            k = int(ej.argmax())
            worst = (f"J = {j[k]:.4g} on coupler ({labels[row[k]]}, {labels[col[k]]}) "
                     f"outside j_range {list(self.j_range)}")
        else:
            k = int(eh.argmax())
            worst = f"h = {h[k]:.4g} on qubit {labels[k]} outside h_range {list(self.h_range)}"
        return (f"sampler 'qpu': programmed {worst} ({int(over_h.sum() + over_j.sum())} terms "
                "out of range); raise beta_eff, lower chain_strength, or set range_policy: clip")
