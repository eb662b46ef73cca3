"""MoCo against naive float64 references: logits, loss, queue, momentum update."""

from __future__ import annotations

import math

import pytest
import torch

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
