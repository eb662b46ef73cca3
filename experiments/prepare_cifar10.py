"""Extract the CIFAR-10 JPEG copy and make a class-balanced subset for CPU-sized experiments.

    .venv/bin/python experiments/prepare_cifar10.py --src ../shared/data --dest data/cifar10 --per-class 500

Writes DEST/train and DEST/test (all 60,000 images) and DEST-<N>/train (N images per class, the
first N of each class folder in sorted order); DEST-<N>/test is the full test set (a link) or,
with --test-per-class M, the first M test images of each class. DEST-<N>/subset.json records N and
M: a subset made with other numbers is made again, never reused.

Every folder is made whole or not at all (``contrastlab.atomic.build_folder``): filled under a
temporary name beside it (``.train.partial``) and renamed once complete, the subset's
``subset.json`` written last. An interrupted run (Ctrl-C, a full disk) leaves no half folder that
the next run would take as complete: that run makes it again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tarfile
from pathlib import Path, PurePosixPath

from contrastlab.atomic import build_folder, new_folders
from contrastlab.errors import DiskFull, StopRequested, signal_text

SPLITS = ("train", "test")


def fail(message: str) -> None:
    print(f"prepare_cifar10.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _under(split: str):
    """A tarfile extraction filter that keeps the members under ``split/``, without that part
    of their names (the folder they go into stands for it), and checks them as ``"data"``."""

    def take(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        parts = PurePosixPath(member.name).parts
        if len(parts) < 2 or parts[0] != split:
            return None  # the split's own folder entry, or another split's member
        return tarfile.data_filter(member.replace(name="/".join(parts[1:]), deep=False), dest)

    return take


def extract(archive: Path, split: str, out: Path) -> None:
    """The images under ``split/`` in ``archive`` into ``out`` (``out/<class>/<image>``), whole or
    not at all; an archive without them is the user's error."""
    with build_folder(out) as temp:
        try:
            tar = tarfile.open(archive)
        except tarfile.TarError:
            fail(f"{archive} is not a tar archive; give --src the CIFAR-10 JPEG archives' folder")
        with tar:
            tar.extractall(temp, filter=_under(split))
        if not any(p.is_file() for p in temp.rglob("*")):
            fail(f"{archive} holds no images under {split}/; give the CIFAR-10 JPEG archives")


def make_subset(dest: Path, subset: Path, made: dict) -> None:
    """The subset folder ``made`` describes, whole or not at all: ``subset.json`` comes last."""
    with build_folder(subset) as temp:
        copy_first(dest / "train", temp / "train", made["per_class"])
        if made["test_per_class"] is None:
            os.symlink((dest / "test").resolve(), temp / "test")
        else:
            copy_first(dest / "test", temp / "test", made["test_per_class"])
        (temp / "subset.json").write_text(json.dumps(made) + "\n")


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
    for path in (dest, *dest.parents):  # the first that exists must be a folder
        if path.exists():
            if not path.is_dir():
                fail(f"--dest {dest}: {path} is a file, not a folder; give a folder path")
            break
    with new_folders(dest):  # one made here and left empty by a stop or an error is removed
        prepare(args, dest)


def prepare(args, dest: Path) -> None:
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
        if not (dest / split).is_dir():  # there only once complete (build_folder)
            extract(Path(args.src) / f"cifar10-{split}.tar.gz", split, dest / split)
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
    before = json.loads(record.read_text()) if record.is_file() else None
    if before != made:
        if subset.exists():
            if before is None and any(
                p.name not in (*SPLITS, "subset.json") for p in subset.iterdir()
            ):
                fail(
                    f"{subset} holds files this script did not make; move it away or pick another --dest"
                )
            print(f"{subset}: made with {before or 'unknown numbers'}; making it again with {made}")
            shutil.rmtree(subset)  # the test split's link is removed, not followed
        make_subset(dest, subset, made)
    n_train = sum(1 for _ in (subset / "train").rglob("*.jpg"))
    n_test = sum(1 for _ in (subset / "test").rglob("*.jpg"))
    print(f"{subset}: {n_train} training and {n_test} test images")


def stop(signum, frame):
    raise StopRequested(signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, stop)  # as Ctrl-C: the folders being made are removed
    try:
        main()
    except DiskFull as e:
        fail(str(e))
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM
        name = e.signal_name if isinstance(e, StopRequested) else "SIGINT"
        print(
            f"prepare_cifar10.py: stopped by {signal_text(name)}; the folders it completed are kept, "
            "run the same command again to make the rest",
            file=sys.stderr,
        )
        raise SystemExit(128 + getattr(signal, name)) from None
