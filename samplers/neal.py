"""`neal`: simulated annealing with dwave-samplers, ending at the model's temperature.

Each read anneals independently with single-site Gibbs updates (`proposal_acceptance_criteria=
'Gibbs'`) through an inverse-temperature schedule that **ends at the model's β**, so that reads
approximate Boltzmann samples p(z) ∝ exp(−β·E(z)) rather than ground states. The BQM handed to
dwave-samplers already has energy β·E, so in its units the schedule runs from `beta_start` (a
hot start, relative to the model's temperature) to exactly 1:

* `geometric` (default): `num_sweeps` values from `beta_start` to 1, geometrically spaced;
* `linear`: the same, linearly spaced;
* `constant`: all sweeps at 1 — fixed-temperature single-site Gibbs MCMC, best with
  `persistent=True` (reads then continue from the previous call's final states, like PCD).

The engine is single-threaded C++; dwave-samplers is the maintained home of what was dwave-neal.
"""

from __future__ import annotations

import numpy as np
import torch

from samplers.base import SEED, Option, Sampler, positive
from samplers.model import BipartiteModel


def beta_schedule(kind: str, beta_start: float, num_sweeps: int) -> np.ndarray:
    """Inverse temperatures, in units of the model's β, whose last value is exactly 1."""
    if kind == "constant":
        return np.ones(num_sweeps)
    if num_sweeps == 1:
        return np.ones(1)
    if kind == "geometric":
        sched = np.geomspace(beta_start, 1.0, num_sweeps)
    else:
        sched = np.linspace(beta_start, 1.0, num_sweeps)
    sched[-1] = 1.0
    return sched


class NealSampler(Sampler):
    name = "neal"
    parameters = {
        "num_sweeps": Option(40, (int,), positive, "sweeps per read, > 0"),
        "schedule": Option("geometric", (str,), lambda v: v in ("geometric", "linear", "constant"),
                           "geometric, linear or constant"),
        "beta_start": Option(0.1, (int, float), lambda v: 0 < v <= 1,
                             "first β of the schedule relative to the model's, in (0, 1]"),
        "persistent": Option(False, (bool,), None, "start reads from the last call's states"),
        "seed": SEED,
    }

    def __init__(self, **options):
        super().__init__(**options)
        from dwave.samplers import SimulatedAnnealingSampler

        self._engine = SimulatedAnnealingSampler()
        self._rng = np.random.default_rng(self.options["seed"])
        self._states: np.ndarray | None = None

    def _sample(self, model: BipartiteModel, num_samples: int) -> torch.Tensor:
        bqm = model.to_bqm("BINARY")
        sched = beta_schedule(self.options["schedule"], self.options["beta_start"],
                              self.options["num_sweeps"])
        kwargs = dict(
            num_reads=num_samples,
            beta_schedule_type="custom",
            beta_schedule=sched,
            proposal_acceptance_criteria="Gibbs",
            seed=int(self._rng.integers(2**31 - 1)),
        )
        if self.options["persistent"] and self._states is not None \
                and self._states.shape[1] == model.num_units:
            reps = -(-num_samples // len(self._states))
            kwargs["initial_states"] = (np.tile(self._states, (reps, 1))[:num_samples],
                                        list(range(model.num_units)))
            kwargs["initial_states_generator"] = "none"
        ss = self._engine.sample(bqm, **kwargs)
        order = np.argsort(np.asarray(ss.variables, dtype=np.int64))
        # the engine takes initial states as int8 (0/1 for a BINARY BQM)
        states = ss.record.sample[:, order].astype(np.int8)
        self._states = states if self.options["persistent"] else None
        info = {"schedule": self.options["schedule"], "beta_final": float(model.beta),
                "spin_updates": int(num_samples * len(sched) * model.num_units)}
        return torch.from_numpy(states.astype(np.float64)), info

    def state_dict(self) -> dict:
        return {"rng": self._rng.bit_generator.state, "states": self._states}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self._rng.bit_generator.state = state["rng"]
            self._states = state["states"]
