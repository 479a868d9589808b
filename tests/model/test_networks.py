"""Encoder/decoder conventions of the published structures (table, init, BatchNorm, data-mean
bias, x − x̄)."""

import math

import pytest
import torch
import torch.nn as nn

from dvae_q.model.networks import BN_EPS, BN_MOMENTUM, STRUCTURES, Decoder, Encoder, get_structure


def x_mean(seed=0):
    return torch.rand(784, generator=torch.Generator().manual_seed(seed)) * 0.8 + 0.05


# the papers' structure table, transcribed independently: groups, units, hidden layers, width, N
@pytest.mark.parametrize("name, groups, units, hidden, width, n", [
    ("1-layer-lin", 1, 200, 0, 200, 200),
    ("1-layer-nonlin", 1, 200, 2, 200, 200),
    ("2-layer-nonlin", 2, 200, 2, 200, 400),
    ("4-layer-nonlin", 4, 100, 2, 200, 400),
])
def test_structure_table(name, groups, units, hidden, width, n):
    s = get_structure(name)
    assert (s.num_groups, s.units_per_group, s.hidden_layers, s.width, s.num_latent) == (
        groups, units, hidden, width, n)


def test_unknown_structure_lists_known_ones():
    with pytest.raises(ValueError, match="4-layer-nonlin"):
        get_structure("3-layer")
    assert set(STRUCTURES) == {"1-layer-lin", "1-layer-nonlin", "2-layer-nonlin", "4-layer-nonlin"}


def test_hierarchical_encoder_inputs_and_heads():
    torch.manual_seed(0)  # network init draws from the global generator
    enc = Encoder(4, 100, 2, 200, heads=2, x_mean=x_mean())
    assert len(enc.groups) == 4
    for g, mlp in enumerate(enc.groups):
        assert mlp[0].in_features == 784 + g * 100 and mlp[-1].out_features == 200
        # Linear → BN → tanh, twice, then a plain Linear
        kinds = [type(m) for m in mlp]
        assert kinds == [nn.Linear, nn.BatchNorm1d, nn.Tanh] * 2 + [nn.Linear]
    lin = Encoder(1, 8, 0, 200, heads=1, x_mean=x_mean())
    assert [type(m) for m in lin.groups[0]] == [nn.Linear]


def test_encoder_sees_x_minus_mean():
    torch.manual_seed(0)
    xm = x_mean()
    enc = Encoder(1, 8, 0, 200, heads=1, x_mean=xm)
    lin = enc.groups[0][0]
    x = (torch.rand(3, 784, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    want = (x - xm) @ lin.weight.T  # biases start at zero
    torch.testing.assert_close(enc.group_output(0, x, []), want)
    assert float(enc.group_output(0, xm.unsqueeze(0), []).detach().abs().max()) == 0.0


def test_batchnorm_momentum_and_eps():
    torch.manual_seed(0)
    dec = Decoder(16, 2, 200, x_mean())
    bns = [m for m in dec.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(bns) == 2
    # TF momentum 0.8 is PyTorch 0.2: after one batch, running = 0.8·0 + 0.2·batch mean
    assert BN_MOMENTUM == 0.2 and BN_EPS == 1e-2
    assert all(bn.momentum == 0.2 and bn.eps == 1e-2 and bn.affine for bn in bns)
    z = torch.rand(32, 16, generator=torch.Generator().manual_seed(2))
    dec.train()
    dec(z)
    h = dec.net[0](z)
    torch.testing.assert_close(bns[0].running_mean, 0.2 * h.mean(0).detach())


def test_truncated_variance_scaling_init():
    torch.manual_seed(0)  # fixed so the sample std below is reproducible
    enc = Encoder(1, 200, 2, 200, heads=1, x_mean=x_mean())
    for layer in (m for m in enc.modules() if isinstance(m, nn.Linear)):
        sigma = math.sqrt(2.6 / layer.in_features)
        assert float(layer.weight.detach().abs().max()) <= 2 * sigma + 1e-6
        # a normal truncated at ±2σ has std 0.8796σ ≈ sqrt(2/fan_in) (TF-1 variance scaling);
        # ≥ 40,000 draws give a relative standard error below 0.5 %, so 3 % is > 6σ
        assert float(layer.weight.detach().std()) == pytest.approx(0.8796 * sigma, rel=0.03)
        assert float(layer.bias.detach().abs().sum()) == 0.0


def test_decoder_data_mean_logit_bias():
    xm = x_mean()
    xm[:3] = torch.tensor([0.0, 1.0, 0.5])
    dec = Decoder(8, 0, 200, xm)
    assert "x_bias" in dict(dec.named_buffers()) and "x_bias" not in dict(dec.named_parameters())
    c = xm.clamp(1e-3, 1 - 1e-3)
    torch.testing.assert_close(dec.x_bias, torch.log(c / (1 - c)))
    assert float(dec.x_bias[0]) == pytest.approx(math.log(1e-3 / 0.999), rel=1e-5)
    # with ζ = 0 and zero-initialised last-layer bias the logits are exactly the data-mean bias
    torch.testing.assert_close(dec(torch.zeros(2, 8)), dec.x_bias.expand(2, -1))


@pytest.mark.parametrize("hidden", [0, 2])
def test_shared_data_layer_equals_the_row_by_row_encoder(hidden):
    # W·[x − x̄; ζ] + b as W_x·(x − x̄) + b once per point, repeated, plus W_ζ·ζ per row: the same
    # function of x and ζ; in float64 one product split in two moves the result by rounding only
    torch.manual_seed(0)  # network init draws from the global generator
    enc = Encoder(3, 5, hidden, 16, heads=2, x_mean=x_mean()).double()
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(4, 784, generator=g) < 0.3).double()
    k = 3
    zetas = [torch.rand(12, 5, generator=g, dtype=torch.float64) for _ in range(2)]
    rows = x.repeat_interleave(k, 0)
    for group in range(3):
        want = enc.group_output(group, rows, zetas[:group])
        got = enc.group_output_shared(group, x, zetas[:group], k)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # k = 1 with no earlier group is the very same product
    assert torch.equal(enc.group_output_shared(0, x, [], 1), enc.group_output(0, x, []))


def test_decoder_folds_the_data_mean_bias_into_its_last_layer():
    # logits = MLP(ζ) + logit(x̄): folding the constant into the last bias changes rounding only
    torch.manual_seed(0)  # network init draws from the global generator
    dec = Decoder(16, 2, 32, x_mean()).double()
    with torch.no_grad():
        dec.net[-1].bias.normal_()
    z = torch.rand(7, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(dec(z), dec.net(z) + dec.x_bias, rtol=1e-12, atol=1e-12)
