"""`QPUSampler`: the `qpu` backend, a D-Wave QPU (or any structured dimod sampler) as a Boltzmann
sampler of a `BipartiteModel`.

Layers, innermost first: the child (`client`), `RangeGuardComposite` (`range_guard`), in
embedded mode `FixedEmbeddingComposite` with the topology's cached embedding (`plan`), and with
`spin_reversal_transforms` a `SpinReversalTransformComposite` per call (`gauges`). Each call
programs `tiles` disjoint copies of the model (`tiling`) and returns raw reads
(`answer_mode='raw'`), one sample per copy per read; more samples than one call gives take
several calls, scheduled by `timing`, submitted together and retried by `calls`, collected by
`draws`. `draw_tiled` shares the copies of one call out between several models (`packing`).
This module holds the options, the child and the sampler's state: the call counter, the problem
last programmed, β_eff and its history, and the generator, changed only when a draw completes,
in submission order. A permanent failure raises `QPUError` and leaves that state as before the
draw.
"""

from __future__ import annotations

import math
import time
from collections import deque

import numpy as np
import torch

import topologies
from samplers.base import (
    MEAN_ENERGY_SAMPLES,
    SEED,
    Option,
    Sampler,
    SampleResult,
    SamplerOptionError,
    TemperatureScaled,
    check_options,
    check_request,
    non_negative,
    positive,
)
from samplers.model import BipartiteModel
from samplers.qpu import client, draws, gauges, packing, timing
from samplers.qpu import plan as plans
from samplers.qpu.calls import Flight, Retry
from samplers.qpu.range_guard import POLICIES, RangeGuardComposite

# Client settings a config may hold; whatever decides where the token is sent (endpoint,
# config file, proxy, headers) comes from the user's environment or dwave config file only.
CLIENT_KEYS = ("profile", "region", "request_timeout", "polling_timeout")
# Solver parameters this backend sets itself; anything else goes through `solver_parameters`.
QPU_PARAMETERS = ("annealing_time", "programming_thermalization", "readout_thermalization")
# Options a topology file's `qpu:` block may default (facts about a chip and its solver); code
# paths and client settings are left out, so a shared topology file never names code to import.
TOPOLOGY_DEFAULTS = ("solver", "num_reads", *QPU_PARAMETERS, "chain_strength",
                     "chain_break_method", "beta_eff")
CHAIN_BREAK_METHODS = ("majority_vote", "discard", "weighted_random")


def topology_defaults(topology: topologies.Topology) -> dict:
    """The topology file's `qpu:` block, validated with this sampler's own option rules."""
    block = dict(topology.qpu)
    where = f"topology '{topology.name}' ({topology.source or 'in memory'})"
    unknown = sorted(set(block) - set(TOPOLOGY_DEFAULTS))
    if unknown:
        raise SamplerOptionError(
            f"{where}: unknown qpu key '{unknown[0]}'; accepted: {', '.join(TOPOLOGY_DEFAULTS)}"
        )
    try:
        return check_options("qpu", block)
    except SamplerOptionError as exc:
        raise SamplerOptionError(f"{where}: qpu block: {exc}") from None


