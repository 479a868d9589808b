"""Config validation, overrides, shipped configs, and the schedule functions."""

import math

import pytest
import torch

import samplers
from dvae_q.errors import BadInput
from dvae_q.training.config import REPO_CONFIGS, Config, config_from_dict, load_config
from dvae_q.training.schedule import kl_weight, learning_rate, torch_adam_eps


def test_defaults_follow_the_spec():
    cfg = Config()
    assert (cfg.steps, cfg.batch_size, cfg.learning_rate) == (1_000_000, 100, 3e-3)
    assert cfg.num_negative_samples == 1000
    # the sampler's own declared defaults are the paper's 1000 chains x 40 sweeps
    gibbs = samplers.get("gibbs", **cfg.sampler_options.get("gibbs", {}))
    assert (gibbs.options["num_chains"], gibbs.options["sweeps"]) == (1000, 40)
    assert (cfg.eval_iw_samples, cfg.final_iw_samples) == (100, 4000)
    assert load_config(None).eval_every == 20_000
    assert load_config(None, ["steps=100000"]).eval_every == 10_000
    assert load_config(None, ["steps=100000", "eval_every=500"]).eval_every == 500
    assert (cfg.ais_num_temps, cfg.ais_num_chains) == (1000, 1024)
    assert cfg.weight_decay == 1e-4 and cfg.kl_warmup_fraction == 0.3
    assert cfg.compile is None  # torch.compile decided by the device (on CUDA only)


def test_every_shipped_config_loads():
    files = sorted(REPO_CONFIGS.rglob("*.yaml"))
    assert len(files) >= 10
    for path in files:
        cfg = load_config(path)
        assert cfg.dataset in ("binarized_mnist", "omniglot")
    by_name = load_config("omniglot/2-layer-nonlin")
    assert (by_name.dataset, by_name.structure) == ("omniglot", "2-layer-nonlin")


@pytest.mark.parametrize(
    "override, message",
    [
        ("nosuchkey=1", "unknown config key 'nosuchkey'"),
        ("k=two", "config key 'k'"),
        ("k=0", "config key 'k'"),
        ("k=true", "config key 'k'"),
        ("beta=-3", "config key 'beta'"),
        ("method=dvae_sharp", "config key 'method'"),
        ("structure=8-layer", "config key 'structure'"),
        ("kl_warmup_fraction=1.5", "config key 'kl_warmup_fraction'"),
        ("learning_rate=.nan", "config key 'learning_rate'"),
        ("lr_factors=[1, 2]", "lr_factors"),
        ("num_latent=15", "num_latent"),
        ("eval_splits=[train]", "eval_splits"),
        ("steps", "key=value"),
        ("k.sub=1", "no sub-key"),
        ('compile="yes"', "config key 'compile': expected bool"),
        ("compile=1", "config key 'compile': expected bool"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(BadInput, match=message):
        load_config("binarized_mnist/1-layer-lin", [override])


def test_overrides_parse_yaml_and_merge_sampler_options(tmp_path):
    cfg = load_config(
        "binarized_mnist/4-layer-nonlin",
        ["k=5", "beta=null", "learning_rate=1e-3", "sampler_options.gibbs.num_chains=500"],
    )
    assert cfg.k == 5 and cfg.beta is None and cfg.learning_rate == 1e-3
    assert cfg.sampler_options["gibbs"] == {"num_chains": 500}
    assert samplers.get("gibbs", **cfg.sampler_options["gibbs"]).options["sweeps"] == 40
    path = tmp_path / "c.yaml"
    path.write_text("sampler_options:\n  neal:\n    num_sweeps: 7\nbeta: 20\n")
    cfg = load_config(path)
    assert cfg.sampler_options["neal"] == {"num_sweeps": 7} and cfg.beta == 20.0
    # a file setting one sampler's options leaves the others' as they were
    cfg = load_config(path, ["sampler_options.gibbs.num_chains=500"])
    assert cfg.sampler_options == {"neal": {"num_sweeps": 7}, "gibbs": {"num_chains": 500}}
    assert config_from_dict(cfg.to_dict()) == cfg


def test_bad_files(tmp_path):
    (tmp_path / "bad.yaml").write_text("k: [1,\n")
    with pytest.raises(BadInput, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(BadInput, match="mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "typo.yaml").write_text("stpes: 10\n")
    with pytest.raises(BadInput, match="unknown config key 'stpes'"):
        load_config(tmp_path / "typo.yaml")
    with pytest.raises(BadInput, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_learning_rate_schedule_matches_spec_table():
    lr = lambda t: learning_rate(t, 1_000_000, 3e-3, [0.02, 0.6, 0.75, 0.95], Config().lr_factors)
    assert lr(0) == pytest.approx(3e-4) and lr(19_999) == pytest.approx(3e-4)
    assert lr(20_000) == pytest.approx(3e-3) and lr(599_999) == pytest.approx(3e-3)
    assert lr(600_000) == pytest.approx(1e-3) and lr(749_999) == pytest.approx(1e-3)
    assert lr(750_000) == pytest.approx(3e-4) and lr(949_999) == pytest.approx(3e-4)
    assert lr(950_000) == pytest.approx(9.0909e-5, rel=1e-4)


def test_kl_warmup():
    assert kl_weight(0, 1000, 0.3) == 0.0
    assert kl_weight(150, 1000, 0.3) == pytest.approx(0.5)
    assert kl_weight(300, 1000, 0.3) == 1.0 and kl_weight(999, 1000, 0.3) == 1.0
    assert kl_weight(5, 1000, 0.0) == 1.0


def _tf_adam(params, grads_seq, lr, eps, b1=0.9, b2=0.999):
    """TF1 Adam written from its documented update: ε added to sqrt(v) before bias correction."""
    m = torch.zeros_like(params)
    v = torch.zeros_like(params)
    p = params.clone()
    for t, g in enumerate(grads_seq, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        lr_t = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        p = p - lr_t * m / (v.sqrt() + eps)
    return p


def test_torch_adam_with_scheduled_eps_equals_tf_adam():
    assert torch_adam_eps(1e-3, 1) == pytest.approx(3.16e-2, rel=1e-3)
    assert torch_adam_eps(1e-3, 1000) == pytest.approx(1.257e-3, rel=1e-3)
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(50, dtype=torch.float64, generator=gen)
    grads = [torch.randn(50, dtype=torch.float64, generator=gen) * 1e-3 for _ in range(30)]
    want = _tf_adam(start, grads, lr=0.01, eps=1e-3)
    w = torch.nn.Parameter(start.clone())
    opt = torch.optim.Adam([w], lr=0.01)
    for t, g in enumerate(grads, start=1):
        opt.param_groups[0]["eps"] = torch_adam_eps(1e-3, t)
        w.grad = g.clone()
        opt.step()
    torch.testing.assert_close(w.detach(), want, rtol=1e-10, atol=1e-12)
    # without the correction the tiny gradients make the two clearly differ
    w2 = torch.nn.Parameter(start.clone())
    opt2 = torch.optim.Adam([w2], lr=0.01, eps=1e-3)
    for g in grads:
        w2.grad = g.clone()
        opt2.step()
    assert (w2.detach() - want).abs().max() > 1e-4
