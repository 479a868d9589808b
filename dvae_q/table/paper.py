"""The published numbers that `dvae-q reproduce` measures against, as data.

Source: the DVAE# poster (Vahdat, Andriyash, Macready, "DVAE#: Discrete Variational
Autoencoders with Relaxed Boltzmann Priors", NeurIPS 2018). Test negative log-likelihood in nats
of the discrete model (binary z from the RBM into the decoder), lower is better, estimated with
4000 importance samples and an AIS estimate of log Z. The poster gives no error bars.

Columns A–H are the eight methods of `dvae_q.model.methods` in the poster's order. The poster does not
say which encoder/decoder structure its rows use; we treat them as the bar for the deepest one,
`4-layer-nonlin` (`POSTER_STRUCTURE`). Its OMNIGLOT is IWAE's `chardata.mat` split; a run on
OMNIGLOT-28 (the substitute built from raw Omniglot) is close to it, not the same data.
"""

from __future__ import annotations

SOURCE = ("DVAE# poster (Vahdat, Andriyash, Macready, NeurIPS 2018): test NLL in nats of the "
          "discrete model, 4000 importance samples, AIS log Z")
POSTER_STRUCTURE = "4-layer-nonlin"
POSTER_KS = (1, 5, 25)
# the poster's columns, in its order
COLUMNS = ("dvae_spike_exp", "dvaepp_exp", "dvaepp_power", "dvaes_gi", "dvaes_gauss",
           "dvaes_exp", "dvaes_unexp", "dvaes_power")
LETTERS = dict(zip(COLUMNS, "ABCDEFGH"))

_ROWS = {
    ("binarized_mnist", 1): (83.97, 84.15, 83.62, 84.30, 84.35, 83.96, 83.54, 83.37),
    ("binarized_mnist", 5): (83.74, 84.85, 83.57, 83.68, 83.61, 83.70, 83.33, 82.99),
    ("binarized_mnist", 25): (84.19, 85.49, 83.58, 83.39, 83.26, 83.76, 83.30, 82.85),
    ("omniglot", 1): (103.10, 101.34, 100.42, 102.07, 102.84, 100.38, 99.84, 99.75),
    ("omniglot", 5): (100.88, 100.55, 99.51, 100.85, 101.43, 99.93, 99.57, 99.24),
    ("omniglot", 25): (100.55, 100.31, 99.49, 100.20, 100.45, 100.10, 99.59, 98.93),
}

# (dataset, method, K) -> published test NLL
TABLE: dict[tuple[str, str, int], float] = {
    (dataset, method, k): value
    for (dataset, k), row in _ROWS.items()
    for method, value in zip(COLUMNS, row)
}


def published(dataset: str, method: str, k: int) -> float | None:
    """The poster's test NLL for this dataset, method and K, or None if it has no such cell."""
    return TABLE.get((dataset, method, k))


def row(dataset: str, k: int) -> dict[str, float]:
    """{method: published NLL} of one dataset and K (empty if the poster has no such row)."""
    return {m: v for (d, m, kk), v in TABLE.items() if d == dataset and kk == k}


def poster_cells() -> list[tuple[str, str, str, int]]:
    """The poster's 48 cells as (dataset, structure, method, K), in the poster's order."""
    return [(dataset, POSTER_STRUCTURE, method, k)
            for dataset in ("binarized_mnist", "omniglot") for method in COLUMNS for k in POSTER_KS]
