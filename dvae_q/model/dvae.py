"""The DVAE model: hierarchical encoder, relaxation, RBM prior and decoder in one module.

Shapes: a batch x is (B, 784); with K samples per point the rows are B·K, the K copies of a
point adjacent (`repeat_interleave`), so BatchNorm sees all B·K rows and per-point results are
regrouped with `reshape(B, K)`. Latents are (rows, N), groups concatenated in order; the RBM's
left half is the first N/2 columns (a positional split: with one group both sides come from the
same encoder output).

The method decides everything method-specific through registries: its relaxation
(`dvae_q.model.relaxations.make`: encoder heads, learned per-unit parameters, relaxed prior density)
and its objective (`dvae_q.model.objectives.OBJECTIVES[method.kl]`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

from dvae_q.model import objectives, relaxations
from dvae_q.model.methods import get_method
from dvae_q.model.networks import NUM_PIXELS, Decoder, Encoder, get_structure
from dvae_q.model.objectives import ObjectiveResult
from dvae_q.model.prior import RBMPrior


class GroupSample(NamedTuple):
    """One latent group's relaxed posterior draw: the logits l (q = σ(l)), ζ, the per-row
    Σ_units log q(ζ|·) (None where the relaxation has no density), and the full parameter
    tuple the relaxation's rsample/log_q took (l first; the Gaussian integral adds its shift
    logits and learned scale)."""

    logits: torch.Tensor
    zeta: torch.Tensor
    log_q: torch.Tensor | None
    params: tuple


class DVAE(nn.Module):
    """Encoder, relaxation, RBM prior and decoder of one poster column.

    `forward(x, negative_samples, k=, kappa=, log_z_value=, generator=)` returns the training
    objective; `decode(z)` the decoder logits; `discrete_log_weights` the test model's
    log-weights, used by `dvae_q.evaluation.nll`. `beta` is the method's β, handed to the relaxation
    (for the Gaussian integral it is the floor of the prior's λ). Learned per-unit parameters
    the relaxation asks for live in `relaxation_params[g][name]` (state-dict keys
    `relaxation_params.<g>.<name>`, e.g. `relaxation_params.0.scale` for GI's v).
    `share_data_layer` (default) computes the data part of each encoder group's first layer
    once per data point instead of once per row: equal up to float rounding; False is the
    row-by-row reference.
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
        gi_exact_log_q: bool = False,
        share_data_layer: bool = True,
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
        self.share_data_layer = share_data_layer
        self.relaxation = _make_relaxation(self.method.relaxation, self.beta, {
            "exact_gradient": power_exact_gradient, "exact_log_q": gi_exact_log_q})
        hidden, width = self.structure.hidden_layers, self.structure.width
        self.encoder = Encoder(groups, self.units, hidden, width, self.relaxation.heads, x_mean)
        self.decoder = Decoder(n, hidden, width, x_mean)
        self.prior = RBMPrior(n // 2, n // 2, mask=prior_mask)
        self.relaxation_params = nn.ModuleList(
            nn.ParameterDict({
                name: nn.Parameter(torch.full((self.units,), float(init)))
                for name, init in self.relaxation.unit_parameters.items()
            })
            for _ in range(groups)
        )
        self.register_load_state_dict_pre_hook(_rename_legacy_keys)

    # --- pieces -------------------------------------------------------------------------
    def decode(self, zeta: torch.Tensor) -> torch.Tensor:
        """Decoder logits (rows, 784), data-mean bias included."""
        return self.decoder(zeta)

    def posterior(self, x: torch.Tensor, k: int = 1, generator=None) -> list[GroupSample]:
        """Relaxed hierarchical posterior for the B·k rows of x (B, 784) repeated k times
        (copies adjacent): group g sees x and the ζ of the groups before it."""
        out, previous = [], []
        rel = self.relaxation
        rows = x.repeat_interleave(k, 0) if k > 1 and not self.share_data_layer else x
        for g in range(self.structure.num_groups):
            if self.share_data_layer:
                raw = self.encoder.group_output_shared(g, x, previous, k)
            else:
                raw = self.encoder.group_output(g, rows, previous)
            params = rel.posterior_params(raw, self.relaxation_params[g])
            zeta = rel.rsample(*params, generator=generator)
            log_q = rel.log_q(zeta, *params).sum(-1) if rel.has_density else None
            out.append(GroupSample(params[0], zeta, log_q, params))
            previous.append(zeta)
        return out

    def prior_log_prob(self, zeta, log_z_sur):
        """Relaxed prior log p̂(ζ) per row (the density the relaxation names) and the
        mean-field residual (None where no mean field runs)."""
        return self.prior.relaxed_log_prob(zeta, self.relaxation, log_z_sur, self.mean_field_sweeps)

    # --- objective ------------------------------------------------------------------------
    def forward(self, x, negative_samples, *, k: int = 1, kappa: float = 1.0,
                log_z_value: float | None = None, generator=None) -> ObjectiveResult:
        rows = x.repeat_interleave(k, 0) if k > 1 else x
        groups = self.posterior(x, k, generator=generator)
        zeta = torch.cat([g.zeta for g in groups], -1)
        recon = objectives.reconstruction_nll(self.decode(zeta), rows)
        log_z_sur = self.prior.log_z_surrogate(negative_samples, log_z_value)
        fp = objectives.ForwardPass(groups, zeta, recon, log_z_sur, negative_samples, k, kappa,
                                    log_z_value)
        return objectives.OBJECTIVES[self.method.kl](self, fp)

    # --- the discrete test model --------------------------------------------------------------
    def binary_posterior(self, x: torch.Tensor, generator=None):
        """One binary z ~ q(z|x) per row of the discrete test model, with log q(z|x) and the
        analytic entropies Σ_g H(q_g(·|x, z_<g)) (float64, per row): binary z of earlier
        groups feeds later groups. Call under no_grad in eval mode."""
        zs = []
        log_q = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        entropy = torch.zeros_like(log_q)
        for g in range(self.structure.num_groups):
            raw = self.encoder.group_output(g, x, zs)
            logits = self.relaxation.posterior_params(raw, self.relaxation_params[g])[0]
            u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
            z = (u < torch.sigmoid(logits)).to(logits.dtype)
            log_q -= nn.functional.binary_cross_entropy_with_logits(logits, z, reduction="none").sum(-1).double()
            entropy += objectives.bernoulli_entropy(logits.double())
            zs.append(z)
        return torch.cat(zs, -1), log_q, entropy

    def discrete_log_weights(self, x: torch.Tensor, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-weights of the discrete test model for one binary z ~ q(z|x) per row.

        Returns (ℓ, ℓ_H), both float64 (rows,), log Z not included:
        ℓ = −E(z) − log q(z|x) + log p(x|z), and ℓ_H, the same with −log q(z|x) replaced by the
        analytic Bernoulli entropies Σ_g H(q_g(·|x, z_<g)) (same mean over z, lower variance:
        the ELBO reported for DVAE/DVAE++). Binary z of earlier groups feeds later groups and
        the decoder; only the logits of the relaxation's parameters are used (GI's shift and
        scale belong to the relaxed model). Call under no_grad in eval mode.
        """
        z, log_q, entropy = self.binary_posterior(x, generator)
        log_px = -objectives.reconstruction_nll(self.decode(z), x).double()
        log_prior = -self.prior.energy(z).double()
        return log_prior - log_q + log_px, log_prior + entropy + log_px


def _make_relaxation(name: str, beta: float, flags: dict) -> relaxations.Relaxation:
    """The relaxation with each switched-on flag that its family declares (a flag's name says
    which family it is for; the others ignore it)."""
    accepted = relaxations.accepted_options(name)
    return relaxations.make(name, beta, **{key: True for key, on in flags.items() if on and key in accepted})


def _rename_legacy_keys(module, state_dict, prefix, *_):
    """Checkpoints written before the learned scale became one tensor per group hold GI's v as
    one (groups, U) tensor `gi_scale`; its rows are the groups' `relaxation_params.<g>.scale`."""
    old = state_dict.pop(prefix + "gi_scale", None)
    if old is not None:
        for g, row in enumerate(old):
            state_dict[f"{prefix}relaxation_params.{g}.scale"] = row


def parameter_groups(model: nn.Module, weight_decay: float = 1e-4) -> list[dict]:
    """Adam groups: decayed = every Linear weight, BatchNorm γ and the RBM's W; the rest not
    (biases, RBM fields and the relaxation's learned per-unit parameters).

    Adam's coupled `weight_decay` adds wd·w to the gradient: the gradient of wd·½‖w‖², the
    published convention. AdamW's decoupled decay would be a different model.
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


__all__ = ["DVAE", "GroupSample", "ObjectiveResult", "parameter_groups", "NUM_PIXELS"]
