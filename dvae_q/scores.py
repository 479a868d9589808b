"""What every evaluation reports: the prior's log Z and the discrete model's NLL and ELBO.

In-training evaluations, the final evaluation and `dvae-q eval` all go through here, so the
numbers they print are computed one way. The reported NLL is that of the discrete test model
(binary z into the decoder, the RBM prior with an AIS estimate of log Z); an error in log Z moves
it one for one, which is why the estimate travels with it.
"""

from __future__ import annotations

import torch

from dvae_q import logz
from dvae_q.evaluate import evaluate_nll


def ais(model, *, num_temps: int, num_chains: int, generator: torch.Generator) -> logz.LogZEstimate:
    """AIS estimate of the prior's log Z: a stochastic lower bound."""
    prior = model.prior
    return logz.ais_log_z(prior.a_left.detach(), prior.a_right.detach(), prior.weight().detach(),
                          num_temps=num_temps, num_chains=num_chains, generator=generator)


def nll(model, data: dict[str, torch.Tensor], counts: dict[str, int], log_z: float, *,
        batch_size: int, sample_chunk: int, generator: torch.Generator) -> dict[str, float]:
    """`{split}_nll` and `{split}_elbo` of each split with `counts[split]` importance samples."""
    out = {}
    for split, count in counts.items():
        result = evaluate_nll(model, data[split], log_z, num_samples=count, batch_size=batch_size,
                              sample_chunk=sample_chunk, generator=generator)
        out[f"{split}_nll"] = result.nll
        out[f"{split}_elbo"] = result.elbo
    return out
