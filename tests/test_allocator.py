"""Freed memory is reused: a training step does not fault its activations in again every time."""

from __future__ import annotations

import ctypes.util
import resource
import sys

import pytest
import torch

from contrastlab.allocator import keep_freed_memory

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or ctypes.util.find_library("c") is None,
    reason="needs Linux with glibc",
)


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


@glibc
def test_large_blocks_are_reused_without_page_faults():
    assert keep_freed_memory()
    size = 64 * 2**20 // 4  # 64 MiB of float32: glibc would mmap (and unmap) it by default
    for _ in range(5):  # the heap grows to its steady state in the first few rounds
        torch.ones(size).sum()
    before = _minor_faults()
    for _ in range(5):
        torch.ones(size).sum()  # allocate, touch every page, free
    faults = _minor_faults() - before
    # by default every round faults in all 16,384 pages again (> 80,000 in all)
    assert faults < 2000, f"{faults} page faults for 5 reused 64 MiB blocks"
