"""One training step of MoCo / LooC against a step written out by hand in float64.

The reference repeats the step from its parts: the momentum update θ_k ← m·θ_k + (1 − m)·θ_q on
the parameters, keys through a copy of the key encoder with *plain* batch norm applied to each
sub-batch of the shuffled key batch (what split BN + shuffle + unshuffle must amount to), the
InfoNCE loss as a loop, and the queue after the enqueue. A step that skips the momentum update,
the key shuffle or the unshuffle, or applies no Feature Transformation, disagrees with it.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from test_moco import naive_infonce

from contrastlab.config import load_config
from contrastlab.methods.looc import LooC, LoocEncoder
from contrastlab.methods.moco import Encoder, MoCo

SPLITS = 2


def recorded_randperm(monkeypatch) -> list[torch.Tensor]:
    """Every permutation drawn by ``torch.randperm`` from now on, in order."""
    drawn: list[torch.Tensor] = []
    original = torch.randperm

    def randperm(*args, **kwargs):
        perm = original(*args, **kwargs)
        drawn.append(perm.clone())
        return perm

    monkeypatch.setattr(torch, "randperm", randperm)
    return drawn


def hand_momentum(online: torch.nn.Module, key: torch.nn.Module, m: float) -> dict:
    """The key encoder's state after θ_k ← m·θ_k + (1 − m)·θ_q (parameters only), in float64."""
    state = {name: t.detach().double().clone() for name, t in key.state_dict().items()}
    q_params = dict(online.named_parameters())
    for name, p_k in key.named_parameters():
        state[name] = m * p_k.detach().double() + (1.0 - m) * q_params[name].detach().double()
    return state


def per_sub_batch(plain: torch.nn.Module, x: torch.Tensor, splits: int, dim: int = 0):
    """``plain`` (ordinary BN, train mode) on each sub-batch ``s, s + S, ...`` of ``x``, reassembled."""
    parts = [plain(x[s::splits]) for s in range(splits)]
    out = torch.empty(
        *parts[0].shape[:dim], x.shape[0], *parts[0].shape[dim + 1 :], dtype=parts[0].dtype
    )
    for s, part in enumerate(parts):
        out.index_copy_(dim, torch.arange(s, x.shape[0], splits), part)
    return out


def shuffled_keys(plain, x, perm, splits, dim=0):
    """Keys of ``x`` when the batch ``x[perm]`` goes through split BN: output row i is image i."""
    shuffled = per_sub_batch(plain, x[perm], splits, dim)
    out = torch.empty_like(shuffled)
    out.index_copy_(dim, perm, shuffled)
    return out


def _moco_cfg(tiny_config, *extra):
    return tiny_config(f"model.bn_splits={SPLITS}", "moco.momentum=0.9", *extra)


def _plain(cfg, make):
    plain_cfg = copy.deepcopy(cfg)
    plain_cfg.model.bn_splits = 1
    return make(plain_cfg.model).double().train()


def test_moco_step_matches_a_float64_step_by_hand(tiny_config, monkeypatch):
    cfg = _moco_cfg(tiny_config)
    torch.manual_seed(0)
    model = MoCo(cfg).double().train()
    with torch.no_grad():  # make the two encoders differ, so that the update is visible
        for p in model.encoder_q.parameters():
            p.add_(0.05 * torch.randn_like(p))
    b = 8
    x_q = torch.randn(b, 3, 16, 16, dtype=torch.float64)
    x_k = torch.randn(b, 3, 16, 16, dtype=torch.float64)
    m, T = cfg.moco.momentum, cfg.moco.temperature
    queue_before = model.queue.clone()
    key_state = hand_momentum(model.encoder_q, model.encoder_k, m)
    query_state = copy.deepcopy(model.encoder_q.state_dict())

    drawn = recorded_randperm(monkeypatch)
    torch.manual_seed(3)
    out = model([x_q, x_k])

    assert len(drawn) == 1 and drawn[0].shape == (b,), "the key batch must be shuffled once"
    perm = drawn[0]
    assert not torch.equal(perm, torch.arange(b))
    plain_q, plain_k = _plain(cfg, Encoder), _plain(cfg, Encoder)
    plain_q.load_state_dict(query_state)
    plain_k.load_state_dict(key_state)
    with torch.no_grad():
        q = per_sub_batch(plain_q, x_q, SPLITS)
        k = shuffled_keys(plain_k, x_k, perm, SPLITS)
    # the key encoder moved by the momentum rule before encoding the keys
    for name, p in model.encoder_k.named_parameters():
        torch.testing.assert_close(p, key_state[name], rtol=0, atol=1e-12, msg=name)
    assert out.loss.item() == pytest.approx(naive_infonce(q, k, queue_before, T), rel=1e-9)
    # the keys, in the order of their queries, replaced the oldest queue entries
    torch.testing.assert_close(model.queue[:b], k, rtol=0, atol=1e-10)
    torch.testing.assert_close(model.queue[b:], queue_before[b:], rtol=0, atol=0)
    assert int(model.queue_ptr) == b


