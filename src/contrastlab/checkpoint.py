"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors and Python primitives (no pickled objects), so loading one
never runs code from the file. The model state holds the momentum encoder and the queues.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from contrastlab.config import Config, config_from_dict, config_to_dict
from contrastlab.errors import UserError

FORMAT = "contrastlab-checkpoint-v1"

# Config keys that change the shape or meaning of the saved state: a checkpoint can only be
# resumed or evaluated with the same values.
ARCHITECTURE_KEYS = (
    "method",
    "model.backbone",
    "model.width",
    "model.cifar_stem",
    "model.head",
    "model.head_hidden",
    "model.dim",
    "moco.queue_size",
    "looc.augmentations",
    "looc.plus_plus",
)


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` to ``path`` through a temporary file and a rename.

    The rename is atomic, so an interrupted save leaves the previous checkpoint intact.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def make_state(
    cfg: Config,
    model: nn.Module,
    optimizer,
    epoch: int,
    step: int,
    best_metric: float | None,
    metrics: dict | None = None,
) -> dict:
    return {
        "format": FORMAT,
        "config": config_to_dict(cfg),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else {},
        "epoch": epoch,  # number of completed epochs
        "step": step,
        "best_metric": best_metric,
        "metrics": metrics or {},
    }


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"cannot read checkpoint {path}: {first}; is it a contrastlab checkpoint?"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not a contrastlab checkpoint (expected format {FORMAT})")
    return state


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d.get(part, {}) if isinstance(d, dict) else {}
    return d


def config_differences(saved: dict, current: dict, keys=ARCHITECTURE_KEYS) -> list[str]:
    return [
        f"{k}: checkpoint {_get(saved, k)!r}, now {_get(current, k)!r}"
        for k in keys
        if _get(saved, k) != _get(current, k)
    ]


def check_compatible(path: Path, state: dict, cfg: Config) -> None:
    diffs = config_differences(state["config"], config_to_dict(cfg))
    if diffs:
        raise UserError(
            f"checkpoint {path} comes from a different model ({'; '.join(diffs)}); "
            "use a new run name, or the same settings"
        )


def load_model_state(model: nn.Module, state: dict, path: Path) -> None:
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as e:
        detail = str(e).splitlines()[0]
        raise UserError(f"checkpoint {path} does not fit this model: {detail}") from None


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the trained method from a checkpoint, in eval mode: returns ``(model, cfg)``."""
    from contrastlab.methods import build_method

    path = Path(path)
    state = read_checkpoint(path)
    cfg = config_from_dict(state["config"])
    model = build_method(cfg)
    load_model_state(model, state, path)
    if state.get("converted", {}).get("head") is False:
        # converted without a projection head (contrastlab convert): its placeholder is no space
        model.feature_spaces = ("backbone",)
    return model.to(device).eval(), cfg
