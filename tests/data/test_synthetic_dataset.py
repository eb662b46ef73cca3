"""The synthetic dataset: reproducible, balanced, and its factors are really in the pixels."""

import torch

from contrastlab.data.augment import SYNTHETIC_MEAN, SYNTHETIC_STD
from contrastlab.data.synthetic import FACTOR_CLASSES, make_synthetic, shape_templates


def _nearest_centroid_accuracy(f_train, y_train, f_test, y_test, k):
    centroids = torch.stack([f_train[y_train == c].mean(0) for c in range(k)])
    return (torch.cdist(f_test, centroids).argmin(1) == y_test).float().mean().item()


def _object_colour(images):
    """Mean colour of the saturated pixels (the background is grey)."""
    x = images.float() / 255
    saturated = ((x.amax(1) - x.amin(1)) > 0.3).float()[:, None]
    return (x * saturated).sum((2, 3)) / saturated.sum((2, 3)).clamp_min(1)


def _object_mask(images):
    x = images.float() / 255
    return torch.nn.functional.avg_pool2d((x.amax(1) - x.amin(1))[:, None], 2).flatten(1)


def _spectrum(images):
    g = images.float().mean(1) / 255
    return torch.fft.rfft2(g - g.mean((1, 2), keepdim=True)).abs().flatten(1)


def test_same_seed_same_images_other_seed_other_images():
    a, b, c = make_synthetic(40, seed=3), make_synthetic(40, seed=3), make_synthetic(40, seed=4)
    assert torch.equal(a.images, b.images)
    assert all(torch.equal(a.factors[k], b.factors[k]) for k in FACTOR_CLASSES)
    assert not torch.equal(a.images, c.images)


def test_types_sizes_and_balanced_factors():
    data = make_synthetic(400, image_size=32, seed=0)
    assert data.images.dtype == torch.uint8 and data.images.shape == (400, 3, 32, 32)
    for name, k in FACTOR_CLASSES.items():
        f = data.factors[name]
        assert f.dtype == torch.int64 and f.shape == (400,)
        counts = torch.bincount(f, minlength=k)
        assert len(counts) == k and counts.max() - counts.min() <= 1
    big = make_synthetic(8, image_size=64, seed=0)
    assert big.images.shape == (8, 3, 64, 64)
    assert make_synthetic(0).images.shape == (0, 3, 32, 32)


def test_factors_are_visible_in_the_pixels():
    train, test = make_synthetic(1000, seed=0), make_synthetic(300, seed=1)
    ft, fs = train.factors, test.factors
    colour = _nearest_centroid_accuracy(
        _object_colour(train.images), ft["color"], _object_colour(test.images), fs["color"], 8
    )
    shape = _nearest_centroid_accuracy(
        _object_mask(train.images), ft["shape"], _object_mask(test.images), fs["shape"], 10
    )
    texture = _nearest_centroid_accuracy(
        _spectrum(train.images), ft["texture"], _spectrum(test.images), fs["texture"], 4
    )
    assert colour > 0.9  # chance 0.125
    assert shape > 0.3  # chance 0.1; a raw-pixel centroid is a weak classifier under jitter
    assert texture > 0.8  # chance 0.25


def test_no_glyph_looks_like_a_rotated_glyph():
    """A 4-way rotation probe must be decidable: every 90/180/270° turn of every glyph is far from
    every upright glyph (itself included), and the upright glyphs differ from each other."""
    t = shape_templates(32)
    upright = t.flatten(1)
    for s in range(len(t)):
        for k in (1, 2, 3):
            turned = torch.rot90(t[s], k, dims=(0, 1)).flatten()
            rms = ((upright - turned) ** 2).mean(1).sqrt()
            assert rms.min() > 0.25, (s, k, rms.min())
    pairwise = torch.cdist(upright, upright) / upright.shape[1] ** 0.5
    assert (pairwise + torch.eye(len(t))).min() > 0.2  # the closest pair, F and P, is at 0.23


def test_normalization_constants_match_the_data():
    x = make_synthetic(500, seed=0).images.float() / 255
    assert torch.allclose(x.mean((0, 2, 3)), torch.tensor(SYNTHETIC_MEAN), atol=0.02)
    assert torch.allclose(x.std((0, 2, 3)), torch.tensor(SYNTHETIC_STD), atol=0.02)
