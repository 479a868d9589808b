"""`QPUSampler`: the `qpu` backend, a D-Wave QPU (or any structured dimod sampler) as a Boltzmann
sampler of a `BipartiteModel`.

Layers, innermost first: the child (`client`), `RangeGuardComposite` (`range_guard`), in
embedded mode `FixedEmbeddingComposite` with the topology's cached embedding (`plan`), and with
`spin_reversal_transforms` a `SpinReversalTransformComposite` per call (`gauges`). Each call
programs `tiles` disjoint copies of the model (`tiling`) and returns raw reads
(`answer_mode='raw'`), one sample per copy per read; more samples than one call gives take
several calls, scheduled by `timing`, submitted together and retried by `calls`, collected by
`draws`. `draw_tiled` shares the copies of one call out between several models (`packing`).
This module holds the child and the sampler's state: the call counter, the problem last
programmed, β_eff and its history, and the generator, changed only when a draw completes, in
submission order; the options are declared in `options`, β_eff's measurement and schedule are
`beta_eff`'s, the draws of several models `tiled`'s. A permanent failure raises `QPUError` and
leaves that state as before the draw.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch

import topologies
from samplers.base import Sampler, SamplerOptionError, TemperatureScaled, check_request
from samplers.model import BipartiteModel
from samplers.qpu import client, draws, gauges, timing
from samplers.qpu import plan as plans
from samplers.qpu.beta_eff import BetaEffTracking
from samplers.qpu.calls import Flight, Retry
from samplers.qpu.corrections import Corrections
from samplers.qpu.options import PARAMETERS, QPU_PARAMETERS, chain_break, topology_defaults
from samplers.qpu.range_guard import RangeGuardComposite
from samplers.qpu.tiled import TiledDraws

__all__ = ["QPUSampler", "topology_defaults"]


class QPUSampler(TiledDraws, BetaEffTracking, Sampler, TemperatureScaled):
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
        self.recalibrations_skipped = 0
        self.skipped_in_a_row = 0
        self._last: tuple | None = None
        self._corrections = Corrections(self.topology, self.options)

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
        extra = {"chain_break_method": chain_break(self.chain_break_method),
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
        bqm, corrected = self._corrections.prepare(plans.to_bqm(plan, h, quad, model.num_left),
                                                   self._guard)
        job = draws.Job(model=model, num_samples=num_samples, plan=plan, bqm=bqm,
                        beta_eff=self.beta_eff, parameters=parameters, num_reads=self.num_reads,
                        **self._gauges(plan.tiles, part=0), **corrected)
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
                list(self.beta_eff_history), self.recalibrations_skipped, self.skipped_in_a_row,
                self._corrections.snapshot())

    def _restore(self, state: tuple) -> None:
        (self._rng.bit_generator.state, self.calls, self._last, self.beta_eff,
         self.beta_eff_history, self.recalibrations_skipped, self.skipped_in_a_row,
         corrections) = state
        self._corrections.restore(corrections)

    def _complete(self, job: draws.Job):
        got = draws.collect(job, self._flight, self._retry, len(self._guard.nodelist))
        plan = job.plan
        # the problem as actually programmed, with the reads that gave the samples: qubit
        # level in native mode (clipping included); logical level (before chains) when embedded
        intended = self._corrections.intended(job, got.programmed)
        self._last = (job.bqm if plan.embedded else intended, got.reads, plan.labels)
        self.calls += 1
        reads = [call.parameters["num_reads"] for call in job.calls]
        info = {"beta_eff": job.beta_eff, "chain_break_fraction": got.chain_break_fraction,
                **got.info, "estimated_qpu_access_time_us": self._calls_estimate_us(plan, reads),
                "recalibrated": False, **self._corrections.observe(job, got.reads, got.programmed,
                                                      self._guard)}
        self._maybe_recalibrate(info)
        z = (got.samples > 0).astype(np.float64 if job.model.dtype == torch.float64 else np.float32)
        return torch.from_numpy(z).to(job.model.dtype), info  # z = (s + 1) / 2

    # ---- access time -------------------------------------------------------------------------
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
                "recalibrations_skipped": [self.recalibrations_skipped, self.skipped_in_a_row],
                "gauge_seed": self._gauge_seed, **self._corrections.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self._corrections.load_state_dict(state)  # first: it refuses a state it cannot use
        self.beta_eff = float(state["beta_eff"])
        self.beta_eff_history = [float(b) for b in state["beta_eff_history"]]
        self.calls = int(state["calls"])
        # checkpoints written before the count existed start it at 0
        self.recalibrations_skipped, self.skipped_in_a_row = (
            int(v) for v in state.get("recalibrations_skipped", (0, 0)))
        self._rng.bit_generator.state = state["rng"]
        # checkpoints written before spin-reversal transforms existed keep this sampler's own
        self._gauge_seed = int(state.get("gauge_seed", self._gauge_seed))


