"""MoCo against naive float64 references: logits, loss, queue, momentum update."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import assert_refused_before_any_change

from contrastlab.methods.moco import MoCo, enqueue, momentum_update


def naive_infonce(q, k, queue, temperature):
    """Cross-entropy over [q·k, q·queue] / T with the positive at index 0, one query at a time."""
    total = 0.0
    for i in range(q.shape[0]):
        logits = [float(q[i] @ k[i]) / temperature]
        logits += [float(q[i] @ queue[j]) / temperature for j in range(queue.shape[0])]
        top = max(logits)
        log_sum = top + math.log(sum(math.exp(v - top) for v in logits))
        total += log_sum - logits[0]
    return total / q.shape[0]


def _double_moco(cfg):
    torch.manual_seed(0)
    return MoCo(cfg).double().train()


@pytest.mark.parametrize("symmetric", [False, True])
def test_loss_matches_naive_reference(tiny_config, symmetric):
    cfg = tiny_config(
        "model.bn_splits=1", "moco.momentum=1.0", f"moco.symmetric={str(symmetric).lower()}"
    )
    model = _double_moco(cfg)
    x_q, x_k = (
        torch.randn(6, 3, 16, 16, dtype=torch.float64),
        torch.randn(6, 3, 16, 16, dtype=torch.float64),
    )
    queue_before = model.queue.clone()
    with torch.no_grad():
        q1, k1 = model.encoder_q(x_q), model.encoder_k(x_k)
        q2, k2 = model.encoder_q(x_k), model.encoder_k(x_q)
    out = model([x_q, x_k])
    expected = naive_infonce(q1, k1, queue_before, cfg.moco.temperature)
    if symmetric:
        expected += naive_infonce(q2, k2, queue_before, cfg.moco.temperature)
    assert out.loss.item() == pytest.approx(expected, rel=1e-9, abs=1e-9)
    # raw scores recorded for every query: the cosine of each positive pair
    stats = out.scores[("z", "raw")]
    pos = torch.cat([(q1 * k1).sum(1), (q2 * k2).sum(1)]) if symmetric else (q1 * k1).sum(1)
    torch.testing.assert_close(stats.pos, pos.float())
    # the batch's keys now fill the first slots of the queue
    keys = torch.cat([k1, k2]) if symmetric else k1
    torch.testing.assert_close(model.queue[: keys.shape[0]], keys)
    assert int(model.queue_ptr) == keys.shape[0]


def test_loss_gradient_reaches_only_the_query_encoder(tiny_config):
    model = MoCo(tiny_config("moco.momentum=0.5")).train()
    out = model([torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)])
    out.loss.backward()
    assert all(p.grad is None for p in model.encoder_k.parameters())
    assert all(not p.requires_grad for p in model.encoder_k.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder_q.parameters())


def naive_enqueue(queue, ptr, keys):
    queue = queue.clone()
    for key in keys:
        queue[ptr] = key
        ptr = (ptr + 1) % queue.shape[0]
    return queue, ptr


@pytest.mark.parametrize(
    "size,batches", [(5, [3, 3, 3]), (8, [4, 4, 4]), (5, [7, 2]), (6, [1, 6, 13])]
)
def test_enqueue_wraps_around_for_any_sizes(size, batches):
    queue = torch.zeros(size, 2)
    ptr = torch.zeros((), dtype=torch.long)
    expected_queue, expected_ptr = queue.clone(), 0
    counter = 0
    for n in batches:
        keys = torch.arange(counter, counter + n, dtype=torch.float32)[:, None].repeat(1, 2)
        counter += n
        enqueue(queue, ptr, keys)
        expected_queue, expected_ptr = naive_enqueue(expected_queue, expected_ptr, keys)
        torch.testing.assert_close(queue, expected_queue)
        assert int(ptr) == expected_ptr


def test_momentum_update_matches_formula(tiny_config):
    model = MoCo(tiny_config("moco.momentum=0.9"))
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(torch.randn_like(p))
    before_k = [p.detach().double().clone() for p in model.encoder_k.parameters()]
    q = [p.detach().double().clone() for p in model.encoder_q.parameters()]
    momentum_update(model.encoder_q, model.encoder_k, 0.9)
    for after, k0, q0 in zip(model.encoder_k.parameters(), before_k, q):
        torch.testing.assert_close(after.double(), 0.9 * k0 + 0.1 * q0, rtol=1e-6, atol=1e-6)


def test_queue_and_pointer_are_checkpointed_buffers(tiny_config):
    model = MoCo(tiny_config())
    state = model.state_dict()
    assert "queue" in state and "queue_ptr" in state
    norms = model.queue.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_features_spaces(tiny_config):
    model = MoCo(tiny_config()).eval()
    x = torch.randn(3, 3, 16, 16)
    assert model.features(x, "backbone").shape == (3, 32)
    z = model.features(x, "z")
    assert z.shape == (3, 8)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(3))


class _AsNetworkOutput(torch.nn.Module):
    """Stands in for an encoder under bf16 autocast: the input *is* the embedding, returned in
    bf16 as a real network's head would return it."""

    def forward(self, x):
        return x.to(torch.bfloat16)


