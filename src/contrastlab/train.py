"""The training loop: one code path for one CPU, one GPU and many processes under torchrun.

Reproducibility: every random source (data order, augmentations, queue shuffles, FT draws) is
reseeded at the start of each epoch from ``(seed, epoch, rank)``. Checkpoints are taken at epoch
boundaries and, every ``train.checkpoint_minutes`` or on SIGTERM / SIGUSR1 / Ctrl-C, inside an
epoch; those hold the position in the epoch's order and every random state (see
``contrastlab.preemption``), so a run resumed from any checkpoint continues exactly as if it had
never stopped (bit-for-bit on CPU with ``data.num_workers=0``; with worker processes the rest of
an interrupted epoch gets other augmentations, because workers keep their random state).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import math
import os
import random
import sys
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset

from contrastlab import distributed, preemption, rundir
from contrastlab.allocator import keep_freed_memory
from contrastlab.atomic import append_text
from contrastlab.checkpoint import (
    changed_settings,
    check_compatible,
    load_model_state,
    make_state,
    read_checkpoint,
    save_checkpoint,
)
from contrastlab.config import Config, check_milestones, config_to_dict, save_config, validate
from contrastlab.data.augment import build_eval_transform
from contrastlab.data.datasets import (
    WithTransform,
    build_dataset,
    check_image_folder,
    stratified_holdout,
)
from contrastlab.errors import (
    PeerStopped,
    TrainingDiverged,
    TrainingInterrupted,
    UserError,
    met_by_every_process,
    plural,
    signal_text,
    warn,
)
from contrastlab.eval.features import extract_features
from contrastlab.eval.knn import k_covers_bank, knn_accuracy
from contrastlab.methods import build_method
from contrastlab.runstate import change_text, flow_text, processes_text
from contrastlab.views.pipeline import build_training_views


@dataclass
class TrainResult:
    run_dir: Path
    epochs: int
    steps: int
    final_loss: float
    knn_top1: float | None
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    seconds: float
    is_main: bool = True  # False on the other processes under torchrun
    knn_queries: int | None = None  # test images behind knn_top1 (None: no monitor this call)
    start_epoch: int = 0  # completed epochs when this call began (> 0: resumed)
    start_step: int = 0
    resumed_from: Path | None = None  # the checkpoint training continued from
    start_in_epoch: int = 0  # steps of epoch start_epoch + 1 done before a resume inside it


# Numbers of metrics.jsonl events that place an event or describe the run, not curves to draw.
_NOT_SCALARS = (
    "epoch",
    "step",
    "epochs_complete",
    "in_epoch",
    "steps_per_epoch",
    "world_size",
    "threads",
)

# Settings a resume may change without a warning, since they change neither what is trained nor
# its numbers: the run's name and folder, and the train.* settings of the monitor's timing,
# checkpoints and display (and how freed memory is kept). optim.epochs and the other schedule keys
# (_SCHEDULE_KEYS) and the kNN monitor's measure (_MONITOR_KEYS) are warned about where they do
# change numbers; every other change, train.max_steps_per_epoch, train.amp, train.device and
# train.channels_last included, is warned about and kept in config.yaml's history.
RESUME_UNWARNED = frozenset(
    {"name", "out_dir"}
    | {
        f"train.{key}"
        for key in (
            "knn_every",
            "checkpoint_every",
            "checkpoint_minutes",
            "keep_every",
            "resume",
            "overwrite",
            "log_every",
            "progress",
            "keep_freed_memory",
        )
    }
)

# Settings the learning-rate schedule is computed from. A change is said on resume unless the
# steps already trained had the very learning rates the new settings give them (a larger
# optim.epochs with a step schedule, or still inside the warm-up): only then is the continued run
# the one a fresh run with the new settings would have been.
_SCHEDULE_KEYS = (
    "optim.epochs",
    "optim.lr",
    "optim.schedule",
    "optim.milestones",
    "optim.warmup_epochs",
)

# Settings of what the kNN monitor measures: best.pt compares the new knn_val_top1 with the best
# of the earlier part, measured the earlier way.
_MONITOR_KEYS = (
    "train.knn_k",
    "train.knn_temperature",
    "train.knn_space",
    "train.knn_val_fraction",
)


def _listed(changed: dict, keys) -> str:
    return ", ".join(change_text(k, *changed[k]) for k in keys)


def schedule_change(cfg: Config, changed: dict, progress: float) -> str | None:
    """What a resume at ``progress`` (epochs, fractional inside an epoch) with the settings
    ``changed`` (``{key: [before, now]}``) does to the learning rate, or None when the steps
    already trained followed the new schedule too (the continued run is a fresh run's)."""
    keys = [k for k in _SCHEDULE_KEYS if k in changed]
    if not keys:
        return None
    before = dataclasses.replace(cfg.optim, **{k.split(".", 1)[1]: changed[k][0] for k in keys})
    # the trained part, densely enough to meet every milestone and the end of warm-up
    points = {i / 64 for i in range(int(progress * 64) + 1)}
    points |= {float(m) for m in (*before.milestones, *cfg.optim.milestones)}
    points |= {float(before.warmup_epochs), float(cfg.optim.warmup_epochs)}
    if all(
        math.isclose(_schedule_lr(before, q), _schedule_lr(cfg.optim, q), abs_tol=1e-12)
        for q in points
        if q < progress
    ):
        return None
    if "optim.epochs" in keys and cfg.optim.schedule == "cosine":
        how = f"the cosine schedule is recomputed for {cfg.optim.epochs} epochs"
    else:
        how = "the learning-rate schedule changes"
    was, now = _schedule_lr(before, progress), _schedule_lr(cfg.optim, progress)
    return (
        f"{_listed(changed, keys)}: {how}; {_lr_step(was, now)} at this resume, "
        f"{_printed_epoch(progress)}, and the steps already trained followed the earlier "
        "schedule, so the run is neither the earlier one continued nor a fresh run with the new "
        "settings"
    )


def _lr_step(was: float, now: float) -> str:
    """``the learning rate goes up from 0 to 0.05`` (or ``goes down from``, ``stays at``)."""
    if math.isclose(was, now, rel_tol=1e-9, abs_tol=1e-12):
        return f"the learning rate stays at {now:.4g}"
    return f"the learning rate goes {'up' if now > was else 'down'} from {was:.4g} to {now:.4g}"


def _printed_epoch(progress: float) -> str:
    """Where ``progress`` (0-based epochs, fractional inside one) is, in the epochs the progress
    prints from 1: ``the start of epoch 3`` or ``partway through epoch 3``."""
    epoch = math.floor(progress) + 1
    return (
        f"the start of epoch {epoch}"
        if progress == math.floor(progress)
        else (f"partway through epoch {epoch}")
    )


def monitor_change(changed: dict, best_metric: float | None) -> str | None:
    """What a changed kNN monitor does to best.pt's choice (None: no best yet to compare with)."""
    keys = [k for k in _MONITOR_KEYS if k in changed]
    if not keys or best_metric is None:
        return None
    return (
        f"{_listed(changed, keys)}: the kNN monitor now measures knn_val_top1 another way, and "
        f"best.pt is replaced only by an epoch reaching the earlier best ({best_metric:.2f}%), "
        "measured the earlier way"
    )


# Settings that make the data set an epoch's order is drawn from, or the path that draws it
# (in-memory batches or a DataLoader, data.image_size choosing between them for image folders).
_DATA_ORDER_KEYS = (
    "data.name",
    "data.path",
    "data.synthetic_train",
    "data.synthetic_seed",
    "data.holdout_fraction",
    "data.skip_bad_images",
    "data.views",
    "data.in_memory",
    "data.image_size",
)


def _inside(path: Path, folder: Path) -> bool:
    return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(folder))


