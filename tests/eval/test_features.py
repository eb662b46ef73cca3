import pytest
import torch
from torch.utils.data import TensorDataset

from contrastlab.errors import UserError
from contrastlab.eval.features import FeatureCache, extract_features, feature_cache_parts


class Counting(torch.nn.Module):
    feature_spaces = ("backbone", "double")

    def __init__(self):
        super().__init__()
        self.calls = 0

    def features(self, x, space="backbone"):
        self.calls += 1
        return x.flatten(1) * (2 if space == "double" else 1)


def test_extract_batches_spaces_and_cache(tmp_path):
    x = torch.randn(10, 2, 2, 2)
    ds = TensorDataset(x, torch.arange(10))
    model = Counting()
    f, y = extract_features(model, ds, batch_size=4, progress=False)
    assert f.shape == (10, 8) and torch.equal(f, x.flatten(1)) and y.tolist() == list(range(10))
    assert model.calls == 3
    f2, _ = extract_features(model, ds, "double", batch_size=4, progress=False)
    assert torch.allclose(f2, 2 * f)

    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights")
    parts = feature_cache_parts(ckpt, {"name": "toy"}, "train", "T()", "backbone")
    cache = FeatureCache(tmp_path / "cache")
    model.calls = 0
    extract_features(model, ds, batch_size=4, progress=False, cache=cache, cache_parts=parts)
    f3, y3 = extract_features(
        model, ds, batch_size=4, progress=False, cache=cache, cache_parts=parts
    )
    assert model.calls == 3 and torch.equal(f3, f) and torch.equal(y3, y)  # second call: cache hit
    other = feature_cache_parts(ckpt, {"name": "toy"}, "test", "T()", "backbone")
    extract_features(model, ds, batch_size=4, progress=False, cache=cache, cache_parts=other)
    assert model.calls == 6  # another split: another key
    ckpt.write_bytes(b"new weights!")  # a rewritten checkpoint invalidates its features
    assert feature_cache_parts(ckpt, {"name": "toy"}, "train", "T()", "backbone") != parts


def test_unknown_space_and_empty_dataset():
    with pytest.raises(UserError, match="valid spaces: backbone, double"):
        extract_features(Counting(), TensorDataset(torch.zeros(2, 1)), "z", progress=False)
    with pytest.raises(UserError, match="empty"):
        extract_features(
            Counting(), TensorDataset(torch.zeros(0, 1), torch.zeros(0)), progress=False
        )
