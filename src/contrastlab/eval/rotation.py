"""The 4-way rotation-prediction probe of LooC's Table 1.

Every image is shown at 0°, 90°, 180° and 270° (``torch.rot90`` on the normalized tensor; the
per-channel normalization commutes with rotation) and a linear probe on the frozen features
predicts which. A representation made invariant to rotation scores near chance (25 %); one that
keeps orientation information scores high. Train split → test split.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from contrastlab.eval.features import extract_features
from contrastlab.eval.knn import without_trivial_top5
from contrastlab.eval.linear import linear_fast

ANGLES = (0, 90, 180, 270)


def rotate_batch(images: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Four copies of a ``[B, C, H, W]`` batch, rotated counter-clockwise by 0/90/180/270°.

    Returns ``([4B, C, H, W], rotation labels [4B] in 0..3)``; copy r of image i is at r·B + i.
    ``labels`` (the class labels) are ignored: the probe's target is the rotation.
    """
    rotated = [torch.rot90(images, r, dims=(-2, -1)) for r in range(4)]
    target = torch.arange(4).repeat_interleave(images.shape[0])
    return torch.cat(rotated), target


def rotation_features(
    model: nn.Module, dataset: Dataset, space: str = "backbone", **kwargs: Any
) -> tuple[Tensor, Tensor]:
    """Features of all four rotations of every image, with rotation labels 0..3."""
    parts = kwargs.pop("cache_parts", None)
    if parts is not None:
        parts = {**parts, "batch": "rot90x4"}
    return extract_features(
        model,
        dataset,
        space,
        batch_fn=rotate_batch,
        cache_parts=parts,
        desc=kwargs.pop("desc", "rotation features"),
        **kwargs,
    )


def rotation_probe(
    train_feats: Tensor,
    train_rot: Tensor,
    test_feats: Tensor,
    test_rot: Tensor,
    seed: int = 0,
    **kwargs: Any,
) -> dict:
    """Accuracy (percent) of the fast linear probe predicting the rotation; chance is 25 %.

    Counts say what they count: ``num_<split>_images`` images, each seen as four rotated
    ``num_<split>_views`` (the probe's samples)."""
    res = linear_fast(
        train_feats, train_rot, test_feats, test_rot, num_classes=4, seed=seed, **kwargs
    )
    without_trivial_top5(res, 4)  # top-5 of a 4-way task is always 100
    res["chance"] = 25.0
    for split in ("train", "test"):
        views = res.pop(f"num_{split}")
        res[f"num_{split}_images"] = views // len(ANGLES)
        res[f"num_{split}_views"] = views
    return res
