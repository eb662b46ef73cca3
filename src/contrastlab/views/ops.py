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


# ITU-R 601-2 luma weights, as in torchvision's rgb_to_grayscale and PIL's convert("L").
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


def select(choose: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``a`` for the samples where ``choose`` ([N], bool) is true, ``b`` for the others, exactly.

    ``torch.where(choose.view(-1, 1, 1, 1), a, b)``, computed as ``lerp`` with a 0/1 weight, which
    returns either end bit for bit; on the CPU ``where`` with a broadcast mask is several times
    slower than one arithmetic pass. ``a`` may broadcast against ``b`` (a one-channel luma)."""
    return torch.lerp(b, a.expand_as(b), choose.to(b.dtype).view(-1, *([1] * (b.dim() - 1))))


# ----------------------------------------------------------------------------------------------
# Geometry: crop + resize + flip as one pair of batched matrix products
# ----------------------------------------------------------------------------------------------


def resample_matrix(
    start: Tensor, length: Tensor, in_size: int, out_size: int, mirror: Tensor | None = None
) -> Tensor:
    """Rows that resample ``[start, start + length)`` of an axis of ``in_size`` to ``out_size``.

    Returns ``[N, out_size, in_size]`` (float32). Row ``i`` holds the weights of the antialiased
    bilinear (triangle) filter that ``torch.nn.functional.interpolate(..., mode="bilinear",
    antialias=True, align_corners=False)`` uses for output ``i`` of the cropped axis (the PIL
    filter: support 1 when enlarging, ``length / out_size`` when shrinking; weights normalized;
    edges clamped to the crop), placed at the crop's columns. So ``R_y @ image @ R_x^T`` is
    ``torchvision.transforms.v2.functional.resized_crop(image, top, left, h, w, size,
    antialias=True)`` for every sample at once. Where ``mirror`` ([N], bool) is true the rows come
    in reverse order (output ``i`` is output ``out_size - 1 - i`` of the crop): a horizontal flip.
    """
    device = start.device
    length = length.to(torch.float32)[:, None, None]  # [N, 1, 1]
    scale = length / out_size
    position = torch.arange(out_size, device=device, dtype=torch.float32)[None, :, None]
    if mirror is not None:  # i -> out_size - 1 - i where mirrored, as arithmetic on [N, S, 1]
        flip = mirror.to(torch.float32)[:, None, None]
        position = position + flip * (out_size - 1 - 2 * position)
    center = scale * (position + 0.5)
    inv = 1.0 / scale.clamp_min(1.0)  # the filter's support grows with the shrink factor only
    j = (
        torch.arange(in_size, device=device, dtype=torch.float32)[None, None, :]
        - start.to(torch.float32)[:, None, None]
    )  # position within the crop
    inside = ((j >= 0) & (j < length)).to(torch.float32)  # [N, 1, in_size]
    w = (j - center).add_(0.5).mul_(inv).abs_().neg_().add_(1.0).clamp_min_(0.0).mul_(inside)
    return w.div_(w.sum(dim=2, keepdim=True))


def resized_crop(x: Tensor, boxes: Tensor, flip: Tensor, size: int) -> Tensor:
    """Crop ``boxes`` (``[N, 4]``: top, left, height, width in pixels), resize to ``size`` x ``size``
    and mirror the samples where ``flip`` is true.

    Semantics of ``resized_crop(..., antialias=True)`` followed by ``horizontal_flip`` in
    ``torchvision.transforms.v2.functional``, on float images. ``x``: ``[N, C, H, W]`` float.
    """
    n, c, height, width = x.shape
    rows = resample_matrix(boxes[:, 0], boxes[:, 2], height, size)  # [N, S, H]
    cols = resample_matrix(boxes[:, 1], boxes[:, 3], width, size, mirror=flip)  # [N, S, W]
    # Columns first, with the channels folded into the rows of one product per sample; then rows,
    # one product per (sample, channel). 1.5x faster than the same contraction as an einsum.
    along_x = torch.bmm(x.reshape(n, c * height, width), cols.transpose(1, 2))  # [N, C*H, S]
    rows = rows[:, None].expand(n, c, size, height).reshape(n * c, size, height)
    return torch.bmm(rows, along_x.view(n * c, height, size)).view(n, c, size, size)


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


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """``adjust_hue``: rotate the hue by ``shift`` turns (in [-0.5, 0.5]) in HSV space.

    The hexcone model of HSV (torchvision's ``_rgb2hsv`` / ``_hsv2rgb``), without forming
    saturation: value M = max(r, g, b) and chroma C = M - min(r, g, b) are kept, the hue h (in
    sixths of a turn) is ``(g - b) / C``, ``2 + (b - r) / C`` or ``4 + (r - g) / C`` as red, green
    or blue is the largest, and with h' = h + 6 shift mod 6 and ``e_n = clamp(|h' - c_n| - 1, 0,
    1)`` (c = 3, 2, 4 for r, g, b) the result is ``r = M - C + C e_r``, ``g = M - C e_g``,
    ``b = M - C e_b``: the trapezoids of HSV-to-RGB over one turn of hue.
    """
    return _rotate_hue_(x.clone(), shift, torch.ones_like(shift, dtype=torch.bool))


_HUE_CENTERS = (3.0, 2.0, 4.0)  # where red, green, blue are smallest, in sixths of a turn


def _rotate_hue_(x: Tensor, shift: Tensor, turn: Tensor) -> Tensor:
    """``adjust_hue`` in place, on the samples where ``turn`` is true; the others stay bit for bit.

    Written without ``torch.where``, comparisons, ``remainder`` or broadcasts over channels on
    full-size tensors: on the CPU each of those costs several times a plain arithmetic pass
    (docs/benchmarks.md, views). The largest channel is found as ``1 + sign(channel - M)``, a 0/1
    float, and each output channel is computed on its own with scalar constants.
    """
    r, g, b = x.unbind(1)
    top = x.amax(dim=1)
    chroma = top - x.amin(dim=1)
    # Which channel is the largest (red wins ties, then green; ties give the same hue either way).
    red = (r - top).sign_().add_(1.0)
    green = (g - top).sign_().add_(1.0).mul_(1.0 - red)
    blue = 1.0 - red - green
    numerator = red * (g - b) + green * (b - r) + blue * (r - g)
    # Hue in sixths of a turn. Where chroma is 0 the numerator is 0 too, so the hue is 0 (as in
    # torchvision); a chroma below the clamp only scales a hue that is multiplied by it below.
    h6 = torch.addcdiv(2.0 * green + 4.0 * blue, numerator, chroma.clamp_min(1e-30))
    h6 = h6.add_(6.0 * shift.view(-1, 1, 1))
    h6 = h6.sub_(torch.floor(h6 * (1.0 / 6.0)).mul_(6.0))  # mod 6, into [0, 6)
    weight = turn.to(x.dtype).view(-1, 1, 1)  # lerp with a 0/1 weight returns either end exactly
    bottom = top - chroma
    for channel, center in enumerate(_HUE_CENTERS):
        # clamp(|h' - c| - 1, 0, 1): 0 where the channel is the largest, 1 where the smallest
        ramp = (h6 - center).abs_().sub_(1.0).clamp_(0.0, 1.0)
        if channel == 0:  # red's trapezoid is upside down: it rises from min(r, g, b)
            rotated = torch.addcmul(bottom, chroma, ramp)
        else:
            rotated = torch.addcmul(top, chroma, ramp, value=-1.0)
        x[:, channel].lerp_(rotated, weight)
    return x


BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # ColorJitter's indices of its four factors


def _linear_jitter_(x: Tensor, op: Tensor, factor: Tensor, active: Tensor) -> Tensor:
    """Brightness, contrast or saturation (``op`` per sample) where ``active``, in place: one blend
    with a per-sample target (black, the mean luma or the luma), as ``f * x + (1 - f) * target``
    clamped to [0, 1] like torchvision's ``_blend``. Inactive samples blend with factor 1, which
    leaves them exactly as they are.

    The target's weight ``1 - f`` is folded into the one-channel target, so the full-size work is
    a scale, an add and the clamp, in place (the chain of colour ops stays in cache)."""
    f = torch.where(active, factor, torch.ones_like(factor))
    rest = 1.0 - f
    luma = grayscale(x)
    to_luma = (rest * (op == SATURATION)).view(-1, 1, 1, 1)
    to_mean = (rest * (op == CONTRAST)).view(-1, 1, 1, 1)
    # mul and add, not addcmul: with its first operand broadcast ([N, 1, 1, 1]) addcmul ran 2.7x
    # slower than the two on the CPU.
    mean_term = luma.mean(dim=(1, 2, 3), keepdim=True).mul_(to_mean)
    target = luma.mul_(to_luma).add_(mean_term)
    return x.mul_(f.view(-1, 1, 1, 1)).add_(target).clamp_(0.0, 1.0)


def color_jitter(x: Tensor, apply: Tensor, factors: Tensor, order: Tensor) -> Tensor:
    """``ColorJitter`` with each sample's own factors and order, where ``apply`` is true.

    ``factors``: ``[N, 4]`` (brightness, contrast, saturation, hue); ``order``: ``[N, 4]``, a
    permutation of 0..3 per sample (torchvision's ``fn_idx``). Every sample applies its ops in its
    own order. The hue rotation (the costly op) runs once for the whole batch: first each sample's
    linear ops that come before its hue, then the hue, then those after it. Samples not jittered
    (and hue factors of 0, which ColorJitter skips) stay bit-identical. Returns a new tensor; the
    ops work in place on one copy of ``x``.
    """
    x = x.clone()
    hue_at = (order == HUE).int().argmax(dim=1)  # position of the hue op in each sample's order
    for after_hue in (False, True):
        if after_hue:
            hue = factors[:, HUE]
            turn = apply & (hue != 0)
            _rotate_hue_(x, torch.where(turn, hue, 0.0), turn)
        for position in range(1, 4) if after_hue else range(3):  # hue is never before 0/after 3
            op = order[:, position]
            side = position > hue_at if after_hue else position < hue_at
            factor = factors.gather(1, op[:, None]).squeeze(1)
            _linear_jitter_(x, op, factor, apply & side)
    return x


def random_grayscale(x: Tensor, apply: Tensor) -> Tensor:
    """``rgb_to_grayscale(x, num_output_channels=3)`` where ``apply`` is true."""
    return select(apply, grayscale(x), x)


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


# Convolutions over a whole batch of views on the CPU stream their padded input through the cache
# once per filter tap: LooC's texture filter over 1,280 views of 32 px reads a 66 MB tensor 49
# times. In blocks of samples whose padded input fits in 4 MiB, the texture filter ran 1.2x and
# the blur 1.1-1.4x faster (96 and 224 px) on the 2-core CPU of docs/benchmarks.md (views), with
# freed memory kept as the trainer does. GPUs take the whole batch in one call.
CPU_BLOCK_BYTES = 4 * 2**20


def _in_blocks(op, x: Tensor, *per_sample: Tensor, padded_bytes: int) -> Tensor:
    """``op(x[rows], *(t[rows] for t in per_sample))`` over blocks of rows on the CPU, one call
    elsewhere; ``padded_bytes``: the size of one sample's padded convolution input."""
    n = x.shape[0]
    if x.device.type != "cpu" or n * padded_bytes <= CPU_BLOCK_BYTES:
        return op(x, *per_sample)
    block = max(1, CPU_BLOCK_BYTES // padded_bytes)
    out = torch.empty_like(x)
    for start in range(0, n, block):
        rows = slice(start, start + block)
        out[rows] = op(x[rows], *(t[rows] for t in per_sample))
    return out


# The two convolutions stay eager under ``data.views_compile``: compiled, they ran at a third of
# the eager speed on the CPU (benchmarks/views.py, LooC with texture).
@torch.compiler.disable
def gaussian_blur(x: Tensor, sigma: Tensor, apply: Tensor, kernel_size: int) -> Tensor:
    """``gaussian_blur(x, [k, k], [sigma, sigma])`` per sample (reflect padding), where ``apply``."""
    _, c, h, w = x.shape
    pad = kernel_size // 2
    padded_bytes = c * (h + 2 * pad) * (w + 2 * pad) * x.element_size()
    blur = functools.partial(_blur, kernel_size=kernel_size)
    if kernel_size <= 3:  # 3 taps per pass: the whole batch is as fast as blocks (32 px views)
        return blur(x, sigma, apply)
    return _in_blocks(blur, x, sigma, apply, padded_bytes=padded_bytes)


def _blur(x: Tensor, sigma: Tensor, apply: Tensor, kernel_size: int) -> Tensor:
    n, c, h, w = x.shape
    k1d = gaussian_kernels(sigma, apply, kernel_size).repeat_interleave(c, dim=0)  # [N*C, k]
    y = _pad(x.reshape(1, n * c, h, w), kernel_size // 2)
    y = F.conv2d(y, k1d[:, None, :, None], groups=n * c)  # vertical
    y = F.conv2d(y, k1d[:, None, None, :], groups=n * c)  # horizontal
    return y.reshape(n, c, h, w)


@torch.compiler.disable
def random_convolution(x: Tensor, weight: Tensor, alpha: Tensor) -> Tensor:
    """LooC's texture op (``data/looc_views.TextureAug``) for every sample at once.

    ``x``: ``[N, 3, H, W]`` float; ``weight``: ``[N, 3, 3, k, k]`` per-sample filters (smaller
    filters zero-padded to the common ``k``, which gives the same result as the small filter with
    its own reflect padding); ``alpha``: ``[N]``. The filtered image is rescaled to the input's
    per-image value range and mixed: ``alpha * filtered + (1 - alpha) * x``.
    """
    _, c, h, w = x.shape
    k = weight.shape[-1]
    padded_bytes = c * c * (h + k - 1) * (w + k - 1) * x.element_size()
    return _in_blocks(_filter_and_mix, x, weight, alpha, padded_bytes=padded_bytes)


def _filter_and_mix(x: Tensor, weight: Tensor, alpha: Tensor) -> Tensor:
    n, c, h, w = x.shape
    k = weight.shape[-1]
    # One depthwise convolution per (output, input) channel pair, then the sum over inputs: the
    # same arithmetic as a grouped convolution with 3 channels per group, which oneDNN runs at
    # half the speed on the CPU (docs/benchmarks.md, views).
    y = _pad(x, k // 2)[:, None].expand(n, c, c, h + k - 1, w + k - 1)
    y = F.conv2d(
        y.reshape(1, n * c * c, h + k - 1, w + k - 1),
        weight.reshape(n * c * c, 1, k, k).to(x.dtype),
        groups=n * c * c,
    )
    y = y.view(n, c, c, h, w).sum(dim=2)
    # Rescale y to x's range and mix, alpha * (y * scale + shift) + (1 - alpha) * x, as one
    # multiply, one add and one multiply-add per pixel.
    # amin and amax, not aminmax: over rows on the CPU, aminmax(dim=1) ran 11x slower than the two
    # reductions together (80 x 3,072 floats: 286 against 25 us), 12% of LooC's views with texture.
    x_rows, y_rows = x.reshape(n, -1), y.reshape(n, -1)
    lo, hi = x_rows.amin(dim=1), x_rows.amax(dim=1)
    y_lo, y_hi = y_rows.amin(dim=1), y_rows.amax(dim=1)
    scale = (hi - lo) / (y_hi - y_lo).clamp_min(1e-8)
    shift = lo - y_lo * scale
    return (
        y.mul_((alpha * scale).view(-1, 1, 1, 1))
        .add_((alpha * shift).view(-1, 1, 1, 1))
        .addcmul_(x, (1.0 - alpha).view(-1, 1, 1, 1))
    )


# ----------------------------------------------------------------------------------------------
# Rotation and normalization
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _rotation_indices(size: int, device: torch.device) -> Tensor:
    """``[4, size * size]``: for k quarter turns, the flat source pixel of each output pixel."""
    pixels = torch.arange(size * size, device=device).view(size, size)
    return torch.stack([torch.rot90(pixels, k, dims=(0, 1)).reshape(-1) for k in range(4)])


def rotate90(x: Tensor, k: Tensor) -> Tensor:
    """``torch.rot90(x[i], k[i], dims=(-2, -1))`` per sample (square images; exact).

    One gather of the pixels by each sample's permutation (three ``where`` passes over the four
    rotations cost three times as much on the CPU)."""
    n, c, h, w = x.shape
    if h != w:
        raise ValueError(f"rotate90 needs square images, got {h}x{w}")
    index = _rotation_indices(h, x.device)[k][:, None, :].expand(n, c, h * w)
    return x.reshape(n, c, h * w).gather(2, index).view(n, c, h, w)


def normalize(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``(x - mean) / std`` per channel; ``mean``, ``std``: ``[C]`` on ``x``'s device.

    Computed as one multiply-add, ``x * (1 / std) - mean / std`` (within 1e-6 of the division)."""
    scale = std.reciprocal().view(1, -1, 1, 1)
    return torch.addcmul(-mean.view(1, -1, 1, 1) * scale, x, scale)
