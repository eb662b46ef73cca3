"""LooC / LooC++: Eq. 2 against a naive reference, per-space queues, gradients, feature spaces."""

import math

import pytest
import torch
from helpers import assert_refused_before_any_change

from contrastlab.config import load_config
from contrastlab.errors import UserError
from contrastlab.methods import build_method
from contrastlab.methods.looc import LooC, build_looc, looc_loss

B, SIZE = 4, 16


def tiny_cfg(augs=("color", "rotation"), plus_plus=False, *extra):
    return load_config(
        None,
        [
            "method=looc",
            f"looc.augmentations=[{','.join(augs)}]",
            f"looc.plus_plus={str(plus_plus).lower()}",
            "model.backbone=resnet18",
            "model.width=0.125",
            "model.cifar_stem=true",
            "model.head=mlp",
            "model.head_hidden=16",
            "model.dim=8",
            "model.bn_splits=1",
            "moco.queue_size=10",
            "moco.temperature=0.2",
            "moco.momentum=0.99",
            "data.image_size=16",
            *extra,
        ],
    )


def make_views(n_aug, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, 3, SIZE, SIZE, generator=g) for _ in range(n_aug + 2)]


def unit(*shape, g):
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    return x / x.norm(dim=-1, keepdim=True)


def naive_loss(zq, zk, queues, tau, z0_positives="all"):
    """Eq. 2 with explicit loops: E_ij = exp(z_i(q)·z_i(k_j)/τ), N_i = Σ_queue exp(z_i(q)·n/τ).

    Z_0: "all" = Σ_j E_0j / (Σ_j E_0j + N_0) (every key a positive); "k0" = E_00 / (E_00 + N_0).
    """
    num_spaces, batch = zq.shape[0], zq.shape[1]
    total = 0.0
    for b in range(batch):
        per_image = 0.0
        for i in range(num_spaces):
            q = [float(v) for v in zq[i, b]]

            def dot(u, q=q):
                return sum(a * c for a, c in zip(q, [float(v) for v in u]))

            e = [math.exp(dot(zk[i, j, b]) / tau) for j in range(num_spaces)]
            n_i = sum(math.exp(dot(queues[i, m]) / tau) for m in range(queues.shape[1]))
            if i == 0 and z0_positives == "all":
                per_image += math.log(sum(e) / (sum(e) + n_i))
            elif i == 0:
                per_image += math.log(e[0] / (e[0] + n_i))
            else:
                per_image += math.log(e[i] / (sum(e) + n_i))
        total += -per_image / num_spaces
    return total / batch


@pytest.mark.parametrize("z0_positives", ["all", "k0"])
def test_loss_matches_naive_eq2(z0_positives):
    g = torch.Generator().manual_seed(0)
    s, d, k = 4, 5, 7  # n = 3 atomic augmentations
    zq, zk, queues = unit(s, B, d, g=g), unit(s, s, B, d, g=g), unit(s, k, d, g=g)
    kwargs = {} if z0_positives == "all" else {"z0_positives": z0_positives}  # "all": default
    loss, stats = looc_loss(zq, zk, queues, 0.2, **kwargs)
    assert loss.dtype == torch.float64
    expected = naive_loss(zq, zk, queues, 0.2, z0_positives)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert stats == {}
    with pytest.raises(ValueError, match="z0_positives"):
        looc_loss(zq, zk, queues, 0.2, z0_positives="k1")


def test_z0_multi_positive_gradient_matches_float64_reference():
    """d loss / d z0(q) of the multi-positive Z_0 term against autograd through the naive sums."""
    g = torch.Generator().manual_seed(3)
    s, d, k = 3, 4, 5
    zq = unit(s, B, d, g=g).requires_grad_(True)
    zk, queues = unit(s, s, B, d, g=g), unit(s, k, d, g=g)
    loss, _ = looc_loss(zq, zk, queues, 0.5)
    (grad,) = torch.autograd.grad(loss, zq)
    ref_q = zq.detach().clone().requires_grad_(True)
    terms = []
    for b in range(B):
        for i in range(s):
            e = torch.stack([torch.exp(ref_q[i, b] @ zk[i, j, b] / 0.5) for j in range(s)])
            n_i = sum(torch.exp(ref_q[i, b] @ queues[i, m] / 0.5) for m in range(k))
            num = e.sum() if i == 0 else e[i]
            terms.append(-torch.log(num / (e.sum() + n_i)))
    (ref_grad,) = torch.autograd.grad(torch.stack(terms).sum() / (s * B), ref_q)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("z0_positives", ["all", "k0"])