def checkpoint_run_dir(path: Path) -> Path:
    """The run directory a checkpoint belongs to: RUN for RUN/checkpoints/X.pt, else its folder."""
    folder = Path(path).parent
    return folder.parent if folder.name == "checkpoints" else folder


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(cfg: Config, epoch: int) -> int:
    return cfg.seed * 1_000_003 + epoch * 7919 + distributed.rank() * 104_729


def learning_rate(cfg: Config, epoch_progress: float) -> float:
    """Learning rate at a fractional epoch: linear warm-up, then cosine or step decay."""
    return _schedule_lr(cfg.optim, epoch_progress)


def _schedule_lr(o, epoch_progress: float) -> float:
    if epoch_progress < o.warmup_epochs:
        return o.lr * epoch_progress / o.warmup_epochs
    if o.schedule == "cosine":
        span = max(o.epochs - o.warmup_epochs, 1e-8)
        return o.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch_progress - o.warmup_epochs) / span))
    return o.lr * 0.1 ** sum(epoch_progress >= m for m in o.milestones)


def eval_transform(cfg: Config, dataset):
    return build_eval_transform(cfg.data.image_size, dataset.mean, dataset.std, dataset.image_size)


def labelled_indices(labels) -> list[int]:
    """Indices of the images that carry a class label (unlabelled images have label -1)."""
    return (torch.as_tensor(labels) >= 0).nonzero().flatten().tolist()


def _monitor_features(model, dataset, space: str, device, num_workers: int) -> dict:
    """{space: (features, labels)} for ``space`` and, where it costs no second pass, the others.

    A projection space (MoCo's ``z``, LooC's ``z0``, ...) is computed from the pooled backbone
    output, so one pass with a forward hook on ``model.backbone`` yields both. LooC++ computes its
    heads without calling ``model.backbone`` as a module: its ``concat`` holds ``backbone``, from
    which ``z0`` is computed (``spaces_from_concat``); its other spaces are extracted alone.
    """
    spaces = getattr(model, "feature_spaces", ("backbone",))
    run = space
    if space == "backbone" and not getattr(model, "plus_plus", False):
        run = next((s for s in ("z", "z0") if s in spaces), "backbone")
    captured: list[torch.Tensor] = []
    hook = None
    if run != "backbone" and isinstance(getattr(model, "backbone", None), torch.nn.Module):
        hook = model.backbone.register_forward_hook(
            lambda module, inputs, output: captured.append(output.float().flatten(1).cpu())
        )
    try:
        feats, labels = extract_features(
            model, dataset, run, device=device, num_workers=num_workers, progress=False
        )
    finally:
        if hook is not None:
            hook.remove()
    out = {run: (feats, labels)}
    if captured and sum(len(c) for c in captured) == len(feats):
        out["backbone"] = (torch.cat(captured), labels)
    if run == "concat" and hasattr(model, "spaces_from_concat"):  # LooC++: backbone and z0 too
        for name, derived in model.spaces_from_concat(feats).items():
            out.setdefault(name, (derived, labels))
    return out


def views_description(cfg: Config, views, dataset) -> dict:
    """Which path makes the training views (the ``start`` event's fields): ``views``
    (``batched`` or ``per_image``), ``views_device`` (where the views are made: the batched
    operations' device, the CPU for ``per_image``), ``views_compiled`` (``data.views_compile``
    on the batched path), ``images`` (``in_memory``: decoded once and held; ``lazy``: decoded
    from their files as batches are drawn) and ``workers`` (DataLoader processes; 0 when the
    batches are indexed from memory without a loader)."""
    from contrastlab.views.pipeline import InMemoryViews

    batched = cfg.data.views != "per_image"
    in_memory = isinstance(views, InMemoryViews) or getattr(dataset, "images", None) is not None
    device = getattr(views, "device", torch.device("cpu"))
    return {
        "views": "batched" if batched else "per_image",
        "views_device": device.type if batched else "cpu",
        "views_compiled": bool(batched and cfg.data.views_compile),
        "images": "in_memory" if in_memory else "lazy",
        # the loader's own: data.num_workers capped at the CPUs there are (contrastlab.workers)
        "workers": 0 if isinstance(views, InMemoryViews) else views.loader.num_workers,
    }


def views_text(info: dict) -> str:
    """``views: batched on cpu, images decoded lazily by 2 workers`` (from
    :func:`views_description`)."""
    compiled = ", compiled" if info["views_compiled"] else ""
    workers = info["workers"]
    by = f"by {workers} worker{'s' if workers != 1 else ''}" if workers else "in the main process"
    images = (
        f"images decoded lazily {by}"
        if info["images"] == "lazy"
        else "images held in memory" + (f", loaded {by}" if workers else "")
    )
    return f"views: {info['views']} on {info['views_device']}{compiled}, {images}"


def knn_monitor_metrics(model, cfg: Config, train_images, test_images, device="cpu") -> dict:
    """The kNN monitor: weighted kNN top-1 (%) on held-out data, in one or more feature spaces.

    Returns ``{"knn_top1": ..., "knn_top1_<space>": ..., "knn_val_top1": ...}`` (empty when the
    data has no labelled images). ``knn_top1`` is in ``train.knn_space``: the labelled training
    images are the bank, the labelled test images the queries, both under the deterministic
    evaluation view (the official MoCo CIFAR-10 demo's monitor, which reads the normalized
    128-d output of its encoder: ``knn_space=z``). ``knn_top1_<space>`` repeats it for every space
    that came at no extra cost (see :func:`_monitor_features`). ``knn_val_top1``, the metric that
    chooses ``best.pt``, never reads the test split: a stratified ``train.knn_val_fraction`` of the
    labelled training images are the queries (at least one of every class of two or more, as the
    test split held out of an image folder), the remaining training images the bank; where every
    class holds one image the split is empty and there is no ``knn_val_top1`` (see
    :func:`knn_val_warning`).

    Images labelled -1 (unlabelled, e.g. STL-10's unlabelled split) never enter a bank or a metric.
    """
    t = cfg.train
    transform = eval_transform(cfg, train_images)
    feats = {}
    for split, images in (("train", train_images), ("test", test_images)):
        idx = labelled_indices(images.labels)
        if not idx or not train_images.num_classes:
            return {}
        view = Subset(WithTransform(images, transform), idx)
        feats[split] = _monitor_features(model, view, t.knn_space, device, cfg.data.num_workers)

    def knn(bank, queries) -> float:
        return knn_accuracy(
            *bank, *queries, train_images.num_classes, k=t.knn_k, temperature=t.knn_temperature
        )

    metrics = {"knn_top1": knn(feats["train"][t.knn_space], feats["test"][t.knn_space])}
    metrics["knn_queries"] = len(feats["test"][t.knn_space][1])  # how many images it measured
    for space in sorted(feats["train"]):
        metrics[f"knn_top1_{space}"] = knn(feats["train"][space], feats["test"][space])
    if t.knn_val_fraction > 0:
        f_bank, y_bank = feats["train"][t.knn_space]
        rest, val = stratified_holdout(y_bank.tolist(), t.knn_val_fraction, at_least_one=True)
        if val and rest:
            metrics["knn_val_top1"] = knn((f_bank[rest], y_bank[rest]), (f_bank[val], y_bank[val]))
    return metrics


def knn_val_warning(cfg: Config, train_images) -> str | None:
    """The warning for a kNN validation split that holds no image (every class of the labelled
    training images holds one, which stays in the bank): no ``best.pt`` is chosen. None when the
    split holds images, or the monitor does not run or has no labels to measure with."""
    t = cfg.train
    if not t.knn_every or t.knn_val_fraction <= 0 or not train_images.num_classes:
        return None
    idx = labelled_indices(train_images.labels)
    labels = torch.as_tensor(train_images.labels)[idx].tolist()
    if not labels or stratified_holdout(labels, t.knn_val_fraction, at_least_one=True)[1]:
        return None
    classes = len(set(labels))
    return (
        f"warning: the kNN monitor's validation split (train.knn_val_fraction="
        f"{t.knn_val_fraction:g}) is empty: "
        f"{'the one class' if classes == 1 else f'each of the {classes} classes'} of the training "
        f"images holds one labelled image, which stays in the kNN bank, so no best.pt is chosen; "
        f"add a second image to each class, or set train.knn_val_fraction=0 to train without "
        "best.pt"
    )


