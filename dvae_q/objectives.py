"""Training objectives (spec §2). Rows are (batch × K) with the K copies of a data point adjacent
(`repeat_interleave`), regrouped with `reshape(-1, K)`; every per-row term is a (rows,) tensor.

None of the returned loss values is a bound: the IW loss is −Σ sg(w̃)·ℓ (same gradient as the
negative IW bound, different value) and the KL terms carry the log Z surrogate, whose value is
whatever the caller says log Z is (0 unless an AIS estimate is passed).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ROLFE_LOGIT_CLIP = 88.0  # spec pitfall 20
ROLFE_Q_MAX = 0.999


def reconstruction_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """−log p(x|ζ) per row: Σ_pixels [l − l·x + softplus(−l)] (spec §2.1 step 5)."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


def bernoulli_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Σ_i H(Bernoulli(σ(l_i))) per row, analytic."""
    q = torch.sigmoid(logits)
    return (F.softplus(logits) - q * logits).sum(-1)


def dvaepp_kl(q_logits, nu_logits, prior, log_z_sur) -> torch.Tensor:
    """DVAE++ KL̂ = CE − H (spec §2.3a), per row.

    CE = −q_Lᵀa_L − q_Rᵀa_R − ν_Lᵀ W q_R + logZ_sur with q = σ(l) and ν_L = σ(l_L + b(ζ_L)); the
    caller passes `nu_logits` = l (log-ratio zeroed: one group, or spike-exp) or l + b(ζ).
    H is the analytic entropy of the (conditionally) factorial posterior.
    """
    q = torch.sigmoid(q_logits)
    q_l, q_r = prior.split(q)
    nu_l = torch.sigmoid(prior.split(nu_logits)[0])
    cross = -(q_l @ prior.a_left) - (q_r @ prior.a_right) - ((nu_l @ prior.weight()) * q_r).sum(-1)
    return cross + log_z_sur - bernoulli_entropy(q_logits)


def rolfe_surrogate(logits_groups, zeta_groups, prior, negative_samples) -> torch.Tensor:
    """Rolfe's DVAE gradient surrogate (spec §2.3b), per row. Its value is NOT a KL.

    Posterior part Σ sg(l − a − f·scaling)·q̃ and a prior part (positive phase from the
    marginalised samples s, negative phase from the sampler), all samples stop-gradiented.
    """
    logits = torch.cat(logits_groups, -1).clamp(-ROLFE_LOGIT_CLIP, ROLFE_LOGIT_CLIP)
    q_tilde = torch.sigmoid(logits).clamp_max(ROLFE_Q_MAX)
    # marginalised samples: binary z = 1[ζ > 0] except the last group, Rao-Blackwellised there
    s = torch.cat([(z > 0).to(logits.dtype) for z in zeta_groups[:-1]]
                  + [torch.sigmoid(logits_groups[-1])], -1).detach()
    w = prior.weight()
    s_l, s_r = prior.split(s)
    field = torch.cat([s_r @ w.T, s_l @ w], -1)
    n_l = prior.num_left
    scaling = torch.cat([(1 - s_l) / (1 - q_tilde[..., :n_l]), torch.ones_like(s_r)], -1)
    a = torch.cat([prior.a_left, prior.a_right])
    posterior = ((logits - a - field * scaling).detach() * q_tilde).sum(-1)
    sig = torch.sigmoid(logits).detach()
    positive = ((s_l @ w) * s_r).sum(-1) + sig @ a
    z = negative_samples.detach().to(w.dtype)
    z_l, z_r = prior.split(z)
    negative = ((z_l @ w) * z_r).sum(-1) + z @ a
    return posterior - positive.mean() + negative.mean()


def iw_loss(log_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IW loss −(1/B) Σ_b Σ_k sg(w̃_bk)·ℓ_bk for ℓ of shape (B, K) (spec §2.8, pitfall 6).

    Its gradient equals that of −(1/B) Σ_b log((1/K) Σ_k e^{ℓ_bk}). Returns (loss, mean ESS).
    """
    w = torch.softmax(log_weights.detach(), dim=-1)
    loss = -(w * log_weights).sum(-1).mean()
    ess = (1.0 / (w * w).sum(-1)).mean()
    return loss, ess


def iw_bound(log_weights: torch.Tensor) -> torch.Tensor:
    """−(1/B) Σ_b log((1/K) Σ_k e^{ℓ_bk}): the negative IW bound's value (float64)."""
    lw = log_weights.detach().double()
    k = lw.shape[-1]
    return -(torch.logsumexp(lw, -1) - torch.log(torch.tensor(float(k), dtype=lw.dtype))).mean()
