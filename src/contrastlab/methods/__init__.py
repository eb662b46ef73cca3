"""Contrastive methods: each reads top to bottom next to its paper."""

from __future__ import annotations

from torch import nn

from contrastlab.config import Config, validate
from contrastlab.errors import UserError

METHODS = ("moco", "looc")


def build_method(cfg: Config) -> nn.Module:
    """The method ``cfg`` configures, freshly initialized (in training mode). ``cfg`` is checked
    first (``config.validate``): a bad value is one ``UserError`` line."""
    validate(cfg, need_data_path=False)
    if cfg.method == "moco":
        from contrastlab.methods.moco import MoCo

        return MoCo(cfg)
    if cfg.method == "looc":
        from contrastlab.methods.looc import build_looc

        return build_looc(cfg)
    raise UserError(f"unknown method '{cfg.method}'; valid: {', '.join(METHODS)}")