def knn_monitor_accuracy(model, cfg: Config, train_images, test_images, device="cpu") -> float:
    """The monitor's headline ``knn_top1`` (see :func:`knn_monitor_metrics`); NaN without labels."""
    metrics = knn_monitor_metrics(model, cfg, train_images, test_images, device)
    return metrics.get("knn_top1", float("nan"))


def plain_bn_warning(cfg: Config, world_size: int) -> str | None:
    """The warning for a single process with plain BN and shuffle BN asked for, else None.

    Shuffle BN needs either several processes (keys permuted across them) or split BN on one
    device (``model.bn_splits`` > 1, keys shuffled between sub-batches). One process with plain BN
    has neither: the key encoder's batch statistics can reveal the positive, the leak that MoCo's
    authors measured at several points of accuracy (He et al. 2020, section 3.3).
    """
    m = cfg.model
    if world_size > 1 or m.bn_splits > 1 or not m.shuffle_bn:
        return None
    return (
        "warning: one process with plain batch norm (model.bn_splits=1) cannot shuffle BN, so the "
        "key encoder's batch statistics leak the positive (MoCo measured a loss of several "
        "points); on one device set model.bn_splits=8 (split BN), or train under torchrun with "
        "several processes (model.shuffle_bn=false accepts plain BN knowingly)"
    )


