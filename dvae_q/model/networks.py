"""Encoder and decoder networks of the four published structures.

MLP block: Linear → [BatchNorm → tanh] per hidden layer, last Linear plain. Weights use TF-1's
variance-scaling init (truncated normal, σ = sqrt(2.6/fan_in), cut at ±2σ: effective std
sqrt(2/fan_in)); biases start at zero. BatchNorm: PyTorch momentum 0.2 (TF's 0.8), ε = 1e−2.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

NUM_PIXELS = 784
BN_MOMENTUM = 0.2
BN_EPS = 1e-2


@dataclass(frozen=True)
class Structure:
    """One row of the published structure table. The latent size can be overridden per model;
    these numbers are the defaults that reproduce the paper."""

    name: str
    num_groups: int
    units_per_group: int
    hidden_layers: int  # per MLP (encoder groups and decoder); 0 = purely linear
    width: int

    @property
    def num_latent(self) -> int:
        """Default latent size N = groups × units (RBM N/2 + N/2)."""
        return self.num_groups * self.units_per_group


STRUCTURES = {
    s.name: s
    for s in (
        Structure("1-layer-lin", 1, 200, 0, 200),
        Structure("1-layer-nonlin", 1, 200, 2, 200),
        Structure("2-layer-nonlin", 2, 200, 2, 200),
        Structure("4-layer-nonlin", 4, 100, 2, 200),
    )
}


def get_structure(name: str) -> Structure:
    """The registered structure `name`; ValueError naming the known ones otherwise."""
    if name not in STRUCTURES:
        raise ValueError(f"unknown structure '{name}'; known: {', '.join(STRUCTURES)}")
    return STRUCTURES[name]


def init_dense(layer: nn.Linear) -> None:
    """TF-1 variance_scaling_initializer defaults: truncated normal, std sqrt(2.6/fan_in)."""
    sigma = math.sqrt(2.6 / layer.in_features)
    nn.init.trunc_normal_(layer.weight, std=sigma, a=-2 * sigma, b=2 * sigma)
    nn.init.zeros_(layer.bias)


class MLP(nn.Sequential):
    """Linear → [BatchNorm → tanh] × hidden_layers, then a plain Linear."""

    def __init__(self, in_features: int, out_features: int, hidden_layers: int, width: int):
        layers: list[nn.Module] = []
        size = in_features
        for _ in range(hidden_layers):
            layers += [nn.Linear(size, width), nn.BatchNorm1d(width, eps=BN_EPS, momentum=BN_MOMENTUM), nn.Tanh()]
            size = width
        layers.append(nn.Linear(size, out_features))
        super().__init__(*layers)
        for layer in self:
            if isinstance(layer, nn.Linear):
                init_dense(layer)


class Decoder(nn.Module):
    """p(x|ζ): an MLP on all of ζ plus the fixed bias logit(clip(x̄, 1e−3, 1 − 1e−3)), a constant."""

    def __init__(self, num_latent: int, hidden_layers: int, width: int, x_mean: torch.Tensor):
        super().__init__()
        self.net = MLP(num_latent, NUM_PIXELS, hidden_layers, width)
        clipped = torch.as_tensor(x_mean, dtype=torch.float32).clamp(1e-3, 1 - 1e-3)
        self.register_buffer("x_bias", torch.log(clipped) - torch.log1p(-clipped))

    def forward(self, zeta: torch.Tensor) -> torch.Tensor:
        h = zeta
        for layer in itertools.islice(self.net, len(self.net) - 1):
            h = layer(h)
        last = self.net[-1]
        # the constant bias folded into the last layer's: one pass over the (rows, 784) output
        # fewer, the same logits up to rounding
        return F.linear(h, last.weight, last.bias + self.x_bias)


class Encoder(nn.Module):
    """Hierarchical q: group g's logits = MLP_g([x − x̄, ζ_1, …, ζ_{g−1}])."""

    def __init__(self, num_groups: int, units: int, hidden_layers: int, width: int, heads: int,
                 x_mean: torch.Tensor):
        super().__init__()
        self.units = units
        self.groups = nn.ModuleList(
            MLP(NUM_PIXELS + g * units, heads * units, hidden_layers, width) for g in range(num_groups)
        )
        self.register_buffer("x_mean", torch.as_tensor(x_mean, dtype=torch.float32).clone())

    def group_output(self, g: int, x: torch.Tensor, previous: list[torch.Tensor]) -> torch.Tensor:
        """Raw output of group g's MLP (U logits, or 2U for two heads) given x and ζ_<g, row by
        row: the reference computation."""
        inputs = torch.cat([x - self.x_mean, *previous], dim=-1)
        return self.groups[g](inputs)

    def group_output_shared(self, g: int, x: torch.Tensor, previous: list[torch.Tensor],
                            k: int) -> torch.Tensor:
        """`group_output` for the rows of x (B, 784) each repeated k times (copies adjacent), with
        ζ_<g given for those B·k rows.

        The first layer's data part W_x·(x − x̄) + b is computed once per data point and
        repeated; the ζ part is added per row. BatchNorm after it still sees all B·k rows. The
        same function as `group_output` on repeated rows up to float rounding (one product is
        split in two), without the k-fold work on the 784 data inputs, forward and backward.
        """
        mlp = self.groups[g]
        first = mlp[0]
        h = F.linear(x - self.x_mean, first.weight[:, :NUM_PIXELS], first.bias)
        if k > 1:
            h = h.repeat_interleave(k, 0)
        if previous:
            h = torch.addmm(h, torch.cat(previous, -1), first.weight[:, NUM_PIXELS:].T)
        for layer in itertools.islice(mlp, 1, None):
            h = layer(h)
        return h
