"""Projection heads: MoCo v1's linear layer and MoCo v2's two-layer MLP."""

from __future__ import annotations

from torch import nn

from contrastlab.config import ModelConfig


def build_head(cfg: ModelConfig, in_dim: int) -> nn.Module:
    if cfg.head == "linear":
        return nn.Linear(in_dim, cfg.dim)
    # MoCo v2: fc -> ReLU -> fc. The reference uses the backbone width as hidden size (2048 for
    # ResNet-50); head_hidden makes it explicit.
    return nn.Sequential(
        nn.Linear(in_dim, cfg.head_hidden),
        nn.ReLU(inplace=True),
        nn.Linear(cfg.head_hidden, cfg.dim),
    )