class Trainer:
    def __init__(self, cfg: Config):
        validate(cfg)  # a config built or changed in Python, before anything is touched
        # Folders of the run directory that do not exist yet: a run that stops at one of the
        # checks below (before any training) leaves them as it found them, i.e. absent.
        run_dir = cfg.run_dir
        created = [
            p for p in (run_dir / "checkpoints", run_dir, *run_dir.parents) if not p.exists()
        ]
        self._created_folders = created
        try:
            self._set_up(cfg)
        except BaseException:
            if getattr(self, "lock", None) is not None:
                self.lock.release()
            self._remove_created_folders()
            raise

    def _remove_created_folders(self) -> None:
        for folder in self._created_folders:  # deepest first; only if nothing was written there
            try:
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
            except FileNotFoundError:  # under torchrun, another process removed it meanwhile
                pass

    def _set_up(self, cfg: Config) -> None:
        self.cfg = cfg
        if cfg.train.device == "cuda" and not torch.cuda.is_available():
            raise UserError(
                "train.device=cuda but no CUDA GPU is available to PyTorch; use "
                "train.device=auto or train.device=cpu"
            )
        self.device = distributed.init_from_env(cfg.train.device)
        self.run_dir = cfg.run_dir
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.is_main = distributed.is_main()
        self.lock = rundir.RunLock(self.run_dir)
        weakref.finalize(self, self.lock.release)
        self.resume_state = None  # (path, state) to resume from, chosen before building anything
        if cfg.data.name == "imagefolder" and cfg.data.path:  # a typo is said before a clash
            check_image_folder(Path(cfg.data.path).expanduser())  # as the dataset reads it
        distributed.raise_together(self._claim_run_dir)
        self.resumed_from: Path | None = None
        self.complete = self._already_complete()
        if self.complete is not None:
            return  # every epoch is trained: nothing to build (fit() reports it)
        cuda = self.device.type == "cuda"
        if not cuda and cfg.train.keep_freed_memory:
            keep_freed_memory()  # up to 25% of a CPU step was page faults (docs/benchmarks.md)
        if cfg.train.threads is not None:
            # On a CPU other processes also use, torch's threads (one per core) wait for each
            # other at every op whenever one is descheduled: 1 can be many times faster there
            # (docs/benchmarks.md, threads).
            torch.set_num_threads(cfg.train.threads)
        self.amp = cfg.train.amp if cfg.train.amp is not None else cuda
        if self.amp and self.device.type == "cpu":  # each process's own CPU (nodes may differ)
            distributed.warn_where(
                not cpu_has_native_bf16(),
                "train.amp=true on a CPU without bf16 instructions (AVX512-BF16 or AMX): bf16 "
                "is emulated there and slower than float32; set train.amp=false on this machine",
            )
        # channels-last: faster convolutions on CUDA and in oneDNN on CPUs with AVX-512; split BN
        # then normalizes contiguous blocks of the batch (models/split_bn.py, docs/benchmarks.md).
        self.channels_last = (
            cfg.train.channels_last
            if cfg.train.channels_last is not None
            else default_channels_last(self.device)
        )
        if self.channels_last and not default_channels_last(self.device):
            distributed.warn_where(
                True,
                "train.channels_last=true on a CPU without AVX-512: oneDNN's AVX2 kernels for "
                "channels-last convolutions hung or crashed the backward pass of small models "
                "(torch 2.14.1); set train.channels_last=false on this machine",
            )

        world = distributed.world_size()
        if cfg.optim.batch_size % world:
            raise UserError(
                f"optim.batch_size ({cfg.optim.batch_size}) must be divisible by the "
                f"number of processes ({world})"
            )
        self.local_batch = cfg.optim.batch_size // world
        if self.local_batch % cfg.model.bn_splits:
            raise UserError(
                f"the per-process batch ({self.local_batch}) must be divisible by "
                f"model.bn_splits ({cfg.model.bn_splits})"
            )
        if self.local_batch // cfg.model.bn_splits < 2:  # the config checks one process only
            raise UserError(
                f"the per-process batch ({self.local_batch} of optim.batch_size="
                f"{cfg.optim.batch_size} over {world} processes) gives batch norm "
                f"{self.local_batch // cfg.model.bn_splits} sample per group with model.bn_splits="
                f"{cfg.model.bn_splits}; it needs at least 2: raise optim.batch_size to at least "
                f"{2 * cfg.model.bn_splits * world} or lower model.bn_splits"
            )

        seed_everything(cfg.seed)  # identical initial weights on every process
        self.model = build_method(cfg).to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.method = self.model
        if distributed.is_distributed():
            # The queue is kept identical on every process by gathering keys, so buffers need no
            # broadcast (which would also copy the K x d queue every step).
            ddp = torch.nn.parallel.DistributedDataParallel
            no_buffer_sync = (
                {"forward_sync_buffers": False}  # torch >= 2.14 spelling
                if "forward_sync_buffers" in inspect.signature(ddp).parameters
                else {"broadcast_buffers": False}
            )
            self.model = ddp(
                self.model, device_ids=[self.device.index] if cuda else None, **no_buffer_sync
            )
        params = [p for p in self.method.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(
            params,
            lr=cfg.optim.lr,
            momentum=cfg.optim.momentum,
            weight_decay=cfg.optim.weight_decay,
        )

        self.train_images = build_dataset(cfg.data, "train")
        if len(self.train_images) < cfg.optim.batch_size:
            raise UserError(
                f"the training set has {plural(len(self.train_images), 'image')}, fewer than one "
                f"batch (optim.batch_size={cfg.optim.batch_size}); lower the batch size"
            )
        # dataset -> views: batched on the device for images in memory (views/pipeline.py)
        self.views = build_training_views(
            cfg,
            self.train_images,
            self.method.num_views,
            self.local_batch,
            self.device,
            distributed.is_distributed(),
        )
        self.views_info = views_description(cfg, self.views, self.train_images)
        self.steps_per_epoch = len(self.views)
        if cfg.train.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.train.max_steps_per_epoch)

        # Every split the run will read is built (so checked: a corrupt image stops the run here)
        # before the first step, not at the first kNN monitor after hours of training.
        self.test_images = (
            build_dataset(cfg.data, "test") if cfg.train.knn_every and self.is_main else None
        )
        if self.test_images is not None and self.train_images.num_classes == 1:
            warn(
                "the labelled images form a single class, so the kNN monitor reads 100% by "
                "construction; give one folder per class, or train.knn_every=0"
            )
        # the monitor measures something only with labelled images on both sides; otherwise
        # no epoch waits for it (no checkpoint marked as waiting, no rewrite of last.pt)
        measures = [
            self.test_images is not None
            and all(
                len(labelled_indices(images.labels)) > 0
                for images in (self.train_images, self.test_images)
            )
        ]
        if distributed.is_distributed():  # only process 0 holds the test split: its answer
            torch.distributed.broadcast_object_list(measures, src=0)
        self.monitor_measures = bool(measures[0])
        if self.test_images is not None:
            bank = len(labelled_indices(self.train_images.labels))
            if bank == 0:
                warn(
                    "the training images carry no class labels (a folder without class "
                    "folders), so the kNN monitor has nothing to measure and is off; give one "
                    "folder per class to monitor the run, or set train.knn_every=0"
                )
            covers = k_covers_bank(
                cfg.train.knn_k, bank, "train.knn_k", "the kNN monitor's bank (labelled training)"
            )
            if covers:
                warn(covers)

        self.epoch, self.step, self.best_metric = 0, 0, None
        self.pending_monitor_loss: float | None = None  # resumed before the epoch's monitor ran
        self.progress_bar = None
        self.last_knn: float | None = None
        self.position: dict | None = None  # where inside an epoch a resumed run continues
        self.schedule_changed = False  # a resume changed the trained steps' learning rates
        self.knn_metrics: dict = {}  # the monitor's metrics of the current weights, or {}
        self.writer = None
        self.recorder = None
        self.stop_policy: preemption.StopPolicy | None = None

    # -- set-up of the run directory --------------------------------------------------------
    def _claim_run_dir(self) -> None:
        """Before any data or model: writable, locked, no stale files, what to resume from."""
        cfg = self.cfg  # validated: train.resume and train.overwrite do not both hold
        if self.is_main:
            rundir.check_writable(self.run_dir)
            rundir.refuse_foreign(self.run_dir)
            rundir.check_replaceable(self.run_dir)
            self.lock.acquire()
            rundir.remove_stale_files(self.run_dir)
        resume = cfg.train.resume
        if resume == "auto":
            self.resume_state = rundir.choose_checkpoint(self.run_dir, announce=self.is_main)
        elif resume is not None:
            resume = str(Path(resume).expanduser())
            if not Path(resume).exists():  # a mistyped "auto" is no file either
                raise UserError(
                    f"train.resume={resume}: no such checkpoint; give the path of a .pt file, "
                    "or train.resume=auto to continue from the run directory's newest checkpoint"
                )
            self.resume_state = (Path(resume), read_checkpoint(resume))
        elif not cfg.train.overwrite:
            rundir.refuse_existing(self.run_dir)
        stored = self.resume_state[1].get("config", {}) if self.resume_state else {}
        if stored.get("optim", {}).get("milestones") != cfg.optim.milestones:  # a run keeps its own
            check_milestones(cfg)

    def _already_complete(self) -> TrainResult | None:
        """The result of a resumed run that already holds ``optim.epochs`` epochs, else None.

        Re-running a finished job (``train.resume=auto``) is then a no-op that builds no data,
        rather than an empty loop that reports a NaN loss; the summary says how to go on.
        """
        if self.resume_state is None:
            return None
        path, state = self.resume_state
        epoch, step = int(state.get("epoch") or 0), int(state.get("step") or 0)
        if epoch < self.cfg.optim.epochs or state.get("position") is not None:
            return None
        if state.get("monitor_pending") and self.cfg.train.knn_every:
            return None  # the last epoch's kNN monitor has still to run
        check_resumable(path, state, self.cfg)
        metrics = state.get("metrics") or {}
        loss = metrics.get("loss")
        # nothing is written to this run's folder: the results are those of the checkpoint's run
        home = self.run_dir if _inside(path, self.run_dir) else checkpoint_run_dir(path)
        best = home / "checkpoints" / "best.pt"
        return TrainResult(
            run_dir=home,
            epochs=epoch,
            steps=step,
            final_loss=float(loss) if loss is not None else float("nan"),
            knn_top1=metrics.get("knn_top1"),
            last_checkpoint=path,
            best_checkpoint=best if best.exists() else None,
            seconds=0.0,
            is_main=self.is_main,
            start_epoch=epoch,
            start_step=step,
            resumed_from=path,
        )

    def prepare_run_dir(self) -> None:
        cfg = self.cfg
        if self.resume_state is not None:
            self.resume_from(*self.resume_state)
            self.resume_state = None
        elif self.is_main and cfg.train.overwrite:
            rundir.clear_run(self.run_dir)
        elif self.is_main:  # a fresh start: no records of an earlier start without checkpoint
            rundir.clear_earlier_attempt(self.run_dir)
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            rundir.repair_metrics(self.run_dir / "metrics.jsonl")
            save_config(cfg, self.run_dir / "config.yaml", self._config_history())
            from torch.utils.tensorboard import SummaryWriter

            # hides the earlier files' events after the checkpoint resumed from (those of its
            # own step stay: purge_step hides the steps from it on)
            purge = self.step + 1 if self.resumed_from is not None else self.step
            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge)
        if cfg.scores.record:
            from contrastlab.scores import ScoreRecorder, queue_filled_step

            self.recorder = ScoreRecorder(
                self.run_dir,
                cfg.scores,
                cfg.train.log_every,
                self.writer,
                queue_filled_step=queue_filled_step(
                    cfg.moco.queue_size, cfg.optim.batch_size, cfg.moco.symmetric
                ),
            )
            if self.position is not None and self.position.get("recorder"):
                self.recorder.load_state_dict(self.position["recorder"], self.device)

    def resume_from(self, path: Path, state: dict) -> None:
        check_resumable(path, state, self.cfg)
        load_model_state(self.method, state, path)
        self.resumed_from = path
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.best_metric = state.get("best_metric")
        self.last_knn = (state.get("metrics") or {}).get("knn_top1")
        if state.get("monitor_pending") and self.cfg.train.knn_every and not state.get("position"):
            loss = (state.get("metrics") or {}).get("loss")
            self.pending_monitor_loss = float(loss) if loss is not None else float("nan")
        self.position = state.get("position")
        if self.position is not None:
            saved_world = len(self.position["rng"])
            if saved_world != distributed.world_size():
                raise UserError(
                    f"checkpoint {path} was written inside an epoch by {saved_world} "
                    f"process(es); resume it with the same number ({distributed.world_size()} now)"
                )
        # the checkpoint's epoch as the stopped event places it: complete epochs, and inside an
        # epoch the one that continues (1-based, as train/epoch events count) and its steps done
        where = self._place(None if self.position is None else self.position["batch"])
        changed = changed_settings(state["config"], config_to_dict(self.cfg))
        # the number of processes is no config key: a checkpoint says what wrote it (one taken
        # inside an epoch also by its random states, one per process)
        world, saved_world = distributed.world_size(), state.get("world_size")
        if saved_world is None and self.position is not None:
            saved_world = len(self.position["rng"])
        if saved_world is not None and int(saved_world) != world:
            changed["world_size"] = [int(saved_world), world]
        if self.position is not None:  # inside an epoch: only with the same epoch to continue
            self._check_same_epoch(path, changed)
        # Continuing with other settings is allowed, but said once, and the resume event keeps
        # what the first part used, since config.yaml now holds the new values. The settings of
        # RESUME_UNWARNED are recorded, not warned about.
        said = self._resume_changes(changed)
        if said and self.is_main:
            warn(f"resuming {path} with changed settings: {said}")
        if self.is_main:  # the steps trained after the checkpoint are trained again: their
            # records go (TensorBoard's, by prepare_run_dir's purge_step)
            rundir.cut_metrics(self.run_dir / "metrics.jsonl", self.step, self.epoch)
        self.log(
            {
                "event": "resume",
                "checkpoint": str(path),
                "epoch": self.epoch,
                "step": self.step,
                **where,
                "world_size": world,
                **({"changed": changed} if changed else {}),
                **({"schedule_changed": True} if self.schedule_changed else {}),
            }
        )

    def _resume_changes(self, changed: dict) -> str:
        """The changed settings a resume warns about, with what the schedule and monitor keys do
        where they change numbers ('' when nothing is worth a warning)."""
        batch = 0 if self.position is None else int(self.position["batch"])
        progress = self.epoch + batch / max(self.steps_per_epoch, 1)
        parts = [
            schedule_change(self.cfg, changed, progress),
            monitor_change(changed, self.best_metric),
        ]
        explained = {k for k in (*_SCHEDULE_KEYS, *_MONITOR_KEYS) if k in changed}
        if parts[0] is None:  # the trained steps had the new schedule's rates: only a new length
            explained -= {k for k in _SCHEDULE_KEYS if k != "optim.epochs"}
        self.schedule_changed = parts[0] is not None
        rest = [k for k in changed if k not in RESUME_UNWARNED and k not in explained]
        return "; ".join(p for p in (_listed(changed, rest), *parts) if p)

    def epoch_order(self) -> dict:
        """What an epoch's order of images and its length are made of, beyond ``(seed, epoch,
        rank)``: the global batch, the training set (its size and a digest of its labels, classes
        and files), the path that draws the order (in-memory batches or a DataLoader, which draw
        different permutations from the same seed) and the epoch's steps. Kept in a checkpoint
        taken inside an epoch, so that a resume continues that very epoch (``_check_same_epoch``).
        """
        from contrastlab.views.pipeline import InMemoryViews

        if getattr(self, "_data_digest", None) is None:
            self._data_digest = training_set_digest(self.train_images)
        return {
            "batch_size": self.cfg.optim.batch_size,
            "seed": self.cfg.seed,
            "images": len(self.train_images),
            "data": self._data_digest,
            "pipeline": "in_memory" if isinstance(self.views, InMemoryViews) else "loader",
            "steps_per_epoch": self.steps_per_epoch,
        }

    def _check_same_epoch(self, path: Path, changed: dict) -> None:
        """One line if the checkpoint, taken inside an epoch, cannot continue that epoch: its
        position is a number of batches of an order drawn from the seed, the training set and the
        batch size, so with any of them changed the rest of the epoch would train some images
        twice and skip others; and an epoch cut shorter than the steps already done has no rest.
        """
        position = self.position
        done = int(position["batch"])
        saved = position.get("order")  # absent in checkpoints of older versions
        now = self.epoch_order()
        keys = [k for k in ("optim.batch_size", "seed") if k in changed]
        reasons = []
        data_keys = [k for k in _DATA_ORDER_KEYS if k in changed]
        if saved is None:
            keys += data_keys
        elif any(saved.get(k) != now[k] for k in ("images", "data", "pipeline")):
            keys += data_keys
            if not data_keys and saved.get("images") != now["images"]:
                reasons.append(
                    f"the training set holds {plural(now['images'], 'image')}, "
                    f"{saved.get('images')} when the epoch began"
                )
            elif not data_keys and saved.get("data") != now["data"]:
                reasons.append("the training images are not those the epoch was drawn from")
            elif not data_keys:
                reasons.append("the views path draws the order another way")
        reasons[:0] = [change_text(k, *changed[k]) for k in keys]
        if reasons:
            reasons = [
                f"{', '.join(reasons)} change{'s' if len(reasons) == 1 else ''} the epoch's order "
                "of images (its rest would train some images twice and skip others)"
            ]
        cap = self.cfg.train.max_steps_per_epoch
        if cap is not None and cap < done:  # an epoch shorter than the part already trained
            if "train.max_steps_per_epoch" in changed:
                keys.append("train.max_steps_per_epoch")
            reasons.append(f"train.max_steps_per_epoch={cap} ends it before the {done} steps done")
        if not reasons:
            return
        length = (saved or {}).get("steps_per_epoch")
        steps = f"{done} of its {plural(length, 'step')}" if length else plural(done, "step")
        earlier = " ".join(f"{k}={flow_text(changed[k][0])}" for k in keys)
        earlier = f" ({earlier})" if earlier else " (the same training images)"
        kept = _end_of_epoch_checkpoint(path.parent)
        instead = f", resume from the end-of-epoch checkpoint {kept} (train.resume={kept})"
        raise UserError(
            f"checkpoint {path} was written inside epoch {self.epoch + 1}, after {steps}, which "
            f"this run cannot continue: {'; '.join(reasons)}; resume with the earlier "
            f"values{earlier}{instead if kept else ''}, or start a new run (another name, or "
            "train.overwrite=true)"
        )

    def _config_history(self) -> list[str]:
        """Comment lines for config.yaml when an earlier part of the run used other settings: the
        file holds the values of the part now starting, and would otherwise be read as the whole
        run's. One line per resume that changed a setting (``runstate.resume_text``)."""
        from contrastlab import runstate

        def misleading(
            key: str, event: dict
        ) -> bool:  # config.yaml's value is wrong for an earlier part
            if key == "optim.epochs":  # only where the earlier part had another schedule
                return bool(event.get("schedule_changed"))
            return key not in RESUME_UNWARNED and key not in _MONITOR_KEYS and key != "world_size"

        resumes = [
            e
            for e in runstate.read_metrics(self.run_dir / "metrics.jsonl")
            if e.get("event") == "resume" and any(misleading(k, e) for k in e.get("changed") or {})
        ]
        if not resumes:
            return []
        return [
            "This run was resumed with changed settings: the values below are those of its last",
            "part; metrics.jsonl's resume events keep what each earlier part used.",
            *(runstate.resume_text(e) for e in resumes),
        ]

    # -- logging ----------------------------------------------------------------------------
    def log(self, record: dict) -> None:
        if not self.is_main:
            return
        append_text(self.run_dir / "metrics.jsonl", json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in _NOT_SCALARS:
                    self.writer.add_scalar(
                        f"{record['event']}/{key}", value, record.get("step", self.step)
                    )

    # -- the loop ---------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train to ``optim.epochs``; raises ``TrainingInterrupted`` after a stop signal."""
        if self.complete is not None:
            self.lock.release()
            self._remove_created_folders()  # a run resumed from elsewhere wrote nothing here
            return self.complete
        try:
            with preemption.StopSignals() as signals:
                return self._fit(signals)
        finally:
            if self.progress_bar is not None:
                self.progress_bar.close()
            if self.writer is not None:
                self.writer.close()
            self.lock.release()

    def _fit(self, signals: preemption.StopSignals) -> TrainResult:
        cfg = self.cfg
        self.prepare_run_dir()
        self.stop_policy = preemption.StopPolicy(signals, cfg.train.checkpoint_minutes)
        for warning in (
            plain_bn_warning(cfg, distributed.world_size()),
            knn_val_warning(cfg, self.train_images) if self.monitor_measures else None,
        ):
            if warning and self.is_main:
                print(warning, file=sys.stderr, flush=True)
                self.log({"event": "warning", "step": self.step, "message": warning})
        # what this segment of the run (a fresh start or a resume) ran on: the processes, the
        # device and what train.amp=null came to, which config.yaml cannot say
        self.log(
            {
                "event": "start",
                "epoch": self.epoch,
                "epochs_complete": self.epoch,
                "step": self.step,
                "world_size": distributed.world_size(),
                "device": self.device.type,
                "amp": bool(self.amp),
                "threads": torch.get_num_threads(),
                "channels_last": self.channels_last,
                **self.views_info,
            }
        )
        if self.is_main:
            bar = (
                "a bar and a line per epoch"
                if cfg.train.progress and sys.stderr.isatty()
                else "a line per epoch"
            )
            first, last = self.epoch + 1, cfg.optim.epochs
            epochs = f"epoch {last}" if first == last else f"epochs {first}-{last}"
            steps = f"{self.steps_per_epoch:,} step{'s' if self.steps_per_epoch != 1 else ''}"
            processes = processes_text([distributed.world_size()], cfg.optim.batch_size)
            ft = ft_start_text(cfg)
            resumed = ""
            if self.resumed_from is not None:  # said before the first epoch, not only at the end
                resumed = f", resumed from {self.resumed_from} at step {self.step:,}"
                if self._batch_in_epoch():
                    resumed += f" ({self._batch_in_epoch():,} of epoch {first}'s steps done)"
            print(
                f"training {cfg.name}{resumed}: {epochs} of {last} ({steps} each) on "
                f"{self.device.type}, "
                f"{processes}; {views_text(self.views_info)}; {f'{ft}; ' if ft else ''}{bar}, "
                f"every step's metrics in {self.run_dir / 'metrics.jsonl'}",
                flush=True,
            )
        start = time.time()
        start_epoch, start_step, start_in_epoch = self.epoch, self.step, self._batch_in_epoch()
        final_loss = float("nan")
        if self.pending_monitor_loss is not None:  # stopped after the save, before the monitor
            final_loss = self.pending_monitor_loss
            self.run_monitor(final_loss, rewrite_last=True)
        for epoch in range(self.epoch, cfg.optim.epochs):
            final_loss = self.train_epoch(epoch)
            self.epoch = epoch + 1
            self.knn_metrics = {}  # the weights changed: earlier metrics are stale
            knn_due = (
                cfg.train.knn_every
                and self.monitor_measures
                and (self.epoch % cfg.train.knn_every == 0 or self.epoch == cfg.optim.epochs)
            )
            keep = cfg.train.keep_every
            save_due = (
                self.epoch % cfg.train.checkpoint_every == 0
                or self.epoch == cfg.optim.epochs
                or (keep and self.epoch % keep == 0)
            )
            save_now, stop = self.stop_policy.poll()
            save_due = save_due or save_now
            if save_due:  # before the monitor, so that a failing monitor loses no work
                # ... and marked as waiting for it: a run stopped before the monitor has run
                # catches up on it when resumed, so that best.pt is what it would have been
                save = functools.partial(self.save, final_loss, monitor_pending=bool(knn_due))
                distributed.raise_together(save)
                self.stop_policy.saved()
            finished = self.epoch == cfg.optim.epochs
            if stop and not (finished and not knn_due):  # after the last epoch: nothing is lost
                # the epoch is complete: its line comes before the stop's (without the kNN
                # figure, which the resumed run measures)
                self.say_epoch(final_loss, False, time.time() - start)
                raise self.interrupted(f"after epoch {self.epoch}", monitor_pending=bool(knn_due))
            if knn_due:
                self.run_monitor(final_loss, rewrite_last=bool(save_due))
                _, stop = self.stop_policy.poll()  # a signal during the monitor: stop here
            # said before a stop that arrived during the monitor, which finished: nothing of it
            # is lost
            self.say_epoch(final_loss, bool(knn_due), time.time() - start)
            if knn_due and stop and not finished:
                if not save_due:
                    distributed.raise_together(functools.partial(self.save, final_loss))
                raise self.interrupted(f"after epoch {self.epoch}")
        if self.recorder is not None:
            self.recorder.close()
        return TrainResult(
            run_dir=self.run_dir,
            epochs=self.epoch,
            steps=self.step,
            final_loss=final_loss,
            knn_top1=self.last_knn,
            knn_queries=self.knn_metrics.get("knn_queries"),
            seconds=time.time() - start,
            is_main=self.is_main,
            start_epoch=start_epoch,
            start_step=start_step,
            start_in_epoch=start_in_epoch,
            resumed_from=self.resumed_from,
            last_checkpoint=self.ckpt_dir / "last.pt"
            if (self.ckpt_dir / "last.pt").exists()
            else None,
            best_checkpoint=self.ckpt_dir / "best.pt"
            if (self.ckpt_dir / "best.pt").exists()
            else None,
        )

    def say_epoch(self, loss: float, measured: bool, seconds: float) -> None:
        """One line on stdout per epoch: ``epoch 3 of 16: loss 7.0612, kNN top-1 30.70%
        (backbone), 42 s``, so that a run whose output goes to a file shows it is alive and how it
        goes, and on a terminal the epochs' results stay on screen (the bar of the epoch, closed
        before, leaves nothing: ``leave=False``)."""
        if not self.is_main:
            return
        from contrastlab.eval.progress import duration

        knn = ""
        if measured and self.last_knn is not None:
            knn = f", kNN top-1 {self.last_knn:.2f}% ({self.cfg.train.knn_space})"
        print(
            f"epoch {self.epoch} of {self.cfg.optim.epochs}: loss {loss:.4f}{knn}, "
            f"{duration(seconds)}",
            flush=True,
        )

    def generators(self) -> dict[str, torch.Generator]:
        """Every ``torch.Generator`` the trainer owns: its attributes, and those that an attribute
        lists in its ``generators`` (the view pipeline's data order and view parameters). Their
        states are saved in checkpoints taken inside an epoch and restored on resume."""
        found = {}
        for name, value in vars(self).items():
            if isinstance(value, torch.Generator):
                found[name] = value
            elif isinstance(getattr(value, "generators", None), (list, tuple)):
                found.update({f"{name}.{i}": g for i, g in enumerate(value.generators)})
        return found

    def train_epoch(self, epoch: int) -> float:
        cfg = self.cfg
        seed_everything(epoch_seed(cfg, epoch))
        self.views.set_epoch(epoch, epoch_seed(cfg, epoch))
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        interval_loss = torch.zeros((), device=self.device)
        interval_images, interval_start = 0, time.time()
        # the epoch's sums of each step's mean Feature Transformation λ (on the device: no wait)
        lam_sums: dict[str, torch.Tensor] = {}
        lam_steps = 0
        first = 0  # batches of this epoch already trained (a run resumed inside the epoch)
        position, self.position = self.position, None
        if position is not None and int(position["epoch"]) == epoch:
            first = int(position["batch"])
            rng = position["rng"][distributed.rank()]
            self.views.resume_at(
                first, lambda: preemption.restore_rng(rng, self.generators(), self.device)
            )
            loop = position["loop"]
            if isinstance(loop, list):  # one per process (older checkpoints: rank 0's only)
                loop = loop[distributed.rank()]
            loss_sum.copy_(loop["loss_sum"])
            interval_loss.copy_(loop["interval_loss"])
            interval_images = int(loop["interval_images"])
            # absent in checkpoints of older versions: the epoch's mean λ of the steps after it
            lam_sums = {k: v.to(self.device) for k, v in loop.get("lam_sums", {}).items()}
            lam_steps = int(loop.get("lam_steps", 0))
        bar = None
        # a bar on a terminal only: written to a file or pipe, its carriage returns pile up and
        # the next printed line would start behind the last one
        if self.is_main and cfg.train.progress and sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(
                total=self.steps_per_epoch,
                desc=f"epoch {epoch + 1}/{cfg.optim.epochs}",
                dynamic_ncols=True,
                leave=False,
                initial=first,
            )
            self.progress_bar = bar  # closed by fit() whatever ends the epoch: errors start a line
        taken = first  # steps of this epoch trained, the part before a resume included
        for i, views in enumerate(self.views, first):
            if i >= self.steps_per_epoch:
                break
            taken = i + 1
            lr = learning_rate(cfg, epoch + i / self.steps_per_epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            if self.channels_last:
                views = [v.contiguous(memory_format=torch.channels_last) for v in views]
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                out = self.model(views, epoch)
            self.optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            self.optimizer.step()
            self.step += 1
            if self.recorder is not None:
                self.recorder.update(self.step, epoch + 1, out.scores)
            if out.ft:
                for name, value in out.ft.items():
                    lam_sums[name] = lam_sums.get(name, 0) + value
                lam_steps += 1
            loss = out.loss.detach()
            loss_sum += loss
            interval_loss += loss
            interval_images += views[0].shape[0] * distributed.world_size()
            if (i + 1) % cfg.train.log_every == 0 or i + 1 == self.steps_per_epoch:
                steps = (i % cfg.train.log_every) + 1
                # the mean over every process, so that all of them see a NaN and stop together
                mean_loss = (distributed.mean_over_processes(interval_loss) / steps).item()
                self.check_finite(mean_loss, epoch)
                rate = interval_images / max(time.time() - interval_start, 1e-9)
                self.log(
                    {
                        "event": "train",
                        "epoch": epoch + 1,
                        "step": self.step,
                        "loss": mean_loss,
                        "lr": lr,
                        "images_per_s": rate,
                    }
                )
                if bar is not None:
                    bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.4f}", img_s=f"{rate:.0f}")
                interval_loss.zero_()
                interval_images, interval_start = 0, time.time()
            if bar is not None:
                bar.update(1)
            if self.stop_policy is not None and i + 1 < self.steps_per_epoch:
                save_now, stop = self.stop_policy.poll()
                if save_now:
                    loop = {
                        "loss_sum": loss_sum.detach().cpu(),
                        "interval_loss": interval_loss.detach().cpu(),
                        "interval_images": interval_images,
                        "lam_sums": {k: v.detach().cpu() for k, v in lam_sums.items()},
                        "lam_steps": lam_steps,
                    }
                    self.save_inside_epoch(epoch, i + 1, loop)
                if stop:
                    if bar is not None:
                        bar.close()
                    raise self.interrupted(
                        f"in epoch {epoch + 1} after {i + 1} of its "
                        f"{plural(self.steps_per_epoch, 'step')}",
                        batch_in_epoch=i + 1,
                    )
        if bar is not None:
            bar.close()
        if self.recorder is not None:
            self.recorder.end_epoch(epoch + 1)
        # the mean over the steps taken: loss_sum holds those before a resume too, whatever
        # length the epoch has now
        epoch_loss = (distributed.mean_over_processes(loss_sum) / max(taken, 1)).item()
        self.check_finite(epoch_loss, epoch)
        self.log({"event": "epoch", "epoch": epoch + 1, "step": self.step, "loss": epoch_loss})
        self.log_lambdas(epoch, lam_sums, lam_steps)
        return epoch_loss

    def log_lambdas(self, epoch: int, sums: dict[str, torch.Tensor], steps: int) -> None:
        """The epoch's mean Feature Transformation λ of each side (``FTOutput.log_values``,
        averaged over the epoch's steps with the transformation on and over the processes): an
        ``ft`` event of metrics.jsonl, ``lam_pos`` / ``lam_neg``, which TensorBoard shows as
        ``ft/lam_pos`` / ``ft/lam_neg``. Nothing where it was off all epoch."""
        if not steps:
            return
        means = {
            name.removeprefix("ft/"): (distributed.mean_over_processes(total) / steps).item()
            for name, total in sums.items()
        }
        self.log({"event": "ft", "epoch": epoch + 1, "step": self.step, **means})

    def check_finite(self, value: float, epoch: int) -> None:
        if math.isfinite(value):
            return
        last = self.ckpt_dir / "last.pt"
        kept = (
            f"the last good checkpoint {last} is intact"
            if last.exists()
            else "no checkpoint was written"
        )
        self.log({"event": "diverged", "epoch": epoch + 1, "step": self.step, "loss": str(value)})
        raise TrainingDiverged(
            f"the loss became {value} in epoch {epoch + 1} (step {self.step}); training stopped and "
            f"{kept}; lower optim.lr, or check the data for broken images"
        )

    # -- monitoring and checkpoints ---------------------------------------------------------
    def run_monitor(self, loss: float, rewrite_last: bool) -> None:
        """The kNN monitor at the end of an epoch, then ``best.pt`` judged on these very weights
        (``last.pt`` rewritten with the monitor's figures when ``rewrite_last``)."""
        self.knn_metrics = self.knn_monitor()
        self.last_knn = self.knn_metrics.get("knn_top1")
        save = functools.partial(self.save, loss, rewrite_last=rewrite_last)
        distributed.raise_together(save)

    def knn_monitor(self) -> dict:
        """The kNN monitor's metrics of the current weights (:func:`knn_monitor_metrics`)."""
        metrics = {}
        if self.is_main:
            metrics = knn_monitor_metrics(
                self.method, self.cfg, self.train_images, self.test_images, self.device
            )
            if metrics:
                self.log(
                    {
                        "event": "knn",
                        "epoch": self.epoch,
                        "step": self.step,
                        "knn_space": self.cfg.train.knn_space,
                        **metrics,
                    }
                )
        if distributed.is_distributed():
            torch.distributed.barrier()
        self.model.train()
        return metrics

    def save(self, loss: float, rewrite_last: bool = True, monitor_pending: bool = False) -> None:
        """Write ``last.pt`` (when ``rewrite_last``) and, if improved, ``best.pt``.

        ``best.pt`` is judged only on ``knn_val_top1`` measured on these very weights (never on a
        metric of earlier weights, never on the test split that ``knn_top1`` reports): without a
        fresh validation metric, no ``best.pt`` is written. ``monitor_pending``: the epoch's kNN
        monitor has not run yet on these weights; a resume from this checkpoint runs it first.
        """
        if not self.is_main:
            return
        metric = self.knn_metrics.get("knn_val_top1")
        improved = metric is not None and (self.best_metric is None or metric >= self.best_metric)
        if not (rewrite_last or improved):
            return
        state = make_state(
            self.cfg,
            self.method,
            self.optimizer,
            self.epoch,
            self.step,
            metric if improved else self.best_metric,
            {"loss": loss, **self.knn_metrics},
            normalization=(self.train_images.mean, self.train_images.std),
        )
        state["world_size"] = distributed.world_size()
        if monitor_pending:
            state["monitor_pending"] = True
        last, best = self.ckpt_dir / "last.pt", self.ckpt_dir / "best.pt"
        # best.pt first: a kill between the two renames leaves the newer state in best.pt,
        # which train.resume=auto then picks
        if rewrite_last:
            save_checkpoint(last, state, also=(best,) if improved else ())
        elif improved:
            save_checkpoint(best, state)
        if improved:
            self.best_metric = metric
        event = {
            "event": "checkpoint",
            "epoch": self.epoch,
            "epochs_complete": self.epoch,
            "step": self.step,
            "path": str(last if rewrite_last else best),
            "best": improved,
        }
        if improved:  # every file written is named: best.pt, also when it is last.pt's copy
            event["best_path"] = str(best)
        self.log(event)
        keep = self.cfg.train.keep_every
        if rewrite_last and keep and self.epoch % keep == 0:
            kept = self.ckpt_dir / f"epoch-{self.epoch:04d}.pt"
            # rewritten after the epoch's kNN monitor (with its figures), but logged once
            first = not kept.exists()
            save_checkpoint(kept, state)
            # its own event, so that the snapshots to evaluate along training are found in
            # metrics.jsonl like last.pt and best.pt
            if first:
                self.log(
                    {
                        "event": "checkpoint",
                        "epoch": self.epoch,
                        "epochs_complete": self.epoch,
                        "step": self.step,
                        "path": str(kept),
                        "best": False,
                        "kept": True,
                    }
                )

    def save_inside_epoch(self, epoch: int, batch: int, loop: dict) -> None:
        """A checkpoint after ``batch`` steps of (0-based) ``epoch``: what an exact resume needs.

        Every process takes part (random states and score buffers are gathered); rank 0 writes.
        """
        rng = self.stop_policy.gather(preemption.capture_rng(self.generators(), self.device))
        # the running sums (loss, λ) are each process's own: every one is kept, as its rng
        loops = self.stop_policy.gather(loop)
        recorder = self.recorder.state_dict() if self.recorder is not None else None
        order = self.epoch_order()

        def write() -> None:
            if not self.is_main:
                return
            state = make_state(
                self.cfg,
                self.method,
                self.optimizer,
                epoch,
                self.step,
                self.best_metric,
                {"loss": None, "knn_top1": self.last_knn},
            )
            state["world_size"] = distributed.world_size()
            state["position"] = {
                "epoch": epoch,
                "batch": batch,
                "order": order,
                "rng": rng,
                "loop": loops,
                "recorder": recorder,
            }
            save_checkpoint(self.ckpt_dir / "last.pt", state)
            self.log(
                {
                    "event": "checkpoint",
                    "epoch": epoch,
                    "epochs_complete": epoch,
                    "in_epoch": epoch + 1,
                    "step": self.step,
                    "path": str(self.ckpt_dir / "last.pt"),
                    "batch_in_epoch": batch,
                    "best": False,
                }
            )

        distributed.raise_together(write)
        self.stop_policy.saved()

    def _batch_in_epoch(self) -> int:
        """Steps of the current epoch trained before a resume inside it; 0 at an epoch's start."""
        position = self.position
        if position is None or int(position["epoch"]) != self.epoch:
            return 0
        return int(position["batch"])

    def _place(self, batch_in_epoch: int | None) -> dict:
        """Where a resume or stop sits: the complete epochs and, inside an epoch, the one running
        (1-based, as train/epoch events count) with its steps done and its length."""
        place = {"epochs_complete": self.epoch}
        if batch_in_epoch is not None:
            place.update(
                in_epoch=self.epoch + 1,
                batch_in_epoch=batch_in_epoch,
                steps_per_epoch=self.steps_per_epoch,
            )
        return place

    def interrupted(
        self, where: str, monitor_pending: bool = False, batch_in_epoch: int | None = None
    ) -> TrainingInterrupted:
        """The one-line stop of a run that has work left: more epochs, or (``monitor_pending``)
        the kNN monitor of the epoch just saved. Inside an epoch (``batch_in_epoch`` steps of it
        done) the event says so as the checkpoint event does: ``epoch`` counts finished epochs."""
        received = self.stop_policy.signals.received
        signal_name = signal_text(received) if received else "a stop signal to another process"
        event = {"event": "stopped", "signal": signal_name, "epoch": self.epoch, "step": self.step}
        self.log({**event, **self._place(batch_in_epoch)})
        if monitor_pending and self.epoch == self.cfg.optim.epochs:
            where, left = f"{where}, the last, before its kNN monitor", "to run the monitor"
        else:
            left = "to continue"
        # the epoch it stopped in and the finished ones, which the event's ``epoch`` counts
        done = f"{self.epoch} of {plural(self.cfg.optim.epochs, 'epoch')} complete"
        return TrainingInterrupted(
            f"stopped by {signal_name} {where} ({done}, step {self.step}); checkpoint "
            f"{self.ckpt_dir / 'last.pt'}; {left}, run the same command with "
            f"train.resume=auto{_UNDER_TORCHRUN if 'TORCHELASTIC_RUN_ID' in os.environ else ''}",
            is_main=self.is_main,
            signal_name=received,
        )


# torchrun's agent does not pass the workers' 75 on (docs/preemption.md, measured with torch 2.14):
# a stop signal to the agent ends it with a SignalException traceback, one to the workers with a
# ChildFailedError report of their status 75; either way torchrun exits with 1
_UNDER_TORCHRUN = (
    "; torchrun does not pass status 75 on (it prints its own traceback or error report after "
    "this line and exits with 1), but this stop is clean: the run's last metrics.jsonl event is "
    "`stopped` (docs/preemption.md, torchrun)"
)


def default_channels_last(device: torch.device) -> bool:
    """What ``train.channels_last=null`` comes to on ``device``: NHWC on CUDA and on CPUs whose
    kernels torch picks for AVX-512 (there oneDNN's convolutions ran 17-22% faster in NHWC,
    docs/benchmarks.md); NCHW on other CPUs. On an AMD EPYC with AVX2 only, oneDNN's channels-last
    1x1 convolution backward (``jit_avx2_1x1_convolution_bwd_weights``) hung, or corrupted the
    heap, in the training step of small models with torch 2.14.1."""
    if torch.device(device).type != "cpu":
        return True
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 instructions (AVX512-BF16 or AMX), where bf16 autocast is ~2x faster
    (docs/benchmarks.md); elsewhere it is emulated and slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        return True
    try:  # other systems: oneDNN's own check
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def training_set_digest(dataset) -> str:
    """A digest of what an epoch's order indexes: the number of images, their labels and
    classes, and the files they come from (lazily loaded or skipped as unreadable)."""
    digest = hashlib.sha256(str(len(dataset)).encode())
    digest.update(torch.as_tensor(dataset.labels, dtype=torch.int64).numpy().tobytes())
    for names in (getattr(dataset, "classes", ()), getattr(dataset, "files", ()), dataset.skipped):
        digest.update(("\0".join(map(str, names)) + "\n").encode())
    return digest.hexdigest()


def ft_start_text(cfg: Config) -> str | None:
    """Where Feature Transformation turns on, in the epochs that training prints (from 1):
    ``Feature Transformation from epoch 4 (ft.start_epoch=3 counts from 0)``; None where it is
    off or on from the first epoch."""
    ft = cfg.ft
    if (ft.pos == "none" and ft.neg == "none") or ft.start_epoch == 0:
        return None
    return (
        f"Feature Transformation from epoch {ft.start_epoch + 1} "
        f"(ft.start_epoch={ft.start_epoch} counts from 0)"
    )


def _end_of_epoch_checkpoint(folder: Path) -> Path | None:
    """A checkpoint of ``folder`` written at the end of an epoch: the newest kept
    ``epoch-NNNN.pt``, else ``best.pt`` (both are written only at an epoch's end)."""
    kept = sorted(folder.glob("epoch-[0-9][0-9][0-9][0-9].pt"))
    if kept:
        return kept[-1]
    best = folder / "best.pt"
    return best if best.is_file() else None


def check_resumable(path: Path, state: dict, cfg: Config) -> None:
    """One line if training cannot continue from ``state`` with ``cfg``: a converted encoder, a
    checkpoint without training state, or one of another model (``check_compatible``)."""
    converted = state.get("converted")
    if converted:
        source = converted.get("format", "another project") if isinstance(converted, dict) else ""
        raise UserError(
            f"checkpoint {path} is an encoder converted from {source or 'another project'} "
            "(contrastlab convert): it holds no training state to continue (no queue, "
            "optimizer or schedule of a contrastlab run); evaluate or export it, or start a "
            "new run without train.resume"
        )
    for key in ("optimizer", "epoch", "step"):
        if key not in state:
            raise UserError(
                f"checkpoint {path} has no '{key}', so training cannot continue from it "
                "(it can still be evaluated or exported)"
            )
    check_compatible(path, state, cfg)


def train(cfg: Config) -> TrainResult:
    """Train the method ``cfg`` configures (the Python form of ``contrastlab train``). ``cfg`` is
    checked first (``config.validate``), as ``load_config`` checks one from the command line."""
    try:
        with met_by_every_process():  # config, paths, checks before training
            trainer = Trainer(cfg)
        return trainer.fit()
    except RuntimeError as e:
        said = distributed.lost_a_peer(e) if distributed.is_distributed() else None
        if said is None:
            raise
        kept = (
            "the checkpoints written before are intact; to continue, run the torchrun command "
            "again with train.resume=auto"
            if rundir.existing_checkpoints(cfg.run_dir)
            else "no checkpoint of the run was written yet; run the torchrun command again to "
            "start it"
        )
        raise PeerStopped(
            f"process {distributed.rank()} lost another process of this torchrun job, which "
            f"ended without a word (killed or crashed; the connection said: {said}); {kept}"
        ) from None
    finally:
        try:
            distributed.shutdown()
        except RuntimeError:  # the group broke with a lost process
            pass
