"""What every evaluation reports: the prior's log Z and the discrete model's NLL and ELBO.

In-training evaluations, the final evaluation and `dvae-q eval` all go through here, so the
numbers they print are computed one way. The reported NLL is that of the discrete test model
(binary z into the decoder, the RBM prior with an AIS estimate of log Z); an error in log Z moves
it one for one, which is why the estimate travels with it: every evaluation brackets log Z
between AIS (a stochastic lower bound) and reverse AIS started from the AIS end states (the
upper end), and reports the NLL interval the bracket implies. A bracket whose upper end lies
below its lower end beyond their errors is never reported as an interval: it is flagged.
"""

from __future__ import annotations

import logging

import torch

from dvae_q.evaluation import logz
from dvae_q.evaluation.nll import evaluate_nll
from dvae_q.progress import NULL, Reporter

log = logging.getLogger(__name__)
SIGMAS = 3.0  # the NLL interval spans log Z from AIS − 3 se to RAISE + 3 se


def ais(model, *, num_temps: int, num_chains: int, generator: torch.Generator,
        reporter: Reporter | None = None) -> logz.LogZEstimate:
    """AIS estimate of the prior's log Z: a stochastic lower bound."""
    with _task(reporter, "AIS log Z", "temperatures") as progress:
        return logz.ais_log_z(model.prior.snapshot(), num_temps=num_temps,
                              num_chains=num_chains, generator=generator, progress=progress)


def log_z(model, *, num_temps: int, num_chains: int, generator: torch.Generator,
          reporter: Reporter | None = None) -> logz.Bracket:
    """The prior's log Z bracket: AIS, then reverse AIS from its end states."""
    lower = ais(model, num_temps=num_temps, num_chains=num_chains, generator=generator,
                reporter=reporter)
    with _task(reporter, "reverse AIS log Z", "temperatures") as progress:
        upper = logz.raise_log_z(model.prior.snapshot(), num_temps, generator=generator,
                                 from_ais=lower, progress=progress)
    return logz.Bracket(lower, upper)


def bracket_record(bracket: logz.Bracket, found: dict, where: str) -> dict:
    """The bracket's columns, with `{split}_nll_low`/`_high` for every `{split}_nll` in
    `found` (computed with the AIS log Z), or the flag alone when the bracket is inverted."""
    lower, upper = bracket.lower, bracket.upper
    out = {"log_z": lower.log_z, "log_z_stderr": lower.stderr, "log_z_upper": upper.log_z,
           "log_z_upper_stderr": upper.stderr, "log_z_inverted": float(bracket.inverted)}
    if bracket.inverted:
        log.warning("log Z bracket inverted %s: reverse AIS %.3f ± %.3f lies below AIS %.3f ± %.3f; "
                    "no NLL interval is reported", where, upper.log_z, upper.stderr,
                    lower.log_z, lower.stderr)
        return out
    for key, nll_value in found.items():
        if key.endswith("_nll"):
            low, high = bracket.nll_interval(nll_value, lower.log_z, SIGMAS)
            out[f"{key}_low"], out[f"{key}_high"] = low, high
    return out


def nll(model, data: dict[str, torch.Tensor], counts: dict[str, int], log_z: float, *,
        batch_size: int, sample_chunk: int, generator: torch.Generator,
        reporter: Reporter | None = None) -> dict[str, float]:
    """`{split}_nll` and `{split}_elbo` of each split with `counts[split]` importance samples."""
    out = {}
    for split, count in counts.items():
        with _task(reporter, f"{split} NLL K={count}", "samples") as progress:
            result = evaluate_nll(model, data[split], log_z, num_samples=count,
                                  batch_size=batch_size, sample_chunk=sample_chunk,
                                  generator=generator, progress=progress)
        out[f"{split}_nll"] = result.nll
        out[f"{split}_elbo"] = result.elbo
    return out


def _task(reporter: Reporter | None, description: str, unit: str):
    return NULL if reporter is None else reporter.task(description, unit=unit)
