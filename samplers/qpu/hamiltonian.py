"""The device-Hamiltonian fit (`learn_device_hamiltonian`): the device's effective h and J,
estimated from returned samples by pseudo-likelihood, and the programmed problem pre-distorted
so that the effective problem is the model's.

**Estimator.** A device that samples exp(−β·E_eff) with E_eff(s) = Σ h'_i s_i + Σ J'_ij s_i s_j
gives p(s_i | s_−i) = σ(−2β s_i f'_i(s)), f'_i = h'_i + Σ_j J'_ij s_j: qubit i's spin is a
logistic regression on its neighbours' spins. Writing E_eff = P + d, with P the problem each
draw asked the device to realise (known per draw, so draws of different problems pool) and d the
distortion, every qubit's pseudo-log-likelihood Σ_s log σ(−2β s_i (f^P_i(s) + d_i + Σ_j d_ij s_j))
is concave in its deg + 1 parameters and is maximised by Newton's method, all qubits at once.
β is the sampler's β_eff (folded in, as the pseudo-likelihood β estimator's scalar is). A β_eff
error shows as d ∝ P: that component is reported (`hamiltonian_beta_ratio`, β_device/β_eff) and
left to β_eff's calibration, so the two corrections do not fight over the temperature. A coupler is in two qubits' regressions: its estimate is
their mean. Standard errors are those of the inverse Hessian (the pseudo-likelihood's own
curvature; exact for the per-qubit conditionals, a little optimistic jointly).

**Correction.** d is linear in the programmed parameters for the distortions a device model
has (offsets, multiplicative errors), with slopes within percents of 1, so the map programmed →
effective is inverted at the operating point: the sampler programs target + c, the fit gives the
error left, r = c + d (effective − target) less its part along the target (a β error, see
above), and c ← c − gain·r. For d = (G − 1)·P + O the fixed point is effective = target up to
that uniform factor, and each fit contracts the error by |1 − gain·G|. Fitted and
corrected per qubit and per coupler of the chip, so every copy of a tiled problem has its own.

**Conditioning.** A fit needs at least `MIN_SAMPLES_PER_PARAMETER` samples per parameter of each
qubit's regression, or it raises `HamiltonianFitError` naming the samples per qubit it needs. A
parameter whose qubit's regression has no finite maximum (a spin its field pins, as a trained
prior has many) or whose standard error is above `MAX_STDERR` is left out of that fit and keeps
its correction; the qubits whose field was left out are counted (`hamiltonian_skipped_qubits`).
A first fit that keeps no field at all raises `HamiltonianFitError` (the correction cannot be
learned as configured); a later window that keeps none is skipped, so a long run is not
stopped by a stretch of pinned spins.
"""

from __future__ import annotations

import math

import dimod
import numpy as np
import torch
from scipy.special import expit

from samplers.qpu.errors import HamiltonianFitError
from samplers.qpu.range_guard import within_range

# the usual rule for a logistic regression: ten observations per fitted parameter
MIN_SAMPLES_PER_PARAMETER = 10
# in programmed h/J units: five times the published field-offset spread (0.01); a correction
# noisier than that would add more error than the device's own
MAX_STDERR = 0.05
NEWTON_STEPS = 50
CHUNK = 256   # qubits per batch of regressions, to bound memory at (samples × chunk × degree)
RIDGE = 1e-10


