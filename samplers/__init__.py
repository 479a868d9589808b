"""Samplers for bipartite Boltzmann machines behind one protocol (see `samplers.base`).

    import samplers
    sampler = samplers.get("gibbs", num_chains=1000, sweeps=40, seed=0)
    z = sampler.sample(samplers.BipartiteModel(a_left, a_right, W), 1000)

This package does not import dvae_q.
"""

from samplers.base import (
    Option,
    SampleResult,
    Sampler,
    SamplerFailure,
    SamplerOptionError,
    TemperatureScaled,
    available,
    check_options,
    declared_options,
    get,
    sampler_class,
)
from samplers.model import BipartiteModel

__all__ = [
    "BipartiteModel",
    "Option",
    "SampleResult",
    "Sampler",
    "SamplerFailure",
    "SamplerOptionError",
    "TemperatureScaled",
    "available",
    "check_options",
    "declared_options",
    "get",
    "sampler_class",
]
