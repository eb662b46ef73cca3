"""The 15 ImageNet-C corruptions (Hendrycks & Dietterich, ICLR 2019) and a robustness protocol.

Where the corruption happens: as ImageNet-C does, on the image the network sees. ImageNet-C
corrupts the 224 px centre crop after Resize(256) + CenterCrop(224); ``CorruptedDataset`` applies
the evaluation view's geometry first (resize + centre crop, or the whole image resized for
<= 96 px datasets), corrupts that ``uint8`` image, then scales and normalizes it.

Severity tables (``TABLES``): images of side <= 64 px use CIFAR-10-C's tables (make_cifar_c.py,
32 px base), larger ones ImageNet-C's (make_imagenet_c.py, 224 px base). With the ImageNet-C tables
every corrupted image then goes through a JPEG round trip at quality 85, as ImageNet-C's images
were saved; CIFAR-10-C was saved losslessly and so is not re-encoded.

The reference implementation needs scikit-image, OpenCV, Wand and photographs of frost; the
``imagecorruptions`` package is unmaintained. These are written with numpy, scipy.ndimage and PIL
only, following the reference's structure and tables, with these adaptations:

* **Spatial parameters are scaled** by ``s = min(H, W) / base`` (224 or 32), so a corruption has
  the same relative extent at another resolution; ``s = 1`` at 224 px (ImageNet tables) and at
  32 px (CIFAR tables), where the spatial parameters are the reference's.
* **defocus_blur**: the reference's kernel, a disk on the pixel lattice (x² + y² <= r²) smoothed by
  a 3×3 (r <= 8) or 5×5 Gaussian of σ = alias_blur, applied with reflect-101 borders.
* **zoom_blur**: the reference's average of the image and its centre zooms (the clean image counts
  twice: once itself and once as the zoom by 1, i.e. weight 2 / (n + 1) for n zoom factors).
* **glass_blur**: the reference's algorithm and tables (blur, sequential local pixel swaps, blur),
  with the swaps done on a permutation of pixel indices. Neither table is monotone in how much the
  image changes (more blur at one severity smooths away the swaps of the one before).
* **motion_blur** and the snow streaks use a one-sided Gaussian line kernel at a random angle, the
  model of ImageMagick's motion blur that the reference calls.
* **frost** uses procedurally synthesized ice (fractal haze plus random thin crystal branches,
  bluish white) instead of the six frost photographs, alpha-composited with an opacity that grows
  with severity: (0.4, 0.55, 0.7, 0.8, 0.9) for the ImageNet table and (0.25, 0.35, 0.45, 0.55,
  0.65) for CIFAR (whose frost weights, 0.2-0.45, are about half ImageNet-C's). The reference's
  additive weights are monotone only with the photographs' statistics.
* **fog** uses multi-octave value noise in place of the diamond-square plasma fractal (the decay per
  octave has the same meaning as the plasma's "wibble decay"). ImageNet: strength 1.5 … 3.5 in
  steps of 0.5, decay 2.0 … 1.6, so that severity 5 is stronger than 4 (ImageNet-C repeats strength
  2.5); CIFAR: CIFAR-10-C's table as it is.
* **snow**: the reference's tables; for ImageNet the image-brightening blend at severities 3 and 4
  is 0.66 and 0.62 (0.7 and 0.65 there) so that the change grows with severity.
* **elastic_transform**: the reference's tables are not monotone in severity and add an affine
  jitter; here a smooth random displacement field (Gaussian-filtered, ``sigma = 0.05·size``) is
  scaled by an amplitude that grows with severity: ``(0.015, 0.025, 0.035, 0.05, 0.07)·size``
  pixels, for both tables.
* Values are rounded to uint8 (the reference truncates, which darkens by 0.5/255 on average).

Every corruption is deterministic given ``seed``; with the same seed the random patterns are the
same at every severity, so severities differ only in strength.
"""

from __future__ import annotations

import io
import math
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from torch import Tensor, nn
from torch.utils.data import Dataset

from contrastlab.errors import UserError

