"""A draw's QPU calls in flight, and how their answers become samples and facts.

A draw that needs several calls submits them all before waiting for any (at most `max_in_flight`
in flight per sampler), so network latency and queueing overlap instead of adding up.
`QPUSampler.submit` returns a `PendingDraw` at that point; the training loop can compute while
the QPU works and call `result()` when it needs the samples.

Everything here is free of sampler state: turning answers into samples, chain-break fractions
and accounting. The sampler applies its state changes (call counter, recorded problem, β_eff
recalibration, generator) when a draw completes, in submission order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from samplers.model import BipartiteModel
from samplers.qpu import gauges, timing
from samplers.qpu import plan as plans
from samplers.qpu.calls import Call, Flight, Retry
from samplers.qpu.errors import QPUError
from samplers.qpu.shim import ShimComposite


@dataclass
class Job:
    """A submitted draw: the problem as programmed and its calls."""

    model: BipartiteModel
    num_samples: int
    plan: plans.Plan
    bqm: object                  # the problem sent (all copies), before range checks
    beta_eff: float              # the scaling it was programmed with
    parameters: dict             # solver parameters of every call, num_reads aside
    num_reads: int | None        # the option: samples per call (None: as few calls as possible)
    calls: list = field(default_factory=list)
    gauge_key: tuple | None = None   # spin-reversal transforms on: what seeds each call's gauge
    min_calls: int = 1           # calls the transforms need (`gauges.min_calls`)
    field_shim: dict | None = None   # flux-bias shim on: {qubit: offset} added to what is sent
    read_counts: list = field(default_factory=list)  # reads each answered call returned
    correction: tuple | None = None  # the Hamiltonian correction added (`hamiltonian`)

    def add_call(self, reads: int, flight: Flight, retry: Retry) -> Call:
        sampler, parameters = self.plan.sampler, {**self.parameters, "num_reads": reads}
        if self.field_shim is not None:
            sampler = ShimComposite(sampler, self.field_shim)
        if self.gauge_key is not None:
            sampler = gauges.composite(sampler)
            parameters["srts"] = gauges.flips((*self.gauge_key, len(self.calls)),
                                              self.bqm.num_variables)
        call = Call(sampler, self.bqm, parameters, retry)
        flight.submit(call)
        self.calls.append(call)
        return call


def start(job: Job, flight: Flight, retry: Retry) -> Job:
    """Submit every call `job` is expected to need; on failure none is left in flight."""
    try:
        for reads in timing.reads_per_call(job.num_samples, job.num_reads, job.plan.tiles,
                                           job.min_calls):
            job.add_call(reads, flight, retry)
    except BaseException:
        flight.drop(job.calls)
        raise
    return job


@dataclass
class Collected:
    """A completed draw before the sampler's own bookkeeping."""

    samples: np.ndarray          # (num_samples, units) spins, read after read, copy after copy
    reads: np.ndarray            # the reads that gave them, (reads, tiles·units) spins
    programmed: object           # the problem as the range guard sent it (clipping included)
    chain_break_fraction: float
    info: dict


def accounts(plan: plans.Plan, qubits_available: int) -> dict:
    """A draw's running totals, before its first answer."""
    return {"timing": {}, "retries": 0, "clipped_fraction": 0.0, "num_qpu_calls": 0,
            "num_reads": 0, "num_samples_drawn": 0, "tiles": plan.tiles,
            "qubits_used": plan.num_qubits, "qubits_available": qubits_available}


def account(acc: dict, info: dict, retries: int, reads: int, returned: int) -> None:
    """Add one call's facts to the draw's totals: `reads` asked for (what the QPU spent),
    `returned` after chain-break resolution ('discard' drops some)."""
    timing.add_timing(acc["timing"], info.get("timing", {}))
    acc["retries"] += retries
    acc["num_qpu_calls"] += 1
    acc["num_reads"] += reads
    acc["num_samples_drawn"] += returned * acc["tiles"]
    acc["clipped_fraction"] = max(acc["clipped_fraction"], float(info.get("clipped_fraction", 0.0)))


