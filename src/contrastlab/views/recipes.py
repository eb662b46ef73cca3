"""View recipes, split into *sampling* (per-sample parameters as tensors) and *rendering*.

A recipe (``ViewRecipe``) names what one view does: MoCo v1 or v2 (He et al. 2020, Chen et al.
2020, Algorithm 1 and the official ``main_moco.py`` augmentation lists), optionally with LooC's
atomic augmentations (Xiao et al. 2021, Sec. 3; ``docs/looc.md``). ``sample_params`` draws every
random choice of N views into a ``Params`` tree of tensors with torchvision's distributions;
``render`` applies a tree to N images with the batched ops of ``views/ops.py``. Because the
parameters are plain tensors grouped by augmentation, LooC's key k_i is q's group i copied into a
fresh draw (``copy_group``): no loop over images, no host synchronization.

Parameter groups (each a dict of tensors with leading dimension N):

* ``crop``     ``boxes`` [N, 4] (top, left, height, width; ``RandomResizedCrop.get_params``),
  ``flip`` [N] (``RandomHorizontalFlip``, p 0.5), ``source`` [N, H, W, 0] (no elements: its shape
  records the image size H x W the boxes were drawn for, which ``render`` checks without reading
  the device);
* ``color``    ``apply`` [N] (``RandomApply(ColorJitter)``), ``factors`` [N, 4] (brightness,
  contrast, saturation, hue), ``order`` [N, 4] (a permutation per sample), ``gray`` [N]
  (``RandomGrayscale``);
* ``blur``     ``apply`` [N] (p 0.5), ``sigma`` [N] (uniform 0.1-2.0);
* ``rotation`` ``k`` [N] (uniform in 0..3, quarter turns counter-clockwise);
* ``texture``  ``weight`` [N, 3, 3, 7, 7] (a random 3x3, 5x5 or 7x7 filter, zero-padded),
  ``size`` [N] (its side: 3, 5 or 7), ``alpha`` [N] (uniform 0-1).

Order of operations in ``render``: crop and flip, colour, texture, blur, rotation, normalize (flip
commutes with the colour ops and the symmetric blur, so it is folded into the crop).
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from contrastlab.config import VALID, AugmentConfig, check_section
from contrastlab.data.augment import blur_kernel_size, color_strengths
from contrastlab.errors import UserError, plural
from contrastlab.views import ops

Params = dict[str, dict[str, Tensor]]

TEXTURE_KERNELS = (3, 5, 7)  # random-convolution filter sizes (Lee et al., ICLR 2020)
CROP_ATTEMPTS = 10  # RandomResizedCrop's tries before its fallback


ATOMIC = ("color", "rotation", "texture")  # LooC's atomic augmentations


def _finite(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class ViewRecipe:
    """Everything that decides the distribution of one view; see the module docstring."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop: bool = True  # random resized crop + flip; False: images arrive cropped (and flipped)
    center_crop: bool = False  # recipe "none": the centre square, resized, no flip
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    color: bool = True
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # b, c, s, hue strengths
    jitter_p: float = 0.8
    gray_p: float = 0.2
    gray_first: bool = False  # MoCo v1: RandomGrayscale before ColorJitter
    blur: bool = False
    blur_kernel: int = 3
    rotation: bool = False
    texture: bool = False
    atomic: tuple[str, ...] = field(default=())  # LooC: the augmentations with a space of their own

    def __post_init__(self):
        # A recipe made in Python: a size or a normalization that would render nothing, or
        # non-finite views, is one ValueError here rather than a silent NaN in every view.
        size = self.image_size
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
            raise ValueError(f"image_size must be an integer >= 1, got {size!r}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != 3 or not all(_finite(v) for v in values):
                raise ValueError(f"{name} must be 3 finite numbers (R, G, B), got {values!r}")
        if min(self.std) <= 0:
            raise ValueError(f"std must be 3 numbers > 0 (views are divided by it), got {self.std}")
        unknown = [a for a in self.atomic if a not in ATOMIC]
        if unknown or len(set(self.atomic)) != len(self.atomic):
            raise ValueError(
                f"atomic must list each of {', '.join(ATOMIC)} at most once, got {self.atomic}"
            )

    @property
    def groups(self) -> tuple[str, ...]:
        present = {
            "crop": True,
            "color": self.color,
            "blur": self.blur,
            "rotation": self.rotation,
            "texture": self.texture,
        }
        return tuple(g for g, on in present.items() if on)


def recipe_from_config(
    aug: AugmentConfig,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    atomic: Sequence[str] = (),
    crop: bool = True,
) -> ViewRecipe:
    """The recipe of ``augment.*`` (and LooC's atomic augmentations), as in ``data/augment.py``.

    ``moco_v1``: crop, grayscale 0.2, ColorJitter(0.4, 0.4, 0.4, 0.4) always, flip (+ blur only
    when ``augment.blur=true``). ``moco_v2``: crop, ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8, grayscale
    0.2, blur σ 0.1-2 p 0.5 (``augment.blur``; default on above 64 px), flip. ``none``: the whole
    image. ``augment.hue`` / ``augment.grayscale_p`` replace the recipe's strengths. Listing
    ``color`` as atomic turns colour on even under ``none``; ``rotation`` and ``texture`` as atomic
    (or ``augment.rotation``) add those ops to every view. LooC (``atomic`` not empty) always
    crops and flips, and blurs with ``augment.blur=true`` whatever the recipe: ``none`` drops only
    its colour jitter there (``data/looc_views.LoocViews``, the per-image reference).

    ``aug`` is checked as ``validate`` checks a config (a misspelt ``recipe`` must not run as
    another one), ``image_size`` as ``data.image_size``: a ``ValueError`` that names the value.
    """
    try:
        check_section(aug, "augment")
    except UserError as e:
        raise ValueError(str(e)) from None
    size_range = VALID["data.image_size"]
    integer = isinstance(image_size, numbers.Integral) and not isinstance(image_size, bool)
    if not integer or not size_range.ok(image_size):
        raise ValueError(f"image_size must be {size_range.describe()}, got {image_size!r}")
    if not isinstance(crop, bool):
        raise ValueError(f"crop must be True or False, got {crop!r}")
    hue, gray = color_strengths(aug)
    base = aug.recipe
    whole_image = base == "none" and not atomic  # MoCo's no-augmentation baseline
    blur = aug.blur
    if blur is None:
        blur = base == "moco_v2" and image_size > 64
    return ViewRecipe(
        image_size=int(image_size),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        crop=crop,
        crop_scale=(aug.crop_scale_min, 1.0),
        center_crop=whole_image,
        color=base != "none" or "color" in atomic,
        jitter=(0.4, 0.4, 0.4, hue),
        jitter_p=1.0 if base == "moco_v1" else 0.8,
        gray_p=gray,
        gray_first=base == "moco_v1",
        blur=bool(blur) and not whole_image,
        blur_kernel=blur_kernel_size(image_size),
        rotation=bool(aug.rotation) or "rotation" in atomic,
        texture="texture" in atomic,
        atomic=tuple(atomic),
    )


# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------


def _uniform(n, lo, hi, gen: torch.Generator, *shape) -> Tensor:
    return torch.rand((n, *shape), generator=gen, device=gen.device) * (hi - lo) + lo


def _bernoulli(n: int, p: float, gen: torch.Generator) -> Tensor:
    return torch.rand(n, generator=gen, device=gen.device) < p


def sample_crop_boxes(
    n: int, height: int, width: int, scale, ratio, gen: torch.Generator
) -> Tensor:
    """``[n, 4]`` (top, left, h, w) with ``RandomResizedCrop.get_params``'s distribution.

    Ten tries of an area fraction uniform in ``scale`` and a log-uniform aspect ratio in
    ``ratio``; the first try that fits wins; if none fits, torchvision's fallback (the whole image,
    or its centre clipped to the ratio range).
    """
    area = height * width
    target = area * _uniform(n, scale[0], scale[1], gen, CROP_ATTEMPTS)
    aspect = torch.exp(_uniform(n, math.log(ratio[0]), math.log(ratio[1]), gen, CROP_ATTEMPTS))
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.int().argmax(dim=1, keepdim=True)  # index of the first fitting try
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    found = fits.any(dim=1)
    # fallback, as torchvision: clip the whole image to the ratio range and centre it
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fw, fh = round(height * max(ratio)), height
    else:
        fw, fh = width, height
    w = torch.where(found, w, torch.full_like(w, fw))
    h = torch.where(found, h, torch.full_like(h, fh))
    u = torch.rand(n, 2, generator=gen, device=gen.device)
    top = torch.floor(u[:, 0] * (height - h + 1))
    left = torch.floor(u[:, 1] * (width - w + 1))
    top = torch.where(found, top, torch.div(height - h, 2, rounding_mode="floor"))
    left = torch.where(found, left, torch.div(width - w, 2, rounding_mode="floor"))
    return torch.stack([top, left, h, w], dim=1).long()


def _check_recipe(recipe) -> None:
    if not isinstance(recipe, ViewRecipe):
        raise ValueError(
            f"recipe must be a ViewRecipe (see recipe_from_config), got {type(recipe).__name__}"
        )


def sample_params(
    recipe: ViewRecipe, n: int, height: int, width: int, gen: torch.Generator
) -> Params:
    """Draw the parameters of ``n`` views of images ``height`` x ``width`` from ``gen``.

    A ``recipe`` that is not a ``ViewRecipe``, ``n`` that is not an integer >= 0, a size that is
    not an integer >= 1 or ``gen`` that is not a ``torch.Generator`` is a ``ValueError``."""
    _check_recipe(recipe)
    for name, value, low in (("n", n, 0), ("height", height, 1), ("width", width, 1)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not isinstance(gen, torch.Generator):
        raise ValueError(
            "gen must be a torch.Generator on the images' device (torch.Generator(device)"
            f".manual_seed(seed)), got {type(gen).__name__}"
        )
    dev = gen.device
    p: Params = {}
    if recipe.crop and recipe.center_crop:
        side = min(height, width)
        box = ops.constant(((height - side) // 2, (width - side) // 2, side, side), dev)
        p["crop"] = {
            "boxes": box.expand(n, 4),
            "flip": torch.zeros(n, dtype=torch.bool, device=dev),
        }
    elif recipe.crop:
        p["crop"] = {
            "boxes": sample_crop_boxes(n, height, width, recipe.crop_scale, recipe.crop_ratio, gen),
            "flip": _bernoulli(n, 0.5, gen),
        }
    else:  # cropped and flipped before (large images: in the loader's workers)
        full = ops.constant((0, 0, height, width), dev)
        p["crop"] = {
            "boxes": full.expand(n, 4),
            "flip": torch.zeros(n, dtype=torch.bool, device=dev),
        }
    p["crop"]["source"] = torch.empty(n, height, width, 0, dtype=torch.uint8, device=dev)
    if recipe.color:
        b, c, s, h = recipe.jitter
        lows = ops.constant((max(0.0, 1 - b), max(0.0, 1 - c), max(0.0, 1 - s), -h), dev)
        highs = ops.constant((1 + b, 1 + c, 1 + s, h), dev)
        p["color"] = {
            "apply": _bernoulli(n, recipe.jitter_p, gen),
            "factors": torch.rand(n, 4, generator=gen, device=dev) * (highs - lows) + lows,
            "order": torch.rand(n, 4, generator=gen, device=dev).argsort(dim=1),
            "gray": _bernoulli(n, recipe.gray_p, gen),
        }
    if recipe.blur:
        p["blur"] = {"apply": _bernoulli(n, 0.5, gen), "sigma": _uniform(n, 0.1, 2.0, gen)}
    if recipe.rotation:
        p["rotation"] = {"k": torch.randint(0, 4, (n,), generator=gen, device=dev)}
    if recipe.texture:
        p["texture"] = _sample_texture(n, gen)
    return p


def _sample_texture(n: int, gen: torch.Generator) -> dict[str, Tensor]:
    dev, big = gen.device, max(TEXTURE_KERNELS)
    size_index = torch.randint(0, len(TEXTURE_KERNELS), (n,), generator=gen, device=dev)
    sizes = ops.constant(TEXTURE_KERNELS, dev)[size_index]
    weight = torch.randn(n, 3, 3, big, big, generator=gen, device=dev)
    weight = weight * torch.sqrt(2.0 / (3 * sizes.float() ** 2)).view(-1, 1, 1, 1, 1)  # He normal
    pos = (torch.arange(big, device=dev) - big // 2).abs()
    inside = pos[None, :] <= (sizes[:, None] // 2)  # [n, big]
    mask = (inside[:, :, None] & inside[:, None, :]).view(n, 1, 1, big, big)
    return {"weight": weight * mask, "size": sizes, "alpha": _uniform(n, 0.0, 1.0, gen)}


def copy_group(params: Params, group: str, source: slice, target: slice) -> None:
    """Give the views at ``target`` the parameters of ``group`` that the views at ``source`` have."""
    for value in params[group].values():
        value[target] = value[source]


def select(params: Params, index) -> Params:
    """The parameters of a subset of views."""
    return {g: {k: v[index] for k, v in group.items()} for g, group in params.items()}


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------


def check_render_inputs(images: Tensor, p: Params, recipe: ViewRecipe | None = None) -> None:
    """A ``ValueError`` unless ``images`` is ``[N, 3, H, W]`` uint8 or floating point and ``p``
    holds N views sampled for H x W images (by ``sample_params`` of ``recipe``, where given).
    Reads shapes and dtypes only (no device sync)."""
    if not isinstance(images, Tensor):
        raise ValueError(
            f"images must be a torch tensor [N, 3, H, W], got {type(images).__name__}; convert "
            "it with torch.as_tensor(images)"
        )
    shape = tuple(images.shape)
    if len(shape) != 4 or shape[1] != 3:
        raise ValueError(f"images must be a tensor [N, 3, H, W], got shape {shape}")
    groups = p.get("crop") if isinstance(p, dict) else None
    well_formed = isinstance(groups, dict) and all(
        isinstance(group, dict) and group and all(isinstance(v, Tensor) for v in group.values())
        for group in p.values()
    )
    if not well_formed:
        got = f"a dict of {sorted(p)}" if isinstance(p, dict) else type(p).__name__
        raise ValueError(
            f"p must be the parameters that sample_params returns (a dict of groups of tensors, "
            f"'crop' among them), got {got}"
        )
    if recipe is not None and set(p) != set(recipe.groups):
        raise ValueError(
            f"the parameters hold {sorted(p)} but this recipe draws {sorted(recipe.groups)}; "
            "sample them with sample_params of this recipe"
        )
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise ValueError(
            f"images must be uint8 (0-255) or floating point in [0, 1], got {images.dtype}; "
            f"convert them with .to(torch.uint8) or .float() / 255"
        )
    rows = sorted({v.shape[0] for group in p.values() for v in group.values()})
    if rows != [shape[0]]:
        raise ValueError(
            f"the parameters hold {' or '.join(map(str, rows))} views but "
            f"{plural(shape[0], 'image')} {'was' if shape[0] == 1 else 'were'} given; "
            f"sample them with n={shape[0]}"
        )
    source = p["crop"].get("source")
    if source is None or tuple(source.shape[1:3]) != shape[2:]:
        drawn = "an unknown size" if source is None else "x".join(map(str, source.shape[1:3]))
        raise ValueError(
            f"the parameters were sampled for images of {drawn}, these are "
            f"{shape[2]}x{shape[3]}; sample them with height={shape[2]}, width={shape[3]}"
        )


def render(recipe: ViewRecipe, images: Tensor, p: Params, normalize: bool = True) -> Tensor:
    """Apply ``p`` to ``images`` -> ``[N, 3, S, S]`` float32, normalized with the recipe's mean
    and std unless ``normalize=False``.

    ``images``: ``[N, 3, H, W]``, uint8 (0-255) or floating point in [0, 1]; ``p``: N views drawn
    by ``sample_params`` for H x W images. Both are checked (a ``ValueError``), float values are
    not: values outside [0, 1] go through the colour ops as they are and are clamped to [0, 1]
    before normalizing.
    """
    _check_recipe(recipe)
    check_render_inputs(images, p, recipe)
    if images.shape[0] == 0:
        return images.new_empty(0, 3, recipe.image_size, recipe.image_size, dtype=torch.float32)
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    crop = p["crop"]
    if recipe.crop or x.shape[-1] != recipe.image_size or x.shape[-2] != recipe.image_size:
        x = ops.resized_crop(x, crop["boxes"], crop["flip"], recipe.image_size)
    if "color" in p:
        c = p["color"]
        if recipe.gray_first:
            x = ops.random_grayscale(x, c["gray"])
        x = ops.color_jitter(x, c["apply"], c["factors"], c["order"])
        if not recipe.gray_first:
            x = ops.random_grayscale(x, c["gray"])
    if "texture" in p:
        x = ops.random_convolution(x, p["texture"]["weight"], p["texture"]["alpha"])
    if "blur" in p:
        x = ops.gaussian_blur(x, p["blur"]["sigma"], p["blur"]["apply"], recipe.blur_kernel)
    if "rotation" in p:
        x = ops.rotate90(x, p["rotation"]["k"])
    x = x.clamp(0.0, 1.0)
    if normalize:
        x = ops.normalize(
            x, ops.constant(recipe.mean, x.device), ops.constant(recipe.std, x.device)
        )
    return x


def root_reason(error: BaseException) -> str:
    """``Type: first line`` of the innermost exception behind ``error`` (its ``__cause__`` or
    ``__context__`` chain): a compiler's own words, not the wrapper's ("backend='inductor'
    raised:")."""
    seen = {id(error)}
    while True:
        inner = error.__cause__ or error.__context__
        if inner is None or id(inner) in seen:
            break
        seen.add(id(inner))
        error = inner
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    name = type(error).__name__
    if not lines:
        return name
    return lines[0] if lines[0].startswith(f"{name}:") else f"{name}: {lines[0]}"


def compiled_render(recipe: ViewRecipe):
    """``render`` for one recipe through ``torch.compile`` (static shapes: every training batch has
    the same size), which fuses the chain of element-wise colour ops into a few loops.

    The first call compiles (about 10-20 s on a CPU, which needs a C++ compiler; Triton on CUDA;
    the trainer makes it on a blank batch while setting up, ``BatchedViews.warm_up``); a failure
    there is one ``UserError`` that names ``data.views_compile`` and the innermost reason. Results equal
    ``render``'s to float rounding (tests/views/test_pipeline.py).
    """
    # The ops' small constants are cached per device; tracing through the cache is what we want.
    warnings.filterwarnings("ignore", message=".*functools.lru_cache.*", module="torch._dynamo")
    # Inductor's C++ build logs "No CUDA runtime is found, using CUDA_HOME=..." on CPU-only
    # machines: a CUDA warning on a CPU run, about a path it does not use.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    fast = torch.compile(functools.partial(render, recipe), dynamic=False)
    first = True

    def call(images: Tensor, p: Params) -> Tensor:
        nonlocal first
        check_render_inputs(
            images, p, recipe
        )  # here, not in the graph: a bad input is not a build failure
        if not first:
            return fast(images, p)
        try:
            out = fast(images, p)
        except Exception as e:  # no compiler, or a backend that cannot build this graph
            reason = root_reason(e)
            raise UserError(
                f"data.views_compile=true: torch.compile could not build the views ({reason}); "
                f"install a C++ compiler (CPU) or set data.views_compile=false"
            ) from None
        first = False
        return out

    return call


# ----------------------------------------------------------------------------------------------
# Views of a batch
# ----------------------------------------------------------------------------------------------


class BatchedViews:
    """``views(images, gen)`` -> ``num_views`` tensors ``[B, 3, S, S]``: MoCo's independent views,
    or with ``atomic`` set, LooC's ``[q, k0, k_1..k_n]`` where k_i shares exactly q's parameters of
    augmentation i (``copy_group``) and draws everything else anew.

    ``images``: ``[B, 3, H, W]`` uint8 on the device (or ``[B, V, 3, S, S]`` already cropped when
    ``recipe.crop`` is false). All views of the batch are sampled and rendered in one call.
    """

    def __init__(self, recipe: ViewRecipe, num_views: int, compile: bool = False):
        if num_views < 1:
            raise ValueError(f"num_views must be at least 1, got {num_views}")
        expected = len(recipe.atomic) + 2 if recipe.atomic else num_views
        if num_views != expected:
            raise ValueError(f"LooC with {recipe.atomic} makes {expected} views, not {num_views}")
        missing = [a for a in recipe.atomic if a not in recipe.groups]
        if missing:
            raise ValueError(f"the recipe has no parameters for {missing}")
        self.recipe = recipe
        self.num_views = num_views
        self.render = functools.partial(render, recipe)
        if compile:
            self.render = compiled_render(recipe)

    def warm_up(self, shape: tuple[int, ...], device) -> None:
        """Render one batch of blank uint8 images of ``shape`` (as ``__call__`` takes them) with
        a throwaway generator. With ``compile``, the graph is built here, before training: a
        failure is a ``UserError`` before the run writes anything, and the first batch, of the
        same shape, runs the built code."""
        blank = torch.zeros(shape, dtype=torch.uint8, device=device)
        self(blank, torch.Generator(device=device).manual_seed(0))

    def params(self, batch: int, height: int, width: int, gen: torch.Generator) -> Params:
        """Parameters of all views, view-major: rows ``[v * batch, (v + 1) * batch)`` are view v."""
        p = sample_params(self.recipe, self.num_views * batch, height, width, gen)
        query = slice(0, batch)
        for i, name in enumerate(self.recipe.atomic):
            view = 2 + i
            copy_group(p, name, query, slice(view * batch, (view + 1) * batch))
        return p

    def __call__(self, images: Tensor, gen: torch.Generator) -> list[Tensor]:
        """``num_views`` float32 tensors ``[B, 3, S, S]`` (S: ``recipe.image_size``), normalized;
        row b of every view is a view of image b. MoCo: independent views. LooC (``atomic`` set):
        ``[q, k0, k_1..k_n]``, where k_i shares q's parameters of ``recipe.atomic[i - 1]`` only.
        An empty batch gives ``num_views`` empty tensors.

        ``images``: ``[B, 3, H, W]`` uint8 (or float in [0, 1]) when ``recipe.crop``, else
        ``[B, num_views, 3, S, S]``, one crop per view. ``gen``: the generator of every random
        choice, on the images' device. A wrong shape or dtype is a ``ValueError``.
        """
        shape = tuple(getattr(images, "shape", ()))
        if self.recipe.crop:
            if len(shape) != 4 or shape[1] != 3:
                raise ValueError(f"images must be [B, 3, H, W], got shape {shape}")
            batch, _, height, width = shape
            stacked = images.repeat(self.num_views, 1, 1, 1)
        else:  # [B, V, 3, S, S] -> view-major [V * B, 3, S, S]
            if len(shape) != 5 or shape[1:3] != (self.num_views, 3):
                raise ValueError(
                    f"images must be [B, {self.num_views}, 3, S, S] (a crop per view), "
                    f"got shape {shape}"
                )
            batch, _, _, height, width = shape
            stacked = images.transpose(0, 1).reshape(-1, *shape[2:])
        p = self.params(batch, height, width, gen)
        out = self.render(stacked, p)
        return [out[v * batch : (v + 1) * batch] for v in range(self.num_views)]

    def __repr__(self) -> str:
        return f"BatchedViews(num_views={self.num_views}, recipe={self.recipe})"