CORRUPTIONS = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
SEVERITIES = (1, 2, 3, 4, 5)
# Version of the corruption protocol; part of the feature-cache key, so that features cached by an
# earlier protocol (corrupting the native image, ImageNet-C's zoom weights, ...) are not reused.
PROTOCOL = "network-resolution-2"

Array = np.ndarray


# ----------------------------------------------------------------------------------------------
# helpers (images are float32 H×W×3 in [0, 1])
# ----------------------------------------------------------------------------------------------


def _blur(x: Array, sigma: float) -> Array:
    if sigma <= 0:
        return x
    return ndimage.gaussian_filter(x, sigma=(sigma, sigma, 0), mode="reflect")


def _convolve(x: Array, kernel: Array) -> Array:
    return np.stack(
        [ndimage.convolve(x[..., ch], kernel, mode="reflect") for ch in range(x.shape[2])], axis=-1
    )


def _gaussian_taps(ksize: int, sigma: float) -> Array:
    """Normalized 1-D Gaussian of ``ksize`` taps (OpenCV's getGaussianKernel for sigma > 0)."""
    t = np.arange(ksize) - (ksize - 1) / 2
    g = np.exp(-(t**2) / (2 * max(sigma, 1e-6) ** 2))
    return g / g.sum()


def _disk_kernel(radius: float, alias_blur: float) -> Array:
    """ImageNet-C's defocus kernel: the pixels whose centres lie within ``radius`` of the centre
    (x² + y² <= r², normalized), on a 17×17 grid for r <= 8 (else 2⌈r⌉ + 1), smoothed by a
    separable Gaussian of σ = ``alias_blur`` with 3 taps (r <= 8) or 5, reflect-101 borders."""
    half = 8 if radius <= 8 else math.ceil(radius)
    ksize = 3 if radius <= 8 else 5
    grid = np.arange(-half, half + 1)
    disk = ((grid[:, None] ** 2 + grid[None, :] ** 2) <= radius**2).astype(np.float64)
    disk /= disk.sum()
    taps = _gaussian_taps(ksize, alias_blur)
    pad = ksize // 2
    for axis in (0, 1):
        padded = np.pad(disk, [(pad, pad) if a == axis else (0, 0) for a in (0, 1)], "reflect")
        disk = sum(
            w * np.take(padded, np.arange(i, i + disk.shape[axis]), axis=axis)
            for i, w in enumerate(taps)
        )
    return disk


def _line_kernel(length: float, sigma: float, angle_deg: float) -> Array:
    """One-sided motion kernel: Gaussian weights along a line from the centre, bilinear splats."""
    half = max(1, math.ceil(length))
    size = 2 * half + 1
    kernel = np.zeros((size, size))
    n = max(2, int(math.ceil(length * 8)))
    t = np.linspace(0.0, length, n)
    w = np.exp(-(t**2) / (2 * max(sigma, 1e-3) ** 2))
    theta = math.radians(angle_deg)
    ys, xs = half - t * math.sin(theta), half + t * math.cos(theta)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    fy, fx = ys - y0, xs - x0
    for dy, dx, f in (
        (0, 0, (1 - fy) * (1 - fx)),
        (0, 1, (1 - fy) * fx),
        (1, 0, fy * (1 - fx)),
        (1, 1, fy * fx),
    ):
        yy, xx = np.clip(y0 + dy, 0, size - 1), np.clip(x0 + dx, 0, size - 1)
        np.add.at(kernel, (yy, xx), w * f)
    return kernel / kernel.sum()


def _motion(x: Array, length: float, sigma: float, angle: float) -> Array:
    return _convolve(x, _line_kernel(length, sigma, angle))


