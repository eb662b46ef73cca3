"""Symbolic links in image folders: loops stop with their name; each real folder and file is read
once, so no image counts twice, under a wrong label, or on both sides of the train/test split."""

import os
import warnings

import numpy as np
import pytest
from PIL import Image

from contrastlab.config import DataConfig
from contrastlab.data.datasets import build_dataset
from contrastlab.errors import UserError


def _tree(root, classes=("cat", "dog"), per_class=10):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
    return root


def _cfg(path, **kw):
    return DataConfig(name="imagefolder", path=str(path), in_memory=True, **kw)


def test_a_link_to_the_parent_folder_stops_with_an_error_naming_it(tmp_path):
    root = _tree(tmp_path / "images")
    os.symlink("..", root / "cat" / "up")
    with pytest.raises(UserError, match=r"symbolic link loop: .*cat/up"):
        build_dataset(_cfg(root), "train")


def test_a_link_to_itself_is_a_loop(tmp_path):
    root = _tree(tmp_path / "images")
    os.symlink(".", root / "dog" / "again")
    with pytest.raises(UserError, match="dog/again"):
        build_dataset(_cfg(root, holdout_fraction=0.0), "train")


def test_a_folder_reached_twice_is_read_once_and_never_leaks_into_the_holdout(tmp_path):
    root = _tree(tmp_path / "images")
    os.symlink(root / "cat", root / "dog" / "cats_too")  # cat images also under dog/
    with pytest.warns(UserWarning, match="read once"):
        train = build_dataset(_cfg(root, holdout_fraction=0.2), "train")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        test = build_dataset(_cfg(root, holdout_fraction=0.2), "test")
    assert len(train) + len(test) == 20  # 20 images on disk
    pixels = {img.numpy().tobytes() for ds in (train, test) for img in ds.images}
    assert len(pixels) == 20  # no image twice, in particular not on both sides
    assert (train.labels == 0).sum() + (test.labels == 0).sum() == 10


def test_a_test_folder_linking_into_train_gets_no_training_image(tmp_path):
    root = tmp_path / "images"
    _tree(root / "train")
    (root / "test" / "cat").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "test" / "cat" / "own.png")
    os.symlink(root / "train" / "dog", root / "test" / "dog")
    os.symlink(root / "train" / "cat" / "000.png", root / "test" / "cat" / "copy.png")
    with pytest.warns(UserWarning, match="read once"):
        test = build_dataset(_cfg(root), "test")
    assert len(test) == 1


def test_a_class_folder_linking_to_another_is_called_a_copy_not_empty(tmp_path):
    """``cat_again -> cat``: one warning, which says the folder repeats other images; before, a
    second warning also called it a folder that holds no images (pointing the user the wrong way)."""
    root = _tree(tmp_path / "images")
    os.symlink(root / "cat", root / "cat_again")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train = build_dataset(_cfg(root, holdout_fraction=0.0), "train")
    messages = [str(w.message) for w in caught]
    assert len(train) == 20 and train.classes == ["cat", "dog"]
    assert not any("hold no images" in m for m in messages), messages
    assert len(messages) == 1 and "left out as classes (first: cat_again)" in messages[0]


def test_an_empty_class_folder_beside_a_linked_copy_is_still_named_empty(tmp_path):
    root = _tree(tmp_path / "images")
    os.symlink(root / "cat", root / "cat_again")
    (root / "empty").mkdir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_dataset(_cfg(root, holdout_fraction=0.0), "train")
    messages = " | ".join(str(w.message) for w in caught)
    assert "1 class folder(s) of" in messages and "(first: empty)" in messages
    assert "(first: cat_again)" in messages
