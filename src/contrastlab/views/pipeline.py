"""Training batches of views: dataset -> views, on the training device.

Three ways to the same views (``data.views``):

* ``batched`` for images held in memory (synthetic, CIFAR, STL-10, folders of images up to 96 px):
  the uint8 image tensor is moved to the device once; each step indexes a batch and renders all
  its views with ``BatchedViews`` (no DataLoader workers, no per-image Python).
* ``batched`` for large images (files decoded lazily): DataLoader workers decode each image and
  take its random resized crop and flip as uint8 (one per view); the photometric ops then run
  batched on the device.
* ``per_image``: torchvision transforms per image in DataLoader workers (the reference path).

Each pipeline is iterated once per epoch after ``set_epoch(epoch, seed)``, which reseeds every
random source it owns (data order and view parameters), so an epoch's batches and views depend only
on (seed, epoch, rank): exact resume and reproducible runs. ``generators`` lists those sources.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torch.utils.data.distributed import DistributedSampler
from torchvision.transforms import v2

from contrastlab.data.augment import MultiView
from contrastlab.data.datasets import WithTransform
from contrastlab.preemption import ResumableOrder, ignore_stop_signals
from contrastlab.views.recipes import BatchedViews, recipe_from_config
from contrastlab.workers import usable_workers


class _Reseeded:
    """Random sources of a pipeline: the data order and the view parameters, reseeded per epoch."""

    sampler: DistributedSampler | None
    order_generator: torch.Generator
    view_generator: torch.Generator

    @property
    def generators(self) -> list[torch.Generator]:
        return [self.order_generator, self.view_generator]

    _skip: int = 0  # batches of the next pass to leave out (a run resumed inside an epoch)
    _before_first = None

    def set_epoch(self, epoch: int, seed: int) -> None:
        self.order_generator.manual_seed(seed)
        self.view_generator.manual_seed(seed + 1)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def resume_at(self, batches: int, before_first) -> None:
        """Next pass only: skip ``batches`` without making them; call ``before_first()`` after the
        epoch's order is drawn and before the first remaining batch (to restore random states)."""
        self._skip, self._before_first = batches, before_first

    def _take_resume(self) -> tuple[int, object]:
        skip, hook = self._skip, self._before_first
        self._skip, self._before_first = 0, None
        return skip, hook


class InMemoryViews(_Reseeded):
    """Batches of an in-memory uint8 image tensor, indexed and augmented on ``device``."""

    def __init__(
        self,
        images: Tensor,
        views: BatchedViews,
        batch_size: int,
        device,
        distributed: bool,
        seed: int,
    ):
        self.images = images.to(device)  # once: on CUDA the whole dataset lives on the GPU
        self.views = views
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.sampler = (
            DistributedSampler(range(len(images)), seed=seed, drop_last=True)
            if distributed
            else None
        )
        self.order_generator = torch.Generator()
        self.view_generator = torch.Generator(device=self.device)

    def _order(self) -> Tensor:
        if self.sampler is not None:
            return torch.tensor(list(self.sampler), dtype=torch.long)
        return torch.randperm(len(self.images), generator=self.order_generator)

    def __len__(self) -> int:
        n = len(self.sampler) if self.sampler is not None else len(self.images)
        return n // self.batch_size

    def __iter__(self) -> Iterator[list[Tensor]]:
        skip, hook = self._take_resume()
        order = self._order().to(self.device)
        if hook is not None:
            hook()
        for b in range(skip, len(self)):
            index = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield self.views(self.images[index], self.view_generator)