def neighbours(num_vars: int, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per variable: its neighbours and the couplers to them, padded with −1 to the largest
    degree; (neighbour index (n, D), coupler index (n, D))."""
    lists = [[] for _ in range(num_vars)]
    for e, (u, v) in enumerate(zip(rows.tolist(), cols.tolist())):
        lists[u].append((v, e))
        lists[v].append((u, e))
    degree = max((len(x) for x in lists), default=0)
    nb = np.full((num_vars, degree), -1, dtype=np.int64)
    ed = np.full((num_vars, degree), -1, dtype=np.int64)
    for i, x in enumerate(lists):
        if x:
            nb[i, :len(x)], ed[i, :len(x)] = zip(*x)
    return nb, ed


def local_fields(spins: np.ndarray, h: np.ndarray, rows, cols, quad) -> np.ndarray:
    """f_i(s) = h_i + Σ_j J_ij s_j for every row of `spins` (N, n)."""
    f = np.repeat(h[None, :], len(spins), axis=0)
    np.add.at(f.T, rows, (quad[:, None] * spins[:, cols].T))
    np.add.at(f.T, cols, (quad[:, None] * spins[:, rows].T))
    return f


def _regressions(own: np.ndarray, known: np.ndarray, x: np.ndarray, padding: np.ndarray,
                 beta: float):
    """Newton's method for a chunk of c qubits' regressions: own (N, c) spins, known (N, c)
    local fields of the problem asked for, x (N, c, D + 1) the features (1, neighbours' spins),
    padding (c, D + 1) which features are absent. (θ (c, D + 1), −Hessian at θ, converged (c)):
    each qubit converges or not on its own, so that one pinned spin spoils only its own fit."""
    a = (-2.0 * beta) * own[:, :, None] * x            # du/dθ for u = −2β s_i (f_i + θ·x)
    base = (-2.0 * beta) * own * known
    width = x.shape[2]
    theta = np.zeros(padding.shape)
    # absent features are kept at 0; the tiny ridge keeps a constant feature (a neighbour that
    # never flips) from making the whole chunk's solve singular: it shows as a huge stderr
    eye = (padding[:, :, None] + RIDGE) * np.eye(width)[None]
    done = np.zeros(len(theta), dtype=bool)
    for _ in range(NEWTON_STEPS):
        u = base + np.einsum("nca,ca->nc", a, theta)
        sig = expit(-u)
        grad = np.einsum("nc,nca->ca", sig, a)
        info = np.einsum("nc,nca,ncb->cab", sig * (1.0 - sig), a, a) + eye
        try:
            step = np.linalg.solve(info, grad[..., None])[..., 0]
        except np.linalg.LinAlgError:   # an exactly singular qubit: least squares for all
            step = (np.linalg.pinv(info) @ grad[..., None])[..., 0]
        big = np.abs(step).max(axis=1, initial=0.0)
        step = np.where(np.isfinite(big)[:, None], step, 0.0)
        # ≤ 1 unit a step, per qubit
        theta = theta + step * np.minimum(1.0, 1.0 / np.maximum(big, 1e-300))[:, None]
        done = np.isfinite(big) & (big < 1e-9)
        if done.all():
            break
    return theta, info, done


def fit_distortion(spins: np.ndarray, known: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                   beta: float) -> tuple[np.ndarray, ...]:
    """(d_h (n), d_J (m), stderr_h (n), stderr_J (m)): the distortion d of the problem the
    samples' device realised over the problem asked for, whose local fields for these samples
    are `known` (N, n); couplers (rows, cols). A parameter is left out (NaN) when its qubit's
    regression has no finite maximum (a spin pinned by its field, as trained priors have) or
    its standard error is above MAX_STDERR; a coupler takes the mean of the estimates its two
    qubits kept. Raises HamiltonianFitError when there are too few samples for the parameters."""
    num, n = spins.shape
    nb, ed = neighbours(n, rows, cols)
    width = nb.shape[1] + 1
    need = MIN_SAMPLES_PER_PARAMETER * (1 + (nb >= 0).sum(1).max(initial=0))
    if num < need:
        raise HamiltonianFitError(
            f"sampler 'qpu': learn_device_hamiltonian has {num} samples per qubit for up to "
            f"{need // MIN_SAMPLES_PER_PARAMETER} parameters per qubit; it needs at least {need} "
            "(raise hamiltonian_every or the samples per draw)")
    d_h, se_h = np.full(n, np.nan), np.full(n, np.nan)
    d_j, var_j, hits = np.zeros(len(rows)), np.zeros(len(rows)), np.zeros(len(rows))
    s = spins.astype(np.float64)
    ups = (s > 0).sum(0)
    varies = np.minimum(ups, num - ups) >= MIN_SAMPLES_PER_PARAMETER
    for lo in range(0, n, CHUNK):
        idx = np.arange(lo, min(n, lo + CHUNK))
        # a neighbour that (almost) never flips is a constant feature: its coupling cannot be
        # told from the field, so it is left out of the regression, and the field absorbs it
        # (the right correction of the effective field while that spin stays pinned)
        pad = (nb[idx] < 0) | ~varies[np.where(nb[idx] < 0, 0, nb[idx])]
        x = np.concatenate([np.ones((num, len(idx), 1)),
                            np.where(pad[None], 0.0, s[:, np.where(pad, 0, nb[idx])])], axis=2)
        padding = np.concatenate([np.zeros((len(idx), 1), bool), pad], axis=1)
        theta, info, done = _regressions(s[:, idx], known[:, idx], x, padding, beta)
        se = _stderr(info)
        ok = done[:, None] & ~padding & np.isfinite(se) & (se <= MAX_STDERR)
        d_h[idx[ok[:, 0]]], se_h[idx[ok[:, 0]]] = theta[ok[:, 0], 0], se[ok[:, 0], 0]
        edges = ed[idx]
        for k in range(width - 1):
            on = ok[:, k + 1]
            e = edges[on, k]
            np.add.at(d_j, e, theta[on, k + 1])
            np.add.at(var_j, e, se[on, k + 1] ** 2)
            np.add.at(hits, e, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return d_h, d_j / hits, se_h, np.sqrt(var_j) / hits


def unfitted_error(num: int) -> HamiltonianFitError:
    """No parameter of the chip could be fitted from `num` samples per qubit."""
    return HamiltonianFitError(
        f"sampler 'qpu': learn_device_hamiltonian is ill-conditioned with {num} samples per "
        f"qubit (no field has a finite pseudo-likelihood maximum with a standard error "
        f"<= {MAX_STDERR:g}: spins pinned, or too few samples); it needs more samples per qubit "
        "(raise hamiltonian_every or the samples per draw) or a prior whose spins flip; the "
        "last good correction is kept")


def _stderr(info: np.ndarray) -> np.ndarray:
    """Per qubit of the chunk: sqrt of the inverse Hessian's diagonal, NaN where it is not a
    finite, non-negative number."""
    with np.errstate(invalid="ignore"):
        try:
            diag = np.diagonal(np.linalg.inv(info), axis1=1, axis2=2)
        except np.linalg.LinAlgError:
            diag = np.full(info.shape[:2], np.nan)
        return np.where(np.isfinite(diag) & (diag >= 0), np.sqrt(np.abs(diag)), np.nan)


class HamiltonianFit:
    """The correction c over the chip's qubits and couplers, and the window of draws (their
    spins and the problems they asked for) that the next fit pools."""

    def __init__(self, graph, every: int, gain: float):
        self.qubits = np.asarray(sorted(int(q) for q in graph.nodes), dtype=np.int64)
        self.stride = int(self.qubits.max()) + 1
        self.couplers = np.asarray(sorted(self._key(u, v) for u, v in graph.edges), np.int64)
        self.every, self.gain = int(every), float(gain)
        self.c_h, self.c_j = np.zeros(len(self.qubits)), np.zeros(len(self.couplers))
        self.window: list = []       # (labels, spins (R, n) int8, h (n), J (m), extra) per draw
        self.draws = self.fits = 0
        self.last_fit = None         # (labels, row, col, d_h, d_J, stderr_h, stderr_J): diagnostic

    def _key(self, u, v):
        return min(u, v) * self.stride + max(u, v)

    def _where(self, labels, row, col):
        lab = np.asarray(labels, dtype=np.int64)
        keys = np.minimum(lab[row], lab[col]) * self.stride + np.maximum(lab[row], lab[col])
        return np.searchsorted(self.qubits, lab), np.searchsorted(self.couplers, keys)

    def program(self, bqm, h_range, j_range):
        """(bqm + c, clipped to the ranges where the model's own term is in range; (labels,
        couplers (row, col), applied h, applied J, terms clipped))."""
        labels = list(bqm.variables)
        h, (row, col, quad), offset = bqm.to_numpy_vectors(variable_order=labels)
        qi, ci = self._where(labels, row, col)
        dh, cut_h = within_range(h, self.c_h[qi], h_range)
        dj, cut_j = within_range(quad, self.c_j[ci], j_range)
        clipped = int(cut_h.sum() + cut_j.sum())
        out = dimod.BinaryQuadraticModel.from_numpy_vectors(
            h + dh, (row, col, quad + dj), offset, dimod.SPIN, variable_order=labels)
        return out, (labels, row, col, dh, dj, clipped)

    def observe(self, reads: np.ndarray, sent, applied, beta_eff: float,
                extra: np.ndarray | None = None) -> dict:
        """Add a draw (its reads in label order; `sent`: the problem it asked the device to
        realise, target + applied correction; `extra`: (reads, labels) a field each read's
        qubits were also sent, known but not this fit's (the flux-bias shim's offsets)) to the
        window, and fit when it is full."""
        labels, row, col, dh, dj, clipped = applied
        h, quad = _vectors(sent, labels, row, col)
        if self.window and self.window[0][0] != labels:
            self.window = []         # another problem layout: its draws do not pool
        extra = None if extra is None else np.asarray(extra, dtype=np.float32)
        self.window.append((labels, reads.astype(np.int8), h, quad, extra))
        self.draws += 1
        info = {"hamiltonian_clipped": clipped, "hamiltonian_fitted": False}
        if self.draws % self.every:
            return info
        spins = np.concatenate([w[1] for w in self.window]).astype(np.float64)
        known = np.concatenate([local_fields(w[1].astype(np.float64), w[2], row, col, w[3])
                                + (0.0 if w[4] is None else w[4]) for w in self.window])
        d_h, d_j, se_h, se_j = fit_distortion(spins, known, row, col, beta_eff)
        fit_h, fit_j = np.isfinite(d_h), np.isfinite(d_j)
        if not fit_h.any():
            if not self.fits:   # a correction that was never learned and cannot be
                raise unfitted_error(len(spins))
            # a window without information (every spin pinned for a while): kept, not fatal
            self.window = []
            info.update(hamiltonian_skipped_qubits=len(fit_h))
            return info
        self.last_fit = (labels, row, col, d_h, d_j, se_h, se_j)
        # effective − model = (sent + d) − (sent − applied), for the last draw of the window;
        # its part along the model's problem is a uniform β error, left to β_eff's calibration
        # (calibrate, recalibrate_every) so that the two corrections never fight over it.
        # Terms the fit left out (pinned qubits) keep their correction and enter nothing.
        t_h, t_j = np.where(fit_h, h - dh, 0.0), np.where(fit_j, quad - dj, 0.0)
        r_h, r_j = np.where(fit_h, dh + d_h, 0.0), np.where(fit_j, dj + d_j, 0.0)
        scale = float(r_h @ t_h + r_j @ t_j) / max(float(t_h @ t_h + t_j @ t_j), 1e-300)
        r_h, r_j = r_h - scale * t_h, r_j - scale * t_j
        qi, ci = self._where(labels, row, col)
        # c + d is the error that c left; a Newton step on a map of unit slope
        self.c_h[qi] -= np.where(fit_h, self.gain * (self.c_h[qi] - dh + r_h), 0.0)
        self.c_j[ci] -= np.where(fit_j, self.gain * (self.c_j[ci] - dj + r_j), 0.0)
        self.window, self.fits = [], self.fits + 1
        info.update(hamiltonian_fitted=True, hamiltonian_samples_per_qubit=len(spins),
                    hamiltonian_skipped_qubits=int((~fit_h).sum()),
                    hamiltonian_beta_ratio=1.0 + scale,
                    hamiltonian_rms_residual_h=_rms(r_h[fit_h]),
                    hamiltonian_rms_residual_j=_rms(r_j[fit_j]),
                    hamiltonian_rms_stderr_h=_rms(se_h[fit_h]),
                    hamiltonian_rms_stderr_j=_rms(se_j[fit_j]))
        return info

    # ---- state -------------------------------------------------------------------------------
    def snapshot(self) -> tuple:
        return self.c_h.copy(), self.c_j.copy(), list(self.window), self.draws, self.fits

    def restore(self, state: tuple) -> None:
        self.c_h, self.c_j, self.window, self.draws, self.fits = state

    def state_dict(self) -> dict:
        return {"c_h": self.c_h.tolist(), "c_j": self.c_j.tolist(), "draws": self.draws,
                "fits": self.fits,
                "window": [{"labels": list(w[0]), "spins": torch.from_numpy(w[1].copy()),
                            "h": w[2].tolist(), "j": w[3].tolist(),
                            "extra": None if w[4] is None else torch.from_numpy(w[4].copy())}
                           for w in self.window]}

    def load_state_dict(self, state: dict) -> None:
        c_h = np.asarray(state["c_h"], dtype=np.float64)
        c_j = np.asarray(state["c_j"], dtype=np.float64)
        if c_h.shape != self.c_h.shape or c_j.shape != self.c_j.shape:
            raise ValueError("learn_device_hamiltonian state: saved for another chip")
        if not (np.isfinite(c_h).all() and np.isfinite(c_j).all()):
            raise HamiltonianFitError("sampler 'qpu': learn_device_hamiltonian state holds a "
                                      "correction that is not finite")
        self.c_h, self.c_j = c_h, c_j
        self.draws, self.fits = int(state["draws"]), int(state["fits"])
        self.window = [(list(w["labels"]), np.asarray(w["spins"], dtype=np.int8),
                        np.asarray(w["h"], dtype=np.float64), np.asarray(w["j"], np.float64),
                        None if w.get("extra") is None else np.asarray(w["extra"], np.float32))
                       for w in state["window"]]


def _vectors(bqm, labels, row, col) -> tuple[np.ndarray, np.ndarray]:
    """bqm's fields in `labels` order and its couplings in the order of (row, col)."""
    h, (r, c, q), _ = bqm.to_numpy_vectors(variable_order=labels)
    n = len(labels)
    found = np.minimum(r, c) * n + np.maximum(r, c)
    wanted = np.minimum(row, col) * n + np.maximum(row, col)
    order = np.argsort(found)
    return h, q[order[np.searchsorted(found[order], wanted)]]


def _rms(values: np.ndarray) -> float:
    return math.sqrt(float(np.mean(np.square(values)))) if len(values) else 0.0
