"""`dvae-q serve` and `dvae-q service list|status|stop`: start and watch sampling services.

`serve` starts a named, detached Ray actor that owns one sampler and returns once it answers;
trainers then use `--sampler remote --set sampler_options.remote.service=NAME`. Without
`--address` it joins the Ray instance running on this machine, or starts one (`ray start
--head`, which outlives this command; `ray stop` ends it). Handlers return exit codes; a bad
flag or an unknown service raises an input error (exit 2), an unreachable service RunFailure
(exit 1).
"""

from __future__ import annotations

import time

from dvae_q.errors import BadInput, RunFailure

SET_PREFIX = "sampler_options."


def parse_sets(items: list[str] | None, sampler: str) -> dict:
    """`--set sampler_options.NAME.KEY=VALUE` (or `KEY=VALUE`) as the served sampler's options;
    values are YAML, as in `dvae-q train --set`."""
    from dvae_q.training.config import parse_override
    from dvae_q.training.secrets import dwave_token, refuse_secrets

    options = {}
    for item in items or []:
        key, value = parse_override(item)  # strict YAML; the value is never echoed
        given = key
        if key.startswith(SET_PREFIX):
            name, _, key = key[len(SET_PREFIX):].partition(".")
            if name != sampler:
                raise BadInput(f"--set {given}: this service runs sampler '{sampler}', "
                               f"not '{name}'")
        if not key:
            if not isinstance(value, dict):
                raise BadInput(f"--set {given}: expected a mapping of options")
            options.update(value)
        else:
            options[key] = value
    # the options are shown to every session of the service: never a credential
    refuse_secrets(options, f"{SET_PREFIX}{sampler}", dwave_token())
    return options


def parse_resources(items: list[str] | None) -> dict:
    """`--resource NAME=AMOUNT`: custom Ray resources the service needs (a node label)."""
    resources = {}
    for item in items or []:
        name, sep, amount = item.partition("=")
        try:
            value = float(amount) if sep else float("nan")
        except ValueError:
            value = float("nan")
        if not name.strip() or not value > 0 or value == float("inf"):
            raise BadInput(f"--resource {item}: expected NAME=AMOUNT with AMOUNT > 0")
        if name in ("CPU", "GPU", "memory", "object_store_memory"):
            raise BadInput(f"--resource {name}: use --num-cpus / --num-gpus for Ray's own "
                           "resources")
        resources[name.strip()] = value
    return resources


def _served_options(args) -> dict:
    """The served sampler's options, validated by building one instance here first."""
    import samplers

    if args.sampler == "remote":
        raise BadInput("a service serves a local sampler (gibbs, pa, neal, exact, dimod, qpu), "
                       "not 'remote'")
    options = parse_sets(args.set, args.sampler)
    if args.num_gpus > 0 and "device" in samplers.declared_options(args.sampler):
        options.setdefault("device", "cuda")  # Ray shows the actor only its own GPUs
    run = {"topology": args.topology} if args.topology else {}
    samplers.get(args.sampler, run=run, **dict(options))
    return options


def _service_modules():
    from samplers.service.errors import require_ray

    require_ray()
    from samplers.service import actor, head

    return actor, head


def cmd_serve(args) -> int:
    from samplers.service.core import ServiceSpec
    from samplers.service.errors import ServiceUnavailable

    if args.num_gpus < 0 or args.num_cpus < 0 or args.max_restarts < 0 or args.pack_window_ms < 0:
        raise BadInput("--num-gpus, --num-cpus, --max-restarts and --pack-window-ms are >= 0")
    options = _served_options(args)
    resources = parse_resources(args.resource)
    actor, head = _service_modules()
    spec = ServiceSpec(name=args.name, sampler=args.sampler, options=options,
                       topology=args.topology, packing=not args.no_packing,
                       pack_window_s=args.pack_window_ms / 1000, max_restarts=args.max_restarts,
                       num_cpus=args.num_cpus, num_gpus=args.num_gpus, resources=resources)
    try:
        head.connect(args.address, start=True, network=args.network)
        actor.start(spec)
        address = head.cluster_address()
    except ServiceUnavailable as exc:
        raise RunFailure(str(exc)) from None
    packing = "packing on" if spec.packing else "packing off"
    where = f" --set sampler_options.remote.address={args.address}" if args.address else ""
    print(f"service '{spec.name}' is up: sampler {spec.sampler} ({packing}), Ray cluster at "
          f"{address}, namespace dvae-q")
    print(f"point a trainer at it: dvae-q train --config CONFIG --sampler remote "
          f"--set sampler_options.remote.service={spec.name}{where}")
    print(f"watch it: dvae-q service status {spec.name}; stop it: dvae-q service stop "
          f"{spec.name}")
    return 0


def _status(actor, name: str) -> dict:
    from samplers.service.errors import ServiceUnavailable

    try:
        return actor.call(actor.find(name), "status")
    except ServiceUnavailable as exc:
        raise RunFailure(f"service '{name}': {exc}") from None


def _connect(args):
    from samplers.service.errors import ServiceUnavailable

    actor, head = _service_modules()
    try:
        head.connect(args.address)
    except ServiceUnavailable as exc:
        raise RunFailure(str(exc)) from None
    return actor