def _clipped_zoom(x: Array, z: float) -> Array:
    """Zoom into the centre by ``z`` >= 1, keeping the size (ImageNet-C's clipped zoom): the
    centre ⌈H / z⌉ × ⌈W / z⌉ pixels, bilinearly resized by ``z``, trimmed to H × W."""
    h, w = x.shape[:2]
    ch, cw = math.ceil(h / z), math.ceil(w / z)
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[top : top + ch, left : left + cw]
    out = ndimage.zoom(crop, (z, z) + (1,) * (x.ndim - 2), order=1)
    top, left = (out.shape[0] - h) // 2, (out.shape[1] - w) // 2
    return out[top : top + h, left : left + w]


def _value_noise(
    h: int, w: int, rng: np.random.Generator, decay: float, min_cell: int = 2
) -> Array:
    """Multi-octave value noise in [0, 1]; amplitude shrinks by ``decay`` per octave (a smaller
    decay gives rougher noise), the stand-in for the plasma fractal of ImageNet-C's fog."""
    size = max(h, w)
    out = np.zeros((h, w))
    amp, cells = 1.0, 2
    while size / cells >= min_cell / 2 and cells <= size:
        grid = rng.standard_normal((cells + 1, cells + 1))
        up = ndimage.zoom(grid, (size / cells, size / cells), order=3, mode="nearest")
        out += amp * up[:h, :w]
        amp /= decay
        cells *= 2
    out -= out.min()
    return out / max(out.max(), 1e-8)


