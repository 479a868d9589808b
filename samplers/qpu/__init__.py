"""`qpu`: a D-Wave quantum annealer (or any structured dimod sampler) as a Boltzmann sampler.

    sampler = samplers.get("qpu", topology="pegasus_p16")                   # real QPU, lazily
    sampler = samplers.get("qpu", topology="chimera_c4",
                           child_sampler="samplers.testing:thermal_mock",
                           child_kwargs={"topology": "chimera_c4", "beta": 5.0})  # offline

One job per module:
* `client`: the child sampler (a `DWaveSampler` built on first use, or an injected one), API-token
  redaction, which cloud errors are transient;
* `range_guard`: `RangeGuardComposite`, the h/J range check (or clip) in front of the child;
* `plan`: which qubits carry the model, and its Ising problem scaled by 1/β_eff, from arrays;
* `tiling`: disjoint copies of the problem per call;
* `packing`: several models on the copies of one call (`QPUSampler.draw_tiled`);
* `gauges`: spin-reversal transforms (`spin_reversal_transforms`), one per copy of every call;
* `corrections`: the device corrections a sampler learns from its draws: `shim` (the flux-bias
  shim, `flux_bias_shim`) and `hamiltonian` (the device-Hamiltonian fit,
  `learn_device_hamiltonian`);
* `calls`: QPU calls in flight and their retries;
* `draws`: a draw's calls, and `PendingDraw` (`QPUSampler.submit`);
* `timing`: the calls' schedule, solver-reported access time, and Ocean's timing model;
* `options`: the backend's declared options and a topology file's `qpu:` defaults;
* `beta_eff`: β_eff's measurement against the problem programmed, and its recalibration;
* `tiled`: several models in one call (`QPUSampler.draw_tiled`, `follow`);
* `sampler`: `QPUSampler` itself: the child, the plans, the draws and the sampler's state.

API tokens never appear in messages, `info`, `state_dict` or `repr`.
"""

from samplers.qpu.client import redact
from samplers.qpu.draws import PendingDraw
from samplers.qpu.errors import QPUConfigError, QPUError, QPURangeError
from samplers.qpu.range_guard import RangeGuardComposite
from samplers.qpu.sampler import QPUSampler, topology_defaults
from samplers.qpu.timing import estimate_access_time_us

__all__ = [
    "PendingDraw",
    "QPUConfigError",
    "QPUError",
    "QPURangeError",
    "QPUSampler",
    "RangeGuardComposite",
    "estimate_access_time_us",
    "redact",
    "topology_defaults",
]
