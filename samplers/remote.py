"""`remote`: the prior is sampled by a running sampling service (`dvae-q serve`), in a session
of its own; the trainer sees an ordinary `Sampler`.

    dvae-q serve --sampler gibbs --name pcd
    dvae-q train --config smoke --sampler remote --set sampler_options.remote.service=pcd

Each `RemoteSampler` is one session in the service: its own sampler instance there (chains,
generator, β_eff scaling), built from the service's sampler and options, overridden by
`options`, with this run's seed and topology. `preflight()` checks, before training writes
anything, that the service exists and accepts those options. The model crosses the wire sparsely (see
`samplers.service.wire`); `info` comes back with the samples and carries the service's
accounting for the call (`service_*` keys). `state_dict()` reads the session's sampler state
from the service and `load_state_dict()` restores it there (when the session opens, so a
resumed trainer recreates its session from the checkpoint even on a restarted service), so a
checkpoint resumes exactly.

Errors: a refused request is a `BadRequest` (a SamplerOptionError: exit status 2 when the
preflight refuses, before anything is written); a dead or unreachable service is a
`ServiceUnavailable` (a RuntimeError). During training the loop turns either into exit status 1
and the last good checkpoint.
"""

from __future__ import annotations

import os
import socket

from samplers.base import SEED, Option, Sampler, SamplerOptionError, non_negative, positive
from samplers.model import BipartiteModel
from samplers.service.errors import require_ray


def _name(value) -> bool:
    return bool(value.strip())


class RemoteSampler(Sampler):
    name = "remote"
    parameters = {
        "service": Option(None, (str,), _name, "name of a running service (dvae-q serve --name)",
                          nullable=True),
        "address": Option(None, (str,), None, "Ray address: null = this machine's cluster, or "
                          "host:port, or ray://host:port", nullable=True),
        "options": Option(None, (dict,), None, "this session's overrides of the service "
                          "sampler's options", nullable=True),
        "session_timeout_s": Option(120.0, (int, float), positive, "the service drops a session "
                                    "not heard from for this long (heartbeats keep it), > 0"),
        "reconnect_timeout_s": Option(120.0, (int, float), non_negative, "wait this long for a "
                                      "service restarted by Ray (--max-restarts), >= 0"),
        "request_timeout_s": Option(600.0, (int, float), positive, "longest wait for one call"),
        "label": Option(None, (str,), None, "name shown by `service status`; null: host:pid",
                        nullable=True),
        "seed": SEED,
        "topology": Option(None, (str,), None, "the run's topology, checked against the "
                           "service's", nullable=True, run_key="topology"),
    }

    def __init__(self, **options):
        super().__init__(**options)
        if self.options["service"] is None:
            raise SamplerOptionError("sampler 'remote' needs option 'service' (the --name of a "
                                     "running `dvae-q serve`)")
        require_ray()  # one line saying what to install, before anything is written
        self._client = None
        self._pending: dict | None = None  # a state loaded before the session was opened

    def _session(self):
        if self._client is None:
            from samplers.service.client import ServiceClient

            o = self.options
            self._client = ServiceClient(
                o["service"], address=o["address"], seed=o["seed"], topology=o["topology"],
                options=o["options"], timeout_s=o["session_timeout_s"],
                reconnect_timeout_s=o["reconnect_timeout_s"],
                request_timeout_s=o["request_timeout_s"],
                label=o["label"] or f"{socket.gethostname()}:{os.getpid()}")
        return self._client

    def preflight(self) -> None:
        """Before a run directory exists: the service is there and accepts this session's
        options and topology (a refusal is one line, exit status 2). Reaches the service but
        opens no session."""
        self._session().check()

    def _sample(self, model: BipartiteModel, num_samples: int):
        return self._session().draw(model, num_samples)

    def state_dict(self) -> dict:
        """The session's sampler state, read from the service ({} before the first call)."""
        if self._client is None or self._client.session is None:
            return dict(self._pending or {})
        state = self._client.get_state()
        return {"remote": 1, "sampler": state["sampler"], "state": state["state"]}

    def load_state_dict(self, state: dict) -> None:
        """Restore the session's sampler in the service; also takes a local sampler's state
        (a run switching from `--sampler gibbs` to a `gibbs` service continues its chains)."""
        if not state:
            self._pending = {}
            if self._client is not None and self._client.session is not None:
                self._client.set_state(None, {})
            elif self._client is not None:
                self._client.saved(None)
            return
        sampler, inner = (state.get("sampler"), state["state"]) if "remote" in state else (None, state)
        self._pending = {"remote": 1, "sampler": sampler, "state": inner}
        # sent when the session opens (a resumed run reaches the service at its first draw)
        self._session().set_state(sampler, inner)

    def close(self) -> None:
        """End the session now (otherwise the service drops it after `session_timeout_s`)."""
        if self._client is not None:
            self._client.close()
