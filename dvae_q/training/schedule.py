"""Pure functions of the global step: learning rate, KL warm-up and the TF-equivalent Adam ε."""

from __future__ import annotations

import bisect
import math


def learning_rate(step: int, total_steps: int, base_lr: float, boundaries, factors) -> float:
    """Piecewise-constant LR of the DVAE# paper: factor i applies from boundary i−1 to boundary i.

    With the defaults: lr/10 for the first 2 % of training, lr until 60 %, lr/3 until 75 %,
    lr/10 until 95 %, lr/33 after. `boundaries` are fractions of `total_steps`.
    """
    cut = [b * total_steps for b in boundaries]
    return base_lr * factors[bisect.bisect_right(cut, step)]


def kl_weight(step: int, total_steps: int, warmup_fraction: float) -> float:
    """KL warm-up κ_t = min(t / (f·T), 1): linear over the first fraction f of training;
    κ = 1 when there is no warm-up."""
    if warmup_fraction <= 0:
        return 1.0
    return min(step / (warmup_fraction * total_steps), 1.0)


def torch_adam_eps(tf_eps: float, adam_step: int, beta2: float = 0.999) -> float:
    """PyTorch ε equivalent to TensorFlow's ε at Adam step t ≥ 1 (the paper trained with TF).

    TF adds ε to sqrt(v) before bias correction; PyTorch adds it after dividing sqrt(v) by
    sqrt(1 − β2^t). Equal updates need ε_torch = ε_tf / sqrt(1 − β2^t).
    """
    return tf_eps / math.sqrt(1.0 - beta2**adam_step)