def test_model_loss_matches_reference_and_stats(z0_positives):
    for plus_plus in (False, True):
        torch.manual_seed(0)
        cfg = tiny_cfg(
            ("color", "rotation", "texture"), plus_plus, f"looc.z0_positives={z0_positives}"
        )
        model = LooC(
            cfg
        ).eval()  # running BN statistics: each view encodes independently of the batch
        views = make_views(3)
        queues = model.queue.clone().double()
        out = model(views)
        with torch.no_grad():
            zq = model.encoder_q(views[0]).double()
            zk = torch.stack([model.encoder_k(v) for v in views[1:]], dim=1).double()
        expected = naive_loss(zq, zk, queues, 0.2, z0_positives)
        assert out.loss.item() == pytest.approx(expected, rel=1e-5)
        assert set(out.scores) == {
            (s, st) for s in ("z0", "color", "rotation", "texture") for st in ("raw", "effective")
        }
        # negatives for the statistics: queue only in Z_0; queue + the other 3 keys in Z_i
        assert out.scores[("z0", "raw")].neg_hist.sum().item() == B * 10
        assert out.scores[("color", "raw")].neg_hist.sum().item() == B * (10 + 3)
        assert torch.allclose(
            out.scores[("color", "raw")].pos.double(), (zq[1] * zk[1, 1]).sum(1), atol=1e-5
        )


def test_feature_transformation_in_every_space():
    torch.manual_seed(0)
    cfg = tiny_cfg(("color", "rotation"), False, "ft.pos=extrapolate", "ft.neg=interpolate")
    model = LooC(cfg)
    out = model(make_views(2))
    assert torch.isfinite(out.loss)
    for space in ("z0", "color", "rotation"):
        raw, eff = out.scores[(space, "raw")], out.scores[(space, "effective")]
        assert raw is not eff
        assert (eff.pos <= raw.pos + 1e-5).all()  # extrapolation makes positives harder


def test_queue_per_space_with_wraparound():
    torch.manual_seed(0)
    cfg = tiny_cfg(("color", "texture"), False, "moco.queue_size=6")
    model = LooC(cfg).train()  # only a training step enqueues
    first, second = make_views(2, 1), make_views(2, 2)
    before = model.queue.clone()
    model(first)
    # the keys again, through the key encoder the step used (its momentum update is done)
    keys1 = model.encode_keys(first[1:])
    for s in range(3):
        assert torch.allclose(model.queue[s, :4], keys1[s, s], atol=1e-6)  # k_s entered queue s
        assert torch.equal(model.queue[s, 4:], before[s, 4:])
    assert model.queue_ptr.tolist() == [4, 4, 4]
    model(second)
    keys2 = model.encode_keys(second[1:])
    for s in range(3):
        assert torch.allclose(model.queue[s, 4:], keys2[s, s, :2], atol=1e-6)
        assert torch.allclose(model.queue[s, :2], keys2[s, s, 2:], atol=1e-6)
        assert torch.allclose(model.queue[s, 2:4], keys1[s, s, 2:], atol=1e-6)
    assert model.queue_ptr.tolist() == [2, 2, 2]
    assert {"queue", "queue_ptr"} <= set(model.state_dict())
    # different spaces hold different keys
    assert not torch.allclose(model.queue[1, :2], model.queue[2, :2])


def test_no_gradient_to_keys_or_key_encoder():
    torch.manual_seed(0)
    model = LooC(tiny_cfg(("color", "rotation"), True))
    views = [v.requires_grad_(True) for v in make_views(2)]
    out = model(views)
    out.loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in model.encoder_k.parameters())
    assert views[0].grad is not None
    assert all(v.grad is None for v in views[1:])  # keys never enter the graph
    named = dict(model.encoder_q.named_parameters())
    assert all(p.grad is not None for n, p in named.items() if "heads" in n or "branches" in n)
    assert model.encode_keys(views[1:]).requires_grad is False