def _frost_pattern(h: int, w: int, rng: np.random.Generator) -> tuple[Array, Array]:
    """A synthetic frost layer: its colour (H×W×3) and opacity (H×W), both in [0, 1].

    Hazy fractal ice plus thin bright crystal branches; the opacity is highest on the crystals.
    """
    haze = _value_noise(h, w, rng, decay=1.6)
    crystals = np.zeros((h, w))
    n_branches = max(12, (h * w) // 24)
    length = max(2.0, 0.12 * min(h, w))
    starts = rng.uniform(0, 1, (n_branches, 2)) * [h, w]
    angles = rng.uniform(0, 2 * math.pi, n_branches)
    t = np.linspace(0, 1, int(length * 3) + 2)
    for (y, x), a, span in zip(starts, angles, rng.uniform(0.3, 1.0, n_branches) * length):
        for da in (0.0, 0.6, -0.6):  # a stem and two side twigs: the look of ice crystals
            frac = t if da == 0 else t * 0.5
            ys = (y + frac * span * math.sin(a + da)).astype(int) % h
            xs = (x + frac * span * math.cos(a + da)).astype(int) % w
            crystals[ys, xs] += 1.0
    crystals = ndimage.gaussian_filter(np.minimum(crystals, 3.0), 0.5 * max(1.0, min(h, w) / 112))
    crystals /= max(crystals.max(), 1e-8)
    alpha = np.clip(0.35 + 0.45 * haze + 0.6 * crystals, 0, 1)
    tint = np.array([0.86, 0.93, 1.0])  # frost photographs are bluish white
    ice = (0.75 + 0.25 * np.maximum(haze, crystals))[..., None] * tint
    return ice.astype(np.float32), alpha


def _rgb_to_gray(x: Array) -> Array:
    return x @ np.array([0.299, 0.587, 0.114], dtype=x.dtype)


# ----------------------------------------------------------------------------------------------
# the corruptions: f(x float [0,1] HxWx3, c = the severity's table entry, rng, s = size / base)
# ----------------------------------------------------------------------------------------------


def gaussian_noise(x, c, rng, s):
    return x + rng.standard_normal(x.shape) * c


def shot_noise(x, c, rng, s):
    return rng.poisson(np.clip(x, 0, 1) * c) / c


def impulse_noise(x, amount, rng, s):
    u = rng.uniform(size=x.shape)
    out = x.copy()
    out[u < amount / 2] = 0.0  # pepper
    out[(u >= amount / 2) & (u < amount)] = 1.0  # salt
    return out


def defocus_blur(x, c, rng, s):
    radius, alias = c
    kernel = _disk_kernel(radius * s, alias * s)
    return np.stack(
        [ndimage.convolve(x[..., ch], kernel, mode="mirror") for ch in range(x.shape[2])], axis=-1
    )


def glass_blur(x, c, rng, s):
    sigma, delta, iters = c
    return _glass_blur_swaps(x, sigma * s, max(1, round(delta * s)), iters, rng)


def _glass_blur_swaps(x: Array, sigma: float, delta: int, iters: int, rng) -> Array:
    """The reference's glass blur: blur, quantize to uint8, then visit the pixels from the bottom-right corner to the top-left (``delta`` from
    the border) and swap each with the pixel at an offset drawn from [-delta, delta) in each axis,
    ``iters`` times over; blur again."""
    h, w = x.shape[:2]
    img = (np.clip(_blur(x, sigma), 0, 1) * 255).astype(np.uint8)
    # swap pixel indices in a Python list (a numpy element swap costs ~30x more), then gather once
    order = list(range(h * w))
    visits = [i * w + j for i in range(h - delta, delta, -1) for j in range(w - delta, delta, -1)]
    for _ in range(iters):
        offsets = rng.integers(-delta, delta, size=(len(visits), 2))
        shifts = (offsets[:, 1] * w + offsets[:, 0]).tolist()  # (dx, dy): dy rows, dx columns
        for p, shift in zip(visits, shifts):
            order[p], order[p + shift] = order[p + shift], order[p]
    img = img.reshape(h * w, -1)[order].reshape(x.shape)
    return _blur(img.astype(np.float32) / 255.0, sigma)


def motion_blur(x, c, rng, s):
    radius, sigma = c
    return _motion(x, radius * s, sigma * s, rng.uniform(-45, 45))


def zoom_blur(x, zooms, rng, s):
    # the clean image plus its zooms by every factor, the first of which is 1 (the clean image
    # again): weight 2 / (n + 1) on the clean image, as in ImageNet-C
    out = x.copy()
    for z in zooms:
        out += _clipped_zoom(x, float(z))
    return out / (len(zooms) + 1)


def snow(x, c, rng, s):
    loc, scale, zoom, threshold, radius, sigma, blend = c
    h, w = x.shape[:2]
    layer = rng.standard_normal((h, w)) * scale + loc
    layer = _clipped_zoom(layer, zoom)
    layer[layer < threshold] = 0
    layer = np.clip(layer, 0, 1)[..., None]
    layer = _motion(layer, max(radius * s, 1.0), max(sigma * s, 0.5), rng.uniform(-135, -45))
    x = blend * x + (1 - blend) * np.maximum(x, _rgb_to_gray(x)[..., None] * 1.5 + 0.5)
    return x + layer + np.rot90(layer, 2)


def frost(x, opacity, rng, s):
    ice, alpha = _frost_pattern(*x.shape[:2], rng)
    alpha = np.clip(opacity * alpha, 0, 1)[..., None]
    return (1 - alpha) * x + alpha * ice


def fog(x, c, rng, s):
    strength, decay = c
    peak = x.max()
    x = x + strength * _value_noise(*x.shape[:2], rng, decay)[..., None]
    return x * peak / (peak + strength)


def brightness(x, c, rng, s):
    from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

    hsv = rgb_to_hsv(np.clip(x, 0, 1))
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    return hsv_to_rgb(hsv)


def contrast(x, c, rng, s):
    means = x.mean(axis=(0, 1), keepdims=True)
    return (x - means) * c + means


def elastic_transform(x, c, rng, s):
    h, w = x.shape[:2]
    size = min(h, w)
    amp = c * size
    sigma = max(1.0, 0.05 * size)
    fields = []
    for _ in range(2):
        f = ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma, mode="reflect")
        fields.append(f / max(f.std(), 1e-8) * amp)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    coords = [yy + fields[0], xx + fields[1]]
    return np.stack(
        [
            ndimage.map_coordinates(x[..., ch], coords, order=1, mode="reflect")
            for ch in range(x.shape[2])
        ],
        axis=-1,
    )


def pixelate(x, c, rng, s):
    h, w = x.shape[:2]
    img = Image.fromarray(_to_uint8(x))
    small = img.resize((max(1, int(w * c)), max(1, int(h * c))), Image.BOX)
    return np.asarray(small.resize((w, h), Image.BOX), dtype=np.float32) / 255.0


