"""The `qpu` backend's options, declared once (`PARAMETERS`), and the defaults a topology file's
`qpu:` block may give them (`topology_defaults`)."""

from __future__ import annotations

import topologies
from samplers.base import SEED, Option, SamplerOptionError, check_options, non_negative, positive
from samplers.qpu import timing
from samplers.qpu.range_guard import POLICIES

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
    "flux_bias_shim": Option(False, (bool,), None,
                             "learn per-qubit field offsets that make every qubit's magnetisation "
                             "the model's (native topologies; no extra QPU calls)"),
    "flux_bias_every": Option(1, (int,), positive, "draws pooled per shim update, >= 1"),
    "flux_bias_gain": Option(0.5, (int, float), lambda v: 0 < v <= 1,
                             "damping of each shim update, in (0, 1]"),
    "flux_bias_limit": Option(0.5, (int, float), positive,
                              "largest |offset| (h units) before the shim is declared diverged"),
    "learn_device_hamiltonian": Option(
        False, (bool,), None,
        "fit the device's effective h and J by pseudo-likelihood and pre-distort the problem "
        "so that they are the model's (native topologies; no extra QPU calls)"),
    "hamiltonian_every": Option(1, (int,), positive, "draws pooled per Hamiltonian fit, >= 1"),
    "hamiltonian_gain": Option(0.5, (int, float), lambda v: 0 < v <= 1,
                               "damping of each Hamiltonian correction, in (0, 1]"),
    "max_in_flight": Option(4, (int,), positive, "QPU calls in flight at once, >= 1"),
    "max_retries": Option(3, (int,), non_negative, "retries of transient errors"),
    "retry_backoff_s": Option(1.0, (int, float), non_negative,
                              "first retry delay (s), doubled each retry"),
    "seed": SEED,
}


def chain_break(name: str):
    """The `dwave.embedding.chain_breaks` function of a `chain_break_method` name."""
    from dwave.embedding import chain_breaks

    return getattr(chain_breaks, name)