def test_moco_step_with_feature_transformation_is_the_closed_form(tiny_config, monkeypatch):
    """``*_ft`` presets: the loss is InfoNCE on q̂ = λq + (1−λ)k, k̂ = λk + (1−λ)q, n̂ = μn + (1−μ)n_π."""
    import contrastlab.methods.moco as moco_module
    from contrastlab.transforms.feature import feature_transform

    cfg = tiny_config(
        "model.bn_splits=1", "moco.momentum=1.0", "ft.pos=extrapolate", "ft.neg=interpolate"
    )
    torch.manual_seed(0)
    model = MoCo(cfg).double().train()
    x_q = torch.randn(6, 3, 16, 16, dtype=torch.float64)
    x_k = torch.randn(6, 3, 16, 16, dtype=torch.float64)
    draws = []

    def recording(q, k, negatives, ft, epoch, **kwargs):
        res = feature_transform(q, k, negatives, ft, epoch, **kwargs)
        draws.append(res)
        return res

    monkeypatch.setattr(moco_module, "feature_transform", recording)
    queue_before = model.queue.clone()
    with torch.no_grad():
        q, k = model.encoder_q(x_q), model.encoder_k(x_k)
    out = model([x_q, x_k])
    assert len(draws) == 1, "the step must pass its features through Feature Transformation"
    lam, mu, perm = float(draws[0].lam_pos), float(draws[0].lam_neg), draws[0].perm
    assert 1.0 < lam < 2.0 and 0.0 < mu < 1.0
    q_hat, k_hat = lam * q + (1 - lam) * k, lam * k + (1 - lam) * q
    n_hat = torch.stack(
        [mu * queue_before[j] + (1 - mu) * queue_before[perm[j]] for j in range(len(perm))]
    )
    expected = naive_infonce(q_hat, k_hat, n_hat, cfg.moco.temperature)
    assert out.loss.item() == pytest.approx(expected, rel=1e-9)
    assert out.loss.item() != pytest.approx(
        naive_infonce(q, k, queue_before, cfg.moco.temperature), rel=1e-3
    )
    # the raw stage holds the cosine scores of the untransformed pair, the effective one q̂·k̂
    raw, eff = out.scores[("z", "raw")], out.scores[("z", "effective")]
    torch.testing.assert_close(raw.pos.double(), (q * k).sum(1), rtol=0, atol=1e-6)
    torch.testing.assert_close(
        raw.neg_mean.double(), (q @ queue_before.T).mean(1), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(eff.pos.double(), (q_hat * k_hat).sum(1), rtol=0, atol=1e-6)
    # the queue keeps the plain keys
    torch.testing.assert_close(model.queue[:6], k, rtol=0, atol=1e-12)


def test_looc_keys_are_shuffled_and_unshuffled_around_split_bn(monkeypatch):
    cfg = load_config(
        None,
        [
            "method=looc",
            "looc.augmentations=[color,rotation]",
            "model.backbone=resnet18",
            "model.width=0.125",
            "model.cifar_stem=true",
            "model.head=mlp",
            "model.head_hidden=16",
            "model.dim=8",
            f"model.bn_splits={SPLITS}",
            "moco.queue_size=40",
            "moco.momentum=0.9",
            "moco.temperature=0.2",
            "data.image_size=16",
        ],
    )
    torch.manual_seed(0)
    model = LooC(cfg).double().train()
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(0.05 * torch.randn_like(p))
    b, n_views = 4, 3  # k0, k_color, k_rotation
    views = [torch.randn(b, 3, 16, 16, dtype=torch.float64) for _ in range(n_views + 1)]
    queue_before = model.queue.clone()
    key_state = hand_momentum(model.encoder_q, model.encoder_k, cfg.moco.momentum)

    drawn = recorded_randperm(monkeypatch)
    model(views)
    assert len(drawn) == 1 and drawn[0].shape == (b * n_views,), "keys must be shuffled once"
    perm = drawn[0]
    plain_k = _plain(cfg, lambda mc: LoocEncoder(mc, 3, False))
    plain_k.load_state_dict(key_state)
    with torch.no_grad():
        z = shuffled_keys(plain_k, torch.cat(views[1:]), perm, SPLITS, dim=1)  # [S, 3B, d]
    z = z.reshape(3, n_views, b, -1)
    for s in range(3):  # queue s received k_s in the space s, in the order of the queries
        torch.testing.assert_close(model.queue[s, :b], z[s, s], rtol=0, atol=1e-10)
        torch.testing.assert_close(model.queue[s, b:], queue_before[s, b:], rtol=0, atol=0)
    assert math.isfinite(float(model.queue.sum()))