def jpeg_compression(x, quality, rng, s):
    return _jpeg(_to_uint8(x), quality).astype(np.float32) / 255.0


def _jpeg(image: Array, quality: int) -> Array:
    """A ``uint8`` H×W×3 image after a JPEG round trip (PIL, 4:2:0 as PIL saves by default)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return np.array(Image.open(buf).convert("RGB"))  # a writable copy


# Severity tables, one entry per severity 1..5 (see the module docstring for the substitutes).
TABLES: dict[str, dict[str, tuple]] = {
    "imagenet": {  # make_imagenet_c.py, for 224 px images
        "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
        "shot_noise": (60, 25, 12, 5, 3),
        "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
        "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
        "glass_blur": ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
        "motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
        "zoom_blur": (
            np.arange(1, 1.11, 0.01),
            np.arange(1, 1.16, 0.01),
            np.arange(1, 1.21, 0.02),
            np.arange(1, 1.26, 0.02),
            np.arange(1, 1.31, 0.03),
        ),
        "snow": (
            (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
            (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
            (0.55, 0.3, 4, 0.9, 12, 8, 0.66),
            (0.55, 0.3, 4.5, 0.85, 12, 8, 0.62),
            (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
        ),
        "frost": (0.4, 0.55, 0.7, 0.8, 0.9),
        "fog": ((1.5, 2.0), (2.0, 1.9), (2.5, 1.8), (3.0, 1.7), (3.5, 1.6)),
        "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
        "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
        "elastic_transform": (0.015, 0.025, 0.035, 0.05, 0.07),
        "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
        "jpeg_compression": (25, 18, 15, 10, 7),
    },
    "cifar": {  # make_cifar_c.py, for 32 px images
        "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
        "shot_noise": (500, 250, 100, 75, 50),
        "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
        "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
        "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
        "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
        "zoom_blur": (
            np.arange(1, 1.06, 0.01),
            np.arange(1, 1.11, 0.01),
            np.arange(1, 1.16, 0.01),
            np.arange(1, 1.21, 0.01),
            np.arange(1, 1.26, 0.01),
        ),
        "snow": (
            (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
            (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
            (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
            (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
            (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
        ),
        "frost": (0.25, 0.35, 0.45, 0.55, 0.65),
        "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
        "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
        "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
        "elastic_transform": (0.015, 0.025, 0.035, 0.05, 0.07),
        "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
        "jpeg_compression": (80, 65, 58, 50, 40),
    },
}
TABLE_BASE = {"imagenet": 224, "cifar": 32}  # the image side each table was made for
FINAL_JPEG_QUALITY = {"imagenet": 85, "cifar": None}  # how each data set's images were saved
CIFAR_TABLE_MAX_SIDE = 64  # images up to this side use CIFAR-10-C's tables


def table_for(height: int, width: int) -> str:
    """The severity table for an image of this size: "cifar" up to 64 px, else "imagenet"."""
    return "cifar" if min(height, width) <= CIFAR_TABLE_MAX_SIDE else "imagenet"


_FUNCS: dict[str, Callable] = {name: globals()[name] for name in CORRUPTIONS}


def _to_uint8(x: Array) -> Array:
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def corrupt(
    image: Array, name: str, severity: int, seed: int = 0, table: str | None = None
) -> Array:
    """Apply one corruption to a ``uint8`` image ``H×W×3`` (or ``H×W``); same shape and dtype out.

    Corrupt the image at the resolution the network sees (see ``CorruptedDataset``). ``table``:
    "imagenet" (ImageNet-C's severities, spatial parameters scaled by min(H, W) / 224, then a JPEG
    round trip at quality 85 as ImageNet-C's files were saved) or "cifar" (CIFAR-10-C's severities,
    scaled by min(H, W) / 32, no re-encoding); ``None`` chooses by size (:func:`table_for`).
    Raises ``UserError`` for an unknown corruption, severity or table.
    """
    if name not in _FUNCS:
        raise UserError(f"unknown corruption '{name}'; valid: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise UserError(f"corruption severity must be 1..5, got {severity}")
    gray = image.ndim == 2
    x = np.asarray(image, dtype=np.float32) / 255.0
    if gray:
        x = np.repeat(x[..., None], 3, axis=2)
    table = table or table_for(*x.shape[:2])
    if table not in TABLES:
        raise UserError(f"unknown corruption table '{table}'; valid: {', '.join(TABLES)}")
    s = min(x.shape[:2]) / TABLE_BASE[table]
    c = TABLES[table][name][severity - 1]
    out = _FUNCS[name](x, c, np.random.default_rng(seed), s)
    out = _to_uint8(np.asarray(out, dtype=np.float32))
    if FINAL_JPEG_QUALITY[table] is not None:
        out = _jpeg(out, FINAL_JPEG_QUALITY[table])
    return out[..., 0] if gray else out


def corrupt_tensor(
    image: Tensor, name: str, severity: int, seed: int = 0, table: str | None = None
) -> Tensor:
    """The same on a ``uint8`` tensor ``3×H×W`` (the dataset contract's image layout)."""
    arr = image.permute(1, 2, 0).cpu().numpy()
    out = corrupt(arr, name, severity, seed, table)
    return torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1)