def test_momentum_update_moves_key_encoder():
    torch.manual_seed(0)
    model = LooC(tiny_cfg(("color",)))
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(1.0)
    k_before = [p.clone() for p in model.encoder_k.parameters()]
    model(make_views(1))
    for pk, pq, old in zip(model.encoder_k.parameters(), model.encoder_q.parameters(), k_before):
        assert torch.allclose(pk, 0.99 * old + 0.01 * pq, atol=1e-6)


def test_looc_plus_plus_layer4_copies_are_independent():
    torch.manual_seed(0)
    model = LooC(tiny_cfg(("color", "rotation"), True))
    enc = model.encoder_q
    stages = [enc.backbone.layer4, *enc.branches]
    assert len(stages) == 3
    ptrs = {p.data_ptr() for st in stages for p in st.parameters()}
    assert len(ptrs) == sum(1 for st in stages for _ in st.parameters())  # no shared storage
    for st in enc.branches:  # initialized from the shared stage
        for a, b in zip(st.parameters(), enc.backbone.layer4.parameters()):
            assert torch.equal(a, b)
    opt = torch.optim.SGD(enc.parameters(), lr=0.5)
    model(make_views(2)).loss.backward()
    opt.step()
    w = [next(st.parameters()) for st in stages]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    # the key encoder has its own copies too
    assert len(model.encoder_k.branches) == 2


@pytest.mark.parametrize("plus_plus", [False, True])
def test_feature_spaces_and_dims(plus_plus):
    torch.manual_seed(0)
    model = build_method(tiny_cfg(("color", "rotation"), plus_plus)).eval()
    assert isinstance(model, LooC) and model.num_views == 4
    assert model.spaces == ("z0", "color", "rotation")
    expected = ("backbone", "z0", "color", "rotation") + (("concat",) if plus_plus else ())
    assert model.feature_spaces == expected
    x = torch.randn(3, 3, SIZE, SIZE)
    feat = model.encoder_q.feature_dim  # 64 for resnet18 at width 0.125
    assert feat == 64
    for space in model.feature_spaces:
        f = model.features(x, space)
        assert f.shape == (3, model.feature_dim(space))
    if plus_plus:
        assert model.feature_dim("concat") == 3 * feat
        # "backbone" is the Z_0 branch; "concat" starts with it
        assert torch.allclose(model.features(x, "concat")[:, :feat], model.features(x, "backbone"))
    assert torch.allclose(model.features(x, "color").norm(dim=1), torch.ones(3))
    assert model.backbone(x).shape == (3, feat)
    with pytest.raises(ValueError):
        model.features(x, "texture")


def test_build_rejects_symmetric_and_wrong_view_count():
    with pytest.raises(UserError):
        build_looc(tiny_cfg(("color",), False, "moco.symmetric=true"))
    model = build_looc(tiny_cfg(("color",)))
    with pytest.raises(ValueError):
        model(make_views(2))


def test_split_bn_training_step():
    torch.manual_seed(0)
    model = LooC(tiny_cfg(("rotation",), False, "model.bn_splits=2", "optim.batch_size=4"))
    out = model(make_views(1))
    assert torch.isfinite(out.loss)


PRESETS = {
    "color": ["color"],
    "rotation": ["rotation"],
    "texture": ["texture"],
    "color_rotation": ["color", "rotation"],
    "all": ["color", "rotation", "texture"],
}


@pytest.mark.parametrize("suffix", list(PRESETS))
def test_presets(suffix):
    for prefix, plus_plus in (("looc", False), ("loocpp", True)):
        cfg = load_config(f"{prefix}_{suffix}")
        assert cfg.method == "looc" and cfg.name == f"{prefix}_{suffix}"
        assert cfg.looc.augmentations == PRESETS[suffix] and cfg.looc.plus_plus is plus_plus
        assert cfg.moco.temperature == 0.2 and cfg.model.head == "mlp" and not cfg.moco.symmetric
    tiny = load_config(
        f"loocpp_{suffix}", ["model.width=0.0625", "model.head_hidden=8", "moco.queue_size=8"]
    )
    assert build_method(tiny).num_views == len(PRESETS[suffix]) + 2


# ----------------------------------------------------------------------------------------------
# Two processes (gloo, CPU): DDP with per-process BN equals split BN with one split per process.
# ----------------------------------------------------------------------------------------------


def looc_global_batches(steps: int, batch: int, n_views: int):
    g = torch.Generator().manual_seed(7)
    return [
        [torch.randn(batch, 3, 16, 16, generator=g) for _ in range(n_views)] for _ in range(steps)
    ]


