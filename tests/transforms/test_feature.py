"""Feature Transformation: closed forms, λ draws, the queue, gradients, identities, devices."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from contrastlab.config import FTConfig, load_config
from contrastlab.transforms.feature import (
    extrapolate_positive,
    feature_transform,
    interpolate_negatives,
    interpolate_positive,
    is_active,
    lambda_shape,
    sample_beta,
    sample_lambda,
    transform_features,
)

FT_ON = FTConfig(pos="extrapolate", neg="interpolate")
GRANULARITIES = ["step", "sample", "element"]


def unit(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=-1)


def features(b=8, k=32, d=16, dtype=torch.float64, seed=0):
    q = unit(b, d, seed=seed, dtype=dtype).requires_grad_()
    key = unit(b, d, seed=seed + 1, dtype=dtype)
    queue = unit(k, d, seed=seed + 2, dtype=dtype)
    return q, key, queue


def info_nce(q, k, negatives, temperature=0.2):
    l_pos = (q * k).sum(1, keepdim=True)
    l_neg = q @ negatives.T
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# Closed forms of positive extrapolation / interpolation
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [1.0, 1.1, 1.5, 1.9, 2.0, 0.0, 0.3, 0.5, 0.8])
def test_closed_forms_for_unit_vectors(lam):
    q, k, _ = features(b=64, d=32)
    q = q.detach()
    s = (q * k).sum(1)
    mix = extrapolate_positive if lam >= 1 else interpolate_positive
    q_hat, k_hat = mix(q, k, lam)
    c = 2 * lam * (lam - 1) * (1 - s)
    torch.testing.assert_close((q_hat * k_hat).sum(1), s - c, rtol=0, atol=1e-12)
    torch.testing.assert_close(q_hat.pow(2).sum(1), 1 + c, rtol=0, atol=1e-12)
    torch.testing.assert_close(k_hat.pow(2).sum(1), 1 + c, rtol=0, atol=1e-12)
    if lam >= 1:
        assert ((q_hat * k_hat).sum(1) <= s + 1e-12).all()  # harder positives
    else:
        assert ((q_hat * k_hat).sum(1) >= s - 1e-12).all()  # easier positives


def test_closed_forms_per_sample_lambda_and_renormalized_cosine():
    q, k, queue = features(b=64, d=32)
    lam = 1 + torch.rand(64, 1, generator=gen(3), dtype=torch.float64)
    cfg = FTConfig(pos="extrapolate", granularity="sample", renormalize=True)
    out = feature_transform(q, k, queue, cfg, epoch=0, lam_pos=lam)
    s = (q * k).sum(1).detach()
    c = 2 * lam[:, 0] * (lam[:, 0] - 1) * (1 - s)
    # Re-normalized: cos(q̂, k̂) = (s − c) / (1 + c).
    torch.testing.assert_close((out.q * out.k).sum(1), (s - c) / (1 + c), rtol=0, atol=1e-12)
    torch.testing.assert_close(out.q.norm(dim=1), torch.ones(64, dtype=torch.float64))


def test_drawn_extrapolation_always_lowers_the_positive_score():
    q, k, queue = features(b=256, d=32)
    for granularity in ("step", "sample"):
        cfg = dataclasses.replace(FT_ON, granularity=granularity)
        q_hat, k_hat, _ = transform_features(q, k, queue, cfg, 0, generator=gen(1))
        assert ((q_hat * k_hat).sum(1) <= (q * k).sum(1) + 1e-12).all()


# ----------------------------------------------------------------------------------------------
# λ: ranges, shapes, statistics
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("distribution", ["beta", "uniform"])
@pytest.mark.parametrize("pos", ["extrapolate", "interpolate"])
def test_lambda_ranges_and_shapes(granularity, distribution, pos):
    b, n, d = 64, 256, 16
    q, k, queue = features(b=b, k=n, d=d)
    cfg = FTConfig(pos=pos, neg="interpolate", distribution=distribution, granularity=granularity)
    out = feature_transform(q, k, queue, cfg, epoch=0, generator=gen(7))
    assert out.lam_pos.shape == lambda_shape(granularity, b, d)
    assert out.lam_neg.shape == lambda_shape(granularity, n, d)
    assert {"step": (), "sample": (b, 1), "element": (b, d)}[granularity] == out.lam_pos.shape
    low = 1.0 if pos == "extrapolate" else 0.0
    assert (out.lam_pos >= low).all() and (out.lam_pos <= low + 1).all()
    assert (out.lam_neg >= 0).all() and (out.lam_neg <= 1).all()
    if granularity != "step":  # genuinely one draw per row / element, not a broadcast scalar
        assert out.lam_pos.unique().numel() > b // 2
        assert out.lam_neg.unique().numel() > n // 2


@pytest.mark.parametrize("alpha", [0.5, 1.6, 2.0, 8.0])
def test_beta_moments(alpha):
    n = 200_000
    x = sample_beta((n,), alpha, generator=gen(int(alpha * 10)), dtype=torch.float64)
    assert x.min() >= 0 and x.max() <= 1
    var = 1 / (4 * (2 * alpha + 1))  # Var Beta(α, α)
    assert abs(x.mean().item() - 0.5) < 6 * (var / n) ** 0.5
    assert abs(x.var().item() - var) < 0.02 * var + 5e-4


def test_uniform_and_extrapolation_moments():
    n = 200_000
    u = sample_lambda((n,), 2.0, "uniform", low=1.0, high=2.0, generator=gen(1))
    assert abs(u.mean().item() - 1.5) < 0.003 and abs(u.var().item() - 1 / 12) < 0.002
    b = sample_lambda((n,), 2.0, "beta", low=1.0, high=2.0, generator=gen(2))
    assert abs(b.mean().item() - 1.5) < 0.003 and abs(b.var().item() - 1 / 20) < 0.002


def test_each_side_uses_its_own_alpha():
    # Element granularity gives many draws from one step: Var = 1/(4(2α+1)) tells the α apart.
    q, k, queue = features(b=512, k=1024, d=64)
    cfg = FTConfig(
        pos="interpolate", neg="interpolate", granularity="element", alpha_pos=0.5, alpha_neg=5.0
    )
    out = feature_transform(q, k, queue, cfg, epoch=0, generator=gen(5))
    assert abs(out.lam_pos.var().item() - 1 / 8) < 0.005
    assert abs(out.lam_neg.var().item() - 1 / 44) < 0.002


def test_step_granularity_varies_between_steps():
    q, k, queue = features()
    g = gen(0)
    lams = [feature_transform(q, k, queue, FT_ON, 0, generator=g).lam_pos for _ in range(20)]
    assert len({round(x.item(), 12) for x in lams}) == 20


def test_bad_choices_raise():
    with pytest.raises(ValueError):
        lambda_shape("batch", 4, 4)
    with pytest.raises(ValueError):
        sample_lambda((), 1.0, "gauss")
    with pytest.raises(ValueError):
        sample_beta((), 0.0)


@pytest.mark.parametrize(
    "field,value,valid",
    [
        ("pos", "bogus", "none, extrapolate, interpolate"),
        ("pos", "Extrapolate", "none, extrapolate, interpolate"),  # case matters
        ("neg", "extrapolate", "none, interpolate"),
        ("distribution", "gauss", "beta, uniform"),
        ("granularity_pos", "pixel", "null, step, sample, element"),
    ],
)
@pytest.mark.parametrize("start_epoch", [0, 5])  # refused before the start epoch too
def test_an_unknown_ft_value_is_refused_naming_the_valid_ones(field, value, valid, start_epoch):
    # An FTConfig built in Python is not checked on construction; a misspelt positive side ran
    # as interpolation (easier positives, λ in [0, 1]) instead of an error.
    q, k, queue = features()
    cfg = FTConfig(**{"pos": "extrapolate", field: value, "start_epoch": start_epoch})
    message = f"ft.{field}='{value}' is not valid; valid values: {valid}"
    with pytest.raises(ValueError, match=message):
        transform_features(q, k, queue, cfg, 0)
    with pytest.raises(ValueError, match="is not valid"):
        feature_transform(q, k, queue, cfg, 0, generator=gen(0))
    with pytest.raises(ValueError, match="is not valid"):
        is_active(cfg, 0)


@pytest.mark.parametrize(
    "field,value,message",
    [
        # before: "alpha must be positive, got -1" (which alpha?), or NaN draws for nan
        ("alpha_pos", -1, "ft.alpha_pos must be a number > 0, got -1"),
        ("alpha_neg", 0.0, "ft.alpha_neg must be a number > 0, got 0.0"),
        ("alpha_pos", math.nan, "ft.alpha_pos must be a number > 0, got nan"),
        ("alpha_neg", "2", "ft.alpha_neg must be a number > 0, got '2'"),
        ("start_epoch", -1, "ft.start_epoch must be an integer >= 0, got -1"),
        ("start_epoch", 1.5, "ft.start_epoch must be an integer >= 0, got 1.5"),
        ("renormalize", 1, "ft.renormalize must be True or False, got 1"),
        ("renormalize_negatives", "no", "ft.renormalize_negatives must be True or False"),
    ],
)
def test_a_number_out_of_range_names_its_ft_key(field, value, message):
    q, k, queue = features()
    cfg = FTConfig(**{"pos": "extrapolate", "neg": "interpolate", field: value})
    for call in (
        lambda: transform_features(q, k, queue, cfg, 0),
        lambda: feature_transform(q, k, queue, cfg, 0, generator=gen(0)),
        lambda: is_active(cfg, 0),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            call()


def test_sample_beta_refuses_an_alpha_that_is_not_a_positive_number():
    for alpha in (math.nan, -1, "1"):  # before: NaN draws for nan, a TypeError for "1"
        with pytest.raises(ValueError, match="alpha must be a number > 0"):
            sample_beta((), alpha)


@pytest.mark.parametrize("pos,low,high", [("extrapolate", 1.0, 2.0), ("interpolate", 0.0, 1.0)])
def test_each_positive_choice_draws_its_own_range(pos, low, high):
    q, k, queue = features()
    cfg = FTConfig(pos=pos, granularity="sample")
    lam = feature_transform(q, k, queue, cfg, 0, generator=gen(1)).lam_pos
    assert ((lam >= low) & (lam <= high)).all()


def _bad_features():
    q, k, queue = features(d=16)
    meta = [t.detach().to("meta") for t in (q, k, queue)]
    return {
        "negatives of another size": ((q, k, unit(32, 8)), None, "negatives have dimension 8"),
        "1-D q": ((q[0], k[0], queue), None, r"q must be a 2-D tensor \[B, d\]"),
        "k of another shape": ((q, k[:4], queue), None, "k must have the shape of q"),
        "1-D negatives": ((q, k, queue[0]), None, r"negatives must be a 2-D tensor \[K, d\]"),
        "integer features": (
            (q, k, queue.long()),
            None,
            "negatives must be floating-point features",
        ),
        "k on another device": ((q, meta[1], queue), None, "k is on meta but q is on cpu"),
        "generator on another device": (meta, gen(0), "generator is on cpu but the features"),
    }


@pytest.mark.parametrize("case", list(_bad_features()))
@pytest.mark.parametrize("cfg", [FT_ON, FTConfig()], ids=["on", "off"])
def test_wrong_features_are_refused_with_one_clear_error(case, cfg):
    # Before: negatives of dimension 8 against q of 16 gave n̂ [32, 8] (or, FT off, the inputs
    # back), a 1-D q an IndexError, a CPU generator for meta features no error at all.
    (q, k, queue), generator, message = _bad_features()[case]
    with pytest.raises(ValueError, match=message):
        transform_features(q, k, queue, cfg, 0, generator=generator)


def test_the_pure_transformations_check_their_shapes():
    q, k, queue = features()
    with pytest.raises(ValueError, match="q and k must have the same shape"):
        extrapolate_positive(q, k[:4], 1.5)
    with pytest.raises(ValueError, match="q and k must have the same shape"):
        interpolate_positive(q, k[:, :8], 0.5)
    with pytest.raises(ValueError, match="perm must be a permutation of the 32 negatives"):
        interpolate_negatives(queue, 0.5, torch.arange(31))


# ----------------------------------------------------------------------------------------------
# Negatives: the queue is only read; mixing equals a naive loop
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_negative_mixing_matches_naive_loop_and_leaves_queue_alone(granularity):
    q, k, queue = features(b=4, k=24, d=8)
    before = queue.clone()
    version = queue._version
    cfg = dataclasses.replace(FT_ON, granularity=granularity)
    out = feature_transform(q, k, queue, cfg, epoch=0, generator=gen(11))

    assert torch.equal(queue, before) and queue._version == version
    assert out.negatives is not queue and out.negatives.data_ptr() != queue.data_ptr()
    assert sorted(out.perm.tolist()) == list(range(24))
    assert not torch.equal(out.perm, torch.arange(24))

    lam = out.lam_neg
    expected = torch.empty_like(queue)
    for j in range(24):
        lj = lam if lam.dim() == 0 else lam[j]
        expected[j] = lj * queue[j] + (1 - lj) * queue[out.perm[j]]
    torch.testing.assert_close(out.negatives, expected, rtol=0, atol=1e-15)
    # The same permutation through the pure function (lerp rounds differently from the written-out
    # formula, at the last bit of float64).
    again = interpolate_negatives(queue, lam, out.perm)
    torch.testing.assert_close(again, expected, rtol=0, atol=1e-15)


def test_negative_mixing_alone_keeps_positives():
    q, k, queue = features()
    cfg = FTConfig(neg="interpolate")
    out = feature_transform(q, k, queue, cfg, epoch=0, generator=gen(0))
    assert torch.equal(out.q, q) and torch.equal(out.k, k) and out.lam_pos is None
    assert not torch.equal(out.negatives, queue)


# ----------------------------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_gradient_reaches_q_through_both_sides(granularity):
    q, k, queue = features(b=6, d=10)
    cfg = dataclasses.replace(FT_ON, granularity=granularity)
    out = feature_transform(q, k, queue, cfg, epoch=0, generator=gen(2))
    (out.q * out.k).sum().backward()
    lam = out.lam_pos
    # d(q̂·k̂)/dq = λ·k̂ + (1 − λ)·q̂: the first term through q̂, the second through k̂.
    analytic = lam * out.k.detach() + (1 - lam) * out.q.detach()
    torch.testing.assert_close(q.grad, analytic, rtol=0, atol=1e-12)
    through_q_hat_only = lam * out.k.detach()
    assert (q.grad - through_q_hat_only).abs().max() > 1e-3


def test_key_and_queue_get_no_gradient_even_if_they_ask_for_one():
    q, k, queue = features()
    k.requires_grad_()
    queue.requires_grad_()
    q_hat, k_hat, neg_hat = transform_features(q, k, queue, FT_ON, 0, generator=gen(0))
    assert not neg_hat.requires_grad
    info_nce(q_hat, k_hat, neg_hat).backward()
    assert k.grad is None and queue.grad is None
    assert q.grad is not None and q.grad.abs().max() > 0


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("renormalize", [False, True])
def test_gradcheck_full_infonce(granularity, renormalize):
    q, k, queue = features(b=3, k=7, d=5)
    cfg = dataclasses.replace(FT_ON, granularity=granularity, renormalize=renormalize)
    draws = feature_transform(q, k, queue, cfg, epoch=0, generator=gen(4))

    def loss(q_):
        out = feature_transform(
            q_, k, queue, cfg, 0, lam_pos=draws.lam_pos, lam_neg=draws.lam_neg, perm=draws.perm
        )
        return info_nce(*out.as_tuple())

    assert torch.autograd.gradcheck(loss, (q,))


# ----------------------------------------------------------------------------------------------
# Identities
# ----------------------------------------------------------------------------------------------


def test_lambda_one_is_plain_moco_exactly():
    q, k, queue = features(b=16, k=64, d=32, dtype=torch.float32)
    for granularity in GRANULARITIES:
        cfg = dataclasses.replace(FT_ON, granularity=granularity)
        b_shape = lambda_shape(granularity, 16, 32)
        n_shape = lambda_shape(granularity, 64, 32)
        out = feature_transform(
            q,
            k,
            queue,
            cfg,
            0,
            lam_pos=torch.ones(b_shape),
            lam_neg=torch.ones(n_shape),
            perm=torch.randperm(64),
        )
        assert torch.equal(out.q, q) and torch.equal(out.k, k) and torch.equal(out.negatives, queue)
        assert torch.equal(info_nce(*out.as_tuple()), info_nce(q, k, queue))


def test_off_returns_the_same_objects():
    q, k, queue = features()
    for cfg in (FTConfig(), FTConfig(pos="none", neg="none", start_epoch=0)):
        out = transform_features(q, k, queue, cfg, 5)
        assert out[0] is q and out[1] is k and out[2] is queue


def test_start_epoch():
    q, k, queue = features()
    cfg = dataclasses.replace(FT_ON, start_epoch=3)
    for epoch in (0, 2):
        out = transform_features(q, k, queue, cfg, epoch)
        assert out[0] is q and out[1] is k and out[2] is queue
    out = feature_transform(q, k, queue, cfg, 3, generator=gen(0))
    assert out.lam_pos is not None and not torch.equal(out.negatives, queue)


def test_generator_makes_draws_reproducible():
    q, k, queue = features()
    a = feature_transform(q, k, queue, FT_ON, 0, generator=gen(9))
    b = feature_transform(q, k, queue, FT_ON, 0, generator=gen(9))
    assert torch.equal(a.q, b.q) and torch.equal(a.negatives, b.negatives)
    assert set(a.log_values()) == {"ft/lam_pos", "ft/lam_neg"}


def test_dtypes():
    q, k, queue = features(dtype=torch.float32)
    out = feature_transform(q.bfloat16(), k.bfloat16(), queue, FT_ON, 0)
    assert out.q.dtype == out.k.dtype == out.negatives.dtype == out.lam_pos.dtype == torch.float32
    out = feature_transform(q, k, queue, FT_ON, 0)
    assert out.q.dtype == torch.float32
    q64, k64, queue64 = features()
    assert feature_transform(q64, k64, queue64, FT_ON, 0).lam_neg.dtype == torch.float64


# ----------------------------------------------------------------------------------------------
# Devices: every draw on the features' device, nothing read back to the host
# ----------------------------------------------------------------------------------------------


class _RecordDevices(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.outputs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        flat = result if isinstance(result, (tuple, list)) else [result]
        tensors = [t for t in flat if isinstance(t, torch.Tensor)]
        self.outputs += [(str(func), t.device, t.numel()) for t in tensors]
        return result


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_no_host_tensor_and_no_host_sync(granularity):
    # Meta tensors have no data: any .item() / host read would raise, and every tensor the
    # transformation creates must be on "meta", so a K×d draw on the CPU cannot hide.
    b, n, d = 256, 65536, 128
    q = torch.empty(b, d, device="meta", requires_grad=True)
    k = torch.empty(b, d, device="meta")
    queue = torch.empty(n, d, device="meta")
    cfg = dataclasses.replace(FT_ON, granularity=granularity, renormalize=True)
    with _RecordDevices() as rec:
        out = feature_transform(q, k, queue, cfg, 0)
    assert rec.outputs, "the recorder saw no ops"
    on_host = [o for o in rec.outputs if o[1].type != "meta"]
    assert not on_host, on_host
    assert out.lam_pos.device.type == out.lam_neg.device.type == out.perm.device.type == "meta"
    assert out.negatives.shape == (n, d)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_cuda_draws_stay_on_device(granularity):
    q, k, queue = (t.detach().float().cuda() for t in features(k=4096, d=128))
    cfg = dataclasses.replace(FT_ON, granularity=granularity)
    out = feature_transform(q, k, queue, cfg, 0, generator=torch.Generator("cuda").manual_seed(0))
    for t in (out.q, out.k, out.negatives, out.lam_pos, out.lam_neg, out.perm):
        assert t.is_cuda
    assert (out.lam_pos >= 1).all() and (out.lam_pos <= 2).all()


# ----------------------------------------------------------------------------------------------
# Presets
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["moco_v1_ft", "moco_v2_ft", "moco_v2_cifar_ft"])
def test_presets_load_with_published_settings(name):
    path = ["data.path=/data/imagenet"]  # the ImageNet presets need a folder to validate
    cfg = load_config(name, path)
    assert cfg.name == name and cfg.method == "moco"
    assert (cfg.ft.pos, cfg.ft.neg) == ("extrapolate", "interpolate")
    assert (cfg.ft.alpha_pos, cfg.ft.alpha_neg) == (2.0, 1.6)
    assert (cfg.ft.distribution, cfg.ft.granularity, cfg.ft.start_epoch) == ("beta", "step", 0)
    assert not cfg.ft.renormalize
    base = load_config(name.removesuffix("_ft"), path)
    assert dataclasses.replace(cfg, name=base.name, ft=base.ft) == base  # only ft and name change


# ----------------------------------------------------------------------------------------------
# The reference code's per-side options: dim_mask (granularity per side), postmix_norm
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dim_mask, pos_gran, neg_gran",
    [
        ("none", "step", "step"),
        ("pos", "element", "step"),
        ("neg", "step", "element"),
        ("both", "element", "element"),
    ],
)
def test_granularity_per_side_expresses_dim_mask(dim_mask, pos_gran, neg_gran):
    """Each side draws λ at its own granularity; the base key fills in a side left unset."""
    b, n, d = 16, 64, 8
    q, k, queue = features(b=b, k=n, d=d)
    cfg = FTConfig(
        pos="extrapolate",
        neg="interpolate",
        granularity="step",
        granularity_pos=None if pos_gran == "step" else pos_gran,
        granularity_neg=None if neg_gran == "step" else neg_gran,
    )
    out = feature_transform(q, k, queue, cfg, epoch=0, generator=gen(3))
    assert out.lam_pos.shape == {"step": (), "element": (b, d)}[pos_gran]
    assert out.lam_neg.shape == {"step": (), "element": (n, d)}[neg_gran]
    # with those draws, every element follows the formulas (float64 loops)
    lp = out.lam_pos.expand(b, d) if pos_gran == "step" else out.lam_pos
    ln = out.lam_neg.expand(n, d) if neg_gran == "step" else out.lam_neg
    lp, q, k = lp.detach(), q.detach(), k.detach()  # values only: no autograd warning
    out_q, out_k = out.q.detach(), out.k.detach()
    for i in range(b):
        for c in range(d):
            lam, qc, kc = float(lp[i, c]), float(q[i, c]), float(k[i, c])
            assert float(out_q[i, c]) == pytest.approx(lam * qc + (1 - lam) * kc)
            assert float(out_k[i, c]) == pytest.approx(lam * kc + (1 - lam) * qc)
    for j in range(n):
        m = int(out.perm[j])
        for c in range(d):
            lam = float(ln[j, c])
            expected = lam * float(queue[j, c]) + (1 - lam) * float(queue[m, c])
            assert float(out.negatives[j, c]) == pytest.approx(expected)


def test_single_sided_element_draws_from_beta_2_2():
    """The reference's single-sided runs: one λ per element from Beta(2, 2): mean 1/2, var 1/20."""
    q, k, queue = features(b=8, k=4096, d=32)
    cfg = FTConfig(neg="interpolate", alpha_neg=2.0, granularity_neg="element")
    out = feature_transform(q, k, queue, cfg, epoch=0, generator=gen(5))
    assert out.lam_pos is None and torch.equal(out.q, q) and torch.equal(out.k, k)
    lam = out.lam_neg.double()
    assert lam.shape == (4096, 32)
    assert lam.mean().item() == pytest.approx(0.5, abs=0.005)
    assert lam.var().item() == pytest.approx(1 / 20, rel=0.03)


