"""Samplers for bipartite Boltzmann machines behind one protocol (see `samplers.base`).

    import samplers
    sampler = samplers.get("gibbs", num_chains=1000, sweeps=40, seed=0)
    z = sampler.sample(samplers.BipartiteModel(a_left, a_right, W), 1000)

`samplers.as_dimod(name, **options)` wraps a local backend as a `dimod.Sampler` (imported on
first use, so `import samplers` stays light). This package does not import dvae_q.
"""

from samplers.base import (
    Option,
    Sampler,
    SampleResult,
    SamplerFailure,
    SamplerOptionError,
    Submitting,
    TemperatureScaled,
    available,
    check_options,
    declared_options,
    get,
    sampler_class,
)
from samplers.model import BipartiteModel


def as_dimod(name: str, **options):
    """The local backend `name` (gibbs, pa, neal, exact, dimod) as a `dimod.Sampler` of bipartite
    BQMs: `sample(bqm, num_reads=..., seed=...)` returns a SampleSet following exp(−E_bqm) in
    the BQM's vartype and labels. See `samplers.ocean`."""
    from samplers.ocean import as_dimod as make

    return make(name, **options)


__all__ = [
    "BipartiteModel",
    "Option",
    "SampleResult",
    "Sampler",
    "SamplerFailure",
    "SamplerOptionError",
    "Submitting",
    "TemperatureScaled",
    "as_dimod",
    "available",
    "check_options",
    "declared_options",
    "get",
    "sampler_class",
]