class LoaderViews(_Reseeded):
    """Views from a DataLoader: whole views made per image (``per_image``), or uint8 crops made
    per image and finished batched on the device (``views`` given: large images)."""

    def __init__(
        self,
        dataset: Dataset,
        transform,
        views: BatchedViews | None,
        batch_size: int,
        device,
        distributed: bool,
        seed: int,
        num_workers: int,
    ):
        self.device = torch.device(device)
        self.views = views
        data = WithTransform(dataset, transform)
        self.sampler = DistributedSampler(data, seed=seed, drop_last=True) if distributed else None
        self.order_generator = torch.Generator()
        self.view_generator = torch.Generator(device=self.device)
        # the order of shuffle=True (or of the DistributedSampler), able to skip ahead on resume
        self.order = ResumableOrder(
            self.sampler or RandomSampler(data, generator=self.order_generator)
        )
        self.loader = DataLoader(
            data,
            batch_size=batch_size,
            sampler=self.order,
            drop_last=True,
            num_workers=usable_workers(num_workers),
            pin_memory=self.device.type == "cuda",
            generator=self.order_generator,
            persistent_workers=False,  # workers are reseeded every epoch (exact resume)
            worker_init_fn=ignore_stop_signals,  # a stop is the main process's to handle
        )

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[list[Tensor]]:
        skip, hook = self._take_resume()
        self.order.resume_at(skip * self.loader.batch_size, hook)
        for batch, _ in self.loader:
            if self.views is None:
                yield [v.to(self.device, non_blocking=True) for v in batch]
            else:
                crops = batch.to(self.device, non_blocking=True)  # [B, V, 3, S, S] uint8
                yield self.views(crops, self.view_generator)


class StackedViews:
    """``n`` uint8 crops of one image stacked into ``[n, 3, S, S]`` (picklable for workers)."""

    def __init__(self, transform, n: int):
        self.views = MultiView(transform, n)

    def __call__(self, img) -> Tensor:
        return torch.stack(self.views(img))


def build_training_views(cfg, dataset, num_views: int, batch_size: int, device, distributed: bool):
    """The pipeline of ``cfg.data.views`` for ``dataset``; see the module docstring."""
    size = cfg.data.image_size
    atomic = tuple(cfg.looc.augmentations) if cfg.method == "looc" else ()
    common = dict(batch_size=batch_size, device=device, distributed=distributed, seed=cfg.seed)
    if cfg.data.views == "per_image":
        return LoaderViews(
            dataset,
            per_image_transform(cfg, dataset, num_views),
            None,
            num_workers=cfg.data.num_workers,
            **common,
        )
    images = getattr(dataset, "images", None)
    if images is not None:
        recipe = recipe_from_config(cfg.augment, size, dataset.mean, dataset.std, atomic)
        batched = BatchedViews(recipe, num_views, cfg.data.views_compile)
        if cfg.data.views_compile:
            batched.warm_up((batch_size, *images.shape[1:]), device)
        return InMemoryViews(images, batched, **common)
    # large images: crop (and flip) per image in the workers, the rest batched
    recipe = recipe_from_config(cfg.augment, size, dataset.mean, dataset.std, atomic, crop=False)
    if cfg.augment.recipe == "none":
        geometry = [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
    else:
        scale = (cfg.augment.crop_scale_min, 1.0)
        geometry = [
            v2.RandomResizedCrop(size, scale=scale, antialias=True),
            v2.RandomHorizontalFlip(),
        ]
    transform = StackedViews(v2.Compose([v2.ToImage(), *geometry, v2.ToPureTensor()]), num_views)
    batched = BatchedViews(recipe, num_views, cfg.data.views_compile)
    if cfg.data.views_compile:
        batched.warm_up((batch_size, num_views, 3, size, size), device)
    return LoaderViews(
        dataset,
        transform,
        batched,
        num_workers=cfg.data.num_workers,
        **common,
    )


def per_image_transform(cfg, dataset, num_views: int):
    """Today's reference: torchvision transforms per image (``data/augment.py``, ``looc_views``)."""
    from contrastlab.data.augment import build_train_transform

    size = cfg.data.image_size
    if cfg.method == "looc":
        from contrastlab.data.looc_views import build_looc_views

        return build_looc_views(cfg, size, dataset.mean, dataset.std)
    return MultiView(build_train_transform(cfg.augment, size, dataset.mean, dataset.std), num_views)
