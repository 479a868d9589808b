"""dvae-q: discrete VAEs with relaxed Boltzmann priors (DVAE, DVAE++, DVAE#)."""

__version__ = "0.1.0"
