"""Training objectives. Rows are (batch × K) with the K copies of a data point adjacent
(`repeat_interleave`), regrouped with `reshape(-1, K)`; every per-row term is a (rows,) tensor.

`OBJECTIVES` maps a method's `kl` kind to the function that turns one forward pass into the
loss: `sampled` (DVAE#: sampled KL, IW bound for K > 1), `dvae` (DVAE: Rolfe's surrogate with
several groups, the analytic KL with one) and `dvaepp` (DVAE++: analytic KL). K > 1 for the
ELBO methods averages K single-sample ELBOs; it is not an IW bound.

None of the returned loss values is a bound: the IW loss is −Σ sg(w̃)·ℓ (same gradient as the
negative IW bound, different value) and the KL terms carry the log Z surrogate, whose value is
whatever the caller says log Z is (0 unless an AIS estimate is passed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F

# the surrogate clips logits to ±88 (σ saturates in float32 beyond) and q̃ to ≤ 0.999, which
# keeps 1/(1 − q̃) finite
ROLFE_LOGIT_CLIP = 88.0
ROLFE_Q_MAX = 0.999


def reconstruction_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """−log p(x|ζ) per row: Σ_pixels [l − l·x + softplus(−l)]."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


def bernoulli_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Σ_i H(Bernoulli(σ(l_i))) per row, analytic."""
    q = torch.sigmoid(logits)
    return (F.softplus(logits) - q * logits).sum(-1)


def dvaepp_kl(q_logits, nu_logits, prior, log_z_sur) -> torch.Tensor:
    """DVAE++ KL̂ = CE − H, per row.

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
    """Rolfe's DVAE gradient surrogate, per row. Its value is NOT a KL.

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
    """IW loss −(1/B) Σ_b Σ_k sg(w̃_bk)·ℓ_bk for ℓ of shape (B, K), not −logmeanexp(ℓ).

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


# --- the objectives of the three method kinds ----------------------------------------------


@dataclass
class ObjectiveResult:
    """The loss to minimise (without weight decay, which the optimiser applies) and honest
    diagnostics, kept as detached 0-d tensors on the model's device (`tensors`) and read as
    floats (`metrics`) only when a row is logged, since on a GPU every read is a host
    synchronisation (a surrogate is never logged as a KL or a bound):

    * 'recon': mean −log p(x|ζ) over the B·K rows;
    * 'iw_ess': mean effective sample size 1/Σ w̃² of the IW weights (DVAE#, K > 1);
    * 'mf_residual': max |m − σ(field)| after the mean-field sweeps (overlapping DVAE#);
    * 'kl' and 'approx_bound' only when `log_z_value` (an AIS or exact log Z) is given: the
      sampled or analytic KL estimate, and the negative ELBO (K = 1 or ELBO path) or negative
      IW bound (K > 1, taken at κ = 1), in nats per point. Approximate: log Z is an estimate and
      DVAE#'s overlapping prior uses the mean-field log Z(ζ). Rolfe's surrogate (DVAE, ≥ 2
      groups) is no KL, so neither is logged for it. The loss value itself is never a bound.
    """

    loss: torch.Tensor
    tensors: dict = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, float]:
        """The diagnostics as floats (a host synchronisation on a GPU: read on logged steps)."""
        return {key: float(value) for key, value in self.tensors.items()}


class ForwardPass(NamedTuple):
    """What one forward pass hands to an objective.

    `groups` holds one posterior draw per latent group (fields `logits`, `zeta`, `log_q`: the
    per-row Σ_units log q(ζ_g|·), None without a density); `zeta` is their concatenation,
    `recon` −log p(x|ζ) per row, `log_z_sur` the prior's log Z surrogate.
    """

    groups: list
    zeta: torch.Tensor
    recon: torch.Tensor
    log_z_sur: torch.Tensor
    negative_samples: torch.Tensor
    k: int
    kappa: float
    log_z_value: float | None


def _elbo(kl: torch.Tensor, fp: ForwardPass, metrics: dict) -> ObjectiveResult:
    """(1/(B·K)) Σ [κ·KL̂ − log p(x|ζ)], with KL̂ and the negative ELBO logged given a log Z."""
    loss = (fp.kappa * kl + fp.recon).mean()
    if fp.log_z_value is not None:
        metrics["kl"] = kl.detach().mean()
        metrics["approx_bound"] = (kl + fp.recon).detach().mean()
    return ObjectiveResult(loss, metrics)


def sampled_kl_objective(model, fp: ForwardPass) -> ObjectiveResult:
    """DVAE#: log-weights ℓ = κ·[log p̂(ζ) − Σ_g log q(ζ_g|·)] + log p(x|ζ) with the relaxed
    prior density of `model.relaxation`. K = 1: the ELBO with the sampled KL̂ = −ℓ's prior part.
    K > 1: the IW loss, κ inside the weights; the logged bound is the model's, taken at κ = 1."""
    log_p, residual = model.prior_log_prob(fp.zeta, fp.log_z_sur)
    log_q = sum(g.log_q for g in fp.groups)
    metrics = {"recon": fp.recon.detach().mean()}
    if residual is not None:
        metrics["mf_residual"] = residual
    if fp.k == 1:
        return _elbo(log_q - log_p, fp, metrics)
    ell = (fp.kappa * (log_p - log_q) - fp.recon).reshape(-1, fp.k)
    loss, ess = iw_loss(ell)
    metrics["iw_ess"] = ess.detach()
    if fp.log_z_value is not None:
        metrics["kl"] = (log_q - log_p).detach().mean()
        ell_model = ((log_p - log_q) - fp.recon).detach().reshape(-1, fp.k)
        metrics["approx_bound"] = iw_bound(ell_model)
    return ObjectiveResult(loss, metrics)


def analytic_kl_objective(model, fp: ForwardPass) -> ObjectiveResult:
    """DVAE++: the ELBO with the analytic KL̂ = CE − H. ν uses the log-ratio b(ζ) only with
    several groups of an overlapping relaxation; with one group it is zeroed (ν = q)."""
    metrics = {"recon": fp.recon.detach().mean()}
    q_logits = torch.cat([g.logits for g in fp.groups], -1)
    if len(fp.groups) == 1 or not model.relaxation.overlapping:
        nu_logits = q_logits
    else:
        nu_logits = q_logits + model.relaxation.b(fp.zeta)
    return _elbo(dvaepp_kl(q_logits, nu_logits, model.prior, fp.log_z_sur), fp, metrics)


def rolfe_objective(model, fp: ForwardPass) -> ObjectiveResult:
    """DVAE: with several groups, Rolfe's gradient surrogate in place of the KL (its value is
    not a KL, so neither a KL nor a bound is logged); with one group, the analytic KL."""
    if len(fp.groups) == 1:
        return analytic_kl_objective(model, fp)
    metrics = {"recon": fp.recon.detach().mean()}
    logits, zetas = [g.logits for g in fp.groups], [g.zeta for g in fp.groups]
    kl = rolfe_surrogate(logits, zetas, model.prior, fp.negative_samples)
    return ObjectiveResult((fp.kappa * kl + fp.recon).mean(), metrics)


OBJECTIVES = {"sampled": sampled_kl_objective, "dvae": rolfe_objective, "dvaepp": analytic_kl_objective}
