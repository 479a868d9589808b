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
qubit's regression, and every standard error below `MAX_STDERR`; otherwise it raises
`HamiltonianFitError` naming the samples per qubit it needs (standard errors fall as 1/sqrt(n)).
"""

from __future__ import annotations

import math

import dimod
import numpy as np
import torch
from scipy.special import expit

from samplers.qpu.errors import HamiltonianFitError

# the usual rule for a logistic regression: ten observations per fitted parameter
MIN_SAMPLES_PER_PARAMETER = 10
# in programmed h/J units: five times the published field-offset spread (0.01); a correction
# noisier than that would add more error than the device's own
MAX_STDERR = 0.05
NEWTON_STEPS = 50
CHUNK = 256   # qubits per batch of regressions, to bound memory at (samples × chunk × degree)


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
    padding (c, D + 1) which features are absent. (θ (c, D + 1), −Hessian at θ, converged)."""
    a = (-2.0 * beta) * own[:, :, None] * x            # du/dθ for u = −2β s_i (f_i + θ·x)
    base = (-2.0 * beta) * own * known
    width = x.shape[2]
    theta = np.zeros(padding.shape)
    eye = padding[:, :, None] * np.eye(width)[None]    # absent features: kept at 0
    for _ in range(NEWTON_STEPS):
        u = base + np.einsum("nca,ca->nc", a, theta)
        sig = expit(-u)
        grad = np.einsum("nc,nca->ca", sig, a)
        info = np.einsum("nc,nca,ncb->cab", sig * (1.0 - sig), a, a) + eye
        try:
            step = np.linalg.solve(info, grad[..., None])[..., 0]
        except np.linalg.LinAlgError:
            return theta, info, False
        big = float(np.abs(step).max(initial=0.0))
        if not math.isfinite(big):
            return theta, info, False
        theta = theta + step * min(1.0, 1.0 / big) if big > 0 else theta  # ≤ 1 unit a step
        if big < 1e-9:
            return theta, info, True
    return theta, info, False


def fit_distortion(spins: np.ndarray, known: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                   beta: float) -> tuple[np.ndarray, ...]:
    """(d_h (n), d_J (m), stderr_h (n), stderr_J (m)): the distortion d of the problem the
    samples' device realised over the problem asked for, whose local fields for these samples
    are `known` (N, n); couplers (rows, cols). Raises HamiltonianFitError when ill-conditioned."""
    num, n = spins.shape
    nb, ed = neighbours(n, rows, cols)
    width = nb.shape[1] + 1
    need = MIN_SAMPLES_PER_PARAMETER * (1 + (nb >= 0).sum(1).max(initial=0))
    if num < need:
        raise HamiltonianFitError(
            f"sampler 'qpu': learn_device_hamiltonian has {num} samples per qubit for up to "
            f"{need // MIN_SAMPLES_PER_PARAMETER} parameters per qubit; it needs at least {need} "
            "(raise hamiltonian_every or the samples per draw)")
    d_h, se_h = np.zeros(n), np.zeros(n)
    d_j, var_j, hits = np.zeros(len(rows)), np.zeros(len(rows)), np.zeros(len(rows))
    s = spins.astype(np.float64)
    for lo in range(0, n, CHUNK):
        idx = np.arange(lo, min(n, lo + CHUNK))
        pad = nb[idx] < 0
        x = np.concatenate([np.ones((num, len(idx), 1)),
                            np.where(pad[None], 0.0, s[:, np.where(pad, 0, nb[idx])])], axis=2)
        padding = np.concatenate([np.zeros((len(idx), 1), bool), pad], axis=1)
        theta, info, ok = _regressions(s[:, idx], known[:, idx], x, padding, beta)
        se = _stderr(info) if ok else None
        se = None if se is None else np.where(padding, 0.0, se)
        worst = math.inf if se is None else float(se.max(initial=0.0))
        if not worst <= MAX_STDERR:
            if se is None:   # no finite maximum: some spin is predicted without error
                why, more = "no finite pseudo-likelihood maximum", f"at least {4 * num:,}"
            else:            # standard errors fall as 1/sqrt(samples)
                why = f"worst standard error {worst:.3g} > {MAX_STDERR:g}"
                more = f"about {max(need, math.ceil(num * (worst / MAX_STDERR) ** 2)):,}"
            raise HamiltonianFitError(
                f"sampler 'qpu': learn_device_hamiltonian is ill-conditioned with {num} samples "
                f"per qubit ({why}); it needs {more} samples per qubit (raise "
                "hamiltonian_every or the samples per draw); the last good correction is kept")
        d_h[idx], se_h[idx] = theta[:, 0], se[:, 0]
        edges = ed[idx]
        for k in range(width - 1):
            on = edges[:, k] >= 0
            e = edges[on, k]
            np.add.at(d_j, e, theta[on, k + 1])
            np.add.at(var_j, e, se[on, k + 1] ** 2)
            np.add.at(hits, e, 1.0)
    hits = np.maximum(hits, 1.0)
    return d_h, d_j / hits, se_h, np.sqrt(var_j) / hits


