"""Backbones, projection heads and split batch norm."""

from contrastlab.models.backbones import build_backbone
from contrastlab.models.heads import build_head

__all__ = ["build_backbone", "build_head"]
