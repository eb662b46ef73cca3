"""Shared fixtures: tiny configurations that train in seconds on a CPU."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY

from contrastlab.config import load_config


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
