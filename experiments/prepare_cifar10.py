"""Extract the CIFAR-10 JPEG copy and make a class-balanced subset for CPU-sized experiments.

    .venv/bin/python experiments/prepare_cifar10.py --src ../shared/data --dest data/cifar10 --per-class 500

Writes DEST/train and DEST/test (all 60,000 images) and DEST-<N>/train (N images per class, the
first N of each class folder in sorted order); DEST-<N>/test is the full test set (a link) or,
with --test-per-class M, the first M test images of each class. DEST-<N>/subset.json records N and
M: a subset made with other numbers is made again, never reused.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path

SPLITS = ("train", "test")


def fail(message: str) -> None:
    print(f"prepare_cifar10.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def class_sizes(folder: Path) -> dict[str, int]:
    return {d.name: sum(1 for _ in d.iterdir()) for d in sorted(folder.iterdir()) if d.is_dir()}


def copy_first(src: Path, out: Path, n: int) -> None:
    """The first ``n`` images of every class folder of ``src``, in sorted order, into ``out``."""
    for class_dir in sorted(d for d in src.iterdir() if d.is_dir()):
        (out / class_dir.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(class_dir.iterdir())[:n]:
            shutil.copy2(f, out / class_dir.name / f.name)


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
    for option, value in (
        ("--per-class", args.per_class),
        ("--test-per-class", args.test_per_class),
    ):
        if value is not None and value < 1:
            fail(f"{option} must be a number of images >= 1, got {value}")
    dest = Path(args.dest)
    missing = [
        Path(args.src) / f"cifar10-{split}.tar.gz"
        for split in SPLITS
        if not (dest / split).is_dir()
        and not (Path(args.src) / f"cifar10-{split}.tar.gz").is_file()
    ]
    if missing:
        fail(
            f"{' and '.join(map(str, missing))} not found; give --src the folder that holds "
            "cifar10-train.tar.gz and cifar10-test.tar.gz"
        )
    for split in SPLITS:
        if not (dest / split).is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            with tarfile.open(Path(args.src) / f"cifar10-{split}.tar.gz") as tar:
                tar.extractall(dest, filter="data")
    wanted = {"train": args.per_class, "test": args.test_per_class}
    for split, n in wanted.items():
        have = class_sizes(dest / split)
        if n is not None and n > min(have.values()):
            fail(
                f"--{'per-class' if split == 'train' else 'test-per-class'} {n} is more than the "
                f"{min(have.values())} {split} images of the smallest class in {dest / split}"
            )
    subset = dest.with_name(f"{dest.name}-{args.per_class}")
    record = subset / "subset.json"
    made = {"per_class": args.per_class, "test_per_class": args.test_per_class}
    if subset.exists():
        before = json.loads(record.read_text()) if record.is_file() else None
        if before != made:
            if before is None and any(
                p.name not in (*SPLITS, "subset.json") for p in subset.iterdir()
            ):
                fail(
                    f"{subset} holds files this script did not make; move it away or pick another --dest"
                )
            print(f"{subset}: made with {before or 'unknown numbers'}; making it again with {made}")
            for split in SPLITS:
                part = subset / split
                if part.is_symlink() or part.is_file():
                    part.unlink()
                elif part.is_dir():
                    shutil.rmtree(part)
            record.unlink(missing_ok=True)
    if not record.is_file():
        copy_first(dest / "train", subset / "train", args.per_class)
        if args.test_per_class is None:
            os.symlink((dest / "test").resolve(), subset / "test")
        else:
            copy_first(dest / "test", subset / "test", args.test_per_class)
        record.write_text(json.dumps(made) + "\n")
    n_train = sum(1 for _ in (subset / "train").rglob("*.jpg"))
    n_test = sum(1 for _ in (subset / "test").rglob("*.jpg"))
    print(f"{subset}: {n_train} training and {n_test} test images")


if __name__ == "__main__":
    main()
