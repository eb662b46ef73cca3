"""Contrastive methods: each reads top to bottom next to its paper."""

from __future__ import annotations

from torch import nn

from contrastlab.config import Config
from contrastlab.errors import UserError

METHODS = ("moco", "looc")


def build_method(cfg: Config) -> nn.Module:
    if cfg.method == "moco":
        from contrastlab.methods.moco import MoCo

        return MoCo(cfg)
    if cfg.method == "looc":
        from contrastlab.methods.looc import build_looc

        return build_looc(cfg)
    raise UserError(f"unknown method '{cfg.method}'; valid: {', '.join(METHODS)}")