def _collapsed(batch=6, queue=512, dim=16, spread=1e-4, seed=0):
    """Queries and keys near one direction and a queue of negatives that nearly coincide, as in a
    collapsed space (variance of the negative scores ~1e-8)."""
    g = torch.Generator().manual_seed(seed)

    def around(center, spread, *shape):
        noise = torch.randn(*shape, generator=g, dtype=torch.float64)
        return torch.nn.functional.normalize(center + spread * noise, dim=-1)

    center = around(torch.zeros(dim, dtype=torch.float64), 1.0, dim)
    q, k = around(center, 0.05, batch, dim), around(center, 0.05, batch, dim)
    neg = around(center, spread, queue, dim)
    # what the method sees: bf16 network outputs, a float32 queue
    return q.to(torch.bfloat16), k.to(torch.bfloat16), neg.float()


@pytest.mark.parametrize("ft", [False, True])
def test_scores_and_logits_are_float32_under_cpu_bf16_autocast(tiny_config, ft):
    """Under bf16 autocast the logits and the recorded statistics are computed in float32: the
    tiny negative variance of a collapsed space is recorded as a float64 computation gives it."""
    extra = ["ft.pos=extrapolate", "ft.neg=interpolate"] if ft else []
    cfg = tiny_config("model.bn_splits=1", "model.dim=16", "moco.queue_size=512", *extra)
    model = MoCo(cfg)
    model.encoder_q, model.encoder_k = _AsNetworkOutput(), _AsNetworkOutput()
    q, k, neg = _collapsed()
    model.queue.copy_(neg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, stats, _ = model.contrast(q, k, epoch=0)
    raw = stats[("z", "raw")]
    q64, k64, n64 = q.double(), k.double(), neg.double()
    scores64 = q64 @ n64.T
    true_var = scores64.var(dim=1, unbiased=False)
    assert true_var.max() < 1e-7  # the collapse signature the statistics must keep
    torch.testing.assert_close(raw.neg_var.double(), true_var, rtol=2e-2, atol=0)
    torch.testing.assert_close(raw.neg_mean.double(), scores64.mean(1), rtol=1e-6, atol=0)
    torch.testing.assert_close(raw.pos.double(), (q64 * k64).sum(1), rtol=1e-6, atol=0)
    t = cfg.moco.temperature
    expected_exp = (scores64 / t).exp().mean(1)
    torch.testing.assert_close(raw.neg_exp.double(), expected_exp, rtol=1e-5, atol=0)
    if not ft:  # the loss from float32 logits, against the float64 formula
        assert loss.item() == pytest.approx(naive_infonce(q64, k64, n64, t), rel=1e-5)


# ----------------------------------------------------------------------------------------------
# A config built in Python is checked; wrong views are one clear error
# ----------------------------------------------------------------------------------------------


def test_a_python_config_is_validated_before_the_model_is_built():
    from contrastlab.config import Config
    from contrastlab.errors import UserError
    from contrastlab.methods import build_method

    cfg = Config()
    cfg.moco.queue_size = -5  # was: "RuntimeError: Trying to create tensor with negative dimension"
    for build in (build_method, MoCo):
        with pytest.raises(
            UserError, match=r"moco.queue_size must be an integer in \[1, 4194304\]"
        ):
            build(cfg)
    cfg.moco.queue_size = 16
    cfg.ft.pos = "Extrapolate"
    with pytest.raises(UserError, match="ft.pos='Extrapolate' is not valid"):
        build_method(cfg)


def _bad_views() -> dict:
    x = torch.randn(4, 3, 16, 16)
    return {
        "one view": ([x], r"MoCo needs 2 views \[x_q, x_k\], got 1"),
        "three views": ([x, x, x], r"MoCo needs 2 views \[x_q, x_k\], got 3"),
        "a tensor, not a list": (x, "as a list, got Tensor"),
        "batches of two sizes": ([x, x[:2]], "view 0 has 4, view 1 has 2"),
        "uint8 images": ([x.to(torch.uint8)] * 2, "view 0 must be floating-point images"),
        "an empty batch": ([x[:0], x[:0]], "the views are empty"),
        "one image without a batch": ([x[0], x[0]], r"must be a batch of images \[B, 3, H, W\]"),
        "one channel": ([x[:, :1]] * 2, r"must be a batch of images \[B, 3, H, W\]"),
        "another device": ([x.to("meta")] * 2, "view 0 is on meta but the model is on cpu"),
        "float64 images": (
            [x, x.double()],
            r"view 1 is torch.float64 but the model's weights are torch.float32; convert it "
            r"with x.float\(\)",
        ),
        "one image per batch-norm group": ([x[:2]] * 2, "at least 2 per group"),
        "a batch that does not split": ([x[:3]] * 2, "needs a multiple of 2 images"),
    }


@pytest.mark.parametrize("case", list(_bad_views()))
def test_wrong_views_are_one_clear_error_before_any_change(tiny_config, case):
    # Before: IndexError (1 view), einsum's "subscript n has size ..." (two batch sizes),
    # "expected scalar type Byte" (uint8), a NaN loss (empty), or a silent step on 2 of 3 views.
    model = MoCo(tiny_config("model.bn_splits=2", "optim.batch_size=4"))
    views, message = _bad_views()[case]
    assert_refused_before_any_change(model, views, message)


@pytest.mark.parametrize("epoch", ["a", 1.5, -1, None, True])
def test_an_epoch_that_is_not_an_integer_is_refused_before_any_change(tiny_config, epoch):
    # Before: "a", 1.5 and None were taken silently (the FT schedule compared them to its epochs)
    model = MoCo(tiny_config("model.bn_splits=2", "optim.batch_size=4"))
    x = torch.randn(4, 3, 16, 16)
    assert_refused_before_any_change(model, [x, x], "epoch must be an integer >= 0", epoch)


def test_views_of_two_image_sizes_are_one_training_step(tiny_config):
    """Each view goes through its encoder on its own, so x_q and x_k may differ in size (as
    multi-crop views do); documented in ``forward``."""
    model = MoCo(tiny_config("model.bn_splits=2", "optim.batch_size=4"))
    out = model([torch.randn(4, 3, 16, 16), torch.randn(4, 3, 12, 12)], 0)
    assert torch.isfinite(out.loss)
    assert int(model.queue_ptr) == 4


def _bad_images() -> dict:
    x = torch.randn(4, 3, 16, 16)
    return {
        "one image without a batch": (x[0], r"must be a batch of images \[B, 3, H, W\]"),
        "one channel": (x[:, :1], r"must be a batch of images \[B, 3, H, W\]"),
        "uint8 images": (x.to(torch.uint8), "x must be floating-point images"),
        "float64 images": (x.double(), r"x is torch.float64 .* with x.float\(\)"),
        "a list": ([x], r"x must be a tensor \[B, 3, H, W\], got list"),
        "another device": (x.to("meta"), "x is on meta but the model is on cpu"),
    }


@pytest.mark.parametrize("case", list(_bad_images()))
@pytest.mark.parametrize("space", ["backbone", "z"])
def test_features_of_wrong_images_are_one_clear_error(tiny_config, case, space):
    # Before: "not enough values to unpack" (3-D), "expected scalar type Byte/Double but found
    # Float", conv2d's channel error or TypeError
    model = MoCo(tiny_config()).eval()
    x, message = _bad_images()[case]
    with pytest.raises(ValueError, match=message):
        model.features(x, space)


def test_float64_images_are_taken_by_a_float64_model_and_under_autocast(tiny_config):
    model = MoCo(tiny_config()).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.features(x.bfloat16()).shape == (2, 32)
    assert model.double().features(x.double()).dtype == torch.float64
    with pytest.raises(ValueError, match=r"convert it with x.double\(\)"):
        model.features(x)


@pytest.mark.parametrize("symmetric", [False, True])
def test_eval_mode_scores_with_the_current_state_and_changes_nothing(tiny_config, symmetric):
    cfg = tiny_config("moco.momentum=0.5", f"moco.symmetric={str(symmetric).lower()}")
    model = _double_moco(cfg)
    g = torch.Generator().manual_seed(1)
    x_q, x_k = (torch.randn(6, 3, 16, 16, generator=g, dtype=torch.float64) for _ in range(2))
    with torch.no_grad():  # as after some training: the query encoder differs from the key one
        for p in model.encoder_q.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    model([x_q, x_k])  # one training step: key encoder, queue and BN statistics move away
    model.eval()  # as checkpoint.load_model returns it
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        q1, k1 = model.encoder_q(x_q), model.encoder_k(x_k)
        q2, k2 = model.encoder_q(x_k), model.encoder_k(x_q)
    for grad in (False, True):  # under no_grad (scoring) or not
        with torch.set_grad_enabled(grad):
            out = model([x_q, x_k], 0)
        # was: the momentum update and the enqueue ran (queue_ptr 6 -> 12, key encoder moved)
        for key, value in model.state_dict().items():
            assert torch.equal(value, before[key]), key
        # scored with the key encoder and queue as they are (no momentum update first)
        expected = naive_infonce(q1, k1, before["queue"], cfg.moco.temperature)
        if symmetric:
            expected += naive_infonce(q2, k2, before["queue"], cfg.moco.temperature)
        assert out.loss.item() == pytest.approx(expected, rel=1e-9, abs=1e-9)
    model([x_q[:1], x_k[:1]])  # one image is fine in eval mode (running statistics)
    model.train()  # training mode: a step as before
    model([x_q, x_k])
    keys_per_step = 12 if symmetric else 6
    assert int(before["queue_ptr"]) == keys_per_step
    assert int(model.queue_ptr) == 2 * keys_per_step % cfg.moco.queue_size
    assert not torch.equal(
        model.state_dict()["encoder_k.head.0.weight"], before["encoder_k.head.0.weight"]
    )


class _OwnEncoder(torch.nn.Module):
    """An encoder of one's own, assigned in Python: feature vectors in, unit vectors out, no
    ``backbone`` (and no batch norm)."""

    def __init__(self, features: int, dim: int):
        super().__init__()
        self.fc = torch.nn.Linear(features, dim)

    def forward(self, x):
        return torch.nn.functional.normalize(self.fc(x), dim=1)


def test_an_encoder_of_ones_own_trains_and_its_views_are_checked(tiny_config):
    # Before: AttributeError: '_OwnEncoder' object has no attribute 'backbone' in every forward
    from contrastlab.methods.moco import make_momentum_copy

    model = MoCo(tiny_config("model.bn_splits=2", "optim.batch_size=4", "model.dim=8"))
    model.encoder_q = _OwnEncoder(12, 8)
    model.encoder_k = make_momentum_copy(model.encoder_q)
    x = torch.randn(3, 12)  # not images, and 3 is no multiple of bn_splits: no batch norm here
    out = model([x, torch.randn(3, 12)])
    out.loss.backward()
    assert model.encoder_q.fc.weight.grad is not None
    assert int(model.queue_ptr) == 3
    assert model.features(x, "z").shape == (3, 8)
    with pytest.raises(ValueError, match="this encoder has no backbone; use space='z'"):
        model.features(x)
    assert_refused_before_any_change(model, [x, x[:2]], "view 0 has 3, view 1 has 2")
    assert_refused_before_any_change(model, [x], r"MoCo needs 2 views \[x_q, x_k\], got 1")
    assert_refused_before_any_change(model, [x[:0], x[:0]], "the views are empty")
    assert_refused_before_any_change(model, [x, x.to("meta")], "view 1 is on meta")
