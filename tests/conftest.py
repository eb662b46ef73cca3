"""Shared fixtures: tiny configurations that train in seconds on a CPU."""

from __future__ import annotations

import pytest
import torch

from contrastlab.config import load_config

TINY = [
    "dataset=synthetic", "data.synthetic_train=96", "data.synthetic_test=48", "data.num_workers=0",
    "model.backbone=resnet18", "model.width=0.0625", "model.cifar_stem=true", "model.head=mlp",
    "model.head_hidden=16", "model.dim=8", "model.bn_splits=2", "moco.queue_size=40",
    "moco.momentum=0.9", "moco.temperature=0.2", "optim.batch_size=16", "optim.epochs=2",
    "optim.lr=0.05", "train.knn_every=1", "train.knn_k=5", "train.log_every=2",
    "train.progress=false", "scores.bins=20",
]


@pytest.fixture(autouse=True)
def _few_threads():
    # Two cores are shared by everything on CI machines: keep each test on one thread.
    torch.set_num_threads(1)
    yield


@pytest.fixture
def tiny_config(tmp_path):
    def make(*overrides: str, preset: str | None = "moco_v2_cifar"):
        return load_config(preset, [*TINY, f"out_dir={tmp_path / 'runs'}", *overrides])

    return make
