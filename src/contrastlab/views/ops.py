"""Batched image operations on the training device: pure functions of images and parameters.

Every function takes a batch ``x`` of float images ``[N, 3, H, W]`` in [0, 1] and per-sample
parameters as tensors of length N, and returns a new batch; none of them draws random numbers or
synchronizes with the device. Each one has the semantics of the torchvision functional op named in
its docstring, applied to every sample with that sample's parameters (tests compare them with
torchvision's ops image by image).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor


@functools.lru_cache(maxsize=None)
def constant(values: tuple[float, ...], device: torch.device) -> Tensor:
    """A small constant tensor, made once per device: no host-to-device copy in a step (on CUDA a
    copy from pageable memory would wait for the device)."""
    return torch.tensor(values, device=device)


def _hex_offsets(device) -> Tensor:  # channel offsets (r, g, b) of the hexcone's closed form
    return constant((5.0, 3.0, 1.0), torch.device(device)).view(1, 3, 1, 1)


# ITU-R 601-2 luma weights, as in torchvision's rgb_to_grayscale and PIL's convert("L").
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


# ----------------------------------------------------------------------------------------------
# Geometry: crop + resize + flip as one pair of batched matrix products
# ----------------------------------------------------------------------------------------------


def resample_matrix(start: Tensor, length: Tensor, in_size: int, out_size: int) -> Tensor:
    """Rows that resample ``[start, start + length)`` of an axis of ``in_size`` to ``out_size``.

    Returns ``[N, out_size, in_size]`` (float32). Row ``i`` holds the weights of the antialiased
    bilinear (triangle) filter that ``torch.nn.functional.interpolate(..., mode="bilinear",
    antialias=True, align_corners=False)`` uses for output ``i`` of the cropped axis (the PIL
    filter: support 1 when enlarging, ``length / out_size`` when shrinking; weights normalized;
    edges clamped to the crop), placed at the crop's columns. So ``R_y @ image @ R_x^T`` is
    ``torchvision.transforms.v2.functional.resized_crop(image, top, left, h, w, size,
    antialias=True)`` for every sample at once.
    """
    device = start.device
    length = length.to(torch.float32)[:, None, None]  # [N, 1, 1]
    scale = length / out_size
    center = scale * (
        torch.arange(out_size, device=device, dtype=torch.float32)[None, :, None] + 0.5
    )
    inv = torch.where(scale >= 1.0, 1.0 / scale, torch.ones_like(scale))
    j = (
        torch.arange(in_size, device=device, dtype=torch.float32)[None, None, :]
        - start.to(torch.float32)[:, None, None]
    )  # position within the crop
    inside = (j >= 0) & (j < length)
    w = (1.0 - ((j - center + 0.5) * inv).abs()).clamp_min(0.0) * inside
    return w / w.sum(dim=2, keepdim=True)


def resized_crop(x: Tensor, boxes: Tensor, flip: Tensor, size: int) -> Tensor:
    """Crop ``boxes`` (``[N, 4]``: top, left, height, width in pixels), resize to ``size`` x ``size``
    and mirror the samples where ``flip`` is true.

    Semantics of ``resized_crop(..., antialias=True)`` followed by ``horizontal_flip`` in
    ``torchvision.transforms.v2.functional``, on float images. ``x``: ``[N, C, H, W]`` float.
    """
    n, c, height, width = x.shape
    rows = resample_matrix(boxes[:, 0], boxes[:, 2], height, size)  # [N, S, H]
    cols = resample_matrix(boxes[:, 1], boxes[:, 3], width, size)  # [N, S, W]
    cols = torch.where(flip[:, None, None], cols.flip(1), cols)  # mirror = reverse output columns
    return torch.einsum("nsh,nchw,ntw->ncst", rows, x, cols)


# ----------------------------------------------------------------------------------------------
# Colour
# ----------------------------------------------------------------------------------------------


def grayscale(x: Tensor) -> Tensor:
    """Luma ``[N, 1, H, W]`` (``rgb_to_grayscale`` with one output channel)."""
    r, g, b = x.unbind(1)
    # the same sequence of operations as torchvision, so that the result is bit-identical
    luma = r.mul(GRAY_WEIGHTS[0]).add_(g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2])
    return luma.unsqueeze(1)


def blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """``clamp(factor * x + (1 - factor) * other, 0, 1)`` per sample (torchvision's ``_blend``).

    A factor of 1 returns ``x`` exactly (for finite ``other`` and ``x`` in [0, 1])."""
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1.0 - f) * other).clamp_(0.0, 1.0)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """``adjust_brightness``: blend with black."""
    return blend(x, torch.zeros_like(x[:, :1]), factor)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """``adjust_contrast``: blend with the mean luma of each image."""
    return blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """``adjust_saturation``: blend with the image's luma."""
    return blend(x, grayscale(x), factor)


def rgb_to_hsv(x: Tensor) -> Tensor:
    """RGB in [0, 1] to HSV in [0, 1] (hexcone model; hue as a fraction of a turn)."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    chroma = maxc - minc
    flat = chroma == 0
    s = chroma / torch.where(maxc == 0, torch.ones_like(maxc), maxc)
    c = torch.where(flat, torch.ones_like(chroma), chroma)
    # hue sector by which channel is the largest (red wins ties, then green)
    h = torch.where(
        maxc == r,
        (g - b) / c,
        torch.where(maxc == g, 2.0 + (b - r) / c, 4.0 + (r - g) / c),
    )
    h = torch.where(flat, torch.zeros_like(h), h)
    h = torch.remainder(h / 6.0, 1.0)
    return torch.stack([h, s, maxc], dim=1)


def hsv_to_rgb(x: Tensor) -> Tensor:
    """HSV in [0, 1] back to RGB with the closed form of the hexcone: channel n of (r, g, b) is
    ``v - v * s * clamp(min(k, 4 - k), 0, 1)`` with ``k = (n + 6 h) mod 6`` for n = 5, 3, 1."""
    h, s, v = x.unbind(1)
    h6 = (h * 6.0).unsqueeze(1)
    k = torch.remainder(_hex_offsets(x.device) + h6, 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    v, s = v.unsqueeze(1), s.unsqueeze(1)
    return v - v * s * ramp


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """``adjust_hue``: rotate the hue by ``shift`` turns (in [-0.5, 0.5]) in HSV space.

    The same hexcone model as ``rgb_to_hsv`` / ``hsv_to_rgb``, without forming saturation:
    value M = max(r, g, b) and chroma C = M - min(r, g, b) are kept, and channel n of the result
    is ``M - C * clamp(min(k, 4 - k), 0, 1)`` with ``k = (n + 6 h') mod 6``, h' the shifted hue.
    """
    r, g, b = x.unbind(1)
    top = x.amax(dim=1)
    chroma = top - x.amin(dim=1)
    red_max, green_max = top == r, top == g
    numerator = torch.where(red_max, g - b, torch.where(green_max, b - r, r - g))
    offset = torch.where(red_max, 0.0, torch.where(green_max, 2.0, 4.0))
    h6 = offset + numerator / torch.where(chroma == 0, 1.0, chroma)  # hue in sixths of a turn
    h6 = (h6 + 6.0 * shift.view(-1, 1, 1)).unsqueeze(1)
    k = torch.remainder(_hex_offsets(x.device) + h6, 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return torch.addcmul(top.unsqueeze(1), chroma.unsqueeze(1), ramp, value=-1.0)


BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # ColorJitter's indices of its four factors


def _linear_jitter(x: Tensor, op: Tensor, factor: Tensor, active: Tensor) -> Tensor:
    """Brightness, contrast or saturation (``op`` per sample) where ``active``: one blend with a
    per-sample target (black, the mean luma or the luma), as ``f * x + (1 - f) * target`` clamped
    to [0, 1] like torchvision's ``_blend``. Inactive samples blend with factor 1, which leaves
    them exactly as they are.

    The target's weight ``1 - f`` is folded into the one-channel target, so the full-size work is
    one fused multiply-add and the clamp."""
    f = torch.where(active, factor, torch.ones_like(factor))
    rest = 1.0 - f
    luma = grayscale(x)
    to_luma = (rest * (op == SATURATION)).view(-1, 1, 1, 1)
    to_mean = (rest * (op == CONTRAST)).view(-1, 1, 1, 1)
    target = torch.addcmul(luma.mean(dim=(1, 2, 3), keepdim=True) * to_mean, luma, to_luma)
    return torch.addcmul(target, x, f.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)


def color_jitter(x: Tensor, apply: Tensor, factors: Tensor, order: Tensor) -> Tensor:
    """``ColorJitter`` with each sample's own factors and order, where ``apply`` is true.

    ``factors``: ``[N, 4]`` (brightness, contrast, saturation, hue); ``order``: ``[N, 4]``, a
    permutation of 0..3 per sample (torchvision's ``fn_idx``). Every sample applies its ops in its
    own order. The hue rotation (the costly op) runs once for the whole batch: first each sample's
    linear ops that come before its hue, then the hue, then those after it. Samples not jittered
    (and hue factors of 0, which ColorJitter skips) stay bit-identical.
    """
    hue_at = (order == HUE).int().argmax(dim=1)  # position of the hue op in each sample's order
    for after_hue in (False, True):
        if after_hue:
            hue = factors[:, HUE]
            turn = apply & (hue != 0)
            x = torch.where(turn.view(-1, 1, 1, 1), adjust_hue(x, torch.where(turn, hue, 0.0)), x)
        for position in range(1, 4) if after_hue else range(3):  # hue is never before 0/after 3
            op = order[:, position]
            side = position > hue_at if after_hue else position < hue_at
            factor = factors.gather(1, op[:, None]).squeeze(1)
            x = _linear_jitter(x, op, factor, apply & side)
    return x


def random_grayscale(x: Tensor, apply: Tensor) -> Tensor:
    """``rgb_to_grayscale(x, num_output_channels=3)`` where ``apply`` is true."""
    return torch.where(apply.view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)


# ----------------------------------------------------------------------------------------------
# Filters: one grouped convolution for the whole batch
# ----------------------------------------------------------------------------------------------


def _pad(x: Tensor, pad: int) -> Tensor:
    if not pad:
        return x
    mode = "reflect" if min(x.shape[-2:]) > pad else "replicate"
    return F.pad(x, (pad, pad, pad, pad), mode=mode)


def gaussian_kernels(sigma: Tensor, apply: Tensor, kernel_size: int) -> Tensor:
    """``[N, kernel_size]`` normalized 1-d Gaussians (torchvision's ``_get_gaussian_kernel1d``);
    a unit impulse (the identity) where ``apply`` is false."""
    half = (kernel_size - 1) * 0.5
    pos = torch.linspace(-half, half, kernel_size, device=sigma.device)
    pdf = torch.exp(-0.5 * (pos[None] / sigma[:, None]) ** 2)
    gauss = pdf / pdf.sum(dim=1, keepdim=True)
    impulse = torch.zeros_like(gauss)
    impulse[:, kernel_size // 2] = 1.0
    return torch.where(apply[:, None], gauss, impulse)


# The two grouped convolutions stay eager under ``data.views_compile``: compiled, they ran at a
# third of the eager speed on the CPU (benchmarks/views.py, LooC with texture).
@torch.compiler.disable
def gaussian_blur(x: Tensor, sigma: Tensor, apply: Tensor, kernel_size: int) -> Tensor:
    """``gaussian_blur(x, [k, k], [sigma, sigma])`` per sample (reflect padding), where ``apply``."""
    n, c, h, w = x.shape
    k1d = gaussian_kernels(sigma, apply, kernel_size).repeat_interleave(c, dim=0)  # [N*C, k]
    y = _pad(x.reshape(1, n * c, h, w), kernel_size // 2)
    y = F.conv2d(y, k1d[:, None, :, None], groups=n * c)  # vertical
    y = F.conv2d(y, k1d[:, None, None, :], groups=n * c)  # horizontal
    return y.reshape(n, c, h, w)


@torch.compiler.disable
def random_convolution(x: Tensor, weight: Tensor, alpha: Tensor) -> Tensor:
    """LooC's texture op (``data/looc_views.TextureAug``) for every sample at once.

    ``weight``: ``[N, 3, 3, k, k]`` per-sample filters (smaller filters zero-padded to the common
    ``k``, which gives the same result as the small filter with its own reflect padding);
    ``alpha``: ``[N]``. The filtered image is rescaled to the input's per-image value range and
    mixed: ``alpha * filtered + (1 - alpha) * x``.
    """
    n, c, h, w = x.shape
    k = weight.shape[-1]
    y = _pad(x.reshape(1, n * c, h, w), k // 2)
    y = F.conv2d(y, weight.reshape(n * c, c, k, k).to(x.dtype), groups=n).reshape(n, c, h, w)
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    y_lo = y.amin(dim=(1, 2, 3), keepdim=True)
    y_hi = y.amax(dim=(1, 2, 3), keepdim=True)
    y = (y - y_lo) / (y_hi - y_lo).clamp_min(1e-8) * (hi - lo) + lo
    a = alpha.view(-1, 1, 1, 1)
    return a * y + (1.0 - a) * x


# ----------------------------------------------------------------------------------------------
# Rotation and normalization
# ----------------------------------------------------------------------------------------------


def rotate90(x: Tensor, k: Tensor) -> Tensor:
    """``torch.rot90(x[i], k[i], dims=(-2, -1))`` per sample (square images; exact)."""
    out = x
    for turns in (1, 2, 3):
        out = torch.where((k == turns).view(-1, 1, 1, 1), torch.rot90(x, turns, dims=(-2, -1)), out)
    return out


def normalize(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``(x - mean) / std`` per channel; ``mean``, ``std``: ``[C]`` on ``x``'s device.

    Computed as one multiply-add, ``x * (1 / std) - mean / std`` (within 1e-6 of the division)."""
    scale = std.reciprocal().view(1, -1, 1, 1)
    return torch.addcmul(-mean.view(1, -1, 1, 1) * scale, x, scale)
