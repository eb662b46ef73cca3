"""Shared test helpers: a tiny configuration and a free local port."""

from __future__ import annotations

import socket

TINY = [
    "dataset=synthetic",
    "data.synthetic_train=96",
    "data.synthetic_test=48",
    "data.num_workers=0",
    "model.backbone=resnet18",
    "model.width=0.0625",
    "model.cifar_stem=true",
    "model.head=mlp",
    "model.head_hidden=16",
    "model.dim=8",
    "model.bn_splits=2",
    "moco.queue_size=40",
    "moco.momentum=0.9",
    "moco.temperature=0.2",
    "optim.batch_size=16",
    "optim.epochs=2",
    "optim.lr=0.05",
    "train.knn_every=1",
    "train.knn_k=5",
    "train.log_every=2",
    "train.progress=false",
    "scores.bins=20",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
