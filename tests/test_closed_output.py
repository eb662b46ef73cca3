"""A reader of the output that goes away (``| head``, a ``tee`` or ``less`` that ends, a closed
terminal): short commands end quietly with status 0, long ones carry on to their end."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from helpers import TINY


def _run_with_closed(argv: list[str], streams: str, cwd=None) -> subprocess.CompletedProcess:
    """``contrastlab ARGV`` with stdout (``streams="stdout"``: stderr is captured) or both
    streams (``"both"``) writing to a pipe whose reader is gone: every write meets EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "contrastlab", *argv],
            stdout=write_end,
            stderr=write_end if streams == "both" else subprocess.PIPE,
            text=True,
            timeout=240,
            cwd=cwd,
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    "argv",
    [["presets"], ["config", "--config", "moco_v2_cifar"], ["--help"], ["eval", "knn", "--help"]],
)
def test_a_command_whose_reader_stopped_reading_ends_quietly(argv):
    # `contrastlab presets | head -1`: status 0, no traceback, no "Exception ignored"
    proc = _run_with_closed(argv, "stdout")
    assert (proc.returncode, proc.stderr) == (0, "")


@pytest.mark.parametrize("streams", ["stdout", "both"])
def test_a_training_outlives_the_reader_of_its_output(tmp_path, streams):
    """`contrastlab train ... | head -1` stopped the run at its first line, silently, with status
    1 and no checkpoint; it trains to the end now, and says once on stderr that the rest of its
    output is discarded. With stderr closed as well (`2>&1 | head -1`) it carries on too."""
    argv = ["train", "--config", "moco_v2_cifar", *TINY, f"out_dir={tmp_path}", "name=r"]
    proc = _run_with_closed(argv, streams)
    assert proc.returncode == 0, proc.stderr
    if streams == "stdout":
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            "warning: the reader of contrastlab train's output went away"
        ), proc.stderr
    state = torch.load(tmp_path / "r" / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 2
    assert (tmp_path / "r" / "checkpoints" / "best.pt").is_file()