def _looc_worker(rank: int, port: int, cfgs: dict, steps: int, out_dir: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        result = {}
        for name, cfg in cfgs.items():
            torch.manual_seed(0)
            model = LooC(cfg)
            ddp = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
            opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
            losses = []
            for views in looc_global_batches(steps, cfg.optim.batch_size, model.num_views):
                out = ddp([v[rank::2] for v in views])  # rank r holds samples r, r + 2, ...
                opt.zero_grad()
                out.loss.backward()
                opt.step()
                losses.append(out.loss.item())
            result[name] = {
                "losses": losses,
                "queue": model.queue.clone(),
                "ptr": model.queue_ptr.clone(),
                "params": [p.detach().clone() for p in model.encoder_q.parameters()],
            }
        torch.save(result, os.path.join(out_dir, f"looc_rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes(tiny_config, tmp_path):
    import torch.multiprocessing as mp
    from helpers import free_port

    common = [
        "method=looc",
        "looc.augmentations=[color,rotation]",
        "looc.plus_plus=true",
        "train.knn_space=concat",  # the preset's z is MoCo's space
        "moco.queue_size=20",
        "optim.batch_size=8",
    ]
    cfgs = {
        "plain": tiny_config("model.bn_splits=1", "model.shuffle_bn=false", *common),
        "shuffled": tiny_config("model.bn_splits=1", "model.shuffle_bn=true", *common),
    }
    mp.spawn(_looc_worker, args=(free_port(), cfgs, 2, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"looc_rank{r}.pt", weights_only=True) for r in range(2)]

    for name in cfgs:  # every process holds the same queues (gathered keys) and parameters
        a, b = ranks[0][name], ranks[1][name]
        torch.testing.assert_close(a["queue"], b["queue"], rtol=0, atol=0)
        assert a["ptr"].tolist() == b["ptr"].tolist() == [(2 * 8) % 20] * 3
        for pa, pb in zip(a["params"], b["params"]):
            torch.testing.assert_close(pa, pb)

    # one process, the global batch, split BN with two splits: the same training
    torch.manual_seed(0)
    model = LooC(tiny_config("model.bn_splits=2", "model.shuffle_bn=false", *common))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for step, views in enumerate(looc_global_batches(2, 8, model.num_views)):
        out = model(views)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        ddp_loss = sum(r["plain"]["losses"][step] for r in ranks) / 2
        assert out.loss.item() == pytest.approx(ddp_loss, rel=1e-5, abs=1e-6)
    for a, b in zip(model.encoder_q.parameters(), ranks[0]["plain"]["params"]):
        torch.testing.assert_close(a.detach(), b, rtol=1e-4, atol=1e-5)
    # per space, the same keys entered the queue (rank order under DDP, batch order here)
    torch.testing.assert_close(
        model.queue.sort(dim=1).values,
        ranks[0]["plain"]["queue"].sort(dim=1).values,
        rtol=1e-4,
        atol=1e-5,
    )


@pytest.mark.parametrize("z0_positives", ["all", "k0"])
def test_scores_float32_under_cpu_bf16_autocast(z0_positives):
    """bf16 embeddings (a network under autocast) and float32 queues of nearly equal negatives:
    the recorded negative variance of every space is the float64 one, not bf16-rounded."""
    from contrastlab.config import ScoresConfig

    g = torch.Generator().manual_seed(0)
    s, d, k = 3, 16, 400
    center = unit(d, g=g)

    def around(spread, *shape):
        noise = torch.randn(*shape, d, generator=g, dtype=torch.float64)
        return torch.nn.functional.normalize(center + spread * noise, dim=-1)

    zq, zk, queues = around(0.05, s, B), around(0.05, s, s, B), around(1e-4, s, k)
    zq, zk, queues = zq.bfloat16(), zk.bfloat16(), queues.float()
    spaces = ("z0", "color", "rotation")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, stats = looc_loss(
            zq, zk, queues, 0.2, spaces=spaces, scores=ScoresConfig(), z0_positives=z0_positives
        )
    q64, k64, n64 = zq.double(), zk.double(), queues.double()
    assert loss.item() == pytest.approx(naive_loss(q64, k64, n64, 0.2, z0_positives), rel=1e-5)
    scores0 = q64[0] @ n64[0].T  # Z_0: queue 0 only
    assert scores0.var(1, unbiased=False).max() < 1e-7
    torch.testing.assert_close(
        stats[("z0", "raw")].neg_var.double(), scores0.var(1, unbiased=False), rtol=2e-2, atol=0
    )
    for i in (1, 2):  # Z_i: the other keys, then queue i
        others = [j for j in range(s) if j != i]
        neg = torch.einsum("bc,jbc->bj", q64[i], k64[i, others])
        neg = torch.cat([neg, q64[i] @ n64[i].T], 1)
        got = stats[(spaces[i], "raw")]
        torch.testing.assert_close(got.neg_mean.double(), neg.mean(1), rtol=1e-6, atol=0)
        var = neg.var(1, unbiased=False)
        torch.testing.assert_close(got.neg_var.double(), var, rtol=1e-3, atol=0)


def test_a_python_config_is_validated_before_the_model_is_built():
    from contrastlab.config import Config

    cfg = Config(method="looc")
    cfg.looc.augmentations = ["colour"]  # was: built without a word
    for build in (build_method, build_looc, LooC):
        with pytest.raises(UserError, match="looc.augmentations must be a list whose items"):
            build(cfg)


@pytest.mark.parametrize("plus_plus", [False, True])
def test_eval_mode_scores_with_the_current_state_and_changes_nothing(plus_plus):
    torch.manual_seed(0)
    model = LooC(tiny_cfg(("color", "rotation"), plus_plus, "moco.momentum=0.5")).double()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # as after some training: the query encoder differs from the key one
        for p in model.encoder_q.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    views = [v.double() for v in make_views(2, 5)]
    model(views)  # one training step: key encoder, queues and BN statistics move away
    model.eval()  # as checkpoint.load_model returns it
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        zq = model.encoder_q(views[0])
        zk = torch.stack([model.encoder_k(v) for v in views[1:]], dim=1)
    expected, _ = looc_loss(zq, zk, before["queue"], 0.2)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            out = model(views, 0)
        # was: the momentum update and the enqueue ran (queue_ptr [4, 4, 4] -> [8, 8, 8])
        for key, value in model.state_dict().items():
            assert torch.equal(value, before[key]), key
        assert out.loss.item() == pytest.approx(expected.item(), rel=1e-9, abs=1e-9)
    model.train()  # training mode: a step as before
    model(views)
    assert model.queue_ptr.tolist() == [8, 8, 8]


def _bad_looc_views() -> dict:
    q, k0, k1, k2 = make_views(2)
    return {
        "too few views": ([q, k0], r"needs 4 views \[q, k0, k_1..k_n\], got 2"),
        "batches of two sizes": ([q, k0, k1[:2], k2], "view 0 has 4, view 2 has 2"),
        "uint8 images": ([v.to(torch.uint8) for v in (q, k0, k1, k2)], "floating-point images"),
        "an empty batch": ([v[:0] for v in (q, k0, k1, k2)], "the views are empty"),
        "one batch-norm sample": ([v[:1] for v in (q, k0, k1, k2)], "at least 2 per group"),
        "keys of two sizes": (
            [q, k0, k1[..., :8, :8], k2],
            r"the key views \[k0, k_1..k_n\] must have one shape",
        ),
        "another device": ([q, k0, k1, k2.to("meta")], "view 3 is on meta but the model is on cpu"),
        "float64 images": ([q, k0.double(), k1, k2], r"view 1 is torch.float64 .* x.float\(\)"),
    }


@pytest.mark.parametrize("plus_plus", [False, True])
@pytest.mark.parametrize("case", list(_bad_looc_views()))
def test_wrong_views_are_one_clear_error(case, plus_plus):
    # Before: a RuntimeError of torch.cat or of the loss, "expected scalar type Byte", a NaN loss
    model = LooC(tiny_cfg(("color", "rotation"), plus_plus))
    views, message = _bad_looc_views()[case]
    assert_refused_before_any_change(model, views, message)


@pytest.mark.parametrize("plus_plus", [False, True])
@pytest.mark.parametrize("epoch", ["a", 2.0, -3])
def test_an_epoch_that_is_not_an_integer_is_refused(epoch, plus_plus):
    model = LooC(tiny_cfg(("color", "rotation"), plus_plus))
    assert_refused_before_any_change(model, make_views(2), "epoch must be an integer >= 0", epoch)


@pytest.mark.parametrize("plus_plus", [False, True])
def test_a_query_view_of_another_size_than_the_keys_is_a_training_step(plus_plus):
    model = LooC(tiny_cfg(("color", "rotation"), plus_plus))
    q, *keys = make_views(2)
    out = model([q[..., :12, :12], *keys], 0)
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("plus_plus", [False, True])
@pytest.mark.parametrize(
    "x, message",
    [
        (torch.randn(3, SIZE, SIZE), r"x must be a batch of images \[B, 3, H, W\]"),
        (torch.randn(2, 1, SIZE, SIZE), r"x must be a batch of images \[B, 3, H, W\]"),
        (torch.zeros(2, 3, SIZE, SIZE, dtype=torch.uint8), "x must be floating-point images"),
        (torch.randn(2, 3, SIZE, SIZE, dtype=torch.float64), r"x\.float\(\)"),
        ([torch.randn(2, 3, SIZE, SIZE)], "x must be a tensor"),
    ],
    ids=["3-D", "one channel", "uint8", "float64", "a list"],
)
def test_features_of_wrong_images_are_one_clear_error(x, message, plus_plus):
    # Before: raw unpack, conv2d and "expected scalar type" errors
    model = LooC(tiny_cfg(("color", "rotation"), plus_plus)).eval()
    for space in model.feature_spaces:
        with pytest.raises(ValueError, match=message):
            model.features(x, space)


class _OwnLoocEncoder(torch.nn.Module):
    """An encoder of one's own for LooC: feature vectors in, one unit vector per space out
    ([S, B, d]), no ``backbone``."""

    def __init__(self, features: int, spaces: int, dim: int):
        super().__init__()
        self.spaces, self.dim = spaces, dim
        self.fc = torch.nn.Linear(features, spaces * dim)

    def forward(self, x):
        z = self.fc(x).view(x.shape[0], self.spaces, self.dim).transpose(0, 1)
        return torch.nn.functional.normalize(z, dim=-1)


def test_an_encoder_of_ones_own_trains():
    # Before: AttributeError: '_OwnLoocEncoder' object has no attribute 'backbone'
    from contrastlab.methods.moco import make_momentum_copy

    model = LooC(tiny_cfg(("color",), False, "model.bn_splits=2", "optim.batch_size=4"))
    model.encoder_q = _OwnLoocEncoder(12, 2, 8)
    model.encoder_k = make_momentum_copy(model.encoder_q)
    views = [torch.randn(3, 12) for _ in range(3)]  # 3 samples: no batch norm to split
    out = model(views)
    assert torch.isfinite(out.loss)
    assert model.queue_ptr.tolist() == [3, 3]
    with pytest.raises(ValueError, match="view 2 has 2"):
        model([views[0], views[1], views[2][:2]])


def test_a_step_returns_the_mean_feature_transformation_lambda_of_its_spaces():
    """The trainer logs each epoch's mean λ (ft/lam_pos, ft/lam_neg) from the step's output: a
    LooC step gives the mean over its spaces' draws, and nothing with the transformation off."""
    ft = ["ft.pos=extrapolate", "ft.neg=interpolate", "ft.start_epoch=1"]
    model = LooC(tiny_cfg(("color",), False, *ft))
    assert model(make_views(1), epoch=0).ft == {}  # before ft.start_epoch
    torch.manual_seed(0)
    out = model(make_views(1), epoch=1)
    assert set(out.ft) == {"ft/lam_pos", "ft/lam_neg"}
    assert 1 <= out.ft["ft/lam_pos"].item() <= 2 and 0 <= out.ft["ft/lam_neg"].item() <= 1
    # the same draws through looc_loss directly: one λ per space, their mean is the step's
    lam = []
    zq = torch.nn.functional.normalize(torch.randn(2, B, 8), dim=-1)
    zk = torch.nn.functional.normalize(torch.randn(2, 2, B, 8), dim=-1)
    queues = torch.nn.functional.normalize(torch.randn(2, 10, 8), dim=-1)
    looc_loss(zq, zk, queues, 0.2, model.cfg.ft, 1, lam=lam)
    assert len(lam) == 2 and all(set(d) == {"ft/lam_pos", "ft/lam_neg"} for d in lam)
