"""Several models in one QPU call: `QPUSampler.draw_tiled` and `follow` (the sampling service's
sessions), a mixin of `QPUSampler` over `packing`'s layout, fields and accounting."""

from __future__ import annotations

import time

import numpy as np
import torch

from samplers.base import MEAN_ENERGY_SAMPLES, SampleResult, check_request
from samplers.model import BipartiteModel
from samplers.qpu import draws, packing
from samplers.qpu import plan as plans


class TiledDraws:
    """`QPUSampler`'s draws of several models at once; uses the sampler's plans, child, flight,
    snapshot and recalibration."""

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

    def follow(self, host) -> None:
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
        bqm, corrected = self._corrections.prepare(packing.problem(pack, values), self._guard)
        job = draws.Job(model=model, num_samples=num_samples, plan=pack, bqm=bqm,
                        beta_eff=self.beta_eff, parameters=parameters, num_reads=self.num_reads,
                        **self._gauges(pack.tiles, part), **corrected)
        return draws.start(job, self._flight, self._retry)

    def _collect_pack(self, pack: packing.Pack, job: draws.Job, values: list, counts: list,
                      out: list) -> None:
        reads, breaks, programmed, acc = draws.gather(job, self._flight, self._retry,
                                                      len(self._guard.nodelist))
        used = reads[:-(-job.num_samples // pack.tiles)]  # the reads the binding model needed
        intended = self._corrections.intended(job, programmed)
        self._last = (job.bqm if pack.embedded else intended, used, pack.labels)
        estimate = self._calls_estimate_us(pack, [c.parameters["num_reads"] for c in job.calls])
        read_breaks = np.concatenate(breaks) if pack.embedded else None
        wanted = {s: counts[s] for s in pack.models}
        for s, (spins, sample_breaks) in packing.split(pack, reads, read_breaks, wanted).items():
            clipped = acc["clipped_fraction"] if pack.embedded else values[s][2]
            info = packing.model_info(pack, s, acc, len(reads), estimate, clipped, sample_breaks)
            out[s] = (spins, {"beta_eff": job.beta_eff, **info})


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
