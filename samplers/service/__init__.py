"""A sampling service: one long-lived process owns a sampler and serves the prior sampling of
many trainers, each in its own session (see docs/service.md for the design).

    wire.py          the versioned message format between trainers and the service (plain arrays)
    errors.py        typed errors: a refused request (exit 2) or an unavailable service (exit 1)
    accounting.py    usage counters (calls, samples, QPU time, queue wait, sampling time)
    session.py       one trainer's session: its own sampler instance and its usage
    packed_gibbs.py  block Gibbs over several sessions' chains in one batched kernel
    packing.py       grouping of concurrent requests into packed calls
    core.py          the service itself in plain asyncio: sessions, queue, packing, accounting
    actor.py         the named, detached Ray actor around the core; start, find, list, stop
    client.py        the trainer's side of a session, behind the `remote` sampler

Ray is an optional dependency (`pip install 'dvae-q[service]'`): only actor.py and client.py
import it, so everything else (and its tests) runs without it.
"""

# Ray namespace of every dvae-q service: names are unique within it, and `service list` shows it
NAMESPACE = "dvae-q"
