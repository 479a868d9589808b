"""The device corrections a `QPUSampler` learns from its own draws: the flux-bias shim (`shim`)
and the device-Hamiltonian fit (`hamiltonian`). Both need a native topology (a unit is one
qubit, so a qubit's offset or a coupler's error is a unit's or a coupling's), both take their
evidence from the samples of the sampler's own draws (no extra QPU call), and both are state of
the sampler: in its snapshot (a failed draw leaves no trace) and its `state_dict` (exact resume).

What a draw programs is decided when it is submitted (`job_fields`, `program`), and what it
teaches when it completes (`observe`), in submission order like the rest of the sampler's state.
"""

from __future__ import annotations

import numpy as np

from samplers.base import SamplerOptionError
from samplers.qpu import draws
from samplers.qpu import plan as plans
from samplers.qpu.hamiltonian import HamiltonianFit
from samplers.qpu.range_guard import within_range
from samplers.qpu.shim import FluxBiasShim, model_coupling


class Corrections:
    """The corrections switched on by a sampler's options (none: every method is a no-op)."""

    def __init__(self, topology, options: dict):
        self.topology_name = topology.name
        self.shim = self.fit = None
        for key in ("flux_bias_shim", "learn_device_hamiltonian"):
            if options[key] and topology.mode != "native":
                raise SamplerOptionError(
                    f"sampler 'qpu' option '{key}' needs a native topology (a unit per qubit); "
                    f"'{topology.name}' is {topology.mode}")
        if options["flux_bias_shim"]:
            self.shim = FluxBiasShim(topology.graph().nodes, options["flux_bias_every"],
                                     options["flux_bias_gain"], options["flux_bias_limit"])
        if options["learn_device_hamiltonian"]:
            self.fit = HamiltonianFit(topology.graph(), options["hamiltonian_every"],
                                      options["hamiltonian_gain"])

    @property
    def active(self) -> bool:
        return self.shim is not None or self.fit is not None

    def prepare(self, bqm, guard) -> tuple:
        """(the problem a draw started now sends, its `draws.Job` fields): the Hamiltonian
        correction added to `bqm` (qubit labels) within the guard's ranges, the shim's offsets
        for its qubits."""
        fields = {}
        if self.fit is not None:
            bqm, fields["correction"] = self.fit.program(bqm, guard.h_range, guard.j_range)
        if self.shim is not None:
            fields["field_shim"] = self.shim.offsets_for(list(bqm.variables))
        return bqm, fields

    def intended(self, job: draws.Job, programmed):
        """The problem a draw meant the device to realise: as sent (shim removed, gauges
        undone), less the Hamiltonian correction; what β_eff is measured against."""
        if job.correction is None or programmed is None:
            return programmed
        labels, row, col, dh, dj, _ = job.correction
        out = programmed.copy()
        out.add_linear_from(dict(zip(labels, (-dh).tolist())))
        out.add_quadratic_from({(labels[r], labels[c]): -v
                                for r, c, v in zip(row.tolist(), col.tolist(), dj.tolist())})
        return out

    def observe(self, job: draws.Job, reads: np.ndarray, programmed, guard) -> dict:
        """Learn from a completed draw (its reads, in the plan's label order, and the problem
        the guard sent, shim removed and gauges undone); its info keys. `guard`: the range
        guard whose h/J ranges the draw was sent within."""
        if not self.active:
            return {}
        info = {}
        signs = draws.read_signs(job, len(reads))
        if self.fit is not None:
            shim = None if job.field_shim is None else _shim_field(job, programmed, signs, guard)
            info.update(self.fit.observe(reads, programmed, job.correction, job.beta_eff, shim))
        plan, model = job.plan, job.model
        units = len(plan.region)
        spins = reads.reshape(len(reads), plan.tiles, units)
        if signs is not None:
            signs = signs.reshape(spins.shape)
        h, quad = plans.ising(model, plan, 1.0, self.topology_name)  # the model's own units
        if self.shim is not None:
            info.update(self.shim.observe(spins, signs, np.asarray(plan.copies), h,
                                          model_coupling(plan, quad), job.beta_eff,
                                          free=_free_units(plan, h, quad, job.beta_eff, guard)))
        return info

    # ---- state -------------------------------------------------------------------------------
    def snapshot(self) -> tuple:
        return tuple(None if c is None else c.snapshot() for c in (self.shim, self.fit))

    def restore(self, state: tuple) -> None:
        for c, saved in zip((self.shim, self.fit), state):
            if c is not None:
                c.restore(saved)

    def state_dict(self) -> dict:
        out = {}
        if self.shim is not None:
            out["flux_bias"] = self.shim.state_dict()
        if self.fit is not None:
            out["device_hamiltonian"] = self.fit.state_dict()
        return out

    def load_state_dict(self, state: dict) -> None:
        # a checkpoint written without a correction leaves it at its start
        for c, key in ((self.shim, "flux_bias"), (self.fit, "device_hamiltonian")):
            if c is not None and key in state:
                c.load_state_dict(state[key])


def _free_units(plan, h: np.ndarray, quad: np.ndarray, beta_eff: float, guard) -> np.ndarray:
    """Per unit: whether its field and every coupling on it were programmed within the ranges.
    A clipped unit's magnetisation differs from the model's by the clipping, not by a device
    offset, and an offset pushing a field further out cannot be applied, so the shim must not
    learn from it (it would walk off until it diverged)."""
    (h_lo, h_hi), (j_lo, j_hi) = guard.h_range, guard.j_range
    hp, jp = h / beta_eff, quad / beta_eff
    free = (hp > h_lo) & (hp < h_hi)
    clipped = (jp <= j_lo) | (jp >= j_hi)
    free[plan.rows[clipped]] = False
    free[plan.cols[clipped] + plan.num_left] = False
    return free


def _shim_field(job: draws.Job, programmed, signs: np.ndarray | None, guard) -> np.ndarray:
    """(reads or 1, variables): the shim's offsets as each read's call applied them, in the frame
    `programmed` is in (gauges undone). The fit must know them: a fit that saw them as part of
    the device's distortion would correct the same field error the shim does, two integrators
    on one error, and together they overshoot until the shim diverges. Known, the fit measures
    the device alone (its correction converges to minus the device's offsets) and the shim
    learns only what the fit has not removed."""
    labels = list(job.bqm.variables)
    h = np.array([programmed.linear[v] for v in labels])
    phi = np.array([job.field_shim.get(v, 0.0) for v in labels])
    g = np.ones((1, len(labels))) if signs is None else signs.astype(np.float64)
    # each read's field in its call's gauge, where the shim adds φ, as `ShimComposite` does
    applied, _ = within_range(g * h, phi, guard.h_range)
    return g * applied
