"""Test NLL of the discrete model (spec §7, D7): binary z through the encoder groups, the
decoder and the RBM, with K_eval importance samples evaluated as a batch dimension in chunks,
accumulated in float64 with a max-shifted logsumexp. log Z comes from the caller (AIS/exact).

NLL per point = −log((1/K) Σ_k e^{ℓ_k}), ℓ = log p_RBM(z) − log q(z|x) + log p(x|z),
log p_RBM(z) = −E(z) − log Z. The ELBO is the mean of ℓ over the K draws.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

MAX_ROWS = 20_000  # rows per forward pass: bounds memory whatever batch × chunk is asked


class EvalResult(NamedTuple):
    nll: float
    elbo: float
    num_points: int
    num_samples: int


@torch.no_grad()
def log_weights(model, x: torch.Tensor, num_samples: int, log_z: float,
                sample_chunk: int = 100, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, num_samples) float64 log-weights of independent posterior draws for each point."""
    was_training = model.training
    model.eval()
    chunks = []
    chunk = max(1, min(sample_chunk, MAX_ROWS // max(1, x.shape[0])))
    for start in range(0, num_samples, chunk):
        s = min(chunk, num_samples - start)
        rows = x.repeat_interleave(s, 0)
        chunks.append(model.discrete_log_weights(rows, generator=generator).view(x.shape[0], s))
    model.train(was_training)
    return torch.cat(chunks, 1) - float(log_z)


@torch.no_grad()
def evaluate_nll(model, data: torch.Tensor, log_z: float, num_samples: int = 100,
                 batch_size: int = 1000, sample_chunk: int = 100,
                 generator: torch.Generator | None = None) -> EvalResult:
    """Mean NLL and ELBO (nats) of `data` (N, 784) in {0, 1} under the discrete model."""
    total_nll, total_elbo, n = 0.0, 0.0, data.shape[0]
    batch = max(1, min(batch_size, MAX_ROWS))
    for start in range(0, n, batch):
        x = data[start : start + batch]
        lw = log_weights(model, x, num_samples, log_z, sample_chunk, generator)
        per_point = torch.logsumexp(lw, 1) - math.log(num_samples)
        total_nll -= float(per_point.sum())  # partial batches weigh by their size
        total_elbo += float(lw.mean(1).sum())
    return EvalResult(total_nll / n, total_elbo / n, n, num_samples)
