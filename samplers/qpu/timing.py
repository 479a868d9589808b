"""QPU access time: what the solver reports per call, summed per draw, and what Ocean's timing
model predicts for the same calls.

The model is `StructuredSolver.estimate_qpu_access_time` (programming time plus, per read, anneal,
readout and delay times). A real solver carries its own model parameters; offline the
Advantage4.1 parameters shipped with dwave.cloud's test mocks stand in for a perfect chip of the
topology's family and shape. Neither includes network latency or SAPI queueing.
"""

from __future__ import annotations

from functools import lru_cache

import topologies

# the most reads one QPU call may ask for (SAPI's num_reads limit)
MAX_READS = 10000


def reads_per_call(num_samples: int, num_reads: int | None, tiles: int = 1) -> list[int]:
    """Reads of each QPU call that draws `num_samples` samples, each read giving one sample per
    tile. With `num_reads` set, every call (the last too) asks for at least that many samples:
    ⌈num_reads / tiles⌉ reads. Without it, as few calls as the read limit allows, each reading no
    more than needed."""
    if num_reads is not None:
        reads = -(-num_reads // tiles)
        return [reads] * -(-num_samples // (reads * tiles))
    per_call = MAX_READS * tiles
    calls = -(-num_samples // per_call)
    return [-(-min(per_call, num_samples - k * per_call) // tiles) for k in range(calls)]


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
