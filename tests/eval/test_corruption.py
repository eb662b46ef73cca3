import numpy as np
import pytest
import torch
from scipy import ndimage

from contrastlab.errors import UserError
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
