"""The flux-bias shim (`flux_bias_shim`): per-qubit field offsets learned so that every qubit's
magnetisation matches the model's, applied to the problem each qubit is actually sent.

**Target.** Write the model as p(s) ∝ exp(−Σ_i h_i s_i − Σ_ij J_ij s_i s_j) (β·E in spins) and
f_i(s) = h_i + Σ_j J_ij s_j for unit i's local field. Then E[s_i | s_−i] = −tanh f_i(s), so the
residual

    r_i = mean over samples of (s_i + tanh f_i(s))

has expectation exactly 0 under the model, for any h and J: it is the pseudo-likelihood score of
h_i. A device whose qubit i sees an extra field δ_i makes r_i ≈ −χ_i β δ_i, χ_i = mean(1 − tanh² f_i)
(the qubit's conditional susceptibility), which the shim's offset φ_i cancels: after each window
of `flux_bias_every` draws, φ_i ← φ_i + gain · r_i / (β_eff · χ_i), a damped Newton step on each
qubit's own field (neighbours' responses are second order on the weak couplings of a bipartite
prior; the damping keeps the iteration a contraction). No extra problem is programmed: the
residual comes from the draws' own samples, so the shim costs no QPU time.

**Frame.** φ is a property of a qubit, not of the problem, so it is added to the field the
device is sent: inside the spin-reversal transform (after the gauge) and in front of the range
guard (`ShimComposite`). The residual is taken in the same frame (the samples times the call's
gauge), so transforms and shim compose: transforms average what the shim has not yet removed.
The problem recorded for β_eff measurement is the one sent minus φ: the problem the device is
meant to realise.

**Failure.** An update that would make an offset non-finite or larger than `flux_bias_limit`
(h units) raises `FluxBiasShimError` (a `SamplerFailure`): the draw fails, and the sampler keeps
the offsets of the last good update. No offset outside the limit, or NaN, is ever programmed.
"""

from __future__ import annotations

import dimod
import numpy as np
import scipy.sparse as sp

from samplers.qpu.errors import FluxBiasShimError
from samplers.qpu.range_guard import within_range

# A qubit whose conditional magnetisation is pinned (|tanh f| > 0.95, χ < 0.1) barely responds
# to its field: its Newton step would amplify the residual's sampling noise by 1/χ. The floor
# caps that amplification at 10/β_eff; such a qubit's offset is then learned more slowly.
CHI_FLOOR = 0.1


