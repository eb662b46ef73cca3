"""The same run twice gives bit-identical checkpoints (what keeps the README's figures true)."""

from __future__ import annotations

import json

import torch

from contrastlab.checkpoint import read_checkpoint
from contrastlab.train import Trainer


def _equal(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_the_same_tiny_run_twice_gives_bit_identical_checkpoints(tiny_config):
    # two loader workers, as the demo uses: augmentation in worker processes stays deterministic
    common = ["optim.epochs=2", "data.num_workers=2", "train.knn_every=1"]
    runs = [Trainer(tiny_config(*common, f"name=r{i}")).fit() for i in range(2)]
    a, b = (read_checkpoint(r.last_checkpoint) for r in runs)
    for key in ("model", "optimizer", "epoch", "step", "best_metric", "metrics", "normalization"):
        _equal(a[key], b[key], key)

    def numbers(run):
        lines = (run.run_dir / "metrics.jsonl").read_text().splitlines()
        events = [json.loads(x) for x in lines]
        return [
            {k: v for k, v in e.items() if k not in ("images_per_s", "path")}
            for e in events
            if e["event"] in ("train", "epoch", "knn")
        ]

    assert numbers(runs[0]) == numbers(runs[1])
