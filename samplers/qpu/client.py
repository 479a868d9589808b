"""The cloud side: the child sampler (a lazily built `DWaveSampler` or an injected one), API-token
redaction, and which cloud errors are worth retrying.

The D-Wave client is created on the first call that needs it, never at import or construction, so
that configs can be validated and runs resumed on machines without a token. The token is resolved
by dwave.cloud (DWAVE_API_TOKEN or the dwave config file); this module only ever reads it to
remove it from messages.
"""

from __future__ import annotations

import inspect
import os

from samplers.base import SamplerOptionError, import_object
from samplers.qpu.errors import QPUConfigError


def _secrets() -> list[str]:
    """Token values that must never be shown: the environment's and the dwave config file's."""
    found = [os.environ.get("DWAVE_API_TOKEN") or ""]
    try:
        from dwave.cloud.config import load_config

        found.append(str(load_config().get("token") or ""))
    except Exception:  # an unreadable config holds no token we could leak
        pass
    return [s for s in found if len(s) >= 4]


def redact(text: str) -> str:
    """`text` with every known API token replaced by '***'."""
    for secret in _secrets():
        text = text.replace(secret, "***")
    return text


def transient(exc: BaseException) -> bool:
    """Network hiccups, timeouts and server-side 5xx errors are worth retrying; others are not."""
    import dwave.cloud.api.exceptions as api_exc
    import dwave.cloud.exceptions as cloud_exc

    kinds = (cloud_exc.RequestTimeout, cloud_exc.PollingTimeout, cloud_exc.SolverOfflineError,
             cloud_exc.ProblemUploadError, api_exc.RequestTimeout, api_exc.InternalServerError,
             ConnectionError, TimeoutError)
    try:
        import requests

        kinds = kinds + (requests.exceptions.ConnectionError, requests.exceptions.Timeout)
    except ImportError:
        pass
    return isinstance(exc, kinds)


def from_cloud(exc: BaseException) -> bool:
    """Whether `exc` comes from the cloud stack (wrapped as QPUError) rather than being a bug."""
    module = type(exc).__module__ or ""
    return module.startswith(("dwave.cloud", "requests", "urllib3")) or isinstance(exc, OSError)


def resolve_factory(spec: str):
    """The callable named by 'module:callable' (the `child_sampler` option as a string)."""
    what = "sampler 'qpu' option 'child_sampler'"
    if ":" not in spec:
        raise SamplerOptionError(f"{what}: not an import path 'module:callable'")
    factory = import_object(spec, what)
    if not callable(factory):
        raise SamplerOptionError(f"sampler 'qpu' option 'child_sampler': '{spec}' is not callable")
    return factory


def connect(client_config: dict, solver):
    """A `DWaveSampler` for `solver` (name or feature filter) with the client settings given."""
    from dwave.cloud.exceptions import SolverNotFoundError
    from dwave.system import DWaveSampler  # looked up per call, so tests can replace it

    kwargs = dict(client_config)
    if solver is not None:
        kwargs["solver"] = solver
    try:
        return DWaveSampler(**kwargs)
    except SolverNotFoundError:
        raise QPUConfigError(
            f"sampler 'qpu': no available solver matches {solver!r}; check the "
            "topology's qpu.solver or the 'solver' option"
        ) from None
    except ValueError as exc:
        if "token" in str(exc).lower():
            raise QPUConfigError(NO_TOKEN) from None
        raise QPUConfigError(f"sampler 'qpu': cannot connect: {redact(str(exc))}") from None


NO_TOKEN = ("sampler 'qpu': no D-Wave API token; set DWAVE_API_TOKEN or create a config file "
            "with `dwave config create`")


def check_token(client_config: dict) -> None:
    """QPUConfigError unless the client's configuration, resolved locally (environment and
    config file; no network), has a token."""
    from dwave.cloud.config import load_config

    try:
        found = load_config(**{k: v for k, v in client_config.items()
                               if k in ("config_file", "profile")})
    except Exception as exc:  # an unreadable dwave config file
        raise QPUConfigError(f"sampler 'qpu': cannot read the D-Wave client configuration "
                             f"({type(exc).__name__})") from None
    if not found.get("token"):
        raise QPUConfigError(NO_TOKEN)


def from_factory(factory, kwargs: dict, topology):
    """The child a 'module:callable' factory builds; a factory that takes a `topology` (such as
    samplers.testing:thermal_mock) gets the sampler's own unless the kwargs name one."""
    kwargs = dict(kwargs)
    signature = inspect.signature(factory)
    if "topology" in signature.parameters:
        kwargs.setdefault("topology", topology)
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        # a config's child_kwargs that the factory does not take is bad input, not a bug; the
        # message is the binding's own ("unexpected keyword argument 'x'"), never a value
        raise QPUConfigError(f"sampler 'qpu' option 'child_kwargs': {exc}") from None
    return factory(**kwargs)


def check_child(child, topology) -> None:
    """A structured dimod sampler whose hardware graph is `topology`'s family and shape."""
    for attr in ("nodelist", "edgelist", "properties", "sample"):
        if not hasattr(child, attr):
            raise QPUConfigError(
                f"sampler 'qpu': child sampler {type(child).__name__} is not a structured "
                f"dimod sampler (no '{attr}')"
            )
    found = child.properties.get("topology")
    if found is not None and (found.get("type") != topology.family
                              or list(found.get("shape", [])) != list(topology.shape)):
        raise QPUConfigError(
            f"sampler 'qpu': solver topology {found.get('type')}{list(found.get('shape', []))} "
            f"does not match topology '{topology.name}' "
            f"({topology.family}{list(topology.shape)})"
        )
