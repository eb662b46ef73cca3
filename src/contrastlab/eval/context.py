"""What every evaluation command shares: the model, its data, transforms and feature extraction."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset
from torchvision.transforms import v2

from contrastlab.data.datasets import WithTransform
from contrastlab.errors import UserError
from contrastlab.eval.features import extract_features, feature_cache_parts

DEVICES = ("auto", "cpu", "cuda")  # what --device accepts


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(
            "--device cuda was requested but no CUDA GPU is available; use --device cpu"
        )
    return device


def subset_indices(n: int, limit: int | None, seed: int) -> list[int] | None:
    """A fixed random subset of ``limit`` indices (sorted), or None for all of them."""
    if limit is None or limit >= n:
        return None
    if limit < 1:
        raise UserError(f"a sample limit must be at least 1, got {limit}")
    return sorted(np.random.default_rng(seed).choice(n, size=limit, replace=False).tolist())


def labelled_subset(labels: Tensor, limit: int | None, seed: int) -> list[int] | None:
    """Indices of the labelled images (label >= 0), at most ``limit`` of them drawn at random.

    None means every image (all are labelled and no limit applies). Images labelled -1 (the
    unlabelled part of STL-10's training split, flat image folders) are never returned: they
    must not enter a kNN bank, a probe or a metric.
    """
    labels = torch.as_tensor(labels)
    keep = (labels >= 0).nonzero().flatten()
    chosen = subset_indices(len(keep), limit, seed)
    if chosen is None:
        return None if len(keep) == len(labels) else keep.tolist()
    return keep[chosen].tolist()


def converted_label(source_format: str) -> str:
    """How results, tables and legends name an encoder converted from another project
    (``contrastlab convert``): by its source, ``torchvision (converted)``."""
    return f"{source_format} (converted)"


def method_label(cfg, converted_from: str | None = None) -> str:
    """``moco``, ``looc`` or ``looc++`` (LooC with ``looc.plus_plus``), for headers and tables; for
    an encoder converted from another project (``contrastlab convert``), its source format, e.g.
    ``torchvision (converted)``."""
    if converted_from:
        return converted_label(converted_from)
    return "looc++" if cfg.method == "looc" and cfg.looc.plus_plus else cfg.method


def refuse_path_of_generated(dataset: str | None, data_path: str | None, own: bool = False):
    """One line for ``--data-path`` with a dataset that is not read from disk (``synthetic``);
    ``own``: the dataset is the checkpoint's own (no ``--dataset``)."""
    if data_path is not None and dataset == "synthetic":
        whose = "the checkpoint's dataset, " if own else ""
        raise UserError(
            f"--data-path {data_path} does not apply: {whose}synthetic is generated, it has no "
            "path; leave --data-path out (or name a dataset read from disk with --dataset)"
        )


def unknown_data_keys(state: dict) -> list[str]:
    """The ``data.*`` settings (without ``data.``) a checkpoint does not know, other than the
    dataset's name and path: those of an encoder converted from another project."""
    from contrastlab.checkpoint import unknown_settings

    keys = [k.partition(".")[2] for k in unknown_settings(state) if k.startswith("data.")]
    return [k for k in keys if k not in ("name", "path")]


def with_known_data(data_cfg, state: dict, data_like=None):
    """``data_cfg`` with the settings the checkpoint does not know (``unknown_data_keys``) taken
    from ``data_like`` where both name the same dataset; ``data_cfg`` itself otherwise."""
    return fill_unknown_data(data_cfg, unknown_data_keys(state), data_like)


def fill_unknown_data(data_cfg, unknown: list[str], data_like):
    """``data_cfg`` with its keys ``unknown`` taken from ``data_like`` where both name the same
    dataset; ``data_cfg`` itself otherwise."""
    if data_like is None or data_like.name != data_cfg.name or not unknown:
        return data_cfg
    return dataclasses.replace(data_cfg, **{k: getattr(data_like, k) for k in unknown})


def shared_data_settings(entries) -> object | None:
    """The data settings an encoder converted from another project is evaluated with beside
    runs trained here. ``entries``: ``(checkpoint, data_cfg, unknown)`` for every checkpoint of
    one command, ``unknown`` its ``unknown_data_keys``. Returns the ``DataConfig`` of the first
    checkpoint that knows all of its own, or None; for each converted one that names the same
    dataset, one line says that it reads the same images under these settings (what
    ``with_known_data`` then gives) instead of contrastlab's defaults, which are not its own
    either (on the synthetic set: 1,000 test images at 224 px beside a run's 64 at 32 px)."""
    entries = list(entries)
    reference = next(((c, d) for c, d, unknown in entries if not unknown), None)
    if reference is None:
        return None
    for checkpoint, data, unknown in entries:
        if fill_unknown_data(data, unknown, reference[1]) is not data:
            print(
                f"{checkpoint}: its data settings are unknown (converted from another project); "
                f"evaluated on the {data.name} images of {reference[0]}'s settings"
            )
    return reference[1]


def evaluation_data(
    path, cfg, dataset: str | None, data_path: str | None, skip_bad_images: bool = False
):
    """The ``DataConfig`` a checkpoint is evaluated on: its own training data, or ``dataset``
    (with ``data_path``) instead; unreadable images of a folder are skipped with
    ``skip_bad_images`` (``--skip-bad-images``) or where the checkpoint's own config skipped them.
    One line if neither names a dataset (an encoder converted from another project ships none) or
    an image folder has no path."""
    from contrastlab.convert import NOT_SHIPPED

    data_cfg = dataclasses.replace(cfg.data)
    if skip_bad_images:
        data_cfg = dataclasses.replace(data_cfg, skip_bad_images=True)
    refuse_path_of_generated(dataset or data_cfg.name, data_path, own=dataset is None)
    if dataset is not None and dataset != data_cfg.name:
        data_cfg = dataclasses.replace(data_cfg, name=dataset, path=data_path)
    elif data_path is not None:
        data_cfg = dataclasses.replace(data_cfg, path=data_path)
    if data_cfg.path == NOT_SHIPPED:
        ask = (
            "--data-path DIR for --dataset imagefolder"
            if data_cfg.name == "imagefolder" and dataset is not None
            else "--dataset NAME (and --data-path DIR), e.g. --dataset imagefolder --data-path DIR"
        )
        raise UserError(
            f"{path} is an encoder converted from another project and names no dataset of "
            f"its own; pass {ask}"
        )
    if data_cfg.name == "imagefolder" and not data_cfg.path:
        raise UserError("--dataset imagefolder needs --data-path DIR")
    return data_cfg


def test_set_identity(data_cfg, subset: tuple[int, int] | None = None) -> dict:
    """What decides which test images an evaluation scores, and nothing else: the dataset; for
    ``synthetic`` the settings that generate its test split (``data.synthetic_test``,
    ``data.synthetic_seed``, ``data.image_size``); for a dataset read from disk its folder
    (resolved, ``./data`` where none is given) and, for an image folder whose test split is held
    out of its training images, ``data.holdout_fraction``; with ``subset`` (``--max-test``, the
    seed) the fixed random subset drawn. Two results scored on the same test images have equal
    identities (``eval all``'s comparability check, a result's ``setup.test_set``)."""
    from contrastlab.data.datasets import imagefolder_test_dir

    ident: dict = {"dataset": data_cfg.name}
    if data_cfg.name == "synthetic":
        ident.update(
            synthetic_test=data_cfg.synthetic_test,
            synthetic_seed=data_cfg.synthetic_seed,
            image_size=data_cfg.image_size,
        )
    else:
        root = Path(data_cfg.path or "./data").expanduser()
        ident["data_path"] = str(root.resolve()) if root.exists() else data_cfg.path
        if data_cfg.name == "imagefolder" and imagefolder_test_dir(root) is None:
            ident["holdout_fraction"] = data_cfg.holdout_fraction
    if subset is not None:
        ident["max_test"], ident["subset_seed"] = subset
    return ident


@dataclasses.dataclass
class EvalContext:
    """A loaded checkpoint plus the options common to every protocol."""

    model: nn.Module
    cfg: Any  # contrastlab.config.Config of the checkpoint
    checkpoint: Path | None
    data_cfg: Any  # the evaluation dataset's DataConfig (the checkpoint's own by default)
    space: str = "backbone"
    device: str = "cpu"
    batch_size: int = 256
    num_workers: int = 0
    cache: str | None = None
    progress: bool = True
    norm: str = "checkpoint"  # "checkpoint": the training statistics; "target": the dataset's own
    train_stats: tuple | None = None  # (mean, std) stored in the checkpoint by the trainer
    max_train: int | None = None
    max_test: int | None = None
    seed: int = 0
    checkpoint_epoch: int | None = None  # the checkpoint's completed epochs (None: not stored)
    checkpoint_step: int | None = None  # and its optimizer steps
    # the checkpoint's config as commands show it (checkpoint.shown_config): an encoder converted
    # from another project has its unknown settings marked; None: every setting is known
    shown_config: dict | None = None

    def __post_init__(self):
        self._raw: dict[str, Dataset] = {}
        if self.space not in getattr(self.model, "feature_spaces", ("backbone",)):
            model = f"the model of {self.checkpoint}" if self.checkpoint else "this model"
            raise UserError(
                f"feature space '{self.space}' does not exist for {model}; valid "
                f"spaces: {', '.join(self.model.feature_spaces)}"
            )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        dataset: str | None = None,
        data_path: str | None = None,
        device: str = "auto",
        skip_bad_images: bool = False,
        data_like=None,
        **kwargs,
    ) -> "EvalContext":
        """The context of the checkpoint at ``path`` (see the class for ``kwargs``).

        ``data_like`` (a ``DataConfig``): for an encoder converted from another project, whose
        data settings are unknown (``checkpoint.unknown_settings``), the settings to take
        instead of contrastlab's defaults where it names the same dataset, so that it is
        evaluated on the same images as the runs beside it (``eval all``); the dataset's
        ``name`` and ``path`` stay those ``dataset`` / ``data_path`` or the checkpoint give."""
        from contrastlab.checkpoint import (
            model_from_state,
            read_checkpoint,
            shown_config,
            unknown_settings,
        )
        from contrastlab.config import config_from_dict

        device = resolve_device(device)
        state = read_checkpoint(path)
        # the dataset before the model is built: a bad --dataset / --data-path costs nothing
        data_cfg = evaluation_data(
            path, config_from_dict(state["config"]), dataset, data_path, skip_bad_images
        )
        data_cfg = with_known_data(data_cfg, state, data_like)
        model, cfg, train_stats = model_from_state(Path(path), state, device)
        kwargs.setdefault("train_stats", train_stats)
        # which state of the training was evaluated: an older last.pt is told apart
        kwargs.setdefault("checkpoint_epoch", state.get("epoch"))
        kwargs.setdefault("checkpoint_step", state.get("step"))
        if unknown_settings(state):
            kwargs.setdefault("shown_config", shown_config(state))
        del state
        if kwargs.get("num_workers") is None:
            kwargs["num_workers"] = data_cfg.num_workers
        return cls(
            model=model, cfg=cfg, checkpoint=Path(path), data_cfg=data_cfg, device=device, **kwargs
        )

    # -- data ----------------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return int(self.cfg.data.image_size)

    def raw(self, split: str) -> Dataset:
        """The split's dataset yielding raw images (uint8 tensors or PIL), loaded once."""
        if split not in self._raw:
            from contrastlab.data.datasets import build_dataset

            ds = build_dataset(self.data_cfg, split, None)
            if not ds.num_classes or bool((ds.labels < 0).all()):
                raise UserError(
                    f"the {split} split of dataset '{self.data_cfg.name}' has no labels; "
                    "evaluation needs class labels (class subfolders for imagefolder)"
                )
            self._raw[split] = ds
        return self._raw[split]

    def num_classes(self) -> int:
        return int(self.raw("train").num_classes)

    def reference(self) -> Dataset:
        """The split whose rule every split's view follows: the training split (the bank) of the
        evaluated dataset. Its native size picks the geometry and, with ``--norm target``, its
        statistics normalize, for the test split as well, as in the trainer's kNN monitor: a test
        split on its own may differ (all its images of one size while the training split's are
        mixed, so held in memory and resized whole), and its queries would then be resized or
        normalized unlike the bank they are compared with."""
        return self.raw("train")

    def stats(self, ds: Dataset | None = None) -> tuple[tuple, tuple]:
        """Normalization statistics: the training images' (default) or the target's own (those
        of ``ds``, by default :meth:`reference`).

        The training statistics are those stored in the checkpoint, whatever the dataset or path
        given for evaluation; checkpoints that predate them get the training dataset's rule.
        """
        ds = self.reference() if ds is None else ds
        if self.norm == "target":
            return ds.mean, ds.std
        if self.train_stats is not None:
            return tuple(self.train_stats[0]), tuple(self.train_stats[1])
        from contrastlab.data.datasets import dataset_stats

        if (
            self.cfg.data.name == self.data_cfg.name == "imagefolder"
            and self.cfg.data.path == self.data_cfg.path
        ):
            return ds.mean, ds.std
        return dataset_stats(self.cfg.data.name, self.cfg.data.image_size)

    def eval_transform(self) -> Callable:
        """The deterministic evaluation view of every split (the rule of :meth:`reference`)."""
        from contrastlab.data.augment import build_eval_transform

        mean, std = self.stats()
        return build_eval_transform(self.image_size, mean, std, self.reference().image_size)

    def eval_stages(self) -> tuple[Callable, Callable]:
        """``eval_transform`` in two parts: (image -> uint8 tensor at the network's resolution,
        uint8 tensor -> normalized float), so that corruptions can go in between."""
        from contrastlab.data.augment import build_eval_finish, build_eval_geometry

        mean, std = self.stats()
        native = self.reference().image_size
        return build_eval_geometry(self.image_size, native), build_eval_finish(mean, std)

    def train_transform(self) -> Callable:
        """Crop + flip for MoCo's linear protocol. Small images (<= 96 px): pad-and-crop, as is
        usual on CIFAR; larger: RandomResizedCrop (scale 0.08–1) as on ImageNet."""
        from contrastlab.data.augment import SMALL_IMAGE

        mean, std = self.stats()
        size = self.image_size
        native = self.reference().image_size
        if native is not None and native <= SMALL_IMAGE:
            steps = [
                v2.ToImage(),
                v2.Resize(size, antialias=True),
                v2.CenterCrop(size),
                v2.RandomCrop(size, padding=max(1, size // 8), padding_mode="reflect"),
            ]
        else:
            steps = [v2.ToImage(), v2.RandomResizedCrop(size, antialias=True)]
        return v2.Compose(
            steps
            + [
                v2.RandomHorizontalFlip(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(list(mean), list(std)),
                v2.ToPureTensor(),
            ]
        )

    def indices(self, split: str) -> list[int] | None:
        """The images of ``split`` that every protocol reads: the labelled ones, up to the limit."""
        limit = self.max_train if split == "train" else self.max_test
        return labelled_subset(self.raw(split).labels, limit, self.seed)

    def test_set(self) -> dict:
        """The identity of the test images every protocol scores (:func:`test_set_identity`):
        ``--max-test`` and the seed count only where they draw a subset."""
        labels = torch.as_tensor(self.raw("test").labels)
        labelled = int((labels >= 0).sum())
        drawn = self.max_test is not None and self.max_test < labelled
        return test_set_identity(self.data_cfg, (self.max_test, self.seed) if drawn else None)

    def view(self, split: str, transform: Callable | None) -> Dataset:
        ds = WithTransform(self.raw(split), transform)
        idx = self.indices(split)
        return ds if idx is None else Subset(ds, idx)

    # -- features ------------------------------------------------------------------------------
    def extract_kwargs(self) -> dict:
        return {
            "batch_size": self.batch_size,
            "device": self.device,
            "num_workers": self.num_workers,
            "progress": self.progress,
            "cache": self.cache,
        }

    def cache_parts(self, split: str, transform: Any, **extra: Any) -> dict | None:
        if self.cache is None:
            return None
        return feature_cache_parts(
            self.checkpoint,
            self.data_cfg,
            split,
            transform,
            self.space,
            limit=self.max_train if split == "train" else self.max_test,
            subset_seed=self.seed,
            **extra,
        )

    def features(self, split: str) -> tuple[Tensor, Tensor]:
        """Frozen features and labels of a split under the evaluation transform."""
        transform = self.eval_transform()
        return extract_features(
            self.model,
            self.view(split, transform),
            self.space,
            desc=f"{split} features",
            cache_parts=self.cache_parts(split, transform),
            **self.extract_kwargs(),
        )

    @property
    def method(self) -> str:
        """The method label of the checkpoint (``method_label``)."""
        return method_label(self.cfg, getattr(self.model, "converted_from", None))

    def describe(self) -> dict:
        return {
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "method": self.method,
            "run": self.cfg.name,
            "space": self.space,
            "dataset": self.data_cfg.name,
            "data_path": self.data_cfg.path,
            "image_size": self.image_size,
            "norm": self.norm,
            "max_train": self.max_train,
            "max_test": self.max_test,
            "seed": self.seed,
            "test_set": self.test_set(),
            "epoch": self.checkpoint_epoch,
            "step": self.checkpoint_step,
            **self.trained_with(),
        }

    # The training settings that an evaluation takes from the checkpoint as its own: the
    # network's input size, and the dataset (and so the normalization) when none is given.
    TAKEN_FROM_TRAINING = ("method", "data.name", "data.image_size")

    def trained_with(self) -> dict:
        """For an encoder converted from another project (``shown_config``), ``{"trained_with":
        {key: value}}`` for the keys of ``TAKEN_FROM_TRAINING``, each its value or ``unknown
        (converted from <source>)``: the image size an evaluation ran at may be convert's
        default, not the encoder's training resolution. Empty for a checkpoint trained here."""
        if self.shown_config is None:
            return {}
        from contrastlab.checkpoint import dotted_value

        shown = {k: dotted_value(self.shown_config, k) for k in self.TAKEN_FROM_TRAINING}
        return {"trained_with": shown}