def _stderr(info: np.ndarray) -> np.ndarray | None:
    try:
        cov = np.linalg.inv(info)
    except np.linalg.LinAlgError:
        return None
    diag = np.diagonal(cov, axis1=1, axis2=2)
    if not np.isfinite(diag).all() or (diag < 0).any():
        return None
    return np.sqrt(diag)


class HamiltonianFit:
    """The correction c over the chip's qubits and couplers, and the window of draws (their
    spins and the problems they asked for) that the next fit pools."""

    def __init__(self, graph, every: int, gain: float):
        self.qubits = np.asarray(sorted(int(q) for q in graph.nodes), dtype=np.int64)
        self.stride = int(self.qubits.max()) + 1
        self.couplers = np.asarray(sorted(self._key(u, v) for u, v in graph.edges), np.int64)
        self.every, self.gain = int(every), float(gain)
        self.c_h, self.c_j = np.zeros(len(self.qubits)), np.zeros(len(self.couplers))
        self.window: list = []       # (labels, spins (R, n) int8, h (n), J (m)) per draw
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
        dh, cut_h = _within(h, self.c_h[qi], h_range)
        dj, cut_j = _within(quad, self.c_j[ci], j_range)
        clipped = int(cut_h.sum() + cut_j.sum())
        out = dimod.BinaryQuadraticModel.from_numpy_vectors(
            h + dh, (row, col, quad + dj), offset, dimod.SPIN, variable_order=labels)
        return out, (labels, row, col, dh, dj, clipped)

    def observe(self, reads: np.ndarray, sent, applied, beta_eff: float) -> dict:
        """Add a draw (its reads in label order; `sent`: the problem it asked the device to
        realise, target + applied correction) to the window, and fit when it is full."""
        labels, row, col, dh, dj, clipped = applied
        h, quad = _vectors(sent, labels, row, col)
        if self.window and self.window[0][0] != labels:
            self.window = []         # another problem layout: its draws do not pool
        self.window.append((labels, reads.astype(np.int8), h, quad))
        self.draws += 1
        info = {"hamiltonian_clipped": clipped, "hamiltonian_fitted": False}
        if self.draws % self.every:
            return info
        spins = np.concatenate([w[1] for w in self.window]).astype(np.float64)
        known = np.concatenate([local_fields(w[1].astype(np.float64), w[2], row, col, w[3])
                                for w in self.window])
        d_h, d_j, se_h, se_j = fit_distortion(spins, known, row, col, beta_eff)
        self.last_fit = (labels, row, col, d_h, d_j, se_h, se_j)
        # effective − model = (sent + d) − (sent − applied), for the last draw of the window;
        # its part along the model's problem is a uniform β error, left to β_eff's calibration
        # (calibrate, recalibrate_every) so that the two corrections never fight over it
        t_h, t_j = h - dh, quad - dj
        r_h, r_j = dh + d_h, dj + d_j
        scale = float(r_h @ t_h + r_j @ t_j) / max(float(t_h @ t_h + t_j @ t_j), 1e-300)
        r_h, r_j = r_h - scale * t_h, r_j - scale * t_j
        qi, ci = self._where(labels, row, col)
        # c + d is the error that c left; a Newton step on a map of unit slope
        self.c_h[qi] -= self.gain * (self.c_h[qi] - dh + r_h)
        self.c_j[ci] -= self.gain * (self.c_j[ci] - dj + r_j)
        self.window, self.fits = [], self.fits + 1
        info.update(hamiltonian_fitted=True, hamiltonian_samples_per_qubit=len(spins),
                    hamiltonian_beta_ratio=1.0 + scale,
                    hamiltonian_rms_residual_h=_rms(r_h), hamiltonian_rms_residual_j=_rms(r_j),
                    hamiltonian_rms_stderr_h=_rms(se_h), hamiltonian_rms_stderr_j=_rms(se_j))
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
                            "h": w[2].tolist(), "j": w[3].tolist()} for w in self.window]}

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
                        np.asarray(w["h"], dtype=np.float64), np.asarray(w["j"], np.float64))
                       for w in state["window"]]


def _vectors(bqm, labels, row, col) -> tuple[np.ndarray, np.ndarray]:
    """bqm's fields in `labels` order and its couplings in the order of (row, col)."""
    h, (r, c, q), _ = bqm.to_numpy_vectors(variable_order=labels)
    n = len(labels)
    found = np.minimum(r, c) * n + np.maximum(r, c)
    wanted = np.minimum(row, col) * n + np.maximum(row, col)
    order = np.argsort(found)
    return h, q[order[np.searchsorted(found[order], wanted)]]


def _within(value: np.ndarray, correction: np.ndarray, bounds) -> tuple[np.ndarray, ...]:
    """(the correction, cut so that value + correction stays in bounds where value is in them
    (where it is not, the range guard's policy decides); which were cut)."""
    lo, hi = bounds
    inside = (value >= lo) & (value <= hi)
    total = value + correction
    cut = inside & ((total < lo) | (total > hi))
    out = np.where(cut, np.clip(total, lo, hi) - value, correction)
    return np.where(inside, out, 0.0), cut


def _rms(values: np.ndarray) -> float:
    return math.sqrt(float(np.mean(np.square(values)))) if len(values) else 0.0
