"""The built-in procedural dataset: one glyph on a textured background, with known factors.

Each image shows one of 10 letter-like glyphs (the label, factor ``shape``) painted in one of 8 hues
(``color``) over one of 4 grey background patterns (``texture``). Nuisances: position, scale, a tilt
of a few degrees, pixel noise. Glyphs are always upright, and none of them looks like a 90° rotation
of itself or of another glyph, so a 4-way rotation probe is decidable from the object alone; the
background patterns are distributed the same way under 90° rotations (stripes are horizontal or
vertical with equal probability), so they give no orientation cue.

Everything is drawn from one ``torch.Generator`` seeded by ``seed`` and rendered with batched tensor
ops (supersampled 2x, then averaged), so 5,000 images take well under a second and the same seed
always gives the same pixels.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from contrastlab.config import SYNTHETIC_MIN_SIZE

FACTOR_CLASSES = {"shape": 10, "color": 8, "texture": 4}
SHAPE_NAMES = ("F", "L", "P", "R", "J", "7", "G", "Q", "4", "K")
COLOR_NAMES = (
    "red",
    "amber",
    "lime",
    "green",
    "cyan",
    "azure",
    "violet",
    "pink",
)  # hues 0, 45, ...
TEXTURE_NAMES = ("stripes", "checker", "dots", "noise")

_STROKE = 0.17  # half-width of a glyph stroke, in glyph units (the glyph box is [-1, 1]^2)
_EXTENT = 1.1  # templates cover [-1.1, 1.1]^2, so that strokes at the box's edge are not cut


@dataclass
class SyntheticData:
    images: torch.Tensor  # uint8 [N, 3, S, S]
    factors: dict[str, torch.Tensor]  # int64 [N] for "shape", "color", "texture"


# ----------------------------------------------------------------------------------------------
# Glyphs: polylines in glyph units, x to the right and y downwards
# ----------------------------------------------------------------------------------------------


def _arc(cx: float, cy: float, r: float, a0: float, a1: float, steps: int = 10) -> list:
    """Points on a circle arc from angle a0 to a1 (degrees; 0 = +x, 90 = +y i.e. downwards)."""
    return [
        (
            cx + r * math.cos(math.radians(a0 + (a1 - a0) * i / steps)),
            cy + r * math.sin(math.radians(a0 + (a1 - a0) * i / steps)),
        )
        for i in range(steps + 1)
    ]


def _glyph_strokes() -> list[list[list[tuple[float, float]]]]:
    bowl = [
        (-0.45, -0.85),
        (0.15, -0.85),
        *_arc(0.15, -0.42, 0.43, -90, 90, 8)[1:-1],
        (0.15, 0.01),
        (-0.45, 0.01),
    ]
    return [
        # F
        [[(-0.45, 0.85), (-0.45, -0.85), (0.6, -0.85)], [(-0.45, -0.02), (0.35, -0.02)]],
        # L (with a short top serif so that its 180° turn is not a mirrored 7 or J)
        [[(-0.45, -0.85), (-0.45, 0.85), (0.6, 0.85)], [(-0.75, -0.85), (-0.15, -0.85)]],
        # P
        [[(-0.45, 0.85), (-0.45, -0.85)], bowl],
        # R
        [[(-0.45, 0.85), (-0.45, -0.85)], bowl, [(-0.05, 0.01), (0.6, 0.85)]],
        # J (top bar, stem on the right, hook to the left)
        [
            [(-0.2, -0.85), (0.65, -0.85)],
            [(0.3, -0.85), (0.3, 0.4)],
            _arc(-0.1, 0.4, 0.4, 0, 180, 8),
        ],
        # 7 (with a crossbar on the diagonal)
        [[(-0.6, -0.85), (0.6, -0.85), (-0.15, 0.85)], [(-0.15, 0.05), (0.45, 0.05)]],
        # G
        [_arc(0.0, 0.0, 0.8, -40, -360, 16), [(0.8, 0.0), (0.8, 0.5)], [(0.15, 0.1), (0.8, 0.1)]],
        # Q (the tail at the lower right gives the orientation)
        [_arc(-0.05, -0.1, 0.7, 0, 360, 20), [(0.2, 0.35), (0.8, 0.95)]],
        # 4
        [[(0.3, 0.85), (0.3, -0.85), (-0.65, 0.35), (0.65, 0.35)]],
        # K
        [
            [(-0.45, -0.85), (-0.45, 0.85)],
            [(0.55, -0.85), (-0.45, 0.12)],
            [(-0.15, -0.12), (0.6, 0.85)],
        ],
    ]


def _segments() -> torch.Tensor:
    """All glyphs as line segments, padded: float [10, max_segments, 4] (x0, y0, x1, y1)."""
    per_glyph = []
    for strokes in _glyph_strokes():
        segs = [(*a, *b) for line in strokes for a, b in zip(line[:-1], line[1:])]
        per_glyph.append(segs)
    longest = max(len(s) for s in per_glyph)
    far = (9.0, 9.0, 9.0, 9.0)  # a degenerate segment far outside the glyph box
    return torch.tensor([s + [far] * (longest - len(s)) for s in per_glyph], dtype=torch.float32)


def shape_templates(size: int) -> torch.Tensor:
    """Clean, centred, upright glyph masks: float [10, size, size] in [0, 1].

    The template covers glyph coordinates [-1.1, 1.1]^2 (the glyph box plus half a stroke); edges
    are soft over about one pixel.
    """
    return _templates(size).clone()


@functools.lru_cache(maxsize=4)
def _templates(size: int) -> torch.Tensor:
    """Distance from every pixel to the nearest stroke segment, turned into a soft mask (cached:
    rendering 10 glyphs at 256 px costs more than drawing thousands of images from them)."""
    segs = _segments()  # [G, K, 4]
    coords = ((torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1) * _EXTENT
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    p = torch.stack([x, y], -1).reshape(1, -1, 1, 2)  # [1, P, 1, 2]
    a, b = segs[:, None, :, :2], segs[:, None, :, 2:]  # [G, 1, K, 2]
    ab = b - a
    t = ((p - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-8)
    closest = a + t.clamp(0, 1)[..., None] * ab
    dist = (p - closest).norm(dim=-1).amin(-1)  # [G, P]
    pixel = 2.0 * _EXTENT / size
    mask = ((_STROKE - dist) / pixel + 0.5).clamp(0, 1)
    return mask.reshape(len(segs), size, size)


# ----------------------------------------------------------------------------------------------
# Colours and textures
# ----------------------------------------------------------------------------------------------


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """h, s, v in [0, 1], shape [N] -> rgb [N, 3]."""
    k = (torch.tensor([5.0, 3.0, 1.0]) + h[:, None] * 6) % 6
    return v[:, None] - v[:, None] * s[:, None] * (torch.minimum(k, 4 - k).clamp(0, 1))


def _textures(kind: torch.Tensor, side: int, scale: float, gen: torch.Generator) -> torch.Tensor:
    """Background patterns in [0, 1]: float [N, side, side]; ``scale`` = grid cells per output pixel.

    Every pattern has a random phase; stripes are horizontal or vertical with equal probability.
    """
    n = len(kind)
    coords = (torch.arange(side, dtype=torch.float32) + 0.5) / scale  # in output pixels
    out_px = side / scale
    period = out_px / 8  # 4 px at 32 px: several repetitions, still resolvable
    phase = torch.rand(n, 2, generator=gen) * out_px
    vertical = torch.rand(n, generator=gen) < 0.5
    coarse = torch.rand(n, 1, 5, 5, generator=gen)
    out = torch.empty(n, side, side)
    for k in range(FACTOR_CLASSES["texture"]):
        idx = (kind == k).nonzero().flatten()
        if len(idx) == 0:
            continue
        x = coords[None, None, :] + phase[idx, 0, None, None]  # [m, 1, side]
        y = coords[None, :, None] + phase[idx, 1, None, None]  # [m, side, 1]
        if k == 0:  # stripes
            along = torch.where(vertical[idx, None, None], x, y)
            out[idx] = ((along / period) % 1.0 < 0.5).float().expand(-1, side, side)
        elif k == 1:  # checker
            out[idx] = ((torch.floor(x / period) + torch.floor(y / period)) % 2).expand(
                -1, side, side
            )
        elif k == 2:  # dots on a coarser grid
            cell = period * 1.5
            dx, dy = (x / cell) % 1.0 - 0.5, (y / cell) % 1.0 - 0.5
            out[idx] = ((dx * dx + dy * dy) < 0.28**2).float()
        else:  # smooth blotches
            blobs = F.interpolate(
                coarse[idx], size=(side, side), mode="bicubic", align_corners=False
            )
            out[idx] = ((blobs[:, 0] - 0.5) * 1.6 + 0.5).clamp(0, 1)
    return out


def _balanced(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """n labels in [0, k), each as close to n/k times as possible, in random order."""
    return (torch.arange(n) % k)[torch.randperm(n, generator=gen)]


# ----------------------------------------------------------------------------------------------
# The generator
# ----------------------------------------------------------------------------------------------


def make_synthetic(n: int, image_size: int = 32, seed: int = 0) -> SyntheticData:
    """Render ``n`` images of side ``image_size`` deterministically from ``seed``."""
    if n < 0 or image_size < SYNTHETIC_MIN_SIZE:
        raise ValueError(
            f"make_synthetic needs n >= 0 and image_size >= {SYNTHETIC_MIN_SIZE}, "
            f"got {n}, {image_size}"
        )
    gen = torch.Generator().manual_seed(int(seed))
    shape = _balanced(n, FACTOR_CLASSES["shape"], gen)
    color = _balanced(n, FACTOR_CLASSES["color"], gen)
    texture = _balanced(n, FACTOR_CLASSES["texture"], gen)

    # Nuisances, drawn for every image up front so that chunking cannot change them.
    scale = 0.5 + 0.25 * torch.rand(n, generator=gen)  # glyph half-size, fraction of half the image
    room = (0.92 - scale).clamp_min(0)
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * room[:, None]
    tilt = torch.deg2rad((torch.rand(n, generator=gen) * 2 - 1) * 6.0)
    hue = color.float() / FACTOR_CLASSES["color"] + (torch.rand(n, generator=gen) - 0.5) * 0.03
    value = 0.85 + 0.15 * torch.rand(n, generator=gen)
    rgb = _hsv_to_rgb(hue % 1.0, torch.full((n,), 0.85), value)  # [N, 3]
    bg_low = 0.1 + 0.2 * torch.rand(n, generator=gen)
    bg_contrast = 0.2 + 0.15 * torch.rand(n, generator=gen)
    pattern_seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    noise_seed = int(torch.randint(0, 2**62, (1,), generator=gen))

    sup = 2 * image_size  # supersampled side
    templates = _templates(sup)[:, None]  # [G, 1, T, T], as fine as the supersampled grid
    images = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
    pattern_gen = torch.Generator().manual_seed(pattern_seed)
    noise_gen = torch.Generator().manual_seed(noise_seed)
    chunk = 1024
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        m = sl.stop - sl.start
        # Inverse map: output coords -> glyph coords, glyph = R(-tilt) (out - shift) / scale.
        cos, sin = torch.cos(tilt[sl]), torch.sin(tilt[sl])
        a = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], 1)
        a = a / scale[sl, None, None]
        t = -(a @ shift[sl, :, None])
        a, t = a / _EXTENT, t / _EXTENT  # glyph units -> the template's [-1, 1] grid
        theta = torch.cat([a, t], 2)
        grid = F.affine_grid(theta, [m, 1, sup, sup], align_corners=False)
        mask = F.grid_sample(
            templates[shape[sl]], grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )  # [m, 1, sup, sup]
        pattern = _textures(texture[sl], sup, sup / image_size, pattern_gen)[:, None]
        # Anti-alias the two one-channel layers by 2x2 averaging, then compose at the output size.
        mask, pattern = F.avg_pool2d(torch.cat([mask, pattern], 1), 2).unbind(1)
        mask = mask[:, None]
        background = pattern[:, None].mul_(bg_contrast[sl, None, None, None])
        background.add_(bg_low[sl, None, None, None])
        picture = (rgb[sl, :, None, None] - background).mul_(mask).add_(background)  # [m, 3, S, S]
        picture.add_(torch.randn(picture.shape, generator=noise_gen), alpha=0.03)
        images[sl] = picture.clamp_(0, 1).mul_(255).round_().to(torch.uint8)
    return SyntheticData(
        images=images, factors={"shape": shape, "color": color, "texture": texture}
    )
