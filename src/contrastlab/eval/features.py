"""Frozen-feature extraction shared by every protocol, with an optional on-disk cache.

Every protocol starts from the same step: run a frozen encoder over a dataset and collect one
feature vector per image in a chosen feature space. Extraction dominates the cost of the fast
protocols, so features can be cached in a folder (``--cache DIR``), keyed by everything that
determines them: the checkpoint file (absolute path, modification time and size), the dataset
and split, the transform, the feature space and any batch-level change (rotation, corruption).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from contrastlab.atomic import write_atomic
from contrastlab.errors import UserError
from contrastlab.eval.progress import Heartbeat
from contrastlab.preemption import ignore_stop_signals
from contrastlab.workers import usable_workers

BatchFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def checkpoint_identity(path: str | os.PathLike | None) -> dict[str, Any] | None:
    """What identifies a checkpoint file for the cache: a rewritten file gets a new key."""
    if path is None:
        return None
    p = Path(path).resolve()
    st = p.stat()
    return {"path": str(p), "mtime_ns": st.st_mtime_ns, "size": st.st_size}


def cache_key(parts: dict[str, Any]) -> str:
    """A stable hash of the JSON form of ``parts`` (keys sorted; non-JSON values via ``repr``)."""
    text = json.dumps(parts, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class FeatureCache:
    """A folder of ``<key>.pt`` files holding ``{"feats", "labels", "parts"}``."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def path(self, parts: dict[str, Any]) -> Path:
        return self.folder / f"{cache_key(parts)}.pt"

    def load(self, parts: dict[str, Any]) -> tuple[Tensor, Tensor] | None:
        path = self.path(parts)
        if not path.is_file():
            return None
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            return data["feats"], data["labels"]
        except Exception:  # a truncated or foreign file: recompute and overwrite it
            return None

    def save(self, parts: dict[str, Any], feats: Tensor, labels: Tensor) -> None:
        data = {
            "feats": feats,
            "labels": labels,
            "parts": json.dumps(parts, sort_keys=True, default=repr),
        }
        # atomic: a reader never sees half a file; a full disk is one line, nothing left behind
        write_atomic(self.path(parts), lambda f: torch.save(data, f))


# a dataset built without the evaluation transform (build_dataset(cfg.data, split)) gives the
# raw uint8 images; the model reads them normalized as its training views were
_NOT_NORMALIZED = (
    "the dataset gives {dtype} images, not the normalized float ones the model reads: build it "
    "with the checkpoint's evaluation transform, build_dataset(cfg.data, split, "
    "transform=EvalContext.from_checkpoint(CKPT).eval_transform()) "
    "(contrastlab.eval.context), or take EvalContext.from_checkpoint(CKPT).features(split)"
)


def _to_tensor_batch(images: Any) -> Tensor:
    if not isinstance(images, Tensor):
        raise UserError(
            "the evaluation transform must produce tensors; got "
            f"{type(images).__name__} (check the dataset's transform)"
        )
    return images


@torch.no_grad()
def extract_features(
    model: nn.Module,
    dataset: Dataset,
    space: str = "backbone",
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    batch_fn: BatchFn | None = None,
    progress: bool = True,
    desc: str = "features",
    cache: FeatureCache | str | os.PathLike | None = None,
    cache_parts: dict[str, Any] | None = None,
) -> tuple[Tensor, Tensor]:
    """Features ``float32 [N, D]`` (on the CPU) and labels ``int64 [N]`` of a whole dataset.

    ``dataset`` must give normalized float images [3, H, W] (its evaluation transform: see
    :meth:`~contrastlab.eval.context.EvalContext.eval_transform`); raw uint8 images are a
    ``UserError`` that says which transform to pass. ``batch_fn(images, labels) -> (images,
    labels)`` changes each batch before the encoder (the rotation probe uses it to make four rotated copies). With ``cache`` set, the
    result is stored under a key made of ``cache_parts``; callers must put everything that
    changes the features into ``cache_parts`` (see :func:`feature_cache_parts`).
    """
    spaces = getattr(model, "feature_spaces", ("backbone",))
    if space not in spaces:
        raise UserError(
            f"feature space '{space}' does not exist for this model; "
            f"valid spaces: {', '.join(spaces)}"
        )
    if cache is not None and not isinstance(cache, FeatureCache):
        cache = FeatureCache(cache)
    if cache is not None and cache_parts is not None:
        hit = cache.load(cache_parts)
        if hit is not None:
            return hit
    model.eval()
    model.to(device)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=usable_workers(num_workers),
        pin_memory=torch.device(device).type == "cuda",
        worker_init_fn=ignore_stop_signals,  # in training's kNN monitor: the stop is the trainer's
    )
    feats, labels = [], []
    beat = Heartbeat(desc, len(loader), progress)
    bar = tqdm(loader, desc=desc, disable=None if progress else True, leave=False)
    for batch, (images, target) in enumerate(bar):
        beat.update(batch, f"{batch * batch_size:,}/{len(dataset):,} images")
        images = _to_tensor_batch(images)
        target = torch.as_tensor(target).long()
        if batch_fn is not None:
            images, target = batch_fn(images, target)
        if not images.is_floating_point():
            raise UserError(_NOT_NORMALIZED.format(dtype=str(images.dtype).removeprefix("torch.")))
        out = model.features(images.to(device, non_blocking=True), space=space)
        feats.append(out.float().flatten(1).cpu())
        labels.append(target.cpu())
    if not feats:
        raise UserError("the dataset is empty: no images to extract features from")
    result = torch.cat(feats), torch.cat(labels)
    if cache is not None and cache_parts is not None:
        cache.save(cache_parts, *result)
    return result


def feature_cache_parts(
    checkpoint: str | os.PathLike | None,
    data_cfg: Any,
    split: str,
    transform: Any,
    space: str,
    **extra: Any,
) -> dict[str, Any] | None:
    """The cache key's ingredients; ``None`` (no caching) when there is no checkpoint file."""
    ident = checkpoint_identity(checkpoint)
    if ident is None:
        return None
    data = dict(vars(data_cfg)) if hasattr(data_cfg, "__dict__") else data_cfg
    for key in ("num_workers", "in_memory", "download"):  # do not change the images
        if isinstance(data, dict):
            data.pop(key, None)
    return {
        "checkpoint": ident,
        "data": data,
        "split": split,
        "transform": repr(transform),
        "space": space,
        **extra,
    }
