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


class _FullFile:
    """A file opened for writing on a disk with ``room`` bytes left: a larger write raises
    ``OSError(ENOSPC)`` as the system does."""

    def __init__(self, f, room: int):
        self._f, self._room = f, room

    def write(self, data):
        n = len(data) if isinstance(data, str) else memoryview(data).nbytes
        if n > self._room:
            import errno

            raise OSError(errno.ENOSPC, "No space left on device")
        self._room -= n
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def full_disk(monkeypatch, room: int = 64, only: str | None = None) -> None:
    """Simulate a nearly full disk without mounting one: every file opened for writing (by
    ``open``, ``Path.write_text``, and so by ``torch.save``, ``np.savez``, ``savefig`` given a
    file) takes ``room`` bytes, then raises ``OSError(ENOSPC)``; ``os.write`` to a file (an
    append) raises it at once. With ``only``, just the files whose path holds ``only``."""
    import builtins
    import errno
    import io

    real_open, real_write = builtins.open, os.write

    def fake_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        hit = only is None or only in str(file)
        return _FullFile(f, room) if hit and any(c in mode for c in "wax+") else f

    def fake_write(fd, data):
        if fd > 2 and only is None:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(os, "write", fake_write)


def torch_save_on_a_full_disk(monkeypatch) -> None:
    """``torch.save`` as it fails on a full disk: part of the file written, then torch's
    ``RuntimeError`` raised while handling the ``OSError(ENOSPC)`` of the write."""
    import errno

    import torch

    def save(obj, f, *args, **kwargs):
        if hasattr(f, "write"):
            f.write(b"PK\x03\x04 partial")
        else:
            with open(f, "wb") as out:
                out.write(b"PK\x03\x04 partial")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64")  # noqa: B904 - as torch does

    monkeypatch.setattr(torch, "save", save)


def temporary_files(folder) -> list:
    """Files a write left behind: ``.name.tmp-PID``, ``name.tmp``, ``name.tmpPID``."""
    return [p for p in Path(folder).rglob("*") if ".tmp" in p.name]


def trained_checkpoint(root, config: list[str]) -> Path:
    """``last.pt`` of a run named ``tiny`` trained under ``root`` with the ``demo`` preset and the
    overrides ``config`` (for tests that evaluate a checkpoint of a real, short training)."""
    import torch

    from contrastlab.cli import main

    torch.set_num_threads(1)
    assert main(["train", "--config", "demo", *config, f"out_dir={root}", "name=tiny"]) == 0
    return Path(root) / "tiny" / "checkpoints" / "last.pt"


def untrained_checkpoint(path, *overrides: str, preset: str | None = None, seed: int = 0):
    """A contrastlab checkpoint of a freshly built TINY model at ``path``, without training (for
    commands that only read the encoder: export, analyze)."""
    import torch

    from contrastlab.checkpoint import make_state, save_checkpoint
    from contrastlab.config import load_config
    from contrastlab.methods import build_method

    cfg = load_config(preset, overriding(TINY, *overrides))
    torch.manual_seed(seed)
    save_checkpoint(Path(path), make_state(cfg, build_method(cfg), None, 0, 0, None))
    return Path(path)


def assert_refused_before_any_change(model, views, message: str, epoch=0) -> None:
    """``model(views, epoch)`` raises one ValueError matching ``message`` and leaves every tensor
    of the model (weights, key encoder, queues) as it was: refused before the momentum update."""
    import pytest
    import torch

    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        model(views, epoch)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def problem_lines(err: str) -> list[str]:
    """stderr without the lines in which ``eval`` protocols and ``analyze`` say what they run
    (``eval knn: ...``, ``analyze NAME: ...``): what is left are warnings and errors."""
    return [line for line in err.strip().splitlines() if not line.startswith(("eval ", "analyze "))]


# a training of seconds whose checkpoint the eval tests evaluate (trained_checkpoint), and the
# eval options that keep those evaluations quiet and small
TINY_EVAL = [
    "dataset=synthetic",
    "data.synthetic_train=96",
    "data.synthetic_test=64",
    "data.num_workers=0",
    "data.image_size=16",
    "model.width=0.0625",
    "model.cifar_stem=true",
    "model.head_hidden=16",
    "model.dim=8",
    "model.bn_splits=2",
    "moco.queue_size=32",
    "optim.batch_size=16",
    "optim.epochs=1",
    "train.max_steps_per_epoch=2",
    "train.knn_every=0",
    "train.progress=false",
    "scores.bins=10",
]
EVAL_COMMON = ["--workers", "0", "--no-progress", "--batch-size", "64"]
