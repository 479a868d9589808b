"""What `dvae-q calibrate` runs (`calibrate_cli`): a sampler built from a topology and a seed,
calibrated on a random probe RBM of the topology (`random_native_model`)."""

from __future__ import annotations

import dataclasses
import inspect

import torch

from samplers.base import SamplerOptionError, import_object
from samplers.calibration import (
    CalibrationResult,
    CalibrationSettingError,
    calibrate,
    check_calibration_settings,
    spawn_seeds,
)
from samplers.model import BipartiteModel


def random_native_model(topology, num_left=None, num_right=None, *, scale: float = 1.0,
                        seed: int = 0) -> BipartiteModel:
    """A random RBM on a topology's native mask (weights, biases ~ N(0, scale²/4)) — the
    calibration probe when no trained prior is given."""
    if topology.mode == "native":
        _, _, mask = topology.native_rbm(num_left, num_right)
        n_l, n_r = mask.shape
    else:
        n_l, n_r, mask = num_left or 16, num_right or 16, None
    g = torch.Generator().manual_seed(seed)
    normal = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64) * scale / 2  # noqa: E731
    return BipartiteModel(normal(n_l), normal(n_r), normal(n_l, n_r),
                          None if mask is None else mask.double())


def _factory_takes_seed(spec) -> bool:
    """Whether a "module:callable" child factory accepts `seed` (unresolvable specs are left to
    the qpu sampler, which reports them)."""
    if not isinstance(spec, str):
        return False
    try:
        factory = import_object(spec, "child sampler")
        return "seed" in inspect.signature(factory).parameters
    except (SamplerOptionError, TypeError, ValueError):
        return False


# what each correction reports (info keys of the qpu sampler's draws) and how it is printed
SHIM_KEYS = ("flux_bias_shim", "flux_bias_magnetisation_error")
FIT_KEYS = ("learn_device_hamiltonian", "hamiltonian_rms_residual_h")


def _correction_lines(before: dict, after: dict, rounds: int) -> tuple:
    lines = []
    if SHIM_KEYS[1] in before:
        lines.append(f"flux-bias shim: per-qubit magnetisation error (RMS) "
                     f"{before[SHIM_KEYS[1]]:.4f} before, {after[SHIM_KEYS[1]]:.4f} after "
                     f"{rounds} more calls (offsets RMS {after['flux_bias_rms']:.4f})")
    if FIT_KEYS[1] in before:
        def pair(info, key):
            return f"h {info[key + '_h']:.4f} / J {info[key + '_j']:.4f}"

        lines.append(f"device Hamiltonian: effective - model RMS error "
                     f"{pair(before, 'hamiltonian_rms_residual')} before, "
                     f"{pair(after, 'hamiltonian_rms_residual')} after {rounds} more calls "
                     f"(fit standard error {pair(after, 'hamiltonian_rms_stderr')}; "
                     f"{after['hamiltonian_clipped']} terms clipped to the ranges)")
    return tuple(lines)


def calibrate_cli(topology, sampler: str = "qpu", num_reads: int = 1000, seed: int = 0,
                  child_sampler=None, num_left=None, num_right=None, estimator: str = "mpl",
                  num_bootstrap: int = 100, max_iterations: int = 5, progress=None,
                  shim: bool = False, fit_hamiltonian: bool = False,
                  correction_rounds: int = 5) -> CalibrationResult:
    """What `dvae-q calibrate` runs: calibrate `sampler` on a random native probe RBM of
    `topology` (or a dense 16+16 one for embedded topologies); str() of the result is the report.

    `shim`, `fit_hamiltonian`: after the β_eff calibration, a second sampler of the same child
    with the calibrated β_eff and the qpu sampler's `flux_bias_shim` / `learn_device_hamiltonian`
    on draws `correction_rounds` + 1 calls; the report gives each correction's residual on the
    first (nothing learned yet) and the last. (Learning during the β_eff loop would let the
    corrections absorb part of a β_eff error.)

    `seed` determines everything: independent streams for the probe RBM, the sampler, a child
    factory that accepts `seed` (e.g. samplers.testing:thermal_mock), the bootstrap and the
    energy reference, so the same seed prints the same report.
    """
    import samplers
    import topologies

    check_calibration_settings(num_reads, estimator, num_bootstrap, max_iterations)
    topo = topologies.load(topology)
    model_seed, sampler_seed, child_seed, calibration_seed = spawn_seeds(seed, 4)
    declared = samplers.declared_options(sampler)
    options = {}
    if child_sampler is not None:
        if "child_sampler" not in declared:
            raise CalibrationSettingError(
                f"calibrate: sampler '{sampler}' takes no child sampler (only 'qpu' does)")
        options["child_sampler"] = child_sampler
        if _factory_takes_seed(child_sampler):
            options["child_kwargs"] = {"seed": child_seed}
    if "num_reads" in declared:
        options["num_reads"] = num_reads
    corrections = {}
    for wanted, key in ((shim, SHIM_KEYS[0]), (fit_hamiltonian, FIT_KEYS[0])):
        if wanted:
            if key not in declared:
                raise CalibrationSettingError(
                    f"calibrate: sampler '{sampler}' has no {key} (only 'qpu' does)")
            corrections[key] = True
    corrected = bool(corrections)
    if corrected and (isinstance(correction_rounds, bool) or not isinstance(correction_rounds, int)
                      or correction_rounds < 1):
        raise CalibrationSettingError("calibrate: correction rounds must be an int >= 1")
    run = {"seed": sampler_seed, "topology": topology}
    # built first, so that options it refuses are refused before any call is made
    learner = samplers.get(sampler, run=run, **options, **corrections) if corrected else None
    smp = samplers.get(sampler, run=run, **options)
    model = random_native_model(topo, num_left, num_right, seed=model_seed)
    result = calibrate(smp, model, num_samples=num_reads, estimator=estimator,
                       num_bootstrap=num_bootstrap, max_iterations=max_iterations,
                       seed=calibration_seed, progress=progress)
    if not corrected:
        return result
    smp.close()
    smp = learner
    smp.set_beta_eff(result.beta_eff)
    before = after = smp.draw(model, num_reads).info
    for _ in range(correction_rounds):
        after = smp.draw(model, num_reads).info
    return dataclasses.replace(result, corrections=_correction_lines(before, after,
                                                                     correction_rounds))
