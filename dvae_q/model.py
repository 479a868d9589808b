"""The DVAE model: hierarchical encoder, relaxation, RBM prior and decoder in one module.

Shapes: a batch x is (B, 784); with K samples per point the rows are B·K, the K copies of a
point adjacent (`repeat_interleave`, pitfall 7), so BatchNorm sees B·K rows; per-point results
are regrouped with `reshape(B, K)`. Latents are (rows, N), groups concatenated in order, the
RBM's left half the first N/2 columns (positional split, pitfall 10).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from dvae_q import gaussian_integral as gi
from dvae_q import objectives, relaxations
from dvae_q.methods import get_method
from dvae_q.networks import NUM_PIXELS, Decoder, Encoder, get_structure
from dvae_q.prior import RBMPrior


@dataclass
class ObjectiveResult:
    """The loss to minimise (without weight decay, which the optimiser applies) and honest
    diagnostics (spec D6, D11), all floats:

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
    metrics: dict = field(default_factory=dict)


class DVAE(nn.Module):
    """Encoder, relaxation (or GI posterior), RBM prior and decoder of one poster column.

    `forward(x, negative_samples, k=, kappa=, log_z_value=, generator=)` returns the training
    objective (spec §2); `decode(z)` the decoder logits; `discrete_log_weights` the test model's
    log-weights (spec §7), used by `dvae_q.evaluate`.
    """

    def __init__(
        self,
        structure: str,
        method: str,
        *,
        beta: float,
        x_mean: torch.Tensor,
        num_latent: int | None = None,
        prior_mask: torch.Tensor | None = None,
        mean_field_sweeps: int = 5,
        power_exact_gradient: bool = False,
    ):
        super().__init__()
        self.structure = get_structure(structure)
        self.method = get_method(method)
        self.beta = float(beta)
        n = num_latent or self.structure.num_latent
        groups = self.structure.num_groups
        if n % groups or n % 2:
            raise ValueError(f"num_latent {n} must be even and divisible by {groups} groups")
        self.num_latent, self.units = n, n // groups
        self.mean_field_sweeps = mean_field_sweeps
        self.is_gi = self.method.relaxation == "gi"
        hidden, width = self.structure.hidden_layers, self.structure.width
        self.encoder = Encoder(groups, self.units, hidden, width, 2 if self.is_gi else 1, x_mean)
        self.decoder = Decoder(n, hidden, width, x_mean)
        self.prior = RBMPrior(n // 2, n // 2, mask=prior_mask)
        if self.is_gi:
            # s = |0.2 v| + 0.05 per unit, v starts at 1 (s = 0.25); no weight decay on v
            self.gi_scale = nn.Parameter(torch.ones(groups, self.units))
            self.relaxation = None
        else:
            opts = {"exact_gradient": True} if power_exact_gradient and self.method.relaxation == "power" else {}
            self.relaxation = relaxations.make(self.method.relaxation, self.beta, **opts)

    # --- pieces -------------------------------------------------------------------------
    def decode(self, zeta: torch.Tensor) -> torch.Tensor:
        """Decoder logits (rows, 784), data-mean bias included."""
        return self.decoder(zeta)

    def posterior(self, x: torch.Tensor, generator=None):
        """Relaxed hierarchical posterior: per group (logits, shift head or None, ζ, log q(ζ))."""
        out, previous = [], []
        for g in range(self.structure.num_groups):
            raw = self.encoder.group_output(g, x, previous)
            if self.is_gi:
                logits, shift = raw[:, : self.units], raw[:, self.units :]
                v = self.gi_scale[g]
                zeta = gi.rsample(logits, shift, v, generator=generator)
                log_q = gi.log_q(zeta, logits, shift, v).sum(-1)
            else:
                logits, shift = raw, None
                zeta = self.relaxation.rsample(logits, generator=generator)
                log_q = self.relaxation.log_q(zeta, logits).sum(-1) if self.relaxation.has_density else None
            out.append((logits, shift, zeta, log_q))
            previous.append(zeta)
        return out

    def prior_log_prob(self, zeta, log_z_sur):
        """Relaxed prior log p̂(ζ) per row and the mean-field residual (None for GI)."""
        if self.is_gi:
            return self.prior.gaussian_integral_log_prob(zeta, self.beta, log_z_sur), None
        return self.prior.mean_field_log_prob(zeta, self.relaxation, log_z_sur, self.mean_field_sweeps)

    # --- objective ------------------------------------------------------------------------
    def forward(self, x, negative_samples, *, k: int = 1, kappa: float = 1.0,
                log_z_value: float | None = None, generator=None) -> ObjectiveResult:
        rows = x.repeat_interleave(k, 0) if k > 1 else x
        groups = self.posterior(rows, generator=generator)
        zeta = torch.cat([g[2] for g in groups], -1)
        recon = objectives.reconstruction_nll(self.decode(zeta), rows)
        log_z_sur = self.prior.log_z_surrogate(negative_samples, log_z_value)
        metrics = {"recon": float(recon.detach().mean())}
        method = self.method

        if method.kl == "sampled":  # DVAE# (§2.4, §2.5, §2.8)
            log_p, residual = self.prior_log_prob(zeta, log_z_sur)
            log_q = sum(g[3] for g in groups)
            if residual is not None:
                metrics["mf_residual"] = residual
            if k == 1:
                kl = log_q - log_p  # sampled KL̂ = −log p̂(ζ) + Σ_g log q(ζ_g|·) (§2.4, §2.5)
                loss = (kappa * kl + recon).mean()  # ELBO path (§2.8)
                if log_z_value is not None:
                    metrics["kl"] = float(kl.detach().mean())
                    metrics["approx_bound"] = float((kl + recon).detach().mean())
            else:
                # ℓ_bk = κ·[log p̂(ζ) − Σ_g log q(ζ_g|·)] + log p(x|ζ): κ inside the weights (§2.8)
                ell = (kappa * (log_p - log_q) - recon).reshape(-1, k)
                loss, ess = objectives.iw_loss(ell)  # −Σ sg(w̃)·ℓ, not the bound (pitfall 6)
                metrics["iw_ess"] = float(ess)
                if log_z_value is not None:
                    # the bound belongs to the model, so it is taken at κ = 1 whatever κ_t is
                    metrics["kl"] = float((log_q - log_p).detach().mean())
                    ell_model = ((log_p - log_q) - recon).detach().reshape(-1, k)
                    metrics["approx_bound"] = float(objectives.iw_bound(ell_model))
            return ObjectiveResult(loss, metrics)

        # ELBO path of DVAE / DVAE++ (§2.3); K > 1 averages K single-sample ELBOs (pitfall 8)
        logits = [g[0] for g in groups]
        if method.kl == "dvae" and len(groups) > 1:  # §2.3b, training only
            kl = objectives.rolfe_surrogate(logits, [g[2] for g in groups], self.prior, negative_samples)
            loss = (kappa * kl + recon).mean()
            return ObjectiveResult(loss, metrics)  # Rolfe's surrogate is not a KL: not logged
        q_logits = torch.cat(logits, -1)
        if len(groups) == 1 or not self.relaxation.overlapping:
            nu_logits = q_logits  # log-ratio zeroed with one group, and always for spike-exp
        else:
            nu_logits = q_logits + self.relaxation.b(zeta)
        kl = objectives.dvaepp_kl(q_logits, nu_logits, self.prior, log_z_sur)  # §2.3a
        loss = (kappa * kl + recon).mean()  # (1/B)(1/K) Σ [κ·KL̂ − log p(x|ζ)] (§2.8)
        if log_z_value is not None:
            metrics["kl"] = float(kl.detach().mean())
            metrics["approx_bound"] = float((kl + recon).detach().mean())
        return ObjectiveResult(loss, metrics)

    # --- the discrete test model (spec §7) -------------------------------------------------
    def discrete_log_weights(self, x: torch.Tensor, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-weights of the discrete test model (spec §7) for one binary z ~ q(z|x) per row.

        Returns (ℓ, ℓ_H), both float64 (rows,), log Z not included:
        ℓ = −E(z) − log q(z|x) + log p(x|z), and ℓ_H, the same with −log q(z|x) replaced by the
        analytic Bernoulli entropies Σ_g H(q_g(·|x, z_<g)) (same mean over z: the lower-variance
        ELBO term the spec uses for DVAE/DVAE++). Binary z of earlier groups feeds later groups
        and the decoder; the GI shift head is unused. Call under no_grad in eval mode.
        """
        zs = []
        log_q = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        entropy = torch.zeros_like(log_q)
        for g in range(self.structure.num_groups):
            logits = self.encoder.group_output(g, x, zs)[:, : self.units]
            u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
            z = (u < torch.sigmoid(logits)).to(logits.dtype)
            log_q -= nn.functional.binary_cross_entropy_with_logits(logits, z, reduction="none").sum(-1).double()
            entropy += objectives.bernoulli_entropy(logits.double())
            zs.append(z)
        z = torch.cat(zs, -1)
        log_px = -objectives.reconstruction_nll(self.decode(z), x).double()
        log_prior = -self.prior.energy(z).double()
        return log_prior - log_q + log_px, log_prior + entropy + log_px


def parameter_groups(model: nn.Module, weight_decay: float = 1e-4) -> list[dict]:
    """Adam groups: decayed = every Linear weight, BatchNorm γ and the RBM's W; the rest not.

    Adam's coupled `weight_decay` adds wd·w to the gradient: the gradient of the spec's
    wd·½‖w‖² (§2.8). AdamW's decoupled decay would be a different model.
    """
    decayed, plain = [], []
    decayed_ids = set()
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.BatchNorm1d)):
            decayed_ids.add(id(module.weight))
    if isinstance(getattr(model, "prior", None), RBMPrior):
        decayed_ids.add(id(model.prior.W))
    for p in model.parameters():
        (decayed if id(p) in decayed_ids else plain).append(p)
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


__all__ = ["DVAE", "ObjectiveResult", "parameter_groups", "NUM_PIXELS"]
