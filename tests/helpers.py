"""Shared test helpers: a tiny configuration and a free local port."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

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


def overriding(base: list[str], *extra: str) -> list[str]:
    """``base`` without the keys that ``extra`` sets, then ``extra``: one value per key, as a
    careful user writes it (the command line warns about a key given twice)."""
    keys = {e.split("=", 1)[0] for e in extra}
    return [b for b in base if b.split("=", 1)[0] not in keys] + list(extra)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """``../shared/data`` next to the repository, wherever the tests run from.

    ``CONTRASTLAB_SHARED_DATA`` names the folder explicitly; otherwise it is looked for next to this
    checkout's root and next to the main checkout of a ``git worktree`` (git's common directory).
    """
    if os.environ.get("CONTRASTLAB_SHARED_DATA"):
        return Path(os.environ["CONTRASTLAB_SHARED_DATA"])
    roots = [REPO_ROOT]
    try:
        common = subprocess.run(
            ["git", "rev-parse", "--path-format=absolute", "--git-common-dir"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        roots.append(Path(common).parent)
    except (OSError, subprocess.CalledProcessError):
        pass
    for root in roots:
        candidate = root.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return None
