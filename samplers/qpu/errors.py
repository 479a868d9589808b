"""Typed errors of the qpu backend. Messages are one line and never carry an API token."""

from __future__ import annotations

from samplers.base import SamplerFailure, SamplerOptionError


class QPUError(SamplerFailure):
    """A permanent QPU/cloud failure, or retries exhausted (message free of secrets)."""


class QPURangeError(QPUError):
    """Programmed h or J outside the solver's range under `range_policy: error`."""


class QPUConfigError(SamplerOptionError):
    """Missing token, unknown solver, or a solver/model that does not fit the topology."""


class FluxBiasShimError(QPUError):
    """The flux-bias shim diverged (an offset non-finite or beyond `flux_bias_limit`)."""


class HamiltonianFitError(QPUError):
    """The device-Hamiltonian fit is ill-conditioned (too few samples for its parameters)."""
