import torch
from torch.utils.data import TensorDataset

from contrastlab.eval.factors import factor_probes
from contrastlab.eval.rotation import rotate_batch, rotation_features, rotation_probe


def asymmetric_images(n, size=8, seed=0):
    """Noisy images that are brighter towards the top-left corner: orientation is visible."""
    gen = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(1.0, -1.0, size)
    pattern = ramp[:, None] + 0.5 * ramp[None, :]
    x = pattern + 0.3 * torch.randn(n, 3, size, size, generator=gen)
    return TensorDataset(x, torch.zeros(n, dtype=torch.long))


def test_rotate_batch_layout():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    out, rot = rotate_batch(x, torch.zeros(2))
    assert out.shape == (8, 3, 4, 4) and rot.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert torch.equal(out[2 * 2 + 1], torch.rot90(x[1], 2, dims=(1, 2)))


def test_rotation_probe_orientation_vs_invariant_features(quadrant_model):
    train, test = asymmetric_images(120, seed=0), asymmetric_images(120, seed=1)
    res = {}
    for space in ("backbone", "invariant"):
        f_tr, r_tr = rotation_features(quadrant_model, train, space, batch_size=64, progress=False)
        f_te, r_te = rotation_features(quadrant_model, test, space, batch_size=64, progress=False)
        assert f_tr.shape == (480, 4) and r_tr.bincount().tolist() == [120] * 4
        res[space] = rotation_probe(f_tr, r_tr, f_te, r_te, Cs=(0.1, 10.0))["top1"]
    assert res["backbone"] > 97.0
    assert 15.0 < res["invariant"] < 35.0  # chance is 25 %


def test_factor_probes(blobs):
    f, shape = blobs(50, 4, 12, sep=5.0)
    color = torch.randint(0, 3, (200,), generator=torch.Generator().manual_seed(0))
    facts = {"shape": shape, "color": color}
    res = factor_probes(
        f[:120],
        {k: v[:120] for k, v in facts.items()},
        f[120:],
        {k: v[120:] for k, v in facts.items()},
        ["shape", "color"],
    )
    assert res["shape"]["top1"] > 95.0
    assert res["color"]["top1"] < 60.0 and res["color"]["num_classes"] == 3
