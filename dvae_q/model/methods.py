"""The eight methods of the DVAE# poster's table and the default β of each."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    """How one column of the poster table is trained."""

    name: str
    relaxation: str  # a dvae_q.model.relaxations name ("gi" is the Gaussian integral)
    objective: str  # "elbo" (K>1: average of K single-sample ELBOs) or "iw" (K>1: IW bound)
    kl: str  # key of dvae_q.model.objectives.OBJECTIVES: "dvae" (Rolfe / analytic KL), "dvaepp", "sampled"
    column: str  # column letter of the DVAE# poster's table
    description: str


METHODS = {
    m.name: m
    for m in (
        Method("dvae_spike_exp", "spike_exp", "elbo", "dvae", "A", "DVAE, spike-and-exponential"),
        Method("dvaepp_exp", "exp", "elbo", "dvaepp", "B", "DVAE++, mixture of exponentials"),
        Method("dvaepp_power", "power", "elbo", "dvaepp", "C", "DVAE++, power-function"),
        Method("dvaes_gi", "gi", "iw", "sampled", "D", "DVAE#, Gaussian integral"),
        Method("dvaes_gauss", "gauss", "iw", "sampled", "E", "DVAE#, Gaussian"),
        Method("dvaes_exp", "exp", "iw", "sampled", "F", "DVAE#, exponential"),
        Method("dvaes_unexp", "unif_exp", "iw", "sampled", "G", "DVAE#, uniform + exponential"),
        Method("dvaes_power", "power", "iw", "sampled", "H", "DVAE#, power-function"),
    )
}

_ORDER = ("dvae_spike_exp", "dvaepp_exp", "dvaepp_power", "dvaes_gi", "dvaes_gauss", "dvaes_exp",
          "dvaes_unexp", "dvaes_power")
# the published β per (dataset, structures), columns in _ORDER; for GI β is the floor of λ
_BETA_ROWS = {
    ("binarized_mnist", ("1-layer-lin",)): (5, 12, 40, 40, 40, 12, 40, 40),
    ("binarized_mnist", ("1-layer-nonlin",)): (5, 14, 30, 30, 30, 12, 30, 40),
    ("binarized_mnist", ("2-layer-nonlin", "4-layer-nonlin")): (4, 10, 30, 30, 25, 10, 16, 30),
    ("omniglot", ("1-layer-lin",)): (4, 14, 40, 40, 40, 12, 40, 40),
    ("omniglot", ("1-layer-nonlin",)): (4, 12, 40, 30, 25, 10, 16, 30),
    ("omniglot", ("2-layer-nonlin", "4-layer-nonlin")): (4, 10, 30, 25, 25, 8, 16, 20),
}


def get_method(name: str) -> Method:
    """The registered method `name`; ValueError naming the known ones otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}'; known: {', '.join(METHODS)}")
    return METHODS[name]


def default_beta(dataset: str, structure: str, method: str) -> float:
    """The published β for this dataset ('binarized_mnist' or 'omniglot'), structure
    and method. The table is keyed by column, so a method's β never depends on K."""
    get_method(method)
    for (ds, structures), row in _BETA_ROWS.items():
        if ds == dataset and structure in structures:
            return float(row[_ORDER.index(method)])
    datasets = sorted({ds for ds, _ in _BETA_ROWS})
    structures = sorted({s for _, group in _BETA_ROWS for s in group})
    raise ValueError(f"no default beta for dataset '{dataset}' and structure '{structure}'; "
                     f"known datasets: {', '.join(datasets)}; structures: {', '.join(structures)}")
