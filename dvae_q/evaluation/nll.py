"""Test NLL of the discrete model: binary z through the encoder groups, the
decoder and the RBM, with K_eval importance samples evaluated as a batch dimension in chunks,
accumulated in float64 with a max-shifted logsumexp. log Z comes from the caller (AIS/exact).

NLL per point = −log((1/K) Σ_k e^{ℓ_k}), ℓ = log p_RBM(z) − log q(z|x) + log p(x|z),
log p_RBM(z) = −E(z) − log Z. The ELBO is the mean of ℓ over the K draws.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from dvae_q.progress import NULL, as_progress

MAX_ROWS = 20_000  # rows per forward pass: bounds memory whatever batch × chunk is asked


class EvalResult(NamedTuple):
    nll: float
    elbo: float
    num_points: int
    num_samples: int


def _chunks(model, x, num_samples, sample_chunk, generator, progress=NULL):
    """Both log-weight kinds of `discrete_log_weights`, (B, num_samples) each, without log Z."""
    was_training = model.training
    model.eval()  # the test model uses BatchNorm's moving averages, not batch statistics
    dtype = next(model.parameters()).dtype
    x = x.to(dtype)
    chunk = max(1, min(sample_chunk, MAX_ROWS // max(1, x.shape[0])))
    ell, ell_h = [], []
    try:
        for start in range(0, num_samples, chunk):
            s = min(chunk, num_samples - start)
            # samples as a batch dimension: the s copies of a point are adjacent rows
            rows = x.repeat_interleave(s, 0)
            a, b = model.discrete_log_weights(rows, generator=generator)
            ell.append(a.view(x.shape[0], s))
            ell_h.append(b.view(x.shape[0], s))
            progress.update(x.shape[0] * s)
    finally:
        model.train(was_training)
    return torch.cat(ell, 1), torch.cat(ell_h, 1)


@torch.no_grad()
def log_weights(model, x: torch.Tensor, num_samples: int, log_z: float,
                sample_chunk: int = 100, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, num_samples) float64 log-weights ℓ = −E(z) − log Z − log q(z|x) + log p(x|z) of
    independent posterior draws for each point of x (B, 784)."""
    return _chunks(model, x, num_samples, sample_chunk, generator)[0] - float(log_z)


@torch.no_grad()
def evaluate_nll(model, data: torch.Tensor, log_z: float, num_samples: int = 100,
                 batch_size: int = 1000, sample_chunk: int = 100,
                 generator: torch.Generator | None = None, progress=None) -> EvalResult:
    """Mean NLL and ELBO (nats) of `data` (N, 784) in {0, 1} under the discrete model.

    The ELBO averages the K draws; its entropy is analytic for the ELBO-trained methods
    (DVAE/DVAE++) and sample-based for DVAE#. `progress` (`dvae_q.progress`) counts importance
    samples (points × K).
    """
    if num_samples < 1 or batch_size < 1 or sample_chunk < 1 or data.shape[0] < 1:
        raise ValueError("data, num_samples, batch_size and sample_chunk must all be non-empty / at least 1")
    progress = as_progress(progress)
    progress.set_total(data.shape[0] * num_samples)
    analytic = getattr(getattr(model, "method", None), "objective", "iw") == "elbo"
    total_nll, total_elbo, n = 0.0, 0.0, data.shape[0]
    batch = max(1, min(batch_size, MAX_ROWS))
    for start in range(0, n, batch):
        x = data[start : start + batch]
        ell, ell_h = _chunks(model, x, num_samples, sample_chunk, generator, progress)
        ell, ell_h = ell - float(log_z), ell_h - float(log_z)
        # float64 logsumexp with a max shift: K_eval = 4000 weights spanning hundreds of nats
        per_point = torch.logsumexp(ell, 1) - math.log(num_samples)
        total_nll -= float(per_point.sum())  # summed, then divided by n: partial batches weigh by size
        total_elbo += float((ell_h if analytic else ell).mean(1).sum())
    return EvalResult(total_nll / n, total_elbo / n, n, num_samples)
