"""Which correction to try when the two β_eff estimators disagree (`calibrate`'s report).

Disagreement says the samples are not Boltzmann at one temperature, not why. The samples of the
last calibration call say more: under the model (β folded in, E in spins, local field f_i(s))
two families of pseudo-likelihood scores have mean exactly 0 for any h and J,

    field score of unit i:        s_i + tanh f_i(s)
    coupling score of (i, j):     (s_i + tanh f_i(s)) s_j + (s_j + tanh f_j(s)) s_i

(the derivatives of the pseudo-log-likelihood in h_i and J_ij, up to a factor). Each family's
χ² (score means over their standard errors, squared and summed) is compared with its upper
`SIGNIFICANCE` quantile (the scores of neighbouring units are correlated, so this is a guide,
not an exact test): fields off → offsets (spin-reversal transforms, flux-bias shim);
couplings off, even at the fields that fit the samples best → per-parameter errors (the
device-Hamiltonian fit); neither, yet the
estimators disagree → a temperature that is not one number for the whole problem (freeze-out at
this problem's scale, or drift), for which β_eff must be measured more often.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import chi2

from samplers.model import BipartiteModel

# each family is tested at this probability (so a thermal sampler trips it 1 time in 1,000)
SIGNIFICANCE = 1e-3

FIELDS = "field offsets: try spin_reversal_transforms or flux_bias_shim"
COUPLINGS = "per-parameter errors: try learn_device_hamiltonian"
TEMPERATURE = ("a β that depends on the problem (scale, drift): recalibrate more often "
               "(recalibrate_every)")


def _chi2(scores: np.ndarray) -> tuple[float, int]:
    """Σ over columns of (mean / standard error of the mean)²."""
    n = len(scores)
    se = scores.std(0, ddof=1) / np.sqrt(n)
    ok = se > 0
    return float(np.sum((scores.mean(0)[ok] / se[ok]) ** 2)), int(ok.sum())


def hints(model: BipartiteModel, z) -> list[str]:
    """The corrections the samples `z` (rows of {0, 1}) of `model` point to, most specific
    last; [] when neither family of scores is significant (then: TEMPERATURE by the caller)."""
    m = model.to(device="cpu", dtype=torch.float64)
    s = 2.0 * torch.as_tensor(z).detach().to("cpu", torch.float64) - 1.0
    n_l = m.num_left
    w = m.W * m.mask if m.mask is not None else m.W
    w = float(m.beta) * w.detach()
    # E = −a·z − z_Lᵀ W z_R in spins: h = −β(a/2 + W's row/column sums/4), J = −βW/4
    h_l = -float(m.beta) * m.a_left.detach() / 2 - w.sum(1) / 4
    h_r = -float(m.beta) * m.a_right.detach() / 2 - w.sum(0) / 4
    j = -w / 4
    sl, sr = s[:, :n_l], s[:, n_l:]
    f = torch.cat([h_l + sr @ j.T, h_r + sl @ j], 1)
    s_all = torch.cat([sl, sr], 1)
    out = []
    stat, dof = _chi2((s_all + torch.tanh(f)).numpy())
    if dof and stat > chi2.ppf(1 - SIGNIFICANCE, dof):
        out.append(FIELDS)
    # the coupling scores are taken at the fields that fit the samples best (a few Newton steps
    # on each unit's field), so that field offsets alone do not show up as coupling errors
    shift = torch.zeros(f.shape[1], dtype=torch.float64)
    for _ in range(5):
        t = torch.tanh(f + shift)
        shift -= (s_all + t).mean(0) / (1 - t * t).mean(0).clamp_min(1e-3)
    r = s_all + torch.tanh(f + shift)
    r_l, r_r = r[:, :n_l], r[:, n_l:]
    rows, cols = torch.nonzero(j != 0, as_tuple=True)
    stat, dof = _chi2((r_l[:, rows] * sr[:, cols] + r_r[:, cols] * sl[:, rows]).numpy())
    if dof and stat > chi2.ppf(1 - SIGNIFICANCE, dof):
        out.append(COUPLINGS)
    return out