def _uptime(started: float) -> str:
    seconds = int(time.time() - started)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def cmd_list(args) -> int:
    actor = _connect(args)
    names = actor.names()
    if not names:
        print("no dvae-q sampling services are running in this Ray cluster")
    for name in names:
        s = _status(actor, name)
        d = s["service"]
        print(f"{name}: {d['sampler']} ({'packing on' if d['packing'] else 'packing off'}), "
              f"{len(s['sessions'])} sessions, {s['total']['calls']:,} calls, "
              f"up {_uptime(d['started'])}")
    return 0


def _placement(description: dict, status: dict) -> str:
    """Where it runs: its Ray node (it can change after a restart) and its custom resources."""
    wanted = ", ".join(f"{k}={v:g}" for k, v in (description.get("resources") or {}).items())
    node = f", node {status['node'][:12]}" if status.get("node") else ""
    return node + (f", resources {wanted}" if wanted else "")


def cmd_status(args) -> int:
    from samplers.service.accounting import format_table

    actor = _connect(args)
    s = _status(actor, args.service)
    d, c = s["service"], s["counters"]
    packing = f"packing on, window {d['pack_window_s'] * 1000:g} ms" if d["packing"] else "packing off"
    print(f"service '{d['name']}': sampler {d['sampler']} ({packing}), cpus {d['num_cpus']:g}, "
          f"gpus {d['num_gpus']:g}, max_restarts {d['max_restarts']}, up {_uptime(d['started'])}"
          f"{_placement(d, s)}")
    print(f"sessions: {len(s['sessions'])} open, {c['sessions_opened']} opened, "
          f"{c['sessions_dropped']} dropped after their timeout; device calls: "
          f"{c['device_calls']:,} ({c['packed_calls']:,} packed, carrying "
          f"{c['packed_requests']:,} requests); refused: {c['refused']:,}; queued: {s['queued']}")
    for solver, beta in s["beta_eff"].items():
        print(f"beta_eff of solver {solver}: {beta:.4g} (shared by its sessions)")
    total = {"session": "all", "label": "", **s["total"], "idle_s": None}
    print(format_table([*s["sessions"], total]))
    return 0


def cmd_stop(args) -> int:
    actor = _connect(args)
    handle = actor.find(args.service)
    try:
        sessions = len(actor.call(handle, "status", timeout=5)["sessions"])
    except Exception:  # a wedged service is stopped all the same
        sessions = None
    from samplers.service.errors import ServiceUnavailable

    try:
        actor.stop(args.service)
    except ServiceUnavailable as exc:
        raise RunFailure(str(exc)) from None
    ended = f" ({sessions} open sessions ended)" if sessions is not None else ""
    print(f"stopped service '{args.service}'{ended}")
    return 0


def add_commands(subparsers) -> None:
    """`serve` and `service` on the CLI's subcommand table."""
    serve = subparsers.add_parser(
        "serve", help="start a named sampling service (a Ray actor)",
        description="Start a named, detached Ray actor that owns a sampler and serves the "
                    "prior samples of many trainers (`--sampler remote`).")
    serve.add_argument("--sampler", required=True, help="sampler it serves: gibbs, pa, neal, "
                       "exact, dimod, qpu")
    serve.add_argument("--topology", help="hardware topology name or YAML file")
    serve.add_argument("--set", action="append", metavar="sampler_options.NAME.KEY=VALUE",
                       help="an option of the served sampler (YAML value)")
    serve.add_argument("--name", required=True, help="the service's name")
    serve.add_argument("--address", help="Ray cluster: auto (default: this machine's, started "
                       "if needed), host:port or ray://host:port")
    serve.add_argument("--network", action="store_true",
                       help="a head it starts listens on this machine's network address too "
                            "(for trainers and nodes on other machines, with the token); "
                            "default: 127.0.0.1 only")
    serve.add_argument("--num-gpus", type=float, default=0, help="GPUs reserved for it")
    serve.add_argument("--num-cpus", type=float, default=1, help="CPUs reserved for it "
                       "(also its torch threads)")
    serve.add_argument("--resource", action="append", metavar="NAME=AMOUNT",
                       help="a custom Ray resource it needs: it runs, and is restarted, only "
                            "on nodes started with it (ray start --resources)")
    serve.add_argument("--no-packing", action="store_true", help="run every request alone")
    serve.add_argument("--pack-window-ms", type=float, default=2.0,
                       help="how long a request waits for others to pack with")
    serve.add_argument("--max-restarts", type=int, default=0,
                       help="Ray restarts a dead service this many times; trainers reconnect")
    serve.set_defaults(func=cmd_serve)

    service = subparsers.add_parser(
        "service", help="list, inspect or stop sampling services",
        description="List, inspect or stop the sampling services on a Ray cluster.")
    sub = service.add_subparsers(dest="service_command", required=True,
                                 parser_class=type(service))
    for name, func, helptext in (("list", cmd_list, "the running services"),
                                 ("status", cmd_status, "sessions and accounting, as a table"),
                                 ("stop", cmd_stop, "stop a service")):
        cmd = sub.add_parser(name, help=helptext, description=helptext[0].upper() + helptext[1:] + ".")
        if name != "list":
            cmd.add_argument("service", help="the service's name")
        cmd.add_argument("--address", help="Ray cluster (default: this machine's)")
        cmd.set_defaults(func=func)
