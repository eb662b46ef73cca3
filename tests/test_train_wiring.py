"""How the Trainer wires the pieces: data order and views per epoch, the kNN monitor, best.pt, and
the scores file, each observed from outside (what the model receives, features computed by hand).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import contrastlab.methods.moco as moco_module
from contrastlab.checkpoint import read_checkpoint
from contrastlab.data.datasets import build_dataset
from contrastlab.eval.knn import knn_accuracy
from contrastlab.methods.moco import MoCo
from contrastlab.scores import load_scores
from contrastlab.train import Trainer

FAST = ["optim.epochs=2", "train.knn_every=0", "train.checkpoint_every=100"]


def record_batches(monkeypatch) -> list[tuple[int, list[torch.Tensor]]]:
    """``(epoch, views)`` of every step, as the model receives them."""
    seen: list[tuple[int, list[torch.Tensor]]] = []
    original = MoCo.forward

    def forward(self, views, epoch=0):
        seen.append((epoch, [v.detach().clone() for v in views]))
        return original(self, views, epoch)

    monkeypatch.setattr(MoCo, "forward", forward)
    return seen


def by_epoch(seen, epoch):
    return [views for e, views in seen if e == epoch]


def test_each_epoch_sees_the_images_in_a_new_order(tiny_config, monkeypatch):
    """Without augmentation (recipe none) a view is a function of the image: equal batches in two
    epochs would mean the same order."""
    seen = record_batches(monkeypatch)
    Trainer(tiny_config(*FAST, "augment.recipe=none", "name=order")).fit()
    first, second = by_epoch(seen, 0), by_epoch(seen, 1)
    assert len(first) == len(second) == 6
    assert all(torch.equal(v[0], v[1]) for v in first)  # the views are deterministic here
    assert all(not torch.equal(a[0], b[0]) for a, b in zip(first, second))
    # ... and every epoch is a permutation of the same images (a sample, not a resample)
    ordered = [torch.cat([v[0] for v in ep]).flatten(1) for ep in (first, second)]
    rows = [sorted(map(tuple, x.tolist())) for x in ordered]
    assert rows[0] == rows[1]


def _identical_images(root, n=40):
    """An image folder in which every image is the same: views then differ only by augmentation."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    for i in range(n):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{i:03d}.png")
    return root


def test_each_epoch_draws_new_augmentations(tiny_config, monkeypatch, tmp_path):
    root = _identical_images(tmp_path / "same")
    seen = record_batches(monkeypatch)
    cfg = tiny_config(*FAST, "dataset=imagefolder", f"data.path={root}", "name=views")
    Trainer(cfg).fit()
    first, second = by_epoch(seen, 0), by_epoch(seen, 1)
    assert len(first) == len(second) == 2
    for a, b in zip(first, second):
        assert not torch.equal(a[0], a[1])  # query and key views of one step differ
        for view in range(2):  # the same images, so only the drawn augmentations can differ
            assert not torch.equal(a[view], b[view])


def _features_by_hand(model, images, space):
    """Features of uint8 images under the evaluation view (scale, normalize), eval mode."""
    x = images.images.float() / 255.0
    mean = torch.tensor(images.mean)[None, :, None, None]
    std = torch.tensor(images.std)[None, :, None, None]
    model.eval()
    with torch.no_grad():
        return model.features(((x - mean) / std).contiguous(), space), images.labels


def test_knn_monitor_is_knn_accuracy_with_the_configured_k_and_t_on_the_test_split(tiny_config):
    cfg = tiny_config(
        "optim.epochs=1",
        "train.max_steps_per_epoch=2",
        "train.knn_every=1",
        "train.knn_k=30",
        "train.knn_temperature=0.02",
        "train.knn_space=backbone",  # not the preset's z: the configured space is the one read
        "name=knn",
    )
    trainer = Trainer(cfg)
    result = trainer.fit()
    train = build_dataset(cfg.data, "train")
    test = build_dataset(cfg.data, "test")
    f_train, y_train = _features_by_hand(trainer.method, train, "backbone")
    f_test, y_test = _features_by_hand(trainer.method, test, "backbone")

    def knn(k, t, queries=(f_test, y_test)):
        return knn_accuracy(f_train, y_train, *queries, train.num_classes, k=k, temperature=t)

    expected = knn(30, 0.02)
    assert result.knn_top1 == pytest.approx(expected, abs=1e-9)
    # the figure would be different with the default k and T, another T, or the training split
    assert expected != knn(200, 0.1) and expected != knn(30, 1.0)
    assert expected != knn(30, 0.02, (f_train, y_train))


def test_best_checkpoint_holds_the_weights_of_the_best_measured_epoch(tiny_config, monkeypatch):
    measured = iter([40.0, 70.0, 55.0])  # the validation figure that chooses best.pt
    weights = []

    def knn_monitor(self):
        weights.append({k: v.clone() for k, v in self.method.state_dict().items()})
        return {"knn_top1": 10.0, "knn_val_top1": next(measured)}

    monkeypatch.setattr(Trainer, "knn_monitor", knn_monitor)
    cfg = tiny_config(
        "optim.epochs=3", "train.max_steps_per_epoch=1", "train.checkpoint_every=1", "name=best"
    )
    result = Trainer(cfg).fit()
    best = read_checkpoint(result.best_checkpoint)
    assert best["epoch"] == 2 and best["best_metric"] == 70.0
    for key, value in weights[1].items():
        assert torch.equal(best["model"][key], value), key
    assert not torch.equal(best["model"]["queue"], weights[2]["queue"])
    assert read_checkpoint(result.last_checkpoint)["epoch"] == 3


def test_scores_file_raw_stage_holds_cosine_scores_of_the_untransformed_features(
    tiny_config, monkeypatch
):
    from contrastlab.transforms.feature import feature_transform

    captured = []

    def recording(q, k, negatives, ft, epoch, **kwargs):
        captured.append((q.detach().double(), k.double(), negatives.double()))
        out = feature_transform(q, k, negatives, ft, epoch, **kwargs)
        captured[-1] += tuple(t.detach().double() for t in out.as_tuple())
        return out

    monkeypatch.setattr(moco_module, "feature_transform", recording)
    cfg = tiny_config(
        "optim.epochs=1",
        "train.max_steps_per_epoch=3",
        "train.knn_every=0",
        "ft.pos=extrapolate",
        "ft.neg=interpolate",
        "name=scores",
    )
    Trainer(cfg).fit()
    record = load_scores(cfg.run_dir)
    assert len(captured) == 3
    for stage, offset in (("raw", 0), ("effective", 3)):
        rows = record.query("z", stage)
        pos, neg_mean, neg_var = [], [], []
        for step in captured:
            q, k, n = step[offset : offset + 3]
            neg = q @ n.T
            pos.append((q * k).sum(1))
            neg_mean.append(neg.mean(1))
            neg_var.append(neg.var(1, unbiased=False))
        for name, want in (("pos", pos), ("neg_mean", neg_mean), ("neg_var", neg_var)):
            np.testing.assert_allclose(
                rows[name], torch.cat(want).numpy(), rtol=1e-4, atol=1e-5, err_msg=f"{stage} {name}"
            )
        assert rows["step"].tolist() == [s for s in (1, 2, 3) for _ in range(16)]