@pytest.mark.parametrize("renormalize_negatives", [True, False])
def test_postmix_norm_renormalizes_q_and_k_only(renormalize_negatives):
    """``renormalize_negatives=false`` is the reference's postmix_norm: q̂ and k̂ back on the unit
    sphere, the mixed negatives left as they are; against float64 loops."""
    b, n, d = 6, 10, 5
    q, k, queue = features(b=b, k=n, d=d)
    lam_pos = 1 + torch.rand(b, d, generator=gen(1), dtype=torch.float64)
    lam_neg = torch.rand(n, d, generator=gen(2), dtype=torch.float64)
    perm = torch.randperm(n, generator=gen(3))
    cfg = FTConfig(
        pos="extrapolate",
        neg="interpolate",
        renormalize=True,
        renormalize_negatives=renormalize_negatives,
    )
    out = feature_transform(q, k, queue, cfg, 0, lam_pos=lam_pos, lam_neg=lam_neg, perm=perm)

    def normalized(v):
        norm = sum(x * x for x in v) ** 0.5
        return [x / norm for x in v]

    q, k = q.detach(), k.detach()  # values only: no autograd warning
    for i in range(b):
        lam = [float(v) for v in lam_pos[i]]
        qi, ki = [float(v) for v in q[i]], [float(v) for v in k[i]]
        q_hat = normalized([m * a + (1 - m) * c for m, a, c in zip(lam, qi, ki)])
        k_hat = normalized([m * c + (1 - m) * a for m, a, c in zip(lam, qi, ki)])
        assert out.q[i].tolist() == pytest.approx(q_hat, abs=1e-12)
        assert out.k[i].tolist() == pytest.approx(k_hat, abs=1e-12)
    for j in range(n):
        lam = [float(v) for v in lam_neg[j]]
        a, c = [float(v) for v in queue[j]], [float(v) for v in queue[int(perm[j])]]
        mixed = [m * x + (1 - m) * y for m, x, y in zip(lam, a, c)]
        expected = normalized(mixed) if renormalize_negatives else mixed
        assert out.negatives[j].tolist() == pytest.approx(expected, abs=1e-12)


