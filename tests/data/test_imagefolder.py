"""``dataset=imagefolder``: the three layouts, pixel formats, bad files, in-memory vs lazy loading."""

import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import shared_data_dir
from PIL import Image

from contrastlab.config import DataConfig
from contrastlab.data.datasets import (
    ImageFileDataset,
    TensorImageDataset,
    build_dataset,
    stratified_holdout,
)
from contrastlab.errors import UserError

SHARED_CIFAR = (shared_data_dir() or Path("/nonexistent")) / "cifar10-test.tar.gz"


def _noise(size=(16, 16), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _save(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def _tree(root: Path, classes=("cat", "dog", "eel"), per_class=10, size=(16, 16), seed=0) -> Path:
    for c, name in enumerate(classes):
        for i in range(per_class):
            _save(_noise(size, seed + 100 * c + i), root / name / f"{i:03d}.png")
    return root


def _cfg(path, **kw) -> DataConfig:
    return DataConfig(name="imagefolder", path=str(path), **kw)


def _as_tensor(item) -> torch.Tensor:
    return (
        item
        if isinstance(item, torch.Tensor)
        else torch.from_numpy(np.array(item)).permute(2, 0, 1)
    )


def _truncated_jpeg(path: Path) -> Path:
    _save(_noise((64, 64), 7), path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# -- layouts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("test_name", ["test", "val"])
def test_train_and_test_folders(tmp_path, test_name):
    _tree(tmp_path / "train", per_class=4)
    _tree(tmp_path / test_name, classes=("cat", "eel"), per_class=2, seed=50)
    train, test = build_dataset(_cfg(tmp_path), "train"), build_dataset(_cfg(tmp_path), "test")
    assert train.classes == test.classes == ["cat", "dog", "eel"]
    assert len(train) == 12 and train.num_classes == 3
    assert train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert len(test) == 4 and test.labels.tolist() == [0, 0, 2, 2]  # indices follow train's classes
    img, label = test[3]
    assert img.dtype == torch.uint8 and img.shape == (3, 16, 16) and label == 2


def test_test_class_unknown_to_train_is_an_error(tmp_path):
    _tree(tmp_path / "train", classes=("cat",), per_class=2)
    _tree(tmp_path / "test", classes=("cow",), per_class=2)
    with pytest.raises(UserError, match="cow"):
        build_dataset(_cfg(tmp_path), "test")


def test_class_folders_get_a_stratified_deterministic_holdout(tmp_path):
    _tree(tmp_path, per_class=10)
    cfg = _cfg(tmp_path, holdout_fraction=0.2)
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert len(train) == 24 and len(test) == 6
    assert torch.bincount(test.labels).tolist() == [2, 2, 2]
    all_images = torch.cat([train.images, test.images]).flatten(1)
    assert len(torch.unique(all_images, dim=0)) == 30  # disjoint, and together everything
    assert torch.equal(build_dataset(cfg, "test").images, test.images)


def test_train_folder_alone_gets_a_holdout_and_a_zero_fraction_an_empty_test_split(tmp_path):
    _tree(tmp_path / "train", per_class=5)
    assert len(build_dataset(_cfg(tmp_path, holdout_fraction=0.2), "test")) == 3
    empty = build_dataset(_cfg(tmp_path, holdout_fraction=0.0), "test")
    assert len(empty) == 0 and empty.num_classes == 3


@pytest.mark.parametrize("layout", [".", "train"])
def test_a_small_folder_holds_out_one_image_of_every_class(tmp_path, layout):
    _tree(tmp_path / layout, per_class=4)  # round(0.1 * 4) = 0 images of each class
    cfg = _cfg(tmp_path, holdout_fraction=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert test.labels.tolist() == [0, 1, 2] and torch.bincount(train.labels).tolist() == [3] * 3
    all_images = torch.cat([train.images, test.images]).flatten(1)
    assert len(torch.unique(all_images, dim=0)) == 12


def test_classes_of_one_image_stay_in_training_and_an_empty_test_split_is_said(tmp_path):
    _tree(tmp_path, per_class=1)
    with pytest.warns(UserWarning) as caught:
        test = build_dataset(_cfg(tmp_path, holdout_fraction=0.1), "test")
    assert len(test) == 0 and len(build_dataset(_cfg(tmp_path), "train")) == 3
    (message,) = [str(w.message) for w in caught]
    assert "\n" not in message
    assert (
        f"the test split held out of {tmp_path} is empty: each of its 3 classes holds 1 image"
        in (message)
    )
    assert "hold-out fraction 0.1" in message and "add a second image" in message
    _save(_noise(seed=9), tmp_path / "cat" / "extra.png")  # cat: 2 images, one held out
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert build_dataset(_cfg(tmp_path), "test").labels.tolist() == [0]
        assert len(build_dataset(_cfg(tmp_path, holdout_fraction=0.0), "test")) == 0  # asked for


def test_one_class_is_counted_in_the_singular(tmp_path):
    _tree(tmp_path, classes=("cat",), per_class=1)
    (tmp_path / "empty").mkdir()
    with pytest.warns(UserWarning) as caught:
        build_dataset(_cfg(tmp_path, holdout_fraction=0.1), "test")
    said = " | ".join(str(w.message) for w in caught)
    assert "; 1 class remains" in said and "is empty: its class holds 1 image" in said
    assert "1 classes" not in said


def test_folders_whose_classes_each_gave_an_image_keep_their_split():
    # the split before classes of few images held out one each (hard-coded from that version)
    labels = [0] * 10 + [1] * 7 + [2] * 23 + [3] * 5
    assert stratified_holdout(labels, 0.2, at_least_one=True)[1] == [
        1,
        4,
        15,
        18,
        20,
        27,
        28,
        34,
        44,
    ]
    few = [0] * 10 + [1] * 2 + [2] * 7  # class 1 now gives one; the draws of 0 and 2 are unchanged
    assert stratified_holdout(few, 0.2, at_least_one=True)[1] == [1, 4, 11, 14]
    assert stratified_holdout(few, 0.2)[1] == [1, 4, 14]  # without at_least_one: none of class 1


def test_flat_folder_is_unlabelled(tmp_path):
    for i in range(10):
        _save(_noise(seed=i), tmp_path / f"img{i}.jpg")
    train = build_dataset(_cfg(tmp_path, holdout_fraction=0.2), "train")
    test = build_dataset(_cfg(tmp_path, holdout_fraction=0.2), "test")
    assert len(train) == 10 and len(test) == 0  # no labels: nothing could use a held-out part
    assert train.num_classes == 0 and train.classes == [] and set(train.labels.tolist()) == {-1}
    assert train[0][1] == -1


def test_hidden_and_non_image_files_are_ignored(tmp_path):
    _tree(tmp_path, per_class=3)
    (tmp_path / "cat" / "._000.png").write_bytes(b"macOS resource fork")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    ds = build_dataset(_cfg(tmp_path, holdout_fraction=0.0), "train")
    assert len(ds) == 9 and ds.skipped == []


# -- user errors ----------------------------------------------------------------------------------


def test_missing_path_not_a_folder_and_empty_folder(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_dataset(_cfg(tmp_path / "nowhere"), "train")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(UserError, match="not a folder"):
        build_dataset(_cfg(tmp_path / "file.png"), "train")
    empty = tmp_path / "empty"
    (empty / "cat").mkdir(parents=True)
    (empty / "readme.txt").write_text("hi")
    with pytest.raises(UserError) as err:
        build_dataset(_cfg(empty), "train")
    assert "no images" in str(err.value) and ".jpg" in str(err.value) and ".png" in str(err.value)


@pytest.mark.parametrize("path", [None, ""])
def test_no_path_is_an_error_not_the_working_directory(tmp_path, monkeypatch, path):
    _tree(tmp_path, per_class=3)  # the working directory holds a readable image folder
    monkeypatch.chdir(tmp_path)
    for split in ("train", "test"):
        with pytest.raises(UserError) as err:
            build_dataset(DataConfig(name="imagefolder", path=path), split)
        assert str(err.value) == (
            "dataset=imagefolder needs data.path=DIR (a folder of images or class folders)"
        )


@pytest.mark.parametrize("in_memory", [True, False])
def test_corrupt_and_truncated_images_fail_at_build_time_naming_the_file(tmp_path, in_memory):
    _tree(tmp_path, per_class=3)
    bad = _truncated_jpeg(tmp_path / "cat" / "truncated.jpg")
    with pytest.raises(UserError) as err:
        build_dataset(_cfg(tmp_path, in_memory=in_memory, holdout_fraction=0.0), "train")
    message = str(err.value)
    assert str(bad) in message and "data.skip_bad_images=true" in message and "\n" not in message

    (tmp_path / "dog" / "corrupt.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(UserError, match="2 unreadable images"):
        build_dataset(_cfg(tmp_path, in_memory=in_memory, holdout_fraction=0.0), "train")


def test_unreadable_images_of_the_test_split_are_counted_when_training_fails(tmp_path):
    """One folder split into train and test: the training split failed on its bad file, and the
    test split's bad files surfaced only on the next run, after the user had fixed the first."""
    from contrastlab.data.datasets import _imagefolder_split

    _tree(tmp_path, per_class=6)
    train = _imagefolder_split(tmp_path, "train", 0.5)[0]
    test = _imagefolder_split(tmp_path, "test", 0.5)[0]
    for path in [train[0], *test[:2]]:
        Path(path).write_bytes(b"\x89PNG not really")
    with pytest.raises(UserError) as err:
        build_dataset(_cfg(tmp_path, holdout_fraction=0.5), "train")
    message = str(err.value)
    assert "unreadable image in the train split" in message and str(train[0]) in message
    assert "(and 2 in the test split)" in message
    with pytest.warns(UserWarning, match="in the test split of"):
        build_dataset(_cfg(tmp_path, holdout_fraction=0.5, skip_bad_images=True), "test")


@pytest.mark.parametrize("in_memory", [True, False])
def test_skip_mode_counts_and_warns(tmp_path, in_memory):
    _tree(tmp_path, per_class=3)
    _truncated_jpeg(tmp_path / "cat" / "truncated.jpg")
    (tmp_path / "dog" / "corrupt.png").write_bytes(b"garbage")
    cfg = _cfg(tmp_path, in_memory=in_memory, skip_bad_images=True, holdout_fraction=0.0)
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        ds = build_dataset(cfg, "train")
    assert len(ds) == 9 and len(ds.skipped) == 2
    assert {Path(p).name for p in ds.skipped} == {"truncated.jpg", "corrupt.png"}


# -- pixels -----------------------------------------------------------------------------------------


def test_every_pixel_format_becomes_8_bit_rgb(tmp_path):
    folder = tmp_path / "formats"
    _save(Image.new("L", (8, 8), 100), folder / "gray.png")
    _save(Image.new("1", (8, 8), 1), folder / "bilevel.png")
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([10, 200, 30] + [0] * 765)
    _save(palette, folder / "palette.png")
    _save(Image.new("CMYK", (8, 8), (0, 0, 0, 0)), folder / "cmyk.jpg")
    rgba = Image.new("RGBA", (8, 8), (10, 20, 30, 255))
    rgba.putpixel((0, 0), (10, 20, 30, 0))  # transparent: composited over white
    _save(rgba, folder / "rgba.png")
    _save(Image.fromarray(np.full((8, 8), 65535, np.uint16)), folder / "white16.png")
    _save(Image.fromarray(np.full((8, 8), 32896, np.uint16)), folder / "mid16.png")
    _save(Image.fromarray(np.full((8, 8), 1000, np.int32), mode="I"), folder / "int32.tif")

    ds = build_dataset(_cfg(folder, holdout_fraction=0.0), "train")
    assert isinstance(ds, TensorImageDataset) and ds.skipped == []
    pixels = {Path(f).name: ds.images[i] for i, f in enumerate(sorted(folder.iterdir()))}
    assert all(p.dtype == torch.uint8 and p.shape == (3, 8, 8) for p in pixels.values())

    def rgb(name, y=4, x=4):
        return pixels[name][:, y, x].tolist()

    assert rgb("gray.png") == [100, 100, 100]
    assert rgb("bilevel.png") == [255, 255, 255]
    assert rgb("palette.png") == [10, 200, 30]
    assert min(rgb("cmyk.jpg")) >= 250  # no ink is white
    assert rgb("rgba.png") == [10, 20, 30] and rgb("rgba.png", 0, 0) == [255, 255, 255]
    assert rgb("white16.png") == [255, 255, 255]  # 16-bit is scaled, not clipped
    assert rgb("mid16.png") == [128, 128, 128]
    assert rgb("int32.tif") == [4, 4, 4]  # 32-bit integers up to 65535 read as 16-bit


def test_in_memory_and_lazy_loading_give_the_same_pixels(tmp_path):
    _tree(tmp_path, per_class=4)
    memory = build_dataset(_cfg(tmp_path, in_memory=True, holdout_fraction=0.25), "test")
    lazy = build_dataset(_cfg(tmp_path, in_memory=False, holdout_fraction=0.25), "test")
    assert isinstance(memory, TensorImageDataset) and isinstance(lazy, ImageFileDataset)
    assert len(memory) == len(lazy) == 3 and torch.equal(memory.labels, lazy.labels)
    assert memory.image_size == lazy.image_size == 16
    for i in range(len(memory)):
        assert torch.equal(_as_tensor(memory[i][0]), _as_tensor(lazy[i][0]))


def test_large_images_load_lazily_and_mixed_sizes_are_squared_in_memory(tmp_path):
    _save(_noise((120, 100), 1), tmp_path / "a" / "big.png")
    _save(_noise((100, 150), 2), tmp_path / "b" / "tall.png")
    lazy = build_dataset(_cfg(tmp_path, holdout_fraction=0.0), "train")
    assert isinstance(lazy, ImageFileDataset) and lazy.image_size is None
    assert lazy[0][0].size == (120, 100)
    memory = build_dataset(
        _cfg(tmp_path, holdout_fraction=0.0, in_memory=True, image_size=24), "train"
    )
    assert memory.images.shape == (2, 3, 24, 24) and memory.image_size == 24


@pytest.mark.skipif(
    not SHARED_CIFAR.exists(),
    reason="no ../shared/data/cifar10-test.tar.gz next to the repository (or $CONTRASTLAB_SHARED_DATA)",
)
def test_a_few_hundred_real_cifar_jpegs(tmp_path):
    subprocess.run(
        [
            "tar",
            "-xzf",
            str(SHARED_CIFAR),
            "-C",
            str(tmp_path),
            "--wildcards",
            "test/*/00[0-2]?.jpg",
        ],
        check=True,
    )
    cfg = _cfg(tmp_path / "test", holdout_fraction=0.1)
    train = build_dataset(cfg, "train")
    assert train.classes[:2] == ["airplane", "automobile"] and train.num_classes == 10
    assert isinstance(train, TensorImageDataset) and train.images.shape[1:] == (3, 32, 32)
    assert len(train) == 270 and torch.bincount(train.labels).tolist() == [27] * 10
    assert train.image_size == 32 and train.mean[0] == pytest.approx(0.4914)
    mean = train.images.float().mean((0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor(train.mean), atol=0.08)


def test_the_python_example_of_docs_datasets_gives_the_whole_train_and_test_folders(
    tmp_path, monkeypatch
):
    """The snippet of docs/datasets.md, run as written on a folder with train/ and test/: the
    training split is all of train/ and the test split is test/ (not a part held out of train/)."""
    import re
    from pathlib import Path

    from PIL import Image

    docs = Path(__file__).parents[2] / "docs" / "datasets.md"
    blocks = re.findall(r"```python\n(.*?)```", docs.read_text(), flags=re.S)
    snippet = next(b for b in blocks if "build_dataset" in b)
    for split, count in (("train", 6), ("test", 3)):
        for c in ("cat", "dog"):
            (tmp_path / "cifar10" / split / c).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(
                    tmp_path / "cifar10" / split / c / f"{i}.png"
                )
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(snippet, scope)
    assert len(scope["train"]) == 12
    assert len(scope["test"]) == 6
