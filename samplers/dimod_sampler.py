"""`dimod`: any dimod sampler behind the protocol.

`sampler` is an instance or an import path ("dwave.samplers:TabuSampler" or
"dwave.samplers.TabuSampler", instantiated without arguments). The model is handed over as a
BINARY BQM with energy β·E. **A generic optimiser (tabu search, steepest descent, ExactSolver's
ground states) is not a Boltzmann sampler**: its samples concentrate on low-energy states and
give a biased negative phase. The adapter says so in `boltzmann` (False unless the user declares
`boltzmann=True` for a sampler known to draw from exp(−E), e.g. a fixed-temperature MCMC) and
copies it into `info`, where training logs it.
"""

from __future__ import annotations

import numpy as np
import torch

from samplers.base import SEED, Option, Sampler, SamplerOptionError, import_object
from samplers.model import BipartiteModel


def resolve(spec):
    """An instance from an import path, or the instance itself."""
    if not isinstance(spec, str):
        return spec
    obj = import_object(spec, "sampler 'dimod' option 'sampler'")
    return obj() if isinstance(obj, type) else obj


class DimodSampler(Sampler):
    name = "dimod"
    parameters = {
        "sampler": Option("dwave.samplers:SimulatedAnnealingSampler", (str, object), None,
                          "dimod sampler instance or import path"),
        "sample_kwargs": Option({}, (dict,), None, "extra keyword arguments for .sample()"),
        "boltzmann": Option(False, (bool,), None, "declare the sampler a Boltzmann sampler"),
        "seed": SEED,
    }

    def __init__(self, **options):
        super().__init__(**options)
        self._child = resolve(self.options["sampler"])
        if not hasattr(self._child, "sample"):
            raise SamplerOptionError("sampler 'dimod': the 'sampler' option has no .sample()")
        self._rng = np.random.default_rng(self.options["seed"])

    @property
    def boltzmann(self) -> bool:  # type: ignore[override]
        return self.options["boltzmann"]

    def _sample(self, model: BipartiteModel, num_samples: int) -> torch.Tensor:
        bqm = model.to_bqm("BINARY")
        accepted = getattr(self._child, "parameters", {})
        kwargs = dict(self.options["sample_kwargs"])
        if "num_reads" in accepted:
            kwargs.setdefault("num_reads", num_samples)
        if "seed" in accepted:
            kwargs.setdefault("seed", int(self._rng.integers(2**31 - 1)))
        rows = []
        total = 0
        while total < num_samples:
            ss = self._child.sample(bqm, **kwargs)
            order = np.argsort(np.asarray(ss.variables, dtype=np.int64))
            got = np.repeat(ss.record.sample[:, order], ss.record.num_occurrences, axis=0)
            if len(got) == 0:
                raise RuntimeError("dimod sampler returned no samples")
            rows.append(got)
            total += len(got)
            if "seed" in accepted:
                kwargs["seed"] = int(self._rng.integers(2**31 - 1))
        info = {"boltzmann": self.boltzmann, "child": type(self._child).__name__}
        return torch.from_numpy(np.concatenate(rows)[:num_samples].astype(np.float64)), info

    def state_dict(self) -> dict:
        return {"rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self._rng.bit_generator.state = state["rng"]
