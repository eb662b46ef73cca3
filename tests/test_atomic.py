"""contrastlab.atomic: every output file is written atomically, and a full disk is one line.

The disk is simulated (tests/helpers.py): writes raise OSError(ENOSPC) after a few bytes, or
torch.save raises its RuntimeError from the OSError, as it does on a real full disk.
"""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
import torch
from helpers import full_disk, temporary_files, torch_save_on_a_full_disk

from contrastlab.atomic import append_text, no_space_error, write_atomic
from contrastlab.errors import DiskFull


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
def test_a_no_space_errno_is_found_through_the_exception_chain(code):
    try:
        try:
            raise OSError(code, "full")
        except OSError:
            raise RuntimeError("unexpected pos") from None  # __context__ only
    except RuntimeError as wrapped:
        assert no_space_error(wrapped).errno == code
    try:
        raise ValueError("x") from OSError(code, "full")  # __cause__
    except ValueError as e:
        assert no_space_error(e).errno == code
    assert no_space_error(OSError(errno.EACCES, "denied")) is None


def _previous(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"the previous file " * 100)
    return path, path.read_bytes()


def test_torch_save_wrapping_the_full_disk_is_disk_full(tmp_path, monkeypatch):
    path, before = _previous(tmp_path)
    torch_save_on_a_full_disk(monkeypatch)
    with pytest.raises(DiskFull, match="no space left on device while writing .*out.bin; the "):
        write_atomic(path, lambda f: torch.save({"x": torch.ones(3)}, f))
    assert path.read_bytes() == before and temporary_files(tmp_path) == []


@pytest.mark.parametrize("writer", ["bytes", "numpy", "matplotlib", "torch"])
def test_each_library_writer_on_a_full_disk_keeps_the_previous_file(tmp_path, monkeypatch, writer):
    from matplotlib.figure import Figure

    fig = Figure()
    fig.add_subplot().plot([1, 2, 3])
    write = {
        "bytes": lambda f: f.write(b"x" * 1000),
        "numpy": lambda f: np.savez(f, a=np.arange(1000)),
        "matplotlib": lambda f: fig.savefig(f, format="png"),
        "torch": lambda f: torch.save({"x": torch.ones(1000)}, f),
    }[writer]
    path, before = _previous(tmp_path)
    full_disk(monkeypatch)
    with pytest.raises(DiskFull) as info:
        write_atomic(path, write)
    assert len(str(info.value).splitlines()) == 1 and "intact" in str(info.value)
    assert path.read_bytes() == before and temporary_files(tmp_path) == []


def test_any_other_error_removes_the_temporary_file_and_is_raised_as_it_is(tmp_path):
    path, before = _previous(tmp_path)

    def broken(f):
        f.write(b"half")
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        write_atomic(path, broken)
    assert path.read_bytes() == before and temporary_files(tmp_path) == []


def test_an_append_on_a_full_disk_is_disk_full_and_cuts_nothing(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"event": "train"}\n')
    full_disk(monkeypatch)
    with pytest.raises(DiskFull, match="appending to .*metrics.jsonl; the lines written before"):
        append_text(path, json.dumps({"event": "eval"}) + "\n")
    assert path.read_text() == '{"event": "train"}\n'


def _writers(tmp_path):
    """Every writer of contrastlab, each writing ``path``."""
    from contrastlab.config import load_config, save_config
    from contrastlab.eval.features import FeatureCache
    from contrastlab.eval.results import write_json
    from contrastlab.scores import _save_json, _save_npz

    cache = FeatureCache(tmp_path)
    parts = {"k": 1}
    return {
        "eval result": (
            tmp_path / "r.json",
            lambda p: write_json({"protocol": "knn", "top1": list(range(50))}, p),
        ),
        "feature cache": (
            cache.path(parts),
            lambda p: cache.save(parts, torch.ones(50, 4), torch.zeros(50)),
        ),
        "config": (tmp_path / "config.yaml", lambda p: save_config(load_config("demo"), p)),
        "scores npz": (tmp_path / "hist.npz", lambda p: _save_npz(p, {"a": np.arange(100)})),
        "scores json": (tmp_path / "meta.json", lambda p: _save_json(p, {"a": list(range(50))})),
    }


@pytest.mark.parametrize(
    "name", ["eval result", "feature cache", "config", "scores npz", "scores json"]
)
def test_every_writer_on_a_full_disk_is_one_line_and_keeps_the_previous_file(
    tmp_path, monkeypatch, name
):
    path, write = _writers(tmp_path)[name]
    path.write_bytes(b"previous " * 20)
    full_disk(monkeypatch)
    with pytest.raises(DiskFull):
        write(path)
    assert path.read_bytes() == b"previous " * 20
    assert temporary_files(tmp_path) == []
