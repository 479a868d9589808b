"""Credentials never enter a config: a config is copied into every run directory and onto every
node of a cluster, so keys that name a credential, and any value holding the D-Wave API token
the client would use, are refused before a config is written anywhere."""

from __future__ import annotations

import os
import re
from typing import Any

from dvae_q.errors import BadInput

CREDENTIAL_KEY = re.compile(r"(token|secret|password|passwd|credential|api[_-]?key|auth)", re.I)


def dwave_token() -> str | None:
    """The API token the D-Wave client would use (environment or its config file), if any.
    Read without network access and never shown; used only to refuse configs that contain it."""
    token = os.environ.get("DWAVE_API_TOKEN")
    if token:
        return token
    try:
        from dwave.cloud.config import load_config

        return load_config().get("token") or None
    except Exception:  # no or unreadable dwave config: there is no token to protect
        return None


def refuse_secrets(value: Any, path: str, token: str | None) -> None:
    """BadInput if any key under `value` names a credential or any string equals the token."""
    if isinstance(value, dict):
        for key, item in value.items():
            name = f"{path}.{key}" if path else str(key)
            if CREDENTIAL_KEY.search(str(key)):
                raise BadInput(f"config key '{name}': credentials never go in a config (it is "
                               "copied to run directories); set DWAVE_API_TOKEN or use the dwave "
                               "config file")
            refuse_secrets(item, name, token)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            refuse_secrets(item, f"{path}[{i}]", token)
    elif isinstance(value, str) and token and len(token) >= 4 and token in value:
        raise BadInput(f"config key '{path}': holds the D-Wave API token; a config is copied to "
                       "run directories, so the token is refused here")


def refuse_token(cfg) -> None:
    """BadInput if any value of the Config `cfg` holds the token the D-Wave client would use
    (from the environment or the dwave config file). Called before a config is written."""
    refuse_secrets(cfg.to_dict(), "", dwave_token())
