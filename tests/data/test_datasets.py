"""Datasets by name: the synthetic splits, torchvision datasets without a download, statistics."""

import pytest
import torch

from contrastlab.config import DataConfig
from contrastlab.data.augment import CIFAR10_MEAN, IMAGENET_MEAN, SYNTHETIC_MEAN
from contrastlab.data.datasets import build_dataset, dataset_stats
from contrastlab.errors import UserError


def test_synthetic_splits_carry_labels_factors_and_stats():
    cfg = DataConfig(name="synthetic", synthetic_train=60, synthetic_test=20, synthetic_seed=5)
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert len(train) == 60 and len(test) == 20
    assert train.num_classes == 10 and train.image_size == 32 and train.mean == SYNTHETIC_MEAN
    assert torch.equal(train.labels, train.factors["shape"])
    assert set(train.factors) == {"shape", "color", "texture"} and train.skipped == []
    img, label = train[3]
    assert img.dtype == torch.uint8 and img.shape == (3, 32, 32)
    assert isinstance(label, int) and label == int(train.factors["shape"][3])
    # the test split is drawn from another seed: no image of it is a training image
    flat_train, flat_test = train.images.flatten(1), test.images.flatten(1)
    assert not (flat_test[:, None] == flat_train[None]).all(-1).any()
    # the same config builds the same data
    assert torch.equal(build_dataset(cfg, "train").images, train.images)


def test_transform_is_applied_to_items():
    cfg = DataConfig(name="synthetic", synthetic_train=8, synthetic_test=8)
    ds = build_dataset(cfg, "train", transform=lambda img: img.float().mean())
    value, label = ds[0]
    assert value.dtype == torch.float32 and value.ndim == 0 and 0 <= label < 10


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stl10"])
def test_missing_torchvision_dataset_without_download_says_how_to_get_it(tmp_path, name):
    cfg = DataConfig(name=name, path=str(tmp_path), download=False)
    with pytest.raises(UserError) as err:
        build_dataset(cfg, "train")
    message = str(err.value)
    assert "\n" not in message and name in message and str(tmp_path) in message
    assert "data.download=true" in message and "data.path" in message


@pytest.mark.parametrize(
    "name, folder",
    [
        ("cifar10", "cifar-10-batches-py"),
        ("cifar100", "cifar-100-python"),
        ("stl10", "stl10_binary"),
    ],
)
def test_a_damaged_copy_of_a_torchvision_dataset_is_called_damaged(tmp_path, name, folder):
    (tmp_path / folder).mkdir()
    (tmp_path / folder / "data_batch_1").write_bytes(b"cut short")
    with pytest.raises(UserError) as err:
        build_dataset(DataConfig(name=name, path=str(tmp_path), download=False), "train")
    message = str(err.value)
    assert "\n" not in message and f"{tmp_path / folder} is damaged or incomplete" in message
    assert "delete that folder" in message and "not found" not in message


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stl10"])
@pytest.mark.parametrize("path", [None, ""])
def test_torchvision_datasets_without_a_path_look_in_data(tmp_path, monkeypatch, name, path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as err:
        build_dataset(DataConfig(name=name, path=path, download=False), "train")
    assert f"{name} not found under data;" in str(err.value)
    assert not any(tmp_path.iterdir())  # nothing created, the working directory not read


def test_torchvision_dataset_path_that_is_a_file(tmp_path):
    f = tmp_path / "cifar.tar"
    f.write_bytes(b"x")
    with pytest.raises(UserError, match="not a folder"):
        build_dataset(DataConfig(name="cifar10", path=str(f)), "test")


def test_unknown_split_is_a_programming_error():
    with pytest.raises(ValueError):
        build_dataset(DataConfig(), "val")


def test_dataset_stats():
    assert dataset_stats("cifar10")[0] == CIFAR10_MEAN
    assert dataset_stats("synthetic")[0] == SYNTHETIC_MEAN
    assert dataset_stats("imagefolder")[0] == IMAGENET_MEAN
    assert dataset_stats("imagefolder", native_size=32)[0] == CIFAR10_MEAN  # CIFAR as JPEG files
    for name in ("cifar100", "stl10"):
        mean, std = dataset_stats(name)
        assert len(mean) == len(std) == 3 and all(0 < s < 1 for s in std)