# ----------------------------------------------------------------------------------------------
# protocol
# ----------------------------------------------------------------------------------------------


def to_uint8_chw(image: Any) -> Tensor:
    """A dataset image (PIL or uint8 tensor) as a ``uint8`` tensor ``3×H×W``."""
    if isinstance(image, Image.Image):
        arr = np.asarray(image.convert("RGB"))
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)
    if isinstance(image, Tensor):
        if image.dtype != torch.uint8:
            raise UserError(
                "corruptions need uint8 images from the dataset; got "
                f"{image.dtype} (build the dataset without a transform)"
            )
        return image if image.shape[0] == 3 else image.expand(3, *image.shape[1:])
    raise UserError(f"cannot corrupt an image of type {type(image).__name__}")


class CorruptedDataset(Dataset):
    """Image ``i`` of a dataset of raw images, as the network sees it, corrupted with seed
    ``seed + i``, then finished by ``transform``.

    ``geometry`` (image -> ``uint8`` tensor ``3×S×S``) is the evaluation view's resize and crop, so
    the corruption acts at the network's resolution, as ImageNet-C corrupts the 224 px centre crop;
    ``transform`` then scales and normalizes. Without ``geometry`` the native image is corrupted.
    ``table`` chooses the severity table (``None``: by the size of the corrupted image).
    """

    def __init__(
        self,
        raw: Dataset,
        name: str,
        severity: int,
        transform: Callable | None,
        seed: int = 0,
        indices: Sequence[int] | None = None,
        geometry: Callable | None = None,
        table: str | None = None,
    ):
        self.raw, self.name, self.severity = raw, name, severity
        self.transform, self.seed = transform, seed
        self.geometry, self.table = geometry, table
        self.indices = list(range(len(raw))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        image, label = self.raw[self.indices[i]]
        img = to_uint8_chw(image)
        if self.geometry is not None:
            img = torch.as_tensor(self.geometry(img))
        if self.name != "clean":
            img = corrupt_tensor(
                img, self.name, self.severity, self.seed + self.indices[i], self.table
            )
        return (self.transform(img) if self.transform is not None else img), label


def sweep_left(
    costs: dict[str, list[float]], name: str, left_here: int, after: int, severities: int
) -> float:
    """Seconds left of a corruption sweep: the ``left_here`` test sets of corruption ``name`` at
    its own measured pace (until it has run once, the typical one), then the ``after``
    corruptions not yet run, ``severities`` test sets each, at the typical pace: the median of
    the paces of the corruptions run (the clean test set's before any). Each corruption's own
    pace, and the median, keep one slow corruption (glass blur costs many times the others) from
    being spread over the rest. ``costs``: the seconds of every test set run, by corruption
    (``clean`` included)."""
    paces = {c: sum(t) / len(t) for c, t in costs.items() if t}
    corrupted = [p for c, p in paces.items() if c != "clean"]
    typical = float(np.median(corrupted)) if corrupted else paces.get("clean", 0.0)
    return left_here * paces.get(name, typical) + after * severities * typical


def corruption_eval(
    model: nn.Module,
    classify: Callable[[Tensor], Tensor],
    raw_test: Dataset,
    transform: Callable,
    space: str = "backbone",
    corruptions: Sequence[str] = CORRUPTIONS,
    severities: Sequence[int] = SEVERITIES,
    indices: Sequence[int] | None = None,
    seed: int = 0,
    extract_kwargs: dict | None = None,
    cache_parts: dict | None = None,
    geometry: Callable | None = None,
    table: str | None = None,
) -> dict:
    """Accuracy per corruption and severity, per corruption (mean over severities), and overall.

    ``classify(feats) -> predicted labels`` is a classifier already trained on clean training
    features (the fast linear probe or kNN). ``raw_test`` yields raw uint8 images; ``geometry``
    brings each to the network's resolution before it is corrupted and ``transform`` finishes it
    (see ``CorruptedDataset``); without ``geometry``, ``transform`` is the whole evaluation view and
    the native image is corrupted.
    """
    from contrastlab.eval.features import extract_features
    from contrastlab.eval.progress import Heartbeat

    bad = [c for c in corruptions if c not in _FUNCS]
    if bad:
        raise UserError(f"unknown corruption '{bad[0]}'; valid: {', '.join(CORRUPTIONS)}")
    kwargs = dict(extract_kwargs or {})

    def accuracy(name: str, severity: int) -> float:
        ds = CorruptedDataset(raw_test, name, severity, transform, seed, indices, geometry, table)
        parts = (
            None
            if cache_parts is None
            else {
                **cache_parts,
                "corruption": name,
                "severity": severity,
                "seed": seed,
                "indices": None if indices is None else len(ds),
                # where and how the images were corrupted (caches of older protocols differ)
                "protocol": PROTOCOL,
                "geometry": repr(geometry),
                "table": table,
            }
        )
        feats, labels = extract_features(
            model, ds, space, desc=f"{name} {severity}", cache_parts=parts, **kwargs
        )
        return 100.0 * (classify(feats).cpu() == labels).sum().item() / labels.numel()

    beat = Heartbeat("corruption", 1 + len(corruptions) * len(severities), kwargs.get("progress"))
    began = time.monotonic()
    result: dict = {"clean": accuracy("clean", 0), "corruptions": {}}
    costs: dict[str, list[float]] = {"clean": [time.monotonic() - began]}
    for i, name in enumerate(corruptions):
        per = {}
        for j, sev in enumerate(severities):
            after = len(corruptions) - i - 1
            untimed = after + (0 if costs.get(name) else 1)
            beat.update(
                1 + i * len(severities) + j,
                f"{name} {sev}, test set {2 + i * len(severities) + j}/{beat.total}",
                left=sweep_left(costs, name, len(severities) - j, after, len(severities)),
                rough=(
                    f"rough: {untimed} corruption{'s' if untimed != 1 else ''} not timed yet, "
                    "and some cost far more than others"
                    if untimed
                    else ""
                ),
            )
            began = time.monotonic()
            per[str(sev)] = accuracy(name, sev)
            costs.setdefault(name, []).append(time.monotonic() - began)
        result["corruptions"][name] = {
            "by_severity": per,
            "mean": float(np.mean(list(per.values()))),
        }
    means = [v["mean"] for v in result["corruptions"].values()]
    result["mean"] = float(np.mean(means)) if means else float("nan")
    result["severity_means"] = (
        {
            str(sev): float(
                np.mean([v["by_severity"][str(sev)] for v in result["corruptions"].values()])
            )
            for sev in severities
        }
        if means
        else {}
    )
    return result
