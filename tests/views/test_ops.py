"""Batched view ops against torchvision's functional ops, image by image, with the same parameters."""

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from contrastlab.data.looc_views import TextureAug
from contrastlab.views import ops

TOL = 1e-4


def _images(n=8, size=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=gen)
    x[0] = x[0].mean(0, keepdim=True)  # a grey image: zero chroma everywhere
    x[1, :, :6] = 0.0  # black rows: value 0
    x[2, 0], x[2, 1] = x[2, 2], x[2, 2]  # r = g = b ties
    x[3, :, :, :4] = 1.0  # white columns
    return x


def _max_diff(batched, reference):
    return (batched - torch.stack(reference)).abs().max().item()


@pytest.mark.parametrize("size", [32, 24, 56])
def test_resized_crop_and_flip_match_torchvision(size):
    x = _images()
    boxes = torch.tensor(
        [
            [0, 0, 40, 40],
            [3, 5, 20, 30],
            [10, 2, 30, 11],
            [0, 0, 12, 12],
            [5, 5, 35, 35],
            [1, 2, 39, 38],
            [20, 20, 20, 20],
            [0, 39, 40, 1],
        ]
    )
    flip = torch.tensor([0, 1, 0, 1, 0, 1, 1, 0], dtype=torch.bool)
    out = ops.resized_crop(x, boxes, flip, size)
    ref = []
    for img, (top, left, h, w), f in zip(x, boxes.tolist(), flip):
        y = TF.resized_crop(img, top, left, h, w, [size, size], antialias=True)
        ref.append(TF.horizontal_flip(y) if f else y)
    assert _max_diff(out, ref) <= TOL


def test_flip_alone_is_exact():
    x = _images()
    full = torch.tensor([[0, 0, 40, 40]] * len(x))
    flip = torch.arange(len(x)) % 2 == 1
    out = ops.resized_crop(x, full, flip, 40)
    for img, o, f in zip(x, out, flip):
        assert torch.equal(o, TF.horizontal_flip(img) if f else img)


@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation", "hue"])
def test_colour_ops_match_torchvision(name):
    x = _images()
    factors = (
        torch.tensor([-0.5, -0.3, -0.1, 0.0, 0.05, 0.2, 0.4, 0.5])
        if name == "hue"
        else torch.tensor([0.0, 0.6, 0.8, 1.0, 1.2, 1.4, 0.3, 2.0])
    )
    out = getattr(ops, f"adjust_{name}")(x, factors)
    ref = [getattr(TF, f"adjust_{name}")(img, float(f)) for img, f in zip(x, factors)]
    assert _max_diff(out, ref) <= TOL


def test_colour_jitter_follows_each_samples_own_order():
    x = _images(n=24)
    gen = torch.Generator().manual_seed(1)
    order = torch.stack([torch.randperm(4, generator=gen) for _ in range(len(x))])
    factors = torch.tensor([1.3, 0.7, 1.25, 0.08]) + 0.1 * torch.rand(len(x), 4, generator=gen)
    apply = torch.rand(len(x), generator=gen) < 0.8
    out = ops.color_jitter(x, apply, factors, order)
    fns = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    ref = []
    for img, a, f, o in zip(x, apply, factors, order):
        for i in o.tolist() if a else []:
            img = fns[i](img, float(f[i]))
        ref.append(img)
    assert _max_diff(out, ref) <= TOL
    # the order matters on these factors, so a wrong order cannot pass by accident
    swapped = ops.color_jitter(x, apply, factors, order.flip(1))
    assert _max_diff(swapped, ref) > 10 * TOL
    for i in torch.nonzero(~apply).flatten().tolist():
        assert torch.equal(out[i], x[i])  # not jittered: untouched


def test_hue_rotation_in_place_leaves_unturned_samples_bit_for_bit():
    x = _images()
    shift = torch.tensor([0.3, -0.2, 0.0, 0.45, -0.5, 0.1, 0.25, -0.05])
    turn = torch.tensor([1, 0, 1, 0, 1, 1, 0, 1], dtype=torch.bool)
    out = ops._rotate_hue_(x.clone(), shift, turn)
    for img, o, s, t in zip(x, out, shift, turn):
        if t:
            assert (o - TF.adjust_hue(img, float(s))).abs().max() <= TOL
        else:
            assert torch.equal(o, img)


def test_grayscale_uses_torchvision_weights_exactly():
    x = (_images() * 255).round() / 255
    apply = torch.arange(len(x)) % 2 == 0
    out = ops.random_grayscale(x, apply)
    for img, o, a in zip(x, out, apply):
        expected = TF.rgb_to_grayscale(img, num_output_channels=3) if a else img
        assert torch.equal(o, expected)


# On the CPU the convolutions run over blocks of samples; a budget of 3 padded images makes
# blocks of 3 over the 8 test images (the last one short), "whole" keeps one call.
BLOCKS = {"whole": 2**40, "blocks of 3": 3}


def _block_budget(monkeypatch, blocks: str, padded_bytes: int) -> None:
    budget = BLOCKS[blocks] * padded_bytes if blocks != "whole" else BLOCKS[blocks]
    monkeypatch.setattr(ops, "CPU_BLOCK_BYTES", budget)


@pytest.mark.parametrize("blocks", BLOCKS)
@pytest.mark.parametrize("kernel", [3, 5, 23])
def test_gaussian_blur_matches_torchvision(kernel, blocks, monkeypatch):
    x = _images()
    _block_budget(monkeypatch, blocks, 3 * (40 + kernel - 1) ** 2 * 4)
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 0.3, 1.9, 0.7])
    apply = torch.tensor([1, 1, 1, 0, 1, 1, 1, 0], dtype=torch.bool)
    out = ops.gaussian_blur(x, sigma, apply, kernel)
    ref = [
        TF.gaussian_blur(img, [kernel, kernel], [float(s), float(s)]) if a else img
        for img, s, a in zip(x, sigma, apply)
    ]
    assert _max_diff(out, ref) <= TOL


def test_rotation_is_exact_rot90():
    x = _images()
    k = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    out = ops.rotate90(x, k)
    for img, o, turns in zip(x, out, k.tolist()):
        assert torch.equal(o, torch.rot90(img, turns, dims=(-2, -1)))


@pytest.mark.parametrize("blocks", BLOCKS)
def test_random_convolution_matches_the_per_image_texture_op(blocks, monkeypatch):
    x = _images()
    _block_budget(monkeypatch, blocks, 9 * (40 + 6) ** 2 * 4)
    aug = TextureAug()
    torch.manual_seed(0)
    records = [aug.sample() for _ in range(len(x))]
    weight = torch.zeros(len(x), 3, 3, 7, 7)
    for w, r in zip(weight, records):
        pad = (7 - r["kernel_size"]) // 2
        w[:, :, pad : 7 - pad, pad : 7 - pad] = r["weight"]
    alpha = torch.tensor([r["alpha"] for r in records])
    out = ops.random_convolution(x, weight, alpha)
    # the reference: a plain conv2d with the small filter and its own reflect padding
    ref = []
    for img, r in zip(x, records):
        k = r["kernel_size"]
        padded = torch.nn.functional.pad(img[None], (k // 2,) * 4, mode="reflect")
        y = torch.nn.functional.conv2d(padded.double(), r["weight"][:, :, :, :].double())[0]
        y = (y - y.min()) / (y.max() - y.min()) * (img.max() - img.min()) + img.min()
        ref.append((r["alpha"] * y + (1 - r["alpha"]) * img.double()).float())
    assert _max_diff(out, ref) <= TOL