class FluxBiasShim:
    """Offsets φ over the chip's qubits (sorted labels) and the running sums of the window."""

    def __init__(self, qubits, every: int, gain: float, limit: float):
        self.qubits = np.asarray(sorted(int(q) for q in qubits), dtype=np.int64)
        self.every, self.gain, self.limit = int(every), float(gain), float(limit)
        n = len(self.qubits)
        self.offsets = np.zeros(n)
        self._resid, self._chi, self._count = np.zeros(n), np.zeros(n), np.zeros(n)
        self.draws = self.updates = 0

    def index(self, labels) -> np.ndarray:
        return np.searchsorted(self.qubits, np.asarray(labels, dtype=np.int64))

    def offsets_for(self, labels) -> dict:
        """{qubit: φ} for the problem's qubits, as programmed by the calls of a draw started now."""
        return dict(zip((int(q) for q in labels), self.offsets[self.index(labels)].tolist()))

    def observe(self, spins: np.ndarray, signs: np.ndarray | None, qubits: np.ndarray,
                h: np.ndarray, coupling: sp.spmatrix, beta_eff: float,
                free: np.ndarray | None = None) -> dict:
        """Add a draw's samples to the window and update φ when the window is full.

        `spins`: (R, tiles, units) ±1 in the model's frame; `signs`: the same shape, each read's
        gauge (None: no transforms); `qubits`: (tiles, units); `h` (units) and `coupling` (a
        symmetric units × units matrix) the model's Ising problem in its own units (β folded
        in); `free` (units): the units programmed within the ranges, the only ones learned
        from (None: all). Returns the draw's info keys."""
        reads, tiles, units = spins.shape
        flat = spins.reshape(reads * tiles, units).astype(np.float64)
        m = -np.tanh(h[None, :] + np.asarray(coupling @ flat.T).T)
        d = (flat - m).reshape(reads, tiles, units)
        if signs is not None:
            d = d * signs  # the device's frame, where the offsets live
        use = np.ones(units, dtype=bool) if free is None else np.asarray(free, dtype=bool)
        use = np.broadcast_to(use, (tiles, units)).ravel()
        idx = self.index(qubits.ravel())
        resid = d.sum(0).ravel()
        self._resid[idx] += np.where(use, resid, 0.0)
        self._chi[idx] += np.where(use, (1.0 - m * m).reshape(reads, tiles, units).sum(0).ravel(),
                                   0.0)
        self._count[idx] += np.where(use, reads, 0)
        self.draws += 1
        updated = self.draws % self.every == 0
        if updated:
            self._update(beta_eff)
        err = (resid / reads)[use]
        return {"flux_bias_magnetisation_error": float(np.sqrt(np.mean(err ** 2)))
                if len(err) else 0.0, "flux_bias_clipped_units": int((~use).sum()),
                "flux_bias_rms": float(np.sqrt(np.mean(self.offsets[idx] ** 2))),
                "flux_bias_updated": updated}

    def _update(self, beta_eff: float) -> None:
        seen = self._count > 0
        r = np.where(seen, self._resid / np.maximum(self._count, 1), 0.0)
        chi = np.maximum(np.where(seen, self._chi / np.maximum(self._count, 1), 1.0), CHI_FLOOR)
        new = self.offsets + self.gain * r / (beta_eff * chi)
        worst = int(np.argmax(np.where(np.isfinite(new), np.abs(new), np.inf)))
        if not (np.isfinite(new[worst]) and abs(new[worst]) <= self.limit):
            raise FluxBiasShimError(
                f"sampler 'qpu': flux_bias_shim diverged: the offset of qubit "
                f"{int(self.qubits[worst])} would be {new[worst]:.4g}, beyond flux_bias_limit "
                f"{self.limit:g}, after {self.updates} updates; the last good offsets are kept "
                "(check beta_eff with dvae-q calibrate, or lower flux_bias_gain)")
        self.offsets = new
        self.updates += 1
        self._resid[:], self._chi[:], self._count[:] = 0.0, 0.0, 0.0

    # ---- state -------------------------------------------------------------------------------
    def snapshot(self) -> tuple:
        return (self.offsets.copy(), self._resid.copy(), self._chi.copy(), self._count.copy(),
                self.draws, self.updates)

    def restore(self, state: tuple) -> None:
        (self.offsets, self._resid, self._chi, self._count, self.draws, self.updates) = state

    def state_dict(self) -> dict:
        return {"qubits": self.qubits.tolist(), "offsets": self.offsets.tolist(),
                "resid": self._resid.tolist(), "chi": self._chi.tolist(),
                "count": self._count.tolist(), "draws": self.draws, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        if list(state["qubits"]) != self.qubits.tolist():
            raise ValueError("flux_bias_shim state: saved for another chip's qubits")
        offsets = np.asarray(state["offsets"], dtype=np.float64)
        if not (np.isfinite(offsets).all() and np.abs(offsets).max(initial=0) <= self.limit):
            raise FluxBiasShimError("sampler 'qpu': flux_bias_shim state holds offsets that are "
                                    f"not finite or beyond flux_bias_limit {self.limit:g}")
        self.offsets = offsets
        self._resid = np.asarray(state["resid"], dtype=np.float64)
        self._chi = np.asarray(state["chi"], dtype=np.float64)
        self._count = np.asarray(state["count"], dtype=np.float64)
        self.draws, self.updates = int(state["draws"]), int(state["updates"])


class ShimComposite(dimod.ComposedSampler, dimod.Structured):
    """Adds one call's offsets {qubit: φ} to the fields of the problem it forwards (clipped to
    the child's h_range where the field itself is in range), and records the answer's
    `programmed_bqm` back without them (what the device is meant to realise)."""

    def __init__(self, child, offsets: dict):
        self._children = [child]
        self.offsets = offsets

    @property
    def children(self) -> list:
        return self._children

    nodelist = property(lambda self: self.child.nodelist)
    edgelist = property(lambda self: self.child.edgelist)
    parameters = property(lambda self: self.child.parameters.copy())
    properties = property(lambda self: self.child.properties)

    def sample(self, bqm, **parameters) -> dimod.SampleSet:
        labels = list(bqm.variables)
        h = np.array([bqm.linear[v] for v in labels])
        phi, _ = within_range(h, np.array([self.offsets.get(v, 0.0) for v in labels]),
                              self.child.properties["h_range"])
        shifted = bqm.copy()
        shifted.add_linear_from(dict(zip(labels, phi)))
        response = self.child.sample(shifted, **parameters)
        applied = dict(zip(labels, (-phi).tolist()))

        def annotate(answer):
            answer.resolve()
            if "programmed_bqm" in answer.info:
                programmed = answer.info["programmed_bqm"].copy()
                programmed.add_linear_from(applied)
                answer.info["programmed_bqm"] = programmed
            return answer

        return dimod.SampleSet.from_future(response, annotate)


def model_coupling(plan, quad: np.ndarray) -> sp.csr_matrix:
    """The symmetric units × units coupling matrix of one copy of a native plan."""
    units, n_l = len(plan.region), plan.num_left
    rows, cols = plan.rows, plan.cols + n_l
    return sp.coo_matrix((np.concatenate([quad, quad]),
                          (np.concatenate([rows, cols]), np.concatenate([cols, rows]))),
                         shape=(units, units)).tocsr()
