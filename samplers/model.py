"""The bipartite Boltzmann machine a sampler sees: a frozen snapshot of the prior.

p(z) ∝ exp(−β·E(z)),  E(z) = −a_Lᵀz_L − a_Rᵀz_R − z_Lᵀ W z_R,  z ∈ {0, 1}^(n_L + n_R).

Columns of a sample are the left units first, then the right units. W is stored already
multiplied by the coupling mask, so kernels never multiply by the mask per sweep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class BipartiteModel:
    a_left: torch.Tensor
    a_right: torch.Tensor
    W: torch.Tensor
    mask: torch.Tensor | None = None
    beta: float = 1.0

    def __post_init__(self):
        a_l, a_r, w = self.a_left, self.a_right, self.W
        if a_l.ndim != 1 or a_r.ndim != 1 or w.shape != (a_l.shape[0], a_r.shape[0]):
            raise ValueError(
                f"BipartiteModel: W has shape {tuple(w.shape)}, biases {tuple(a_l.shape)} and "
                f"{tuple(a_r.shape)}; W must be (n_left, n_right)"
            )
        if self.mask is not None:
            if self.mask.shape != w.shape:
                raise ValueError(f"BipartiteModel: mask shape {tuple(self.mask.shape)} != W's")
            object.__setattr__(self, "W", w * self.mask.to(w.dtype))
        if w.device.type == "meta":
            raise ValueError("BipartiteModel: meta tensors hold no values to sample from")
        if not all(bool(torch.isfinite(t).all()) for t in (a_l, a_r, w)):
            # a diverged prior must stop training loudly, not feed NaN fields to the samplers
            raise ValueError("BipartiteModel: biases or W contain NaN or infinite values")
        if not (isinstance(self.beta, (int, float)) and math.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"BipartiteModel: beta must be a finite number >= 0, got {self.beta!r}")

    @property
    def num_left(self) -> int:
        return self.a_left.shape[0]

    @property
    def num_right(self) -> int:
        return self.a_right.shape[0]

    @property
    def num_units(self) -> int:
        return self.num_left + self.num_right

    @property
    def device(self) -> torch.device:
        return self.W.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W.dtype

    def to(self, device=None, dtype=None) -> "BipartiteModel":
        """The same model with its tensors on another device or dtype."""
        move = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
        return BipartiteModel(
            move(self.a_left), move(self.a_right), move(self.W), move(self.mask), self.beta
        )

    def with_beta(self, beta: float) -> "BipartiteModel":
        return BipartiteModel(self.a_left, self.a_right, self.W, self.mask, beta)

    def energy(self, z: torch.Tensor) -> torch.Tensor:
        """E(z) of each row of z (batch, n_left + n_right), at the model's own temperature."""
        z = z.to(self.W.dtype)
        zl, zr = z[:, : self.num_left], z[:, self.num_left :]
        return -(zl @ self.a_left) - (zr @ self.a_right) - ((zl @ self.W) * zr).sum(-1)

    def edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(left index, right index, W value) of every present coupling, as numpy arrays."""
        w = self.W.detach().cpu().double().numpy()
        if self.mask is not None:
            present = self.mask.detach().cpu().numpy() != 0
        else:
            present = np.ones_like(w, dtype=bool)
        i, j = np.nonzero(present)
        return i, j, w[i, j]

    def to_bqm(self, vartype: str = "BINARY", labels=None):
        """The model as a dimod BQM with energy β·E (BINARY) or its spin equivalent (SPIN).

        Variables are labelled 0..n−1 (left then right) unless `labels` (length n) is given.
        SPIN substitutes z = (s + 1)/2: J_ij = −βW_ij/4, h_i = −β(a_i/2 + Σ_j W_ij/4),
        plus the constant offset that keeps energies equal.
        """
        import dimod

        n_l = self.num_left
        i, j, w = self.edges()
        a = torch.cat([self.a_left, self.a_right]).detach().cpu().double().numpy()
        b = float(self.beta)
        rows, cols = i, j + n_l
        if vartype.upper() == "BINARY":
            linear, quad, offset = -b * a, -b * w, 0.0
            vt = dimod.BINARY
        elif vartype.upper() == "SPIN":
            field = np.zeros(self.num_units)
            np.add.at(field, rows, w)
            np.add.at(field, cols, w)
            linear = -b * (a / 2 + field / 4)
            quad = -b * w / 4
            offset = -b * (a.sum() / 2 + w.sum() / 4)
            vt = dimod.SPIN
        else:
            raise ValueError(f"vartype must be 'BINARY' or 'SPIN', got {vartype!r}")
        order = list(range(self.num_units)) if labels is None else list(labels)
        bqm = dimod.BinaryQuadraticModel.from_numpy_vectors(
            linear, (rows, cols, quad), offset, vt, variable_order=order
        )
        return bqm

    @classmethod
    def from_bqm(cls, bqm, left, right, beta: float = 1.0) -> "BipartiteModel":
        """Read (a_L, a_R, W) back from a BQM whose energy is β·E, given the left/right labels.

        Couplings inside one side make the model non-bipartite and are refused.
        """
        import dimod

        binary = bqm.change_vartype(dimod.BINARY, inplace=False)
        left, right = list(left), list(right)
        n_l = len(left)
        if set(binary.variables) != set(left) | set(right) or len(binary) != n_l + len(right):
            raise ValueError("from_bqm: the BQM's variables are not exactly left + right")
        lin, (row, col, quad), _ = binary.to_numpy_vectors(variable_order=left + right)
        lo, hi = np.minimum(row, col), np.maximum(row, col)
        if np.any(hi < n_l) or np.any(lo >= n_l):
            raise ValueError("from_bqm: a coupling lies within one side (not bipartite)")
        a_l, a_r = -lin[:n_l] / beta, -lin[n_l:] / beta
        w = np.zeros((n_l, len(right)))
        mask = np.zeros_like(w)
        w[lo, hi - n_l] = -quad / beta
        mask[lo, hi - n_l] = 1
        t = lambda x: torch.as_tensor(x, dtype=torch.float64)  # noqa: E731
        dense = mask.all()
        return cls(t(a_l), t(a_r), t(w), None if dense else t(mask), beta)
