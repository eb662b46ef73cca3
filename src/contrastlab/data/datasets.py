"""Datasets by name: ``synthetic``, ``cifar10``, ``cifar100``, ``stl10``, ``imagefolder``.

Every dataset yields ``(image, label)``: ``image`` is a ``uint8`` tensor ``3×H×W`` (datasets held in
memory) or an RGB PIL image (large image folders, decoded lazily), passed through ``transform`` when
one is given; ``label`` is an ``int``, −1 when unlabelled. Every dataset also carries ``labels``,
``num_classes``, ``mean``/``std``, ``image_size`` (native side, None when unknown or mixed),
``factors`` (synthetic only), ``classes`` and ``skipped`` (files left out as unreadable).

Image folders are checked when the dataset is built, not during training: every file is decoded
once up front (see ``docs/datasets.md`` for the cost), so a truncated JPEG fails at once with its
name instead of crashing epoch 37.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from contrastlab.config import DataConfig
from contrastlab.data import augment
from contrastlab.data.synthetic import FACTOR_CLASSES, SHAPE_NAMES, make_synthetic
from contrastlab.errors import UserError, plural, setting

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
HOLDOUT_SEED = 0  # the imagefolder hold-out is a property of the folder, not of the training seed
_EXTENSIONS = tuple(sorted({e.lower() for e in IMG_EXTENSIONS}))
_ORIENTATION = 0x0112  # EXIF tag


def dataset_stats(name: str, native_size: int | None = None) -> tuple[tuple, tuple]:
    """(mean, std) used to normalize a dataset's images.

    CIFAR-10/100, STL-10 and synthetic use their own statistics; an image folder of images of at
    most 32 px (e.g. CIFAR as JPEG files) uses CIFAR-10's; anything else ImageNet's.
    """
    table = {
        "cifar10": (augment.CIFAR10_MEAN, augment.CIFAR10_STD),
        "cifar100": (augment.CIFAR100_MEAN, augment.CIFAR100_STD),
        "stl10": (augment.STL10_MEAN, augment.STL10_STD),
        "synthetic": (augment.SYNTHETIC_MEAN, augment.SYNTHETIC_STD),
    }
    if name in table:
        return table[name]
    if native_size is not None and native_size <= 32:
        return augment.CIFAR10_MEAN, augment.CIFAR10_STD
    return augment.IMAGENET_MEAN, augment.IMAGENET_STD


# ----------------------------------------------------------------------------------------------
# Dataset classes
# ----------------------------------------------------------------------------------------------


class _Described(Dataset):
    """The attributes every dataset carries, whatever its storage."""

    def _describe(
        self,
        labels,
        num_classes: int,
        mean,
        std,
        image_size: int | None,
        classes: Sequence[str] = (),
        factors: dict | None = None,
        skipped: Sequence[str] = (),
        transform: Callable | None = None,
    ) -> None:
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.num_classes = int(num_classes)
        self.mean, self.std = tuple(mean), tuple(std)
        self.image_size = image_size
        self.classes = list(classes)
        self.factors = dict(factors or {})
        self.skipped = list(skipped)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)


class TensorImageDataset(_Described):
    """Decoded images held in memory as one ``uint8`` tensor ``[N, 3, H, W]``."""

    def __init__(
        self,
        images: torch.Tensor,
        labels,
        *,
        num_classes: int,
        mean,
        std,
        image_size: int | None,
        classes: Sequence[str] = (),
        factors: dict | None = None,
        skipped: Sequence[str] = (),
        transform: Callable | None = None,
    ):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"images must be uint8 [N, 3, H, W], got {images.dtype} {tuple(images.shape)}"
            )
        self.images = images
        self._describe(
            labels, num_classes, mean, std, image_size, classes, factors, skipped, transform
        )
        if len(self.labels) != len(images):
            raise ValueError(
                f"{plural(len(images), 'image')} but {plural(len(self.labels), 'label')}"
            )

    def __getitem__(self, i: int):
        img = self.images[i]
        return (self.transform(img) if self.transform is not None else img), int(self.labels[i])


class ImageFileDataset(_Described):
    """Image files decoded on access into RGB PIL images (for folders too big to hold decoded)."""

    def __init__(
        self,
        files: Sequence[str],
        labels,
        *,
        num_classes: int,
        mean,
        std,
        image_size: int | None,
        classes: Sequence[str] = (),
        skipped: Sequence[str] = (),
        transform: Callable | None = None,
    ):
        self.files = list(files)
        self._describe(
            labels, num_classes, mean, std, image_size, classes, None, skipped, transform
        )

    def __getitem__(self, i: int):
        path = self.files[i]
        try:
            img = load_rgb(path)
        except Exception as e:  # the file changed since the dataset was checked
            raise UserError(
                f"cannot read image {path} ({_reason(e)}); it was readable when the "
                f"dataset was built, so it changed since: fix or delete it"
            ) from None
        return (self.transform(img) if self.transform is not None else img), int(self.labels[i])


class WithTransform(Dataset):
    """The same images under another transform (training views vs. evaluation crops)."""

    def __init__(self, base: Dataset, transform):
        self.base, self.transform = base, transform
        self.labels = getattr(base, "labels", None)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        image, label = self.base[i]
        return (self.transform(image) if self.transform is not None else image), label


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------


def build_dataset(cfg: DataConfig, split: str, transform: Callable | None = None) -> Dataset:
    """The ``split`` ("train" or "test") of the dataset named by ``cfg.name``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if cfg.name == "synthetic":
        return _synthetic(cfg, split, transform)
    if cfg.name in ("cifar10", "cifar100", "stl10"):
        return _torchvision(cfg, split, transform)
    if cfg.name == "imagefolder":
        return _imagefolder(cfg, split, transform)
    raise UserError(
        f"unknown dataset '{cfg.name}'; valid: synthetic, cifar10, cifar100, stl10, imagefolder"
    )


