"""QPU access time: what the solver reports per call, summed per draw, and what Ocean's timing
model predicts for the same calls.

The model is `StructuredSolver.estimate_qpu_access_time` (programming time plus, per read, anneal,
readout and delay times). A real solver carries its own model parameters; offline the
Advantage4.1 parameters shipped with dwave.cloud's test mocks stand in for a perfect chip of the
topology's family and shape. Neither includes network latency or SAPI queueing.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import topologies

# the most reads one QPU call may ask for (SAPI's num_reads limit)
MAX_READS = 10000


def reads_per_call(num_samples: int, num_reads: int | None, tiles: int = 1,
                   min_calls: int = 1) -> list[int]:
    """Reads of each QPU call that draws `num_samples` samples, each read giving one sample per
    tile. With `num_reads` set, every call (the last too) asks for at least that many samples:
    ⌈num_reads / tiles⌉ reads. Without it, as few calls as the read limit allows, each reading no
    more than needed. When `min_calls` (what spin-reversal transforms need, capped at one call
    per read) is more than that, the draw's reads are shared out evenly over that many calls."""
    least = min(min_calls, -(-num_samples // tiles))
    if num_reads is not None:
        reads = -(-num_reads // tiles)
        calls = -(-num_samples // (reads * tiles))
        schedule = [reads] * calls
    else:
        per_call = MAX_READS * tiles
        calls = -(-num_samples // per_call)
        schedule = [-(-min(per_call, num_samples - k * per_call) // tiles) for k in range(calls)]
    if least <= calls:
        return schedule
    total = -(-num_samples // tiles)
    return [total // least + (k < total % least) for k in range(least)]


def add_timing(total: dict, timing: dict) -> None:
    """Add one call's solver-reported timing to `total`: durations add up over calls,
    per-sample figures (keys ending in '_per_sample') are kept as they are."""
    for key, value in timing.items():
        if isinstance(value, (int, float)):
            per_sample = key.endswith("_per_sample")
            total[key] = float(value) if per_sample else total.get(key, 0.0) + float(value)


@lru_cache(maxsize=4)
def _timing_solver(family: str, shape: tuple):
    from dwave.cloud.solver import StructuredSolver
    from dwave.cloud.testing import mocks

    make = getattr(mocks, f"qpu_{family}_solver_data")
    data = make(*shape, problem_timing_data=mocks.qpu_problem_timing_data("advantage"))
    return StructuredSolver(client=None, data=data)


def estimate_access_time_us(topology, num_qubits: int, num_reads: int, **parameters) -> float:
    """Ocean's QPU access-time estimate (µs) for one call on a perfect `topology` chip, with the
    Advantage4.1 timing model from dwave.cloud's test mocks; no network needed.

    `parameters`: annealing_time, programming_thermalization, readout_thermalization.
    """
    topo = topologies.load(topology)
    solver = _timing_solver(topo.family, topo.shape)
    return float(solver.estimate_qpu_access_time(num_qubits, num_reads=num_reads, **parameters))


def calls_access_time_us(estimate, num_qubits: int, reads: list[int], parameters: dict) -> float:
    """Sum of `estimate(num_qubits, num_reads=r, **parameters)` over the calls' reads `r`."""
    return float(sum(estimate(num_qubits, num_reads=r, **parameters) for r in reads))


@dataclass(frozen=True)
class Projection:
    """QPU access time of `num_steps` draws of `samples_per_step` samples each."""

    tiles: int
    qubits_per_call: int
    calls_per_step: int
    reads_per_step: int
    access_time_per_step_us: float
    samples_per_step: int
    num_steps: int

    @property
    def total_s(self) -> float:
        return self.num_steps * self.access_time_per_step_us / 1e6

    @property
    def samples_per_access_second(self) -> float:
        """Samples used per second of QPU access time (surplus copies of the last read aside)."""
        return self.samples_per_step / (self.access_time_per_step_us / 1e6)


def project(topology, num_left: int | None, num_right: int | None, samples_per_step: int,
            num_steps: int = 1, *, tiles="auto", num_reads: int | None = None,
            **parameters) -> Projection:
    """The QPU access time of a training run that draws `samples_per_step` prior samples at each
    of `num_steps` steps, on a perfect chip of `topology` (its listed broken qubits aside) by the
    Advantage4.1 timing model, with the copies per call the sampler would use (`tiles`).

    `num_reads` (samples per call) and the solver `parameters` (annealing_time,
    programming_thermalization, readout_thermalization) default to the topology file's `qpu:`
    block, as the sampler's do. No network, no token; latency and queueing are not included.
    """
    from samplers.qpu import tiling

    topo = topologies.load(topology)
    defaults = dict(topo.qpu)
    num_reads = defaults.get("num_reads") if num_reads is None else num_reads
    for key in ("annealing_time", "programming_thermalization", "readout_thermalization"):
        if key not in parameters and defaults.get(key) is not None:
            parameters[key] = defaults[key]
    if topo.mode == "native":
        copies = tiling.native_tiles(topo, num_left, num_right)
        per_copy = len(copies[0])
    else:
        copies = tiling.embedded_tiles(topo, num_left, num_right)
        per_copy = sum(len(chain) for chain in copies[0].values())
    count = len(copies) if tiles == "auto" else min(tiles, len(copies))
    reads = reads_per_call(samples_per_step, num_reads, count)
    solver = _timing_solver(topo.family, topo.shape)
    per_step = calls_access_time_us(solver.estimate_qpu_access_time, count * per_copy, reads,
                                    parameters)
    return Projection(tiles=count, qubits_per_call=count * per_copy, calls_per_step=len(reads),
                      reads_per_step=sum(reads), access_time_per_step_us=per_step,
                      samples_per_step=samples_per_step, num_steps=num_steps)
