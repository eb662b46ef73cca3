import numpy as np
import pytest
import torch
from scipy import ndimage

from contrastlab.errors import UserError
from contrastlab.eval import corruption
from contrastlab.eval.corruption import CORRUPTIONS, CorruptedDataset, corrupt, corrupt_tensor


def natural_ish(n, size, seed):
    """Smooth colour fields with a sharp disc: edges and flat areas, like small photos."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = ndimage.gaussian_filter(rng.uniform(0, 1, (size, size, 3)), (size / 8, size / 8, 0))
        x = (x - x.min()) / (np.ptp(x) + 1e-8)
        yy, xx = np.mgrid[0:size, 0:size]
        cy, cx = rng.uniform(0.3 * size, 0.7 * size, 2)
        x[(yy - cy) ** 2 + (xx - cx) ** 2 < (0.2 * size) ** 2] = rng.uniform(0, 1, 3)
        out.append((x * 200 + 20).astype(np.uint8))
    return out


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruption_shape_dtype_and_monotone_severity(name, size):
    images = natural_ish(3, size, seed=size)
    diffs = []
    for severity in range(1, 6):
        d = []
        for k, img in enumerate(images):
            out = corrupt(img, name, severity, seed=k)
            assert out.shape == img.shape and out.dtype == np.uint8
            d.append(np.abs(out.astype(np.float64) - img).mean())
        diffs.append(np.mean(d))
    assert diffs[0] > 0.1, f"{name} barely changes the image at severity 1"
    if name == "glass_blur":  # the reference's tables are not monotone in this measure
        assert min(diffs) > 0.1, f"{name}: {np.round(diffs, 2)}"
        return
    assert all(b > a for a, b in zip(diffs, diffs[1:])), f"{name}: {np.round(diffs, 2)}"


def test_corruption_deterministic_tensor_and_errors():
    img = natural_ish(1, 32, seed=0)[0]
    a = corrupt(img, "gaussian_noise", 3, seed=5)
    assert np.array_equal(a, corrupt(img, "gaussian_noise", 3, seed=5))
    assert not np.array_equal(a, corrupt(img, "gaussian_noise", 3, seed=6))
    t = torch.from_numpy(img).permute(2, 0, 1)
    out = corrupt_tensor(t, "fog", 2)
    assert out.shape == t.shape and out.dtype == torch.uint8
    gray = corrupt(img[..., 0], "contrast", 1)
    assert gray.shape == img.shape[:2]
    with pytest.raises(UserError, match="unknown corruption"):
        corrupt(img, "rain", 1)
    with pytest.raises(UserError, match="severity"):
        corrupt(img, "fog", 6)


def test_corrupted_dataset_wraps_raw_images():
    imgs = torch.from_numpy(np.stack(natural_ish(4, 16, seed=1))).permute(0, 3, 1, 2)
    raw = [(imgs[i], i) for i in range(4)]
    ds = CorruptedDataset(raw, "pixelate", 5, transform=lambda x: x.float() / 255, indices=[1, 3])
    assert len(ds) == 2
    x, y = ds[1]
    assert y == 3 and x.dtype == torch.float32 and x.shape == (3, 16, 16)
    clean = CorruptedDataset(raw, "clean", 0, transform=None)
    assert torch.equal(clean[2][0], imgs[2])


# -- fidelity to ImageNet-C / CIFAR-10-C --------------------------------------------------------------


def _round(x):
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def _jpeg_round_trip(image, quality):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _reference_clipped_zoom(x, z):
    """ImageNet-C's clipped zoom, written out: centre ceil(h / z) crop, order-1 zoom, trim."""
    h = x.shape[0]
    ch = int(np.ceil(h / z))
    top = (h - ch) // 2
    out = ndimage.zoom(x[top : top + ch, top : top + ch], (z, z, 1), order=1)
    trim = (out.shape[0] - h) // 2
    return out[trim : trim + h, trim : trim + h]


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_zoom_blur_weights_the_clean_image_like_imagenet_c(severity):
    """(x + Σ_z zoom(x, z)) / (n + 1) with the zoom factors starting at 1: the clean image has
    weight 2 / (n + 1). CIFAR-10-C's factors at 32 px (no JPEG re-encoding there)."""
    img = natural_ish(1, 32, seed=3)[0]
    x = img.astype(np.float64) / 255
    zooms = [
        np.arange(1, 1.06, 0.01),
        None,
        np.arange(1, 1.16, 0.01),
        None,
        np.arange(1, 1.26, 0.01),
    ][severity - 1]
    expected = (x + sum(_reference_clipped_zoom(x, z) for z in zooms)) / (len(zooms) + 1)
    got = corrupt(img, "zoom_blur", severity, table="cifar").astype(int)
    assert np.abs(got - _round(expected).astype(int)).max() <= 1