def gather(job: Job, flight: Flight, retry: Retry, qubits_available: int):
    """Wait for the job's calls in order; top up with more calls if answers came short
    (chain_break_method 'discard' drops reads). (reads, per-call chain-break fractions, the
    problem as the range guard sent it, the accounts)."""
    plan, wanted = job.plan, job.num_samples
    acc = accounts(plan, qubits_available)
    reads, breaks, programmed, flipped = [], [], None, None
    job.read_counts = []
    done = 0
    while done < len(job.calls) or acc["num_samples_drawn"] < wanted:
        if done == len(job.calls):
            left = wanted - acc["num_samples_drawn"]
            job.add_call(timing.reads_per_call(left, job.num_reads, plan.tiles)[0], flight, retry)
        call = job.calls[done]
        answer = flight.wait(call)
        spins, read_breaks = plans.decode(answer, plan)
        if len(spins) == 0:
            raise QPUError("sampler 'qpu': the solver returned no samples "
                           "(chain_break_method 'discard' dropped them all?)")
        reads.append(spins)
        breaks.append(read_breaks)
        job.read_counts.append(len(spins))
        if "programmed_bqm" in answer.info:
            programmed, flipped = answer.info["programmed_bqm"], call.parameters.get("srts")
        account(acc, answer.info, call.retries, call.parameters["num_reads"], len(spins))
        done += 1
    # natively, the problem back in the frame common to every call; an embedded problem is
    # recorded at the logical level (the job's), where the transforms were applied
    if programmed is not None and flipped is not None and not plan.embedded:
        programmed = gauges.undo(programmed, job.bqm.variables, flipped)
    acc["qpu_access_time_us"] = acc["timing"].get("qpu_access_time")
    return np.concatenate(reads), breaks, programmed, acc


def read_signs(job: Job, num_reads: int) -> np.ndarray | None:
    """(num_reads, variables) the gauge of the call each of the job's first reads came from
    (+1 where a variable was not flipped); None without transforms."""
    if job.gauge_key is None:
        return None
    signs = [np.repeat(np.where(call.parameters["srts"], -1, 1), count, axis=0)
             for call, count in zip(job.calls, job.read_counts)]
    return np.concatenate(signs)[:num_reads]


def collect(job: Job, flight: Flight, retry: Retry, qubits_available: int) -> Collected:
    """The job's samples and facts, once its calls are answered (`gather`)."""
    return _assemble(job, *gather(job, flight, retry, qubits_available))


def _assemble(job: Job, reads: np.ndarray, breaks: list, programmed, acc: dict) -> Collected:
    plan, wanted = job.plan, job.num_samples
    read_breaks = np.concatenate(breaks) if plan.embedded else None
    samples, sample_breaks = plans.per_tile(reads, read_breaks, plan)
    cbf = float(sample_breaks[:wanted].mean()) if plan.embedded else 0.0
    return Collected(samples=samples[:wanted], reads=reads[:-(-wanted // plan.tiles)],
                     programmed=programmed, chain_break_fraction=cbf, info=acc)


class PendingDraw:
    """A draw whose QPU calls are in flight (`QPUSampler.submit`).

    `result()` waits for them and returns the `SampleResult` that `draw` would have returned.
    Draws complete in submission order: asking for a later one's result completes the earlier
    ones first (their results are kept for their own `result()`), so the sampler's state
    changes, and hence a resumed run, do not depend on the order results are asked for. The
    problem was programmed at submission (the model's values and β_eff then); the info's
    `mean_energy` is evaluated on the model at `result()`, and `time_s` is the time `result()`
    took.
    """

    def __init__(self, sampler, job: Job, device, dtype):
        self._sampler = sampler
        self.job = job
        self.device, self.dtype = device, dtype
        self.outcome = None          # the SampleResult, or the exception, once completed

    def done(self) -> bool:
        """Whether `result()` would return without waiting for the QPU."""
        return self.outcome is not None or all(
            c.resolved or c.error is not None or c.answer.done() for c in self.job.calls)

    def result(self):
        return self._sampler.result_of(self)
