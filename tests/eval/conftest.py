"""Fixtures for the evaluation tests: labelled feature sets and fake encoders with known answers."""

from __future__ import annotations

import pytest
import torch
from torch import nn


def make_blobs(n_per_class: int, num_classes: int, dim: int, sep: float, seed: int = 0):
    """Gaussian clusters: ``sep`` large -> separable, ``sep`` = 0 -> labels carry no information."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(num_classes, dim, generator=gen) * sep
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    feats = centers[labels] + torch.randn(len(labels), dim, generator=gen)
    perm = torch.randperm(len(labels), generator=gen)
    return feats[perm], labels[perm]


class QuadrantModel(nn.Module):
    """Features = mean brightness of the four image quadrants: they encode orientation."""

    feature_spaces = ("backbone", "invariant")

    def features(self, x: torch.Tensor, space: str = "backbone") -> torch.Tensor:
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        g = x.mean(1)
        quads = [g[:, :h, :w], g[:, :h, w:], g[:, h:, :w], g[:, h:, w:]]
        q = torch.stack([t.mean((1, 2)) for t in quads], 1)
        if space == "invariant":  # sorted quadrant means do not change under rotation
            return q.sort(dim=1).values
        return q


@pytest.fixture
def blobs():
    return make_blobs


@pytest.fixture
def quadrant_model():
    return QuadrantModel()