PARAMETERS = {
    "topology": Option(None, (str, topologies.Topology), None,
                       "topology name or YAML path (native or embedded)", nullable=True,
                       run_key="topology"),
    "child_sampler": Option(None, (str, object), None,
                            "structured dimod sampler, or 'module:callable' factory; "
                            "null: DWaveSampler", nullable=True),
    "child_kwargs": Option({}, (dict,), None, "keyword arguments of the child factory"),
    "solver": Option(None, (str, dict), None, "solver name or feature filter", nullable=True),
    "client_config": Option({}, (dict,), lambda v: set(v) <= {*CLIENT_KEYS, "token"},
                            "dwave.cloud options: " + ", ".join(CLIENT_KEYS) + "; the endpoint, "
                            "config file, proxy and headers come from the environment or your "
                            "dwave config file, so a shared config cannot redirect your token"),
    "beta_eff": Option(None, (int, float), positive, "initial β_eff > 0", nullable=True),
    "num_reads": Option(None, (int,), lambda v: 1 <= v <= timing.MAX_READS,
                        "reads per call, 1..10000", nullable=True),
    "annealing_time": Option(None, (int, float), positive, "µs > 0", nullable=True),
    "programming_thermalization": Option(None, (int, float), non_negative, "µs >= 0",
                                         nullable=True),
    "readout_thermalization": Option(None, (int, float), non_negative, "µs >= 0", nullable=True),
    "solver_parameters": Option({}, (dict,), None, "extra solver parameters per call"),
    "chain_strength": Option(None, (int, float), positive, "> 0; null: torque compensation",
                             nullable=True),
    "chain_break_method": Option(None, (str,), lambda v: v in CHAIN_BREAK_METHODS,
                                 "majority_vote, discard or weighted_random", nullable=True),
    "tiles": Option("auto", (str, int), lambda v: v == "auto" if isinstance(v, str) else v >= 1,
                    "'auto' (as many copies per call as fit) or a count >= 1"),
    "range_policy": Option("error", (str,), lambda v: v in POLICIES, "error or clip"),
    "recalibrate_every": Option(0, (int,), non_negative, "re-measure β_eff every N calls; 0: never"),
    "calibration_bootstrap": Option(50, (int,), non_negative, "bootstrap replicates"),
    "spin_reversal_transforms": Option(
        0, (int,), non_negative,
        "gauges per draw, >= 0 (0: off): every copy of every call gets its own random "
        "spin-reversal transform, so C calls of T copies average C·T at no cost; a draw with "
        "fewer than N copies in all takes ⌈N/T⌉ calls, each one more programming"),
    "max_in_flight": Option(4, (int,), positive, "QPU calls in flight at once, >= 1"),
    "max_retries": Option(3, (int,), non_negative, "retries of transient errors"),
    "retry_backoff_s": Option(1.0, (int, float), non_negative,
                              "first retry delay (s), doubled each retry"),
    "seed": SEED,
}


def _chain_break(name: str):
    from dwave.embedding import chain_breaks

    return getattr(chain_breaks, name)


