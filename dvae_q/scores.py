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
from dvae_q.progress import NULL, Reporter


def ais(model, *, num_temps: int, num_chains: int, generator: torch.Generator,
        reporter: Reporter | None = None) -> logz.LogZEstimate:
    """AIS estimate of the prior's log Z: a stochastic lower bound."""
    with _task(reporter, "AIS log Z", "temperatures"):
        return logz.ais_log_z(model.prior.snapshot(), num_temps=num_temps,
                              num_chains=num_chains, generator=generator)


def nll(model, data: dict[str, torch.Tensor], counts: dict[str, int], log_z: float, *,
        batch_size: int, sample_chunk: int, generator: torch.Generator,
        reporter: Reporter | None = None) -> dict[str, float]:
    """`{split}_nll` and `{split}_elbo` of each split with `counts[split]` importance samples."""
    out = {}
    for split, count in counts.items():
        with _task(reporter, f"{split} NLL K={count}", "samples"):
            result = evaluate_nll(model, data[split], log_z, num_samples=count,
                                  batch_size=batch_size, sample_chunk=sample_chunk,
                                  generator=generator)
        out[f"{split}_nll"] = result.nll
        out[f"{split}_elbo"] = result.elbo
    return out


def _task(reporter: Reporter | None, description: str, unit: str):
    return NULL if reporter is None else reporter.task(description, unit=unit)