def derived_seed(seed: int, purpose: str) -> int:
    """A seed for ``purpose`` that differs from ``seed`` and from other purposes' seeds."""
    digest = hashlib.sha256(f"{seed}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _synthetic(cfg: DataConfig, split: str, transform) -> TensorImageDataset:
    n = cfg.synthetic_train if split == "train" else cfg.synthetic_test
    seed = cfg.synthetic_seed if split == "train" else derived_seed(cfg.synthetic_seed, "test")
    data = make_synthetic(n, cfg.image_size, seed)
    mean, std = dataset_stats("synthetic")
    return TensorImageDataset(
        data.images,
        data.factors["shape"],
        num_classes=FACTOR_CLASSES["shape"],
        mean=mean,
        std=std,
        image_size=cfg.image_size,
        classes=SHAPE_NAMES,
        factors=data.factors,
        transform=transform,
    )


# ----------------------------------------------------------------------------------------------
# torchvision datasets
# ----------------------------------------------------------------------------------------------


def _torchvision(cfg: DataConfig, split: str, transform) -> TensorImageDataset:
    from torchvision import datasets as tvd

    root = Path(cfg.path or "./data").expanduser()
    name = cfg.name
    if root.exists() and not root.is_dir():
        raise UserError(
            f"{_path_setting()} {root} is not a folder; point {_path_setting()} at the folder "
            f"that holds (or should receive) {name}"
        )
    train = split == "train"
    source = {"stl10": tvd.STL10, "cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[name]
    try:
        if name == "stl10":
            # Pretraining uses the 5,000 labelled and 100,000 unlabelled images (labels -1).
            stl_split = "train+unlabeled" if train else "test"
            ds = source(str(root), split=stl_split, download=cfg.download)
            images, labels = torch.from_numpy(ds.data), torch.as_tensor(ds.labels)
        else:
            ds = source(str(root), train=train, download=cfg.download)
            images = torch.from_numpy(ds.data).permute(0, 3, 1, 2)  # HWC -> CHW, no per-image PIL
            labels = torch.as_tensor(ds.targets)
    except Exception as e:
        copy = root / source.base_folder
        if copy.is_dir() and any(copy.iterdir()):
            why = "" if "not found or corrupted" in str(e) else f" ({_reason(e)})"
            # the command that runs may take no data.download (eval, analyze): train does
            train = "" if setting("data.download") else "contrastlab train ... "
            raise UserError(
                f"the copy of {name} in {copy} is damaged or incomplete{why}; delete "
                f"that folder and extract the archive again, or download it anew with "
                f"{train}data.path={root} data.download=true (needs internet)"
            ) from None
        if not cfg.download:
            raise UserError(
                f"{name} not found under {root}; point {_path_setting()} at "
                f"a folder that holds a copy, or download one with contrastlab train ... "
                f"data.path={root} data.download=true (needs internet)"
            ) from None
        raise UserError(
            f"downloading {name} to {root} failed ({_reason(e)}); check the internet "
            f"connection, or download it elsewhere and point {_path_setting()} at the "
            f"copy"
        ) from None
    mean, std = dataset_stats(name)
    return TensorImageDataset(
        images.contiguous(),
        labels,
        num_classes=len(ds.classes),
        mean=mean,
        std=std,
        image_size=int(images.shape[-1]),
        classes=ds.classes,
        transform=transform,
    )


# ----------------------------------------------------------------------------------------------
# Image folders: layout
# ----------------------------------------------------------------------------------------------


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(_EXTENSIONS)


class _Visited:
    """The real folders and files a scan has taken, so that each is read once.

    Symbolic links are followed, but a link to a folder that contains it (a loop, which would
    repeat its images without end) stops with an error naming it, and a folder or file reached a
    second time by another path (two links to one folder, a test folder linking into train/) is
    skipped with a warning: otherwise its images would count twice, under wrong labels, or on both
    sides of the train/test split.
    """

    def __init__(self):
        self.dirs: set[str] = set()
        self.files: set[str] = set()
        self.repeated: list[str] = []

    def enter(self, path: str, parent_real: str | None) -> bool:
        real = os.path.realpath(path)
        if parent_real is not None and (
            real == parent_real or parent_real.startswith(real.rstrip(os.sep) + os.sep)
        ):
            raise UserError(
                f"symbolic link loop: {path} points to {real}, a folder that contains it; "
                f"remove the link (or point it outside {real})"
            )
        if real in self.dirs:
            self.repeated.append(path)
            return False
        self.dirs.add(real)
        return True

    def take(self, path: str) -> bool:
        real = os.path.realpath(path)
        if real in self.files:
            self.repeated.append(path)
            return False
        self.files.add(real)
        return True


def _images_under(folder: Path, visited: _Visited | None = None) -> list[str]:
    """Image files anywhere below ``folder``, sorted; hidden files and folders are ignored
    (``._x.jpg`` files that macOS leaves on copied disks are not images). Every real folder and
    file is read once (see :class:`_Visited`)."""
    visited = _Visited() if visited is None else visited
    if not visited.enter(str(folder), None):
        return []
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        dirnames[:] = [
            d
            for d in sorted(dirnames)
            if not d.startswith(".") and visited.enter(os.path.join(dirpath, d), real)
        ]
        found += [
            os.path.join(dirpath, f)
            for f in sorted(filenames)
            if _is_image(f) and visited.take(os.path.join(dirpath, f))
        ]
    return found


def _scan(folder: Path, classes: Sequence[str] | None = None, visited: _Visited | None = None):
    """(files, labels, classes) of one folder: class subfolders, or else a flat unlabelled folder.

    With ``classes`` given (the training split's), test class folders map onto those indices.
    ``visited`` carries the folders and files already taken (by the training split's scan).
    """
    visited = _Visited() if visited is None else visited
    already = len(visited.repeated)
    visited.enter(str(folder), None)
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    per_class, copies = {}, []
    for p in subdirs:
        before = len(visited.repeated)
        per_class[p.name] = _images_under(p, visited)
        if not per_class[p.name] and len(visited.repeated) > before:
            copies.append(p.name)  # not empty: everything in it was read under another name
    empty = sorted(k for k, v in per_class.items() if not v and k not in copies)
    per_class = {k: v for k, v in per_class.items() if v}
    if empty and per_class:
        warnings.warn(
            f"{len(empty)} class folder(s) of {folder} hold no images and are left out "
            f"(first: {empty[0]}); {plural(len(per_class), 'class')} "
            f"{'remains' if len(per_class) == 1 else 'remain'}",
            stacklevel=3,
        )
    top = sorted(
        str(p)
        for p in folder.iterdir()
        if p.is_file() and _is_image(p.name) and visited.take(str(p))
    )
    repeated = visited.repeated[already:]
    if repeated:
        warnings.warn(
            f"{len(repeated)} folder(s) or image(s) under {folder} are reached a second time "
            f"through symbolic links and are read once only (first: {repeated[0]})"
            + (
                f"; {len(copies)} class folder(s) hold nothing else and are left out as "
                f"classes (first: {copies[0]})"
                if copies
                else ""
            ),
            stacklevel=3,
        )
    if per_class:
        if top:
            warnings.warn(
                f"{folder} holds class folders and also {len(top)} loose images; the loose "
                f"images are ignored",
                stacklevel=3,
            )
        names = sorted(per_class) if classes is None else list(classes)
        unknown = sorted(set(per_class) - set(names))
        if unknown:
            raise UserError(
                f"class folder '{unknown[0]}' in {folder} has no counterpart in the "
                f"training split; use the same class folders in train/ and test/"
            )
        index = {c: i for i, c in enumerate(names)}
        files, labels = [], []
        for c in sorted(per_class):
            files += per_class[c]
            labels += [index[c]] * len(per_class[c])
        return files, labels, names
    if top:
        return top, [-1] * len(top), []
    raise UserError(
        f"no images in {folder}: expected class subfolders or image files ending in "
        f"{', '.join(_EXTENSIONS)}"
    )


def stratified_holdout(
    labels: Sequence[int], fraction: float, at_least_one: bool = False
) -> tuple[list[int], list[int]]:
    """Deterministic stratified split: round(fraction * n) of every class goes to the test side,
    leaving at least one image of each class for training. ``at_least_one`` (and ``fraction`` >
    0): at least one image of every class of two or more goes to the test side (the other
    classes' draws are unchanged)."""
    labels_t = torch.as_tensor(labels, dtype=torch.long)
    gen = torch.Generator().manual_seed(HOLDOUT_SEED)
    least = 1 if at_least_one and fraction > 0 else 0
    test = []
    for c in torch.unique(labels_t).tolist():
        idx = (labels_t == c).nonzero().flatten()
        k = min(max(round(fraction * len(idx)), least), len(idx) - 1)
        test += idx[torch.randperm(len(idx), generator=gen)[:k]].tolist()
    test_set = set(test)
    return [i for i in range(len(labels_t)) if i not in test_set], sorted(test)


def check_image_folder(root: Path) -> None:
    """One line if ``data.path`` of an image folder is missing or a file (checked by ``train``
    before it touches the run directory, and again when the folder is read)."""
    if not root.exists():
        raise UserError(
            f"{_path_setting()} {root} does not exist; point {_path_setting()} at a folder of "
            f"images, of class folders, or with train/ and test/ folders"
        )
    if not root.is_dir():
        raise UserError(
            f"{_path_setting()} {root} is not a folder; point it at a folder of images or of "
            "class folders"
        )


def _path_setting() -> str:
    """``data.path`` as the running command takes it (``--data-path`` for eval, analyze)."""
    return setting("data.path") or "data.path"


def imagefolder_test_dir(root: Path) -> Path | None:
    """The test folder of an image folder with ``train/`` and ``test/`` (or ``val/``) folders;
    None where the test split is held out of the training images (``data.holdout_fraction``)."""
    if not (root / "train").is_dir():
        return None
    return next((root / d for d in ("test", "val") if (root / d).is_dir()), None)


def _imagefolder_split(root: Path, split: str, fraction: float):
    """(files, labels, classes) of ``split`` for the three supported layouts."""
    check_image_folder(root)
    train_dir = root / "train"
    if train_dir.is_dir():
        visited = _Visited()
        files, labels, classes = _scan(train_dir, visited=visited)
        test_dir = imagefolder_test_dir(root)
        if test_dir is not None:
            if split == "train":
                return files, labels, classes
            return _scan(test_dir, classes if classes else None, visited)
    else:
        train_dir = root
        files, labels, classes = _scan(root)
    if not classes:  # a flat folder: no labels, so nothing could use a held-out part
        return (files, labels, classes) if split == "train" else ([], [], classes)
    train_idx, test_idx = stratified_holdout(labels, fraction, at_least_one=True)
    if split == "test" and fraction > 0 and not test_idx:  # every class holds a single image
        warnings.warn(
            f"the test split held out of {train_dir} is empty: "
            f"{'its class' if len(classes) == 1 else f'each of its {len(classes)} classes'} "
            f"holds 1 image, which stays in training (hold-out fraction {fraction}); "
            f"add a second image to each class, or give test images of their own "
            f"(docs/datasets.md)",
            stacklevel=4,
        )
    chosen = train_idx if split == "train" else test_idx
    return [files[i] for i in chosen], [labels[i] for i in chosen], classes


# ----------------------------------------------------------------------------------------------
# Image folders: decoding
# ----------------------------------------------------------------------------------------------


def _reason(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def to_rgb8(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB.

    16-bit greyscale is scaled (65535 -> 255), not clipped; 32-bit integer images are read as
    8-bit if their maximum is at most 255, as 16-bit if at most 65535, else scaled by the maximum;
    float images in [0, 1] are scaled by 255. Transparent images are composited over white.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I", "F") or mode.startswith("I;16"):
        a = np.asarray(img).astype(np.float64)
        top = float(a.max()) if a.size else 0.0
        if mode.startswith("I;16"):
            a = a / 257.0
        elif mode == "F":
            a = a * 255.0 if top <= 1.0 else a
        elif top > 65535:
            a = a * (255.0 / top)
        elif top > 255:
            a = a / 257.0
        gray = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(gray[..., None], 3, axis=2), "RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _oriented_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) after applying the EXIF orientation tag, read from the header only."""
    w, h = img.size
    try:
        turned = img.getexif().get(_ORIENTATION) in (5, 6, 7, 8)
    except Exception:
        turned = False
    return (h, w) if turned else (w, h)


def _resize_square(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size``, then the centre ``size``×``size`` crop (keeps the aspect ratio)."""
    w, h = img.size
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    if new != (w, h):
        img = img.resize(new, Image.BICUBIC, reducing_gap=3.0)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    return img.crop((left, top, left + size, top + size))


def load_rgb(path: str, size: int | None = None, draft: int | None = None) -> Image.Image:
    """Decode an image file fully into 8-bit RGB, upright per its EXIF orientation.

    ``size``: resize the shorter side and centre-crop to a square. ``draft``: let JPEG decode at a
    reduced scale (still reading all the compressed data, so truncation is still detected).
    """
    with Image.open(path) as img:
        return _finish(img, size, draft)


def _finish(img: Image.Image, size: int | None = None, draft: int | None = None) -> Image.Image:
    if draft:
        img.draft("RGB", (draft, draft))
    img.load()
    img = to_rgb8(ImageOps.exif_transpose(img))
    return _resize_square(img, size) if size is not None else img


# Each pass maps a file to (result, reason): reason is None for a good file, else why it is bad.


def _header(path: str):
    """The (width, height) from the header alone."""
    try:
        with Image.open(path) as img:
            return _oriented_size(img), None
    except Exception as e:
        return None, _reason(e)


def _probe(path: str):
    """An image of at most SMALL_IMAGE px decoded into an HxWx3 array; a larger one only measured
    (its (width, height)), so that one pass over a folder of small images opens each file once."""
    try:
        with Image.open(path) as img:
            w, h = _oriented_size(img)
            if max(w, h) > augment.SMALL_IMAGE:
                return (w, h), None
            return np.asarray(_finish(img)), None
    except Exception as e:
        return None, _reason(e)


def _decode(path: str, size: int | None):
    try:
        return np.asarray(load_rgb(path, size, draft=size)), None
    except Exception as e:
        return None, _reason(e)


def _verify(path: str):
    """Decode the whole file (JPEG at 1/8 scale, several times cheaper) and return its size."""
    try:
        with Image.open(path) as img:
            size = _oriented_size(img)
            _finish(img, draft=8)
        return size, None
    except Exception as e:
        return None, _reason(e)


def _parallel(fn, items: Sequence, threads: bool = True) -> list:
    """``[fn(x) for x in items]``, on a thread pool when ``threads`` (PIL releases the GIL while
    decoding, which pays off for large images; for small ones the pool only adds GIL contention)."""
    if not threads or len(items) < 64:
        return [fn(x) for x in items]
    workers = min(16, (os.cpu_count() or 1) + 2)
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items, chunksize=64))


def _square_arrays(arrays: dict, size: int) -> dict:
    return {i: np.asarray(_resize_square(Image.fromarray(a), size)) for i, a in arrays.items()}


def _load_folder(files: list[str], cfg: DataConfig):
    """Check (and, in memory, decode) every file.

    Returns (in_memory, arrays {index: HxWx3 uint8} or None, sizes {index: (w, h)}, bad {index: why}).
    """
    bad, sizes = {}, {}
    arrays = None
    if cfg.in_memory is None:
        # One pass: decode while the images are small; any large image switches to lazy loading.
        probed = [_probe(f) for f in files]
        bad = {i: why for i, (_, why) in enumerate(probed) if why}
        arrays = {
            i: r for i, (r, why) in enumerate(probed) if not why and isinstance(r, np.ndarray)
        }
        large = {i: r for i, (r, why) in enumerate(probed) if not why and isinstance(r, tuple)}
        sizes = {i: (a.shape[1], a.shape[0]) for i, a in arrays.items()} | large
        if large:  # lazy after all: the small images are already checked, verify the large ones
            arrays = None
            todo = sorted(large)
            for i, (_, why) in zip(todo, _parallel(lambda i: _verify(files[i]), todo)):
                if why:
                    bad[i] = why
            return False, None, sizes, bad
        if len(set(sizes.values())) > 1:
            arrays = _square_arrays(arrays, cfg.image_size)
        return True, arrays, sizes, bad
    if cfg.in_memory:
        headers = [_header(f) for f in files]  # cheap: reads headers only
        bad = {i: why for i, (_, why) in enumerate(headers) if why}
        sizes = {i: size for i, (size, why) in enumerate(headers) if not why}
        large = any(max(s) > augment.SMALL_IMAGE for s in sizes.values())
        # Mixed sizes are resized while decoding, so large images are never held at full size.
        size = None if len(set(sizes.values())) <= 1 else cfg.image_size
        todo = sorted(sizes)
        arrays = {}
        for i, (arr, why) in zip(todo, _parallel(lambda i: _decode(files[i], size), todo, large)):
            if why:
                bad[i] = why
                del sizes[i]
            else:
                arrays[i] = arr
        if len({a.shape for a in arrays.values()}) > 1:  # EXIF rotation surprises: square them
            arrays = _square_arrays(arrays, cfg.image_size)
        return True, arrays, sizes, bad
    checked = _parallel(_verify, files)
    bad = {i: why for i, (_, why) in enumerate(checked) if why}
    sizes = {i: size for i, (size, why) in enumerate(checked) if not why}
    return False, None, sizes, bad


def split_place(root: Path, split: str, cfg) -> str:
    """Where the images of ``split`` come from, for messages: ``the test split of R`` where R
    holds train/ and test/ or a held-out part; the folder alone where it is read whole, as the
    command names it (``--test-dir R`` in eval transfer, which reads each folder as a dataset
    of its own: its internal split is no part of what the user gave)."""
    whole = not (root / "train").is_dir() and (split == "train" and cfg.holdout_fraction == 0)
    if not whole:
        return f"the {split} split of {root}"
    flag = setting("data.path", str(root))
    return flag if flag and flag.startswith("--") else str(root)


def _unreadable_message(root: Path, split: str, first: str, why: str, count: int, cfg) -> str:
    """The one-line error for unreadable images, counting those of the test split as well when
    the training split fails: the test split is built after it, and its bad files would otherwise
    surface one run later."""
    place = split_place(root, split, cfg)
    where = (
        f"{count} unreadable images in {place}, the first"
        if count > 1
        else f"unreadable image in {place}"
    )
    more = ""
    if split == "train":
        test_files = _imagefolder_split(root, "test", cfg.holdout_fraction)[0]
        test_bad = sum(1 for _, w in _parallel(_verify, test_files) if w)
        if test_bad:
            more = f" (and {test_bad} in the test split)"
    skip = setting("data.skip_bad_images", "true")
    skip = f", or pass {skip} to skip unreadable images" if skip else ""
    return f"{where}: {first} ({why}){more}; fix or delete {'it' if count == 1 else 'them'}{skip}"


def _imagefolder(cfg: DataConfig, split: str, transform):
    if not cfg.path:  # Path("") is the working directory: never read it by accident
        named = setting("data.name", "imagefolder")  # --dataset imagefolder in eval, analyze
        named = "dataset=imagefolder" if not named or named.startswith("data.") else named
        raise UserError(
            f"{named} needs {setting('data.path', 'DIR')} (a folder of images or class folders)"
        )
    root = Path(cfg.path).expanduser()
    files, labels, classes = _imagefolder_split(root, split, cfg.holdout_fraction)
    if not files:
        mean, std = dataset_stats("imagefolder")
        empty = torch.empty(0, 3, cfg.image_size, cfg.image_size, dtype=torch.uint8)
        return TensorImageDataset(
            empty,
            [],
            num_classes=len(classes),
            mean=mean,
            std=std,
            image_size=None,
            classes=classes,
            transform=transform,
        )
    start = time.perf_counter()
    in_memory, arrays, sizes, bad = _load_folder(files, cfg)

    skipped = [files[i] for i in sorted(bad)]
    if bad:
        first = min(bad)
        if not cfg.skip_bad_images:
            raise UserError(
                _unreadable_message(root, split, files[first], bad[first], len(bad), cfg)
            )
        warnings.warn(
            f"skipped {plural(len(bad), 'unreadable image')} of {len(files)} in "
            f"{split_place(root, split, cfg)} (first: {files[first]}: {bad[first]})",
            stacklevel=3,
        )
    keep = [i for i in range(len(files)) if i not in bad]
    if not keep:
        raise UserError(
            f"none of the {plural(len(files), 'image')} in {split_place(root, split, cfg)} is "
            "readable"
        )
    kept_labels = [labels[i] for i in keep]
    distinct = {sizes[i] for i in keep}
    native = min(next(iter(distinct))) if len(distinct) == 1 else None  # shorter side

    if in_memory:
        images = (
            torch.from_numpy(np.stack([arrays[i] for i in keep])).permute(0, 3, 1, 2).contiguous()
        )
        side = native if native is not None else cfg.image_size
        mean, std = dataset_stats("imagefolder", side)
        ds = TensorImageDataset(
            images,
            kept_labels,
            num_classes=len(classes),
            mean=mean,
            std=std,
            image_size=side,
            classes=classes,
            skipped=skipped,
            transform=transform,
        )
    else:
        mean, std = dataset_stats("imagefolder", native)
        ds = ImageFileDataset(
            [files[i] for i in keep],
            kept_labels,
            num_classes=len(classes),
            mean=mean,
            std=std,
            image_size=native,
            classes=classes,
            skipped=skipped,
            transform=transform,
        )
    log.info(
        "%s split of %s: %d images (%s), checked in %.1f s",
        split,
        root,
        len(ds),
        "decoded in memory" if in_memory else "loaded lazily",
        time.perf_counter() - start,
    )
    return ds
