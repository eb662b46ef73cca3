"""MoCo v1/v2 view transforms and evaluation transforms (torchvision ``transforms.v2``).

Every pipeline accepts a ``uint8`` tensor ``3×H×W`` or a PIL image and returns a normalized
``float32`` tensor. Images are converted to tensors first, so the augmentations run on uint8
tensors with no PIL round trip (the cheap path for 32–96 px images held in memory).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from contrastlab.config import AugmentConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
# The official MoCo CIFAR-10 demo's normalization (also torchvision's and kuangliu's CIFAR examples);
# the per-pixel standard deviation over the training set is (0.2470, 0.2435, 0.2616).
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
STL10_MEAN = (0.4467, 0.4398, 0.4066)
STL10_STD = (0.2603, 0.2566, 0.2713)
SYNTHETIC_MEAN = (0.35, 0.35, 0.35)  # measured on make_synthetic; tests keep it honest
SYNTHETIC_STD = (0.19, 0.19, 0.19)

SMALL_IMAGE = 96  # images up to this side count as "small" (CIFAR, STL-10, synthetic)


class RandomRotation90:
    """Rotate by a uniformly random multiple of 90° (0, 90, 180 or 270), counter-clockwise.

    Uses ``torch.randint`` so that ``torch.manual_seed`` makes it reproducible like the v2 transforms.
    """

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        k = int(torch.randint(0, 4, ()))
        if not k:
            return img
        out = torch.rot90(img, k, dims=(-2, -1))
        return tv_tensors.wrap(out, like=img) if isinstance(img, tv_tensors.TVTensor) else out

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class MultiView:
    """``MultiView(transform, n)(img)`` -> a list of ``n`` independently augmented views."""

    def __init__(self, transform: Callable, n: int = 2):
        if n < 1:
            raise ValueError(f"MultiView needs n >= 1, got {n}")
        self.transform = transform
        self.n = n

    def __call__(self, img) -> list[torch.Tensor]:
        return [self.transform(img) for _ in range(self.n)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self.n}, transform={self.transform!r})"


def blur_kernel_size(image_size: int) -> int:
    """About 10% of the image side, odd (23 at 224 px, as in MoCo v2; 3 at 32 px)."""
    return max(3, int(0.1 * image_size) // 2 * 2 + 1)


def normalize(mean: Sequence[float], std: Sequence[float]) -> list:
    """The common tail of every pipeline: normalized plain ``float32`` tensor."""
    return [v2.Normalize(list(mean), list(std)), v2.ToPureTensor()]


_TO_FLOAT = v2.ToDtype(torch.float32, scale=True)  # uint8 [0, 255] -> float32 [0, 1]


def color_strengths(aug: AugmentConfig) -> tuple[float, float]:
    """(hue jitter, grayscale probability) of the recipe, or ``aug.hue`` / ``aug.grayscale_p``."""
    recipe_hue = 0.4 if aug.recipe == "moco_v1" else 0.1
    return (
        recipe_hue if aug.hue is None else aug.hue,
        0.2 if aug.grayscale_p is None else aug.grayscale_p,
    )


def build_train_transform(aug: AugmentConfig, image_size: int, mean, std) -> Callable:
    """One augmented view following ``aug.recipe`` (see docs/datasets.md and papers' recipes).

    ``moco_v1``: RandomResizedCrop, RandomGrayscale(0.2), ColorJitter(0.4, 0.4, 0.4, 0.4), flip.
    ``moco_v2``: RandomResizedCrop, ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8, RandomGrayscale(0.2),
    GaussianBlur σ∈[0.1, 2] p=0.5, flip. ``blur=None`` blurs with v2 only above 64 px (the CIFAR
    reference has no blur); ``blur=True/False`` forces it on or off for either recipe.
    ``none``: resize + centre crop to ``image_size`` (a no-op when sizes match) and normalize.
    ``aug.rotation`` appends a random 0/90/180/270° rotation to every view. ``aug.hue`` and
    ``aug.grayscale_p`` replace the recipe's hue jitter and grayscale probability.
    """
    # Crop on uint8 (fast native resize), then convert once: colour ops on float tensors avoid a
    # uint8 round trip per jitter factor and are about 1.5x faster at 32 px.
    steps: list = [v2.ToImage()]
    if aug.recipe == "none":
        steps += [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size), _TO_FLOAT]
    else:
        steps += [
            v2.RandomResizedCrop(image_size, scale=(aug.crop_scale_min, 1.0), antialias=True),
            _TO_FLOAT,
        ]
        hue, gray = color_strengths(aug)
        if aug.recipe == "moco_v1":
            steps += [v2.RandomGrayscale(p=gray), v2.ColorJitter(0.4, 0.4, 0.4, hue)]
            blur = bool(aug.blur)
        elif aug.recipe == "moco_v2":
            steps += [
                v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, hue)], p=0.8),
                v2.RandomGrayscale(p=gray),
            ]
            blur = image_size > 64 if aug.blur is None else aug.blur
        else:
            raise ValueError(f"unknown augmentation recipe {aug.recipe!r}")
        if blur:
            kernel = blur_kernel_size(image_size)
            steps.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5))
        steps.append(v2.RandomHorizontalFlip())
    if aug.rotation:
        steps.append(RandomRotation90())
    return v2.Compose(steps + normalize(mean, std))


def build_eval_geometry(image_size: int, native_size: int | None) -> Callable:
    """The geometric part of the evaluation view: an image in, the ``uint8`` tensor ``3×S×S``
    (S = ``image_size``) the network sees, before scaling and normalization.

    Small images (``native_size`` known and <= 96 px): the whole image resized to ``image_size``
    (a no-op when it already has that size). Large or unknown sizes: the ImageNet protocol, resize
    the short side to ``image_size * 256 / 224`` and take the centre ``image_size`` crop.
    """
    if native_size is not None and native_size <= SMALL_IMAGE:
        resize = image_size
    else:
        resize = round(image_size * 256 / 224)
    steps = [v2.ToImage(), v2.Resize(resize, antialias=True), v2.CenterCrop(image_size)]
    return v2.Compose(steps + [v2.ToPureTensor()])


def build_eval_finish(mean, std) -> Callable:
    """The rest of the evaluation view: ``uint8`` tensor -> normalized ``float32`` tensor."""
    return v2.Compose([_TO_FLOAT, *normalize(mean, std)])


def build_eval_transform(image_size: int, mean, std, native_size: int | None) -> Callable:
    """Deterministic evaluation view: :func:`build_eval_geometry` then :func:`build_eval_finish`
    (corruptions go between the two, at the network's resolution)."""
    geometry = build_eval_geometry(image_size, native_size).transforms[:-1]
    return v2.Compose([*geometry, _TO_FLOAT, *normalize(mean, std)])
