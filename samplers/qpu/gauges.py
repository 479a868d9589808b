"""Spin-reversal transforms (gauges) spread over a draw's calls and copies.

A gauge g ∈ {±1}ⁿ maps the Ising problem (h, J) to (g_i h_i, g_i g_j J_ij) and a sample s of it
to g ∘ s of the original: an ideal sampler is unaffected, while a device error that does not
transform with the problem (a field offset δ_i) enters the original frame as g_i δ_i, so averaging
over gauges cancels it to first order. Multiplicative errors and β factors are gauge invariant
and are not corrected.

Each QPU call of a draw gets its own random gauge over *all* the call's variables, applied by
dwave-preprocessing's `SpinReversalTransformComposite` with exactly one transform per call (its
`srts` argument), so a call stays one QMI. Since the variables of different copies (tiles) are
disjoint, every copy of every call has an independent transform: a draw of C calls of T copies
averages C·T transforms at no cost. `spin_reversal_transforms: N` asks for at least N; when C·T <
N the draw is spread over ⌈N / T⌉ calls instead (`min_calls`), each costing a programming.

The gauge of a call is a function of the sampler's gauge seed, the draw's index (draws counted in
submission order), the call's part of a tiled draw and its index, so resuming a run or
resubmitting a draw in flight programs the same transforms, and no generator state is added.
"""

from __future__ import annotations

import dimod
import numpy as np

from samplers.qpu.errors import QPUConfigError

# separates the gauges' streams from the sampler's other uses of its seed
STREAM = 0x5127


def min_calls(transforms: int, tiles: int) -> int:
    """Calls a draw needs for `transforms` gauges when each call carries `tiles` copies."""
    return -(-transforms // tiles) if transforms else 1


def flips(key: tuple, num_variables: int) -> np.ndarray:
    """The call's transform: which variables (in the problem's order) it flips, shape (1, n)."""
    rng = np.random.default_rng([STREAM, *key])
    return (rng.random(num_variables) < 0.5)[None, :]


def check_supported() -> None:
    """QPUConfigError unless the installed dwave-preprocessing takes explicit transforms (its
    `srts` argument, new in 0.6.10; older releases would pass it on to the solver)."""
    import inspect

    from dwave.preprocessing import SpinReversalTransformComposite

    if "srts" not in inspect.signature(SpinReversalTransformComposite.sample).parameters:
        raise QPUConfigError("sampler 'qpu' option 'spin_reversal_transforms' needs "
                             "dwave-preprocessing >= 0.6.10; upgrade it or set the option to 0")


def composite(sampler):
    """`sampler` behind a spin-reversal transform (one per call, given by `flips`)."""
    from dwave.preprocessing import SpinReversalTransformComposite

    return SpinReversalTransformComposite(sampler)


def undo(bqm: dimod.BinaryQuadraticModel, labels, flipped: np.ndarray):
    """The SPIN problem `bqm` (a gauged problem as sent) back in the original frame; `flipped`
    says which of `labels` the gauge flipped."""
    sign = dict(zip(labels, np.where(np.asarray(flipped).ravel(), -1.0, 1.0)))
    order = list(bqm.variables)
    g = np.array([sign[v] for v in order])
    h, (row, col, quad), offset = bqm.to_numpy_vectors(variable_order=order)
    return dimod.BinaryQuadraticModel.from_numpy_vectors(
        g * h, (row, col, g[row] * g[col] * quad), offset, dimod.SPIN, variable_order=order)