def test_mean_log_values_averages_each_side_over_the_parts_that_have_it():
    from contrastlab.transforms.feature import mean_log_values

    parts = [
        {"ft/lam_pos": torch.tensor(1.2), "ft/lam_neg": torch.tensor(0.5)},
        {"ft/lam_pos": torch.tensor(1.6)},
        {},
    ]
    means = mean_log_values(parts)
    assert means.keys() == {"ft/lam_pos", "ft/lam_neg"}
    assert means["ft/lam_pos"].item() == pytest.approx(1.4)
    assert means["ft/lam_neg"].item() == pytest.approx(0.5)
    assert mean_log_values([{}, {}]) == {} and mean_log_values([]) == {}


@pytest.mark.parametrize("epoch", [-1, 1.5, True, "2"])
@pytest.mark.parametrize("pos", ["extrapolate", "none"])  # whether or not FT is on
def test_an_epoch_that_is_no_integer_from_0_is_refused_naming_it(epoch, pos):
    """transform_features ran with epoch=-1 (as before the start epoch) and epoch=1.5, while
    MoCo.forward refuses them: the same line now, from every FT entry point."""
    import numpy as np

    q, k, queue = features()
    cfg = FTConfig(pos=pos)
    message = f"epoch must be an integer >= 0, got {epoch!r}"
    for call in (
        lambda: transform_features(q, k, queue, cfg, epoch),
        lambda: feature_transform(q, k, queue, cfg, epoch, generator=gen(0)),
        lambda: is_active(cfg, epoch),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            call()
    assert transform_features(q, k, queue, cfg, np.int64(2))[0].shape == q.shape