class QPUSampler(Sampler, TemperatureScaled):
    """Samples p(z) ∝ exp(−β·E(z)) on a QPU by programming β·E/β_eff (see `plan`).

    β_eff starts at the `beta_eff` option (default: the topology file's `qpu.beta_eff`) and is
    re-measured by pseudo-likelihood against the problem actually programmed every
    `recalibrate_every` calls, or by `samplers.temperature.calibrate`.
    """

    name = "qpu"
    topology_defaults = staticmethod(topology_defaults)
    parameters = PARAMETERS

    def __init__(self, **options):
        super().__init__(**options)
        self.topology = self._load_topology()
        self._settle(topology_defaults(self.topology))
        spec = self.options["child_sampler"]
        self._factory = client.resolve_factory(spec) if isinstance(spec, str) else None
        if spec is not None and not isinstance(spec, str) and self.options["child_kwargs"]:
            raise SamplerOptionError("sampler 'qpu': child_kwargs only apply to a factory path")
        if self.options["spin_reversal_transforms"]:
            gauges.check_supported()
        self._retry = Retry(self.options["max_retries"], self.options["retry_backoff_s"])
        self._flight = Flight(self.options["max_in_flight"])
        self._queue: deque[draws.PendingDraw] = deque()
        self._resolving: draws.PendingDraw | None = None
        self._child = None
        self._guard = None
        self._plans: dict = {}
        self._candidates: dict = {}  # per native size: its placements, for calls of mixed sizes
        self._rng = np.random.default_rng(self.options["seed"])
        seed = self.options["seed"]  # without one, gauges are drawn once from OS entropy
        self._gauge_seed = int(np.random.default_rng().integers(2**62)) if seed is None else seed
        self.calls = 0
        self.beta_eff_history: list[float] = [self.beta_eff]
        self._last: tuple | None = None

    def _load_topology(self) -> topologies.Topology:
        if "token" in self.options["client_config"]:
            # refused without echoing the value: configs are written to run directories
            raise SamplerOptionError(
                "sampler 'qpu' option 'client_config': never put a token in a config; set "
                "DWAVE_API_TOKEN or use the dwave config file"
            )
        if self.options["topology"] is None:
            raise SamplerOptionError("sampler 'qpu' needs option 'topology' (a name or YAML path)")
        topo = topologies.load(self.options["topology"])
        if topo.mode == "dense":
            raise SamplerOptionError(
                f"sampler 'qpu': topology '{topo.name}' is dense; use a native or embedded topology"
            )
        return topo

    def _settle(self, defaults: dict) -> None:
        """Each option's value: the one given, else the topology file's default."""
        def pick(key):
            return self.options[key] if self.options[key] is not None else defaults.get(key)

        if pick("beta_eff") is None:
            raise SamplerOptionError(
                f"sampler 'qpu' needs option 'beta_eff' (topology '{self.topology.name}' has no "
                "qpu.beta_eff default)"
            )
        self.beta_eff = float(pick("beta_eff"))
        self.num_reads = pick("num_reads")
        self.solver = pick("solver")
        self.chain_strength = pick("chain_strength")
        self.chain_break_method = pick("chain_break_method") or "majority_vote"
        self._explicit = {k: self.options[k] for k in QPU_PARAMETERS if self.options[k] is not None}
        self._defaults = {k: defaults[k] for k in QPU_PARAMETERS if defaults.get(k) is not None}

    # ---- the child, lazily -----------------------------------------------------------------
    def preflight(self) -> None:
        """Without a child sampler the D-Wave client needs a token: fail now if there is none,
        so training never creates a run directory it cannot use. A child factory is local, so
        it is built now: arguments it refuses are bad input, found before anything is written."""
        if self.options["child_sampler"] is None and self._child is None:
            client.check_token(self.options["client_config"])
        elif self._factory is not None:
            self._ensure_child()

    def _ensure_child(self) -> None:
        if self._child is not None:
            return
        spec = self.options["child_sampler"]
        if spec is None:
            child = self._retry.run(lambda: client.connect(self.options["client_config"],
                                                            self.solver))[0]
        elif self._factory is not None:
            child = client.from_factory(self._factory, self.options["child_kwargs"], self.topology)
        else:
            child = spec
        client.check_child(child, self.topology)
        self._guard = RangeGuardComposite(child, self.options["range_policy"])
        self._child = child

    def close(self) -> None:
        """Release the child's resources (the cloud client's connections, for a real QPU)."""
        if self._guard is not None:
            self._guard.close()

    def _plan(self, model: BipartiteModel) -> plans.Plan:
        key = (model.num_left, model.num_right)
        if key not in self._plans:
            make = plans.native_plan if self.topology.mode == "native" else plans.embedded_plan
            self._plans[key] = make(self.topology, *key, self._guard, self.options["tiles"])
        return self._plans[key]

    def tile_qubits(self, model: BipartiteModel) -> list[list[int]]:
        """The qubits of each copy of `model` programmed per call (copy 0: the prior's own);
        native: one qubit per unit in unit order; embedded: the chains, unit after unit."""
        self._ensure_child()
        return [list(c) for c in self._plan(model).copies]

    def programmed_bqm(self, model: BipartiteModel):
        """The SPIN BQM of one copy of `model` as sent: the Ising form of β·E on the prior's own
        qubits (native) or units (embedded), times 1/β_eff, before range checks. Each call sends
        `tiles` relabelled copies of it."""
        self._ensure_child()
        plan = self._plan(model)
        h, quad = plans.ising(model, plan, self.beta_eff, self.topology.name)
        return plans.to_bqm(plan, h, quad, model.num_left, copies=1)

    # ---- calls -------------------------------------------------------------------------------
    def _solver_kwargs(self, reads: int) -> dict:
        accepted = set(getattr(self._child, "parameters", {}) or {})
        kwargs = {"num_reads": reads}
        for key, value in (("answer_mode", "raw"), ("auto_scale", False)):
            if key in accepted:
                kwargs[key] = value
        for key, value in self._defaults.items():
            if key in accepted:   # topology defaults apply where the child has the parameter
                kwargs[key] = value
        for key, value in {**self._explicit, **self.options["solver_parameters"]}.items():
            if key not in accepted:
                raise SamplerOptionError(f"sampler 'qpu': the child sampler has no parameter '{key}'")
            kwargs[key] = value
        return kwargs

    def _embedding_kwargs(self, plan: plans.Plan) -> dict:
        if not plan.embedded:
            return {}
        extra = {"chain_break_method": _chain_break(self.chain_break_method),
                 "chain_break_fraction": True}
        if self.chain_strength is not None:
            extra["chain_strength"] = float(self.chain_strength)
        return extra

    # ---- draws: submitted now, completed in submission order ---------------------------------
    @property
    def in_flight(self) -> int:
        """QPU calls submitted and not yet resolved."""
        return len(self._flight)

    def submit(self, model: BipartiteModel, num_samples: int, *,
               device: torch.device | str | None = None,
               dtype: torch.dtype | None = None) -> draws.PendingDraw:
        """Program `model` and submit the calls of `draw(model, num_samples)` without waiting
        for them; `.result()` of the returned `PendingDraw` gives the `SampleResult`."""
        check_request(model, num_samples, device, dtype)
        pending = draws.PendingDraw(self, self._start(model, num_samples), device, dtype)
        self._queue.append(pending)
        return pending

    def draw(self, model: BipartiteModel, num_samples: int, *,
             device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        self._drain()  # draws submitted earlier complete first
        return super().draw(model, num_samples, device=device, dtype=dtype)

    def result_of(self, pending: draws.PendingDraw):
        """Complete the draws submitted up to `pending`, oldest first; its result or error."""
        while pending.outcome is None:
            self._complete_next()
        if isinstance(pending.outcome, BaseException):
            raise pending.outcome
        return pending.outcome

    def _drain(self) -> None:
        while self._queue:
            self._complete_next()

    def _complete_next(self) -> None:
        pending = self._queue.popleft()
        self._resolving = pending
        try:
            job = pending.job
            pending.outcome = Sampler.draw(self, job.model, job.num_samples, device=pending.device,
                                           dtype=pending.dtype)
        except BaseException as exc:
            pending.outcome = exc  # raised by its own result(), not by a later draw's
            if not isinstance(exc, Exception):
                raise
        finally:
            self._resolving = None

    def _start(self, model: BipartiteModel, num_samples: int) -> draws.Job:
        self._ensure_child()
        plan = self._plan(model)
        h, quad = plans.ising(model, plan, self.beta_eff, self.topology.name)
        parameters = {**self._solver_kwargs(1), **self._embedding_kwargs(plan)}
        parameters.pop("num_reads")
        job = draws.Job(model=model, num_samples=num_samples, plan=plan,
                        bqm=plans.to_bqm(plan, h, quad, model.num_left), beta_eff=self.beta_eff,
                        parameters=parameters, num_reads=self.num_reads,
                        **self._gauges(plan.tiles, part=0))
        return draws.start(job, self._flight, self._retry)

    def _gauges(self, tiles: int, part: int) -> dict:
        """The Job fields of spin-reversal transforms for a draw started now (none when off):
        its gauges are keyed by the draw's index in submission order, so a resumed run or a
        resubmitted draw programs the same ones."""
        transforms = self.options["spin_reversal_transforms"]
        if not transforms:
            return {}
        index = self.calls + len(self._queue)
        return {"gauge_key": (self._gauge_seed, index, part),
                "min_calls": gauges.min_calls(transforms, tiles)}

    def _sample(self, model: BipartiteModel, num_samples: int):
        """The base class's hook: completes the draw being resolved, or starts one now."""
        job = self._resolving.job if self._resolving is not None else self._start(model, num_samples)
        state = self._snapshot()
        try:
            return self._complete(job)
        except BaseException:
            # a failed draw leaves no trace
            self._restore(state)
            self._flight.drop(job.calls)
            raise

    def _snapshot(self) -> tuple:
        return (self._rng.bit_generator.state, self.calls, self._last, self.beta_eff,
                list(self.beta_eff_history))

    def _restore(self, state: tuple) -> None:
        (self._rng.bit_generator.state, self.calls, self._last, self.beta_eff,
         self.beta_eff_history) = state

    def _complete(self, job: draws.Job):
        got = draws.collect(job, self._flight, self._retry, len(self._guard.nodelist))
        plan = job.plan
        # the problem as actually programmed, with the reads that gave the samples: qubit
        # level in native mode (clipping included); logical level (before chains) when embedded
        self._last = (job.bqm if plan.embedded else got.programmed, got.reads, plan.labels)
        self.calls += 1
        reads = [call.parameters["num_reads"] for call in job.calls]
        info = {"beta_eff": job.beta_eff, "chain_break_fraction": got.chain_break_fraction,
                **got.info, "estimated_qpu_access_time_us": self._calls_estimate_us(plan, reads),
                "recalibrated": False}
        self._maybe_recalibrate(info)
        z = (got.samples > 0).astype(np.float64 if job.model.dtype == torch.float64 else np.float32)
        return torch.from_numpy(z).to(job.model.dtype), info  # z = (s + 1) / 2

    # ---- several models in one call ----------------------------------------------------------
    def draw_tiled(self, models, num_samples, *, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None,
                   recalibrate: bool | None = None) -> list[SampleResult]:
        """Samples of several models from shared QPU calls, each model on disjoint copies of
        its own (`samplers.qpu.packing` says how copies are dealt, reads scheduled and access
        time shared); one `SampleResult` per model, in order, its info holding that model's
        copies, qubits and share of the calls' access time. `num_samples`: one count for all
        models or one per model.

        Models (`BipartiteModel`s, each with its own parameters and β) fit the topology as for
        `draw`; native models of different sizes share a call when their copies fit together,
        and go into further calls when they do not (embedded models of different sizes always
        do). Every model is scaled by this sampler's β_eff, and range-checked on its own
        (native mode; an error names the model).

        It is one draw of this sampler: counted once in `calls`, recorded as the last problem
        programmed (so `measure_beta_eff` uses all its copies), and β_eff is re-measured on this
        sampler's schedule, or as `recalibrate` says. Draws submitted earlier complete first;
        a failure leaves the sampler's state as it was."""
        models = list(models)
        counts = packing.sample_counts(models, num_samples)
        for model, n in zip(models, counts):
            check_request(model, n, device, dtype)
        self._drain()
        start = time.perf_counter()
        state, jobs = self._snapshot(), []
        try:
            done = self._tiled(models, counts, jobs, recalibrate)
        except BaseException:
            self._restore(state)
            self._flight.drop([call for job in jobs for call in job.calls])
            raise
        elapsed = time.perf_counter() - start
        return [_result(model, spins, info, elapsed, device, dtype)
                for model, (spins, info) in zip(models, done)]

    def follow(self, host: "QPUSampler") -> None:
        """Count `host`'s last `draw_tiled`, which carried a model of this sampler's, as this
        sampler's own call: its problem and reads become the last programmed (what
        `measure_beta_eff` measures) and β_eff becomes the host's. For samplers of one solver
        whose requests went into one call (the sampling service's sessions)."""
        self.calls += 1
        self._last = host._last
        if self.beta_eff != host.beta_eff:
            self.set_beta_eff(host.beta_eff)

    def _tiled(self, models, counts, jobs: list, recalibrate) -> list[tuple]:
        """(spins, info) per model; submits every call first (into `jobs`), then collects."""
        self._ensure_child()
        plan_of = {(m.num_left, m.num_right): self._plan(m) for m in models}
        native = self.topology.mode == "native"
        cap = None if self.options["tiles"] == "auto" else self.options["tiles"]
        packs = packing.layout([(m.num_left, m.num_right) for m in models], counts, plan_of,
                               self._placements, cap, one_size_only=not native)
        values = packing.fields(models, plan_of, self.beta_eff, self.topology.name,
                                self._guard, check=native)
        for part, pack in enumerate(packs):
            jobs.append(self._start_pack(pack, values, models[pack.binding],
                                         counts[pack.binding], part))
        out = [None] * len(models)
        for pack, job in zip(packs, jobs):
            self._collect_pack(pack, job, values, counts, out)
        self.calls += 1
        extra = {"recalibrated": False}
        self._maybe_recalibrate(extra, recalibrate)
        for _, info in out:
            info.update(extra)
        return out

    def _placements(self, shape: tuple, mixed: bool) -> list[tuple]:
        """(labels, qubits) of the copies a model of `shape` may take: the size's own tiles,
        or, beside models of other sizes, every placement whole on the solver."""
        plan = self._plans[shape]
        if not mixed:
            return packing.plan_copies(plan)
        if shape not in self._candidates:
            self._candidates[shape] = packing.native_candidates(
                self.topology, plan, plans.working_graph(self._guard))
        return self._candidates[shape]

    def _start_pack(self, pack: packing.Pack, values: list, model, num_samples: int,
                    part: int):
        parameters = {**self._solver_kwargs(1), **self._embedding_kwargs(pack)}
        parameters.pop("num_reads")
        job = draws.Job(model=model, num_samples=num_samples, plan=pack,
                        bqm=packing.problem(pack, values), beta_eff=self.beta_eff,
                        parameters=parameters, num_reads=self.num_reads,
                        **self._gauges(pack.tiles, part))
        return draws.start(job, self._flight, self._retry)

    def _collect_pack(self, pack: packing.Pack, job: draws.Job, values: list, counts: list,
                      out: list) -> None:
        reads, breaks, programmed, acc = draws.gather(job, self._flight, self._retry,
                                                      len(self._guard.nodelist))
        used = reads[:-(-job.num_samples // pack.tiles)]  # the reads the binding model needed
        self._last = (job.bqm if pack.embedded else programmed, used, pack.labels)
        estimate = self._calls_estimate_us(pack, [c.parameters["num_reads"] for c in job.calls])
        read_breaks = np.concatenate(breaks) if pack.embedded else None
        wanted = {s: counts[s] for s in pack.models}
        for s, (spins, sample_breaks) in packing.split(pack, reads, read_breaks, wanted).items():
            clipped = acc["clipped_fraction"] if pack.embedded else values[s][2]
            info = packing.model_info(pack, s, acc, len(reads), estimate, clipped, sample_breaks)
            out[s] = (spins, {"beta_eff": job.beta_eff, **info})

    @property
    def recalibration_due(self) -> bool:
        """Whether this sampler's next draw re-measures β_eff (every `recalibrate_every` calls)."""
        every = self.options["recalibrate_every"]
        return bool(every) and (self.calls + 1) % every == 0

    def _maybe_recalibrate(self, info: dict, due: bool | None = None) -> None:
        """Re-measure β_eff after a call if `due` (None: on this sampler's schedule)."""
        from samplers.temperature import TemperatureEstimationError

        every = self.options["recalibrate_every"]
        if due is None:
            due = bool(every) and self.calls % every == 0  # the call is counted already
        if not due:
            return
        try:
            est = self.measure_beta_eff()
        except TemperatureEstimationError as exc:
            # a prior with (near) zero fields, as at the start of training, carries no
            # temperature information: keep β_eff and say so in the call's info
            info["recalibration_skipped"] = str(exc)
        else:
            self.set_beta_eff(est.beta)
            info.update(recalibrated=True, beta_eff_measured=est.beta, beta_eff_stderr=est.stderr)

    # ---- temperature -------------------------------------------------------------------------
    def measure_beta_eff(self, num_bootstrap: int | None = None, seed: int | None = None):
        """β̂ (a `BetaEstimate`) of the last call's samples against the problem it programmed."""
        from samplers.temperature import estimate_beta

        if self._last is None:
            raise RuntimeError("measure_beta_eff needs a previous sample() call")
        bqm, spins, labels = self._last
        if seed is None:
            seed = int(self._rng.integers(2**31 - 1))
        boot = self.options["calibration_bootstrap"] if num_bootstrap is None else num_bootstrap
        return estimate_beta(bqm, (spins, labels), num_bootstrap=boot, seed=seed,
                             beta_guess=self.beta_eff)

    def set_beta_eff(self, beta_eff: float) -> None:
        """Use `beta_eff` for the scaling from the next call on (recorded in the history)."""
        if not (isinstance(beta_eff, (int, float)) and math.isfinite(beta_eff) and beta_eff > 0):
            raise ValueError(f"beta_eff must be a finite number > 0, got {beta_eff!r}")
        self.beta_eff = float(beta_eff)
        self.beta_eff_history.append(self.beta_eff)

    def _access_estimate(self):
        """Ocean's per-call estimate (num_qubits, num_reads=..., **parameters) -> µs: the solver's
        own timing model if it has one, else the Advantage4.1 model for the topology."""
        solver = getattr(self._child, "solver", None)
        if solver is not None and hasattr(solver, "estimate_qpu_access_time"):
            return solver.estimate_qpu_access_time

        def estimate(num_qubits, **kwargs):
            return timing.estimate_access_time_us(self.topology, num_qubits, **kwargs)

        return estimate

    def _calls_estimate_us(self, plan: plans.Plan, reads: list[int]) -> float:
        params = {**self._defaults, **self._explicit}
        return timing.calls_access_time_us(self._access_estimate(), plan.num_qubits, reads, params)

    def estimated_access_time_us(self, model: BipartiteModel, num_samples: int) -> float:
        """QPU access time of `draw(model, num_samples)` (all its QPU calls, tiles included) by
        Ocean's timing model: the solver's own if it has one, else the Advantage4.1 model.
        Network latency and queueing are not included."""
        self._ensure_child()
        plan = self._plan(model)
        calls = gauges.min_calls(self.options["spin_reversal_transforms"], plan.tiles)
        return self._calls_estimate_us(plan, timing.reads_per_call(num_samples, self.num_reads,
                                                                   plan.tiles, calls))

    def projected_access_time_s(self, model: BipartiteModel, num_steps: int,
                                samples_per_step: int) -> float:
        """QPU access time (s) of `num_steps` training steps drawing `samples_per_step` samples
        of `model` each, by the timing model (as `estimated_access_time_us`); for a budget such
        as a run's maximum QPU time. `samplers.qpu.timing.project` does the same offline."""
        return num_steps * self.estimated_access_time_us(model, samples_per_step) / 1e6

    # ---- persistence -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"beta_eff": self.beta_eff, "beta_eff_history": list(self.beta_eff_history),
                "calls": self.calls, "rng": self._rng.bit_generator.state,
                "gauge_seed": self._gauge_seed}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self.beta_eff = float(state["beta_eff"])
        self.beta_eff_history = [float(b) for b in state["beta_eff_history"]]
        self.calls = int(state["calls"])
        self._rng.bit_generator.state = state["rng"]
        # checkpoints written before spin-reversal transforms existed keep this sampler's own
        self._gauge_seed = int(state.get("gauge_seed", self._gauge_seed))


def _result(model: BipartiteModel, spins: np.ndarray, info: dict, elapsed: float, device,
            dtype) -> SampleResult:
    """What `draw` would return for these spins: samples z = (s + 1) / 2 on the requested
    device and dtype, and the protocol's info keys."""
    z = torch.from_numpy((spins > 0).astype(
        np.float64 if model.dtype == torch.float64 else np.float32)).to(model.dtype)
    z = z.to(device=torch.device(device) if device is not None else model.device,
             dtype=dtype or model.dtype)
    head = z[:MEAN_ENERGY_SAMPLES].to(model.device, model.dtype)
    with torch.no_grad():
        info["mean_energy"] = float(model.energy(head).mean())
    info.update(time_s=elapsed, beta=float(model.beta), num_samples=len(z))
    return SampleResult(z, info)
