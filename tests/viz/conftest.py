"""Fake run directories: config.yaml, metrics.jsonl, scores written by the real recorder."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from contrastlab.scores import ScoreRecorder, score_stats


def make_run(
    root: Path,
    name: str,
    momentum: float,
    knn: float | None,
    ft: bool = False,
    spaces=("z",),
    epochs: int = 3,
    steps: int = 6,
    evals: bool = False,
    knn_space: str | None = None,
    config: dict | None = None,
) -> Path:
    """A small run whose pos score climbs towards a momentum-dependent level."""
    run = root / name
    run.mkdir(parents=True)
    cfg = {
        "method": "moco",
        "name": name,
        "out_dir": str(root),
        "seed": 0,
        "moco": {"queue_size": 256, "momentum": momentum, "temperature": 0.2},
        "ft": {"pos": "extrapolate" if ft else "none", "neg": "none"},
        "optim": {"epochs": epochs, "batch_size": 16, "lr": 0.03},
    }
    for key, value in (config or {}).items():  # dotted keys: "looc.augmentations"
        *heads, last = key.split(".")
        node = cfg
        for head in heads:
            node = node.setdefault(head, {})
        node[last] = value
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    g = torch.Generator().manual_seed(int(momentum * 1000))
    rec = ScoreRecorder(run, SimpleNamespace(record=True, bins=50, low=-1.0, high=1.0), log_every=2)
    lines, step = [], 0
    for epoch in range(1, epochs + 1):
        for _ in range(steps):
            step += 1
            t = step / (epochs * steps)
            stats = {}
            for k, space in enumerate(spaces):
                pos = (
                    0.2 + 0.7 * momentum * t + 0.05 * k + 0.1 * torch.randn(16, generator=g)
                ).clamp(-1, 1)
                neg = (0.05 * torch.randn(16, 256, generator=g) * (1 + 3 * t)).clamp(-1, 1)
                raw = score_stats(pos, neg, bins=50)
                stats[(space, "raw")] = raw
                stats[(space, "effective")] = score_stats(pos - 0.3, neg, bins=50) if ft else raw
            rec.update(step, epoch, stats)
            if step % 2 == 0:
                lines.append(
                    {
                        "event": "train",
                        "epoch": epoch,
                        "step": step,
                        "loss": 7.0 - step * 0.1,
                        "lr": 0.03,
                        "images_per_s": 300.0 + step,
                    }
                )
        rec.end_epoch(epoch)
        lines.append({"event": "epoch", "epoch": epoch, "step": step, "loss": 6.5 - epoch * 0.3})
        if knn is not None:
            event = {
                "event": "knn",
                "epoch": epoch,
                "step": step,
                "knn_top1": knn - (epochs - epoch),
            }
            if knn_space is not None:
                event["knn_space"] = knn_space
            lines.append(event)
    rec.close()
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"broken\n')
    if evals:
        (run / "eval").mkdir()
        (run / "eval" / "linear.json").write_text(
            json.dumps(
                {
                    "protocol": "linear",
                    "top1": 61.5,
                    "top5": 88.0,
                    "settings": {"epochs": 10, "lr": 0.1},
                    "note": "<b>not bold</b>",
                }
            )
        )
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "last.pt").write_bytes(b"x" * 2048)
    return run


@pytest.fixture(scope="session")
def fake_runs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    return [
        make_run(root, "m0.9", 0.9, 46.5),
        make_run(root, "m0.99", 0.99, 56.2, evals=True),
        make_run(root, "m0.999", 0.999, None),
    ]


@pytest.fixture(scope="session")
def looc_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("looc")
    return make_run(root, "looc-ft", 0.99, 50.0, ft=True, spaces=("z0", "color"), evals=True)


@pytest.fixture(scope="session")
def short_run(tmp_path_factory) -> Path:
    """A run that logged its scores for one interval only (one epoch shorter than log_every)."""
    return make_run(tmp_path_factory.mktemp("short"), "short", 0.99, None, epochs=1, steps=2)


@pytest.fixture
def run_maker():
    """``make_run`` itself, for tests that need runs of their own."""
    return make_run
