"""Evaluation reads only labelled images (label -1 never enters a bank, probe or metric), and
``--norm checkpoint`` uses exactly the statistics stored with the checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from contrastlab.data.augment import IMAGENET_MEAN, IMAGENET_STD
from contrastlab.data.datasets import TensorImageDataset
from contrastlab.eval.context import EvalContext
from contrastlab.eval.knn import knn_accuracy, knn_scores
from contrastlab.eval.linear import LogisticProbe, linear_fast
from contrastlab.eval.protocols import run_fewshot, run_knn, run_linear


class MeanColour(torch.nn.Module):
    """Features = per-channel mean and standard deviation: no training needed, fully known."""

    feature_spaces = ("backbone",)

    def features(self, x, space="backbone"):
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)


def _dataset(n: int, seed: int, unlabelled_every: int | None) -> TensorImageDataset:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = (torch.rand(n, 3, 8, 8, generator=gen) * 60 + labels.view(-1, 1, 1, 1) * 60).byte()
    if unlabelled_every:
        labels = labels.clone()
        labels[::unlabelled_every] = -1
    return TensorImageDataset(
        images, labels, num_classes=3, mean=(0.5,) * 3, std=(0.25,) * 3, image_size=8
    )


def _context(monkeypatch, datasets: dict, **kw) -> EvalContext:
    import contrastlab.data.datasets as datasets_module
    from contrastlab.config import load_config

    monkeypatch.setattr(
        datasets_module, "build_dataset", lambda cfg, split, transform=None: datasets[split]
    )
    cfg = load_config("moco_v2_cifar", ["data.image_size=8"])  # not synthetic: needs 16 px
    return EvalContext(
        model=MeanColour(), cfg=cfg, checkpoint=None, data_cfg=cfg.data, progress=False, **kw
    )


def _labelled_only(ds: TensorImageDataset) -> TensorImageDataset:
    keep = ds.labels >= 0
    return TensorImageDataset(
        ds.images[keep], ds.labels[keep], num_classes=3, mean=ds.mean, std=ds.std, image_size=8
    )


@pytest.mark.parametrize("max_train", [None, 20])
def test_unlabelled_images_never_enter_an_evaluation(monkeypatch, max_train):
    mixed = {"train": _dataset(60, 0, 2), "test": _dataset(30, 1, 3)}
    clean = {split: _labelled_only(ds) for split, ds in mixed.items()}
    a = _context(monkeypatch, mixed, max_train=max_train)
    knn = run_knn(a, k=5)
    linear = run_linear(a, mode="fast", C=1.0)
    fewshot = run_fewshot(a, shots=(2,), trials=2, which="allway")
    assert knn["details"]["num_train"] == (30 if max_train is None else 20)
    assert knn["details"]["num_test"] == 20
    assert linear["details"]["num_train"] == knn["details"]["num_train"]
    if max_train is None:  # the same numbers as on the labelled images alone
        b = _context(monkeypatch, clean)
        assert run_knn(b, k=5)["summary"] == knn["summary"]
        assert run_linear(b, mode="fast", C=1.0)["summary"] == linear["summary"]
        assert run_fewshot(b, shots=(2,), trials=2, which="allway")["summary"] == fewshot["summary"]


def test_label_minus_one_is_refused_by_every_classifier():
    feats, labels = torch.randn(12, 4), torch.tensor([0, 1, 2, -1] * 3)
    with pytest.raises(ValueError, match="label -1"):
        knn_scores(feats, labels, feats, 3)
    with pytest.raises(ValueError, match="label -1"):
        knn_accuracy(feats, labels.abs(), feats, labels, 3)
    with pytest.raises(ValueError, match="label -1"):
        LogisticProbe(C=1.0).fit(feats, labels, 3)
    with pytest.raises(ValueError, match="label -1"):
        linear_fast(feats, labels, feats, labels.abs(), 3, C=1.0)


def _image_folder(root, size=40):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")
    return root


def test_norm_checkpoint_uses_the_statistics_stored_with_the_checkpoint(tiny_config, tmp_path):
    from contrastlab.train import Trainer

    folder = _image_folder(tmp_path / "images")  # 40 px images: ImageNet statistics
    cfg = tiny_config(
        "dataset=imagefolder",
        f"data.path={folder}",
        "data.image_size=32",
        "train.knn_every=0",
        "optim.epochs=1",
        "data.holdout_fraction=0.25",
    )
    ckpt = Trainer(cfg).fit().last_checkpoint
    stored = torch.load(ckpt, weights_only=True)["normalization"]
    assert stored == {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    for dataset, path in [
        (None, f"{folder}/"),  # the same folder, spelled differently
        (None, f"{folder}/./"),
        ("synthetic", None),  # another dataset altogether
    ]:
        ctx = EvalContext.from_checkpoint(
            ckpt, dataset=dataset, data_path=path, device="cpu", progress=False
        )
        assert ctx.stats(ctx.raw("test")) == (IMAGENET_MEAN, IMAGENET_STD), (dataset, path)
