"""Extract the CIFAR-10 JPEG copy and make a class-balanced subset for CPU-sized experiments.

    python experiments/prepare_cifar10.py --src ../shared/data --dest data/cifar10 --per-class 500

Writes DEST/train and DEST/test (all 60,000 images) and DEST-<N>/train (N images per class, the
first N of each class folder in sorted order) with DEST-<N>/test linked to the full test set.
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
    parser.add_argument("--per-class", type=int, default=500)
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
        os.symlink((dest / "test").resolve(), subset / "test")
    n_train = sum(1 for _ in (subset / "train").rglob("*.jpg"))
    print(f"{subset}: {n_train} training images, test -> {dest / 'test'}")


if __name__ == "__main__":
    main()
