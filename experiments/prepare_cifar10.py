"""Extract the CIFAR-10 JPEG copy and make a class-balanced subset for CPU-sized experiments.

    .venv/bin/python experiments/prepare_cifar10.py --src ../shared/data --dest data/cifar10 --per-class 500

Writes DEST/train and DEST/test (all 60,000 images) and DEST-<N>/train (N images per class, the
first N of each class folder in sorted order); DEST-<N>/test is the full test set (a link) or,
with --test-per-class M, the first M test images of each class.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tarfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default="../shared/data", help="folder with cifar10-*.tar.gz")
    parser.add_argument("--dest", default="data/cifar10")
    parser.add_argument("--per-class", type=int, default=500, help="training images per class")
    parser.add_argument(
        "--test-per-class",
        type=int,
        default=None,
        help="test images per class in the subset (default: the whole test set)",
    )
    args = parser.parse_args()
    dest = Path(args.dest)
    for split in ("train", "test"):
        if not (dest / split).is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            with tarfile.open(Path(args.src) / f"cifar10-{split}.tar.gz") as tar:
                tar.extractall(dest, filter="data")
    subset = dest.with_name(f"{dest.name}-{args.per_class}")
    if not (subset / "train").is_dir():
        for class_dir in sorted((dest / "train").iterdir()):
            out = subset / "train" / class_dir.name
            out.mkdir(parents=True, exist_ok=True)
            for f in sorted(class_dir.iterdir())[: args.per_class]:
                shutil.copy2(f, out / f.name)
    if not (subset / "test").exists():
        if args.test_per_class is None:
            os.symlink((dest / "test").resolve(), subset / "test")
        else:
            for class_dir in sorted((dest / "test").iterdir()):
                out = subset / "test" / class_dir.name
                out.mkdir(parents=True, exist_ok=True)
                for f in sorted(class_dir.iterdir())[: args.test_per_class]:
                    shutil.copy2(f, out / f.name)
    n_train = sum(1 for _ in (subset / "train").rglob("*.jpg"))
    n_test = sum(1 for _ in (subset / "test").rglob("*.jpg"))
    print(f"{subset}: {n_train} training and {n_test} test images")


if __name__ == "__main__":
    main()
