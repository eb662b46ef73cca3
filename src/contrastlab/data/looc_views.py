"""LooC's views: atomic augmentations with recorded parameters, and the n + 2 views of one image.

LooC (Xiao et al., ICLR 2021; ``docs/looc.md``) needs, besides the ordinary MoCo pair (q, k0), one
key k_i per atomic augmentation i that agrees with the query *only* in augmentation i. A
``torchvision`` pipeline draws its parameters internally and forgets them, so here every random
choice is drawn into a plain record first (``sample``) and then applied (``apply``): copying the
record of augmentation i from q into k_i reproduces exactly the same change.

Atomic augmentations (each gets its own embedding space in the method):

* ``color``    ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8, then RandomGrayscale(0.2) (MoCo v2;
  ``augment.hue`` and ``augment.grayscale_p`` change the hue jitter and grayscale probability).
* ``rotation`` a rotation by k x 90 degrees, k uniform in {0, 1, 2, 3}.
* ``texture``  a random convolution filter (Lee et al., "Network Randomization", ICLR 2020), a
  weight-free substitute for the paper's style-transfer texture randomization; see
  ``TextureAug``.

Random resized crop, horizontal flip and Gaussian blur are applied to every view but have no space
of their own, so they are always drawn anew.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import torch
import torch.nn.functional as nnf
import torchvision.transforms.v2 as v2
import torchvision.transforms.v2.functional as F
from torch import Tensor

from contrastlab.config import AugmentConfig, Config
from contrastlab.data.augment import blur_kernel_size, color_strengths

ATOMIC = ("color", "rotation", "texture")

Params = dict[str, Any]


# ----------------------------------------------------------------------------------------------
# Atomic augmentations: sample() draws a record, apply(img, record) is deterministic.
# Images inside the pipeline are float tensors 3 x H x W in [0, 1].
# ----------------------------------------------------------------------------------------------


class ColorAug:
    """Colour jitter (applied with probability ``p``) and random grayscale: grayscale after the
    jitter (MoCo v2), or before it with ``gray_first`` (MoCo v1's order).

    The record holds every factor even when ``apply`` is false, so two records can always be
    compared field by field.
    """

    name = "color"

    def __init__(
        self,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.4,
        hue: float = 0.1,
        p: float = 0.8,
        p_gray: float = 0.2,
        gray_first: bool = False,
    ):
        self.ranges = (
            [max(0.0, 1 - brightness), 1 + brightness],
            [max(0.0, 1 - contrast), 1 + contrast],
            [max(0.0, 1 - saturation), 1 + saturation],
            [-hue, hue],
        )
        self.p = p
        self.p_gray = p_gray
        self.gray_first = gray_first

    def sample(self) -> Params:
        order, b, c, s, h = v2.ColorJitter.get_params(*self.ranges)
        return {
            "apply": bool(torch.rand(()) < self.p),
            "brightness": b,
            "contrast": c,
            "saturation": s,
            "hue": h,
            "order": tuple(int(i) for i in order),
            "gray": bool(torch.rand(()) < self.p_gray),
        }

    def apply(self, img: Tensor, p: Params) -> Tensor:
        if self.gray_first and p["gray"]:
            img = F.rgb_to_grayscale(img, num_output_channels=3)
        if p["apply"]:
            ops = (
                lambda x: F.adjust_brightness(x, p["brightness"]),
                lambda x: F.adjust_contrast(x, p["contrast"]),
                lambda x: F.adjust_saturation(x, p["saturation"]),
                lambda x: F.adjust_hue(x, p["hue"]),
            )
            for i in p["order"]:
                img = ops[i](img)
        if not self.gray_first and p["gray"]:
            img = F.rgb_to_grayscale(img, num_output_channels=3)
        return img


class RotationAug:
    """Rotation by k x 90 degrees (counter-clockwise); exact, no interpolation."""

    name = "rotation"

    def sample(self) -> Params:
        return {"k": int(torch.randint(4, ()))}

    def apply(self, img: Tensor, p: Params) -> Tensor:
        return torch.rot90(img, p["k"], dims=(-2, -1))


class TextureAug:
    """Texture randomization by a random convolution filter.

    A k x k convolution 3 -> 3 channels with He-normal weights (std sqrt(2 / (3 k^2))), reflect
    padding so the size is kept. The filtered image is rescaled to the input's value range (its
    min and max over all channels) and mixed with the input: ``out = a * filtered + (1 - a) * x``,
    ``a`` uniform in ``alpha``. Rescaling before mixing keeps the result a valid image and makes
    ``a`` the actual strength of the change. The record holds the weights themselves, so a copied
    record reproduces exactly the same texture change.

    The paper randomizes texture by a style-transfer network; that needs pretrained weights.
    A random filter changes local texture and colour statistics while keeping shapes, which is the
    property LooC's texture space is meant to capture, but it is not the same distribution of
    changes: it does not transfer the texture of another image.
    """

    name = "texture"

    def __init__(
        self, kernel_sizes: Sequence[int] = (3, 5, 7), alpha: tuple[float, float] = (0.0, 1.0)
    ):
        self.kernel_sizes = tuple(kernel_sizes)
        self.alpha = alpha

    def sample(self) -> Params:
        k = self.kernel_sizes[int(torch.randint(len(self.kernel_sizes), ()))]
        std = math.sqrt(2.0 / (3 * k * k))
        return {
            "kernel_size": k,
            "weight": torch.randn(3, 3, k, k) * std,
            "alpha": float(torch.empty(()).uniform_(*self.alpha)),
        }

    def apply(self, img: Tensor, p: Params) -> Tensor:
        k = p["kernel_size"]
        x = img.unsqueeze(0)
        pad = k // 2
        if pad:
            mode = "reflect" if min(img.shape[-2:]) > pad else "replicate"
            x = nnf.pad(x, (pad, pad, pad, pad), mode=mode)
        filtered = nnf.conv2d(x, p["weight"].to(img.dtype)).squeeze(0)
        lo, hi = img.min(), img.max()
        f_lo, f_hi = filtered.min(), filtered.max()
        filtered = (filtered - f_lo) / (f_hi - f_lo).clamp_min(1e-8) * (hi - lo) + lo
        return p["alpha"] * filtered + (1.0 - p["alpha"]) * img


# ----------------------------------------------------------------------------------------------
# Views
# ----------------------------------------------------------------------------------------------


class LoocViews:
    """Dataset transform: ``img -> [q, k0, k_1, ..., k_n]``, n = ``len(augmentations)``.

    q and k0 draw every parameter independently; k_i copies the record of ``augmentations[i-1]``
    from q and draws all else anew (crop, flip, blur and the other augmentations).

    What runs on every view besides the atomic augmentations:
      * crop (RandomResizedCrop, scale ``aug_cfg.crop_scale_min``-1) and horizontal flip: always;
      * colour: when listed as atomic, or as part of the base recipe (moco_v1/moco_v2) with no
        space of its own, drawn independently per view; the recipe sets the strengths
        (v2: ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8, then grayscale 0.2; v1: grayscale 0.2, then
        ColorJitter(0.4, 0.4, 0.4, 0.4) p 1, as in MoCo's own v1 and v2 transforms); ``aug_cfg.hue`` and ``aug_cfg.grayscale_p`` replace the hue jitter
        and the grayscale probability, as for MoCo's views;
      * Gaussian blur (sigma 0.1-2, p 0.5): ``aug_cfg.blur``; None = MoCo v2's rule (on, except at
        <= 64 px; never for v1/none);
      * rotation: when listed as atomic, or drawn independently per view with
        ``aug_cfg.rotation`` (the MoCo + rotation baseline);
      * texture: only when listed as atomic.

    The pipeline order is crop, flip, colour, texture, blur, rotation, normalize; rotating last
    makes "k_rot has q's orientation" literal.
    """

    def __init__(
        self,
        augmentations: Sequence[str],
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        aug_cfg: AugmentConfig | None = None,
    ):
        aug_cfg = aug_cfg or AugmentConfig()
        bad = [a for a in augmentations if a not in ATOMIC]
        if bad or len(set(augmentations)) != len(augmentations) or not augmentations:
            raise ValueError(
                f"augmentations must be distinct names from {ATOMIC}, got {list(augmentations)}"
            )
        self.augmentations = tuple(augmentations)
        self.image_size = int(image_size)
        self.mean = list(mean)
        self.std = list(std)
        self.crop_scale = (aug_cfg.crop_scale_min, 1.0)
        self.crop_ratio = (3 / 4, 4 / 3)

        self.ops: dict[str, Any] = {}
        if "color" in self.augmentations or aug_cfg.recipe != "none":
            hue, gray = color_strengths(aug_cfg)  # the recipe's, or augment.hue / grayscale_p
            p_jitter = 1.0 if aug_cfg.recipe == "moco_v1" else 0.8
            v1 = aug_cfg.recipe == "moco_v1"  # v1: grayscale before an always-on jitter
            self.ops["color"] = ColorAug(0.4, 0.4, 0.4, hue, p=p_jitter, p_gray=gray, gray_first=v1)
        if "texture" in self.augmentations:
            self.ops["texture"] = TextureAug()
        if "rotation" in self.augmentations or aug_cfg.rotation:
            self.ops["rotation"] = RotationAug()

        blur = aug_cfg.blur
        if blur is None:
            blur = aug_cfg.recipe == "moco_v2" and self.image_size > 64
        self.blur = bool(blur)
        self.blur_kernel = blur_kernel_size(self.image_size)

    @property
    def num_views(self) -> int:
        return len(self.augmentations) + 2

    def __repr__(self) -> str:
        return (
            f"LoocViews(augmentations={list(self.augmentations)}, image_size={self.image_size}, "
            f"ops={list(self.ops)}, blur={self.blur})"
        )

    # -- parameters ------------------------------------------------------------------------------

    def sample(self, img: Tensor) -> Params:
        """Draw the full parameter record of one view of ``img``."""
        p: Params = {
            "crop": tuple(
                v2.RandomResizedCrop.get_params(img, list(self.crop_scale), list(self.crop_ratio))
            ),
            "flip": bool(torch.rand(()) < 0.5),
            "blur": None,
        }
        if self.blur:
            p["blur"] = {
                "apply": bool(torch.rand(()) < 0.5),
                "sigma": float(torch.empty(()).uniform_(0.1, 2.0)),
            }
        for name, op in self.ops.items():
            p[name] = op.sample()
        return p

    def sample_all(self, img: Tensor) -> list[Params]:
        """Records of [q, k0, k_1..k_n]: k_i copies q's record of augmentation i only."""
        q = self.sample(img)
        out = [q, self.sample(img)]
        for name in self.augmentations:
            k = self.sample(img)
            k[name] = copy.deepcopy(q[name])
            out.append(k)
        return out

    # -- rendering -------------------------------------------------------------------------------

    def render(self, img: Tensor, p: Params, normalize: bool = True) -> Tensor:
        """Apply a parameter record to an image; deterministic."""
        top, left, h, w = p["crop"]
        x = F.resized_crop(img, top, left, h, w, [self.image_size, self.image_size], antialias=True)
        if p["flip"]:
            x = F.horizontal_flip(x)
        x = F.to_dtype(x, torch.float32, scale=True)
        if "color" in self.ops:
            x = self.ops["color"].apply(x, p["color"])
        if "texture" in self.ops:
            x = self.ops["texture"].apply(x, p["texture"])
        if p["blur"] is not None and p["blur"]["apply"]:
            s = p["blur"]["sigma"]
            x = F.gaussian_blur(x, [self.blur_kernel, self.blur_kernel], [s, s])
        if "rotation" in self.ops:
            x = self.ops["rotation"].apply(x, p["rotation"])
        x = x.clamp(0.0, 1.0)
        if normalize:
            x = F.normalize(x, self.mean, self.std)
        return x.contiguous()

    def views_with_params(self, img) -> tuple[list[Tensor], list[Params]]:
        """The n + 2 views and their parameter records (for inspection and tests)."""
        img = as_tensor_image(img)
        params = self.sample_all(img)
        return [self.render(img, p) for p in params], params

    def __call__(self, img) -> list[Tensor]:
        return self.views_with_params(img)[0]


def as_tensor_image(img) -> Tensor:
    """PIL image or tensor -> plain ``3 x H x W`` tensor (uint8 stays uint8)."""
    if not isinstance(img, Tensor):
        img = F.to_image(img)
    img = img.as_subclass(Tensor)
    if img.ndim == 2:
        img = img.unsqueeze(0)
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    return img


def params_equal(a: Any, b: Any) -> bool:
    """Deep equality of parameter records (tensors compared exactly)."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return (
            isinstance(a, Tensor)
            and isinstance(b, Tensor)
            and a.shape == b.shape
            and bool(torch.equal(a, b))
        )
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and a.keys() == b.keys()
            and all(params_equal(a[k], b[k]) for k in a)
        )
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(params_equal, a, b))
    return a == b


def build_looc_views(
    cfg: Config, image_size: int, mean: Sequence[float], std: Sequence[float]
) -> LoocViews:
    """The dataset transform of a LooC run: n + 2 views per image."""
    return LoocViews(cfg.looc.augmentations, image_size, mean, std, cfg.augment)