def _reference_defocus_kernel(radius, alias):
    """Disk on the pixel lattice (x² + y² <= r²) on 17×17 (r <= 8) or (2r + 1)², normalized, then a
    3×3 (5×5 for r > 8) Gaussian of σ = alias with reflect-101 borders, by explicit loops."""
    half = 8 if radius <= 8 else int(radius)
    taps = 3 if radius <= 8 else 5
    size = 2 * half + 1
    disk = [
        [1.0 if (i - half) ** 2 + (j - half) ** 2 <= radius**2 else 0.0 for j in range(size)]
        for i in range(size)
    ]
    total = sum(map(sum, disk))
    disk = [[v / total for v in row] for row in disk]
    g = [np.exp(-((t - taps // 2) ** 2) / (2 * alias**2)) for t in range(taps)]
    g = [v / sum(g) for v in g]

    def reflect101(i):
        return -i if i < 0 else (2 * (size - 1) - i if i >= size else i)

    out = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            for a in range(taps):
                for b in range(taps):
                    ii, jj = reflect101(i + a - taps // 2), reflect101(j + b - taps // 2)
                    out[i, j] += g[a] * g[b] * disk[ii][jj]
    return out


@pytest.mark.parametrize("radius, alias", [(3, 0.1), (4, 0.5), (8, 0.5), (10, 0.5), (0.3, 0.4)])
def test_defocus_kernel_is_imagenet_c_disk(radius, alias):
    np.testing.assert_allclose(
        corruption._disk_kernel(radius, alias), _reference_defocus_kernel(radius, alias), atol=1e-12
    )


def test_imagenet_table_ends_with_jpeg_q85_and_cifar_table_does_not():
    """ImageNet-C saved every corrupted image as JPEG quality 85; CIFAR-10-C saved arrays."""
    img = natural_ish(1, 224, seed=4)[0]
    x = img.astype(np.float64) / 255
    mean = x.mean(axis=(0, 1), keepdims=True)
    contrasted = _round((x - mean) * 0.4 + mean)  # ImageNet-C contrast, severity 1
    got = corrupt(img, "contrast", 1, table="imagenet").astype(int)
    assert np.abs(got - _jpeg_round_trip(contrasted, 85).astype(int)).max() <= 1
    assert np.abs(got - contrasted.astype(int)).max() > 2  # the JPEG round trip did happen
    small = natural_ish(1, 32, seed=4)[0]
    x = small.astype(np.float64) / 255
    mean = x.mean(axis=(0, 1), keepdims=True)
    expected = _round((x - mean) * 0.75 + mean)  # CIFAR-10-C contrast, severity 1
    assert np.abs(corrupt(small, "contrast", 1).astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize(
    "size, table, c", [(32, "cifar", 0.75), (64, "cifar", 0.75), (224, "imagenet", 0.4)]
)
def test_severity_table_chosen_by_resolution(size, table, c):
    """Small images get CIFAR-10-C's severities, large ones ImageNet-C's (contrast severity 1)."""
    img = np.full((size, size, 3), 60, np.uint8)
    img[:, size // 2 :] = 200
    assert corruption.table_for(size, size) == table
    out = corrupt(img, "contrast", 1).astype(float)
    far = size // 8  # away from the edge between the halves (JPEG rings there)
    ratio = (out[:, -far:].mean() - out[:, :far].mean()) / 140.0
    assert ratio == pytest.approx(c, abs=0.01)


def test_corrupted_at_network_resolution():
    """The dataset corrupts the evaluation view's crop, as ImageNet-C corrupts the 224 px centre
    crop after Resize(256) + CenterCrop(224); the noise is then the same whatever the native size
    (corrupting the native image and resizing after averaged most of it away)."""
    import torchvision.transforms.v2.functional as TF

    from contrastlab.data.augment import build_eval_geometry

    rng = np.random.default_rng(0)
    stds = []
    for h, w in ((448, 600), (300, 400)):
        clean = np.full((h, w, 3), 128, np.uint8)
        clean[: h // 2] += rng.integers(0, 3, (h // 2, w, 3), dtype=np.uint8)
        raw = [(torch.from_numpy(clean).permute(2, 0, 1), 0)]
        geometry = build_eval_geometry(224, native_size=None)
        ds = CorruptedDataset(raw, "gaussian_noise", 1, transform=None, seed=7, geometry=geometry)
        got, _ = ds[0]
        crop = TF.center_crop(TF.resize(raw[0][0], 256, antialias=True), [224, 224])
        assert torch.equal(got, corrupt_tensor(crop, "gaussian_noise", 1, seed=7))
        noise = got.float() - crop.float()
        stds.append(noise[:, 140:, :].std().item() / 255)  # the flat lower part
    assert stds[0] == pytest.approx(stds[1], rel=0.05)
    assert stds[0] > 0.055  # σ 0.08 before the final JPEG (q85); ≈ 0.03-0.045 at native size
