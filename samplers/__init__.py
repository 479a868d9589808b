"""Samplers for bipartite Boltzmann machines behind one protocol (see `samplers.base`)."""
