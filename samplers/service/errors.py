"""Typed errors of the sampling service, as the trainer's side raises them.

A refused request (wrong shapes, NaN parameters, an unknown session or service, bad options) is
the caller's input error: a `SamplerOptionError`, so the CLI reports it in one line with exit
status 2, and the service keeps serving everyone else. A service that died, stopped answering
or failed at run time is a `SamplerFailure` (a RuntimeError), which the training loop turns into
exit status 1 and the path of the last good checkpoint. Every message is one line.
"""

from __future__ import annotations

from samplers.base import SamplerFailure, SamplerOptionError

INSTALL_HINT = "pip install 'dvae-q[service]'"


class BadRequest(SamplerOptionError):
    """The service refused this request; other clients are unaffected."""


class UnknownSession(BadRequest):
    """The session does not exist (never opened, or dropped after its timeout)."""


class UnknownService(BadRequest):
    """No service of that name is running in the Ray cluster."""


class ServiceDependencyMissing(SamplerOptionError):
    """Ray, the optional dependency of the service, is not installed."""


class ServiceUnavailable(SamplerFailure):
    """The service died, was stopped, or did not answer in time."""


class ServiceFailure(SamplerFailure):
    """The service's sampler failed on this request at run time."""


# reply kinds the service sends instead of raising across the wire
REPLY_ERRORS = {
    "bad_request": BadRequest,
    "unknown_session": UnknownSession,
    "failure": ServiceFailure,
}


def one_line(exc: BaseException | str) -> str:
    """The first line of an error message, so that CLI output stays one line."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def require_ray():
    """The `ray` module, or a one-line error saying what to install."""
    try:
        import ray
    except ImportError:
        raise ServiceDependencyMissing(
            f"the sampling service needs Ray, which is not installed: {INSTALL_HINT}"
        ) from None
    return ray
