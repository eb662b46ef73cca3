"""The prepared check for a machine with a GPU: one command, about nine minutes on one GPU.

    .venv/bin/python benchmarks/gpu_check.py --data ../shared/data --out OUT [--train-minutes 5]

1. **CUDA correctness**: the tests that only run on CUDA (batched views rendered on the GPU equal
   the CPU's from the same parameters and never wait for the device; Feature Transformation's draws
   stay on the device), through pytest.
2. **Views/s on the device**: ``benchmarks/views.py --device cuda --rounds 2 --no-steps``.
3. **``moco_v2_cifar`` on CIFAR-10** (the archives ``cifar10-train.tar.gz`` and
   ``cifar10-test.tar.gz`` in ``--data``, extracted once into ``OUT/cifar10``, whole or not at
   all: an interrupted extraction is made again by the next run), bf16 autocast,
   channels_last: a one-epoch run measures set-up plus one epoch; then a fresh run trains for as
   many epochs as fit in ``--train-minutes`` (its cosine schedule set to that many), with the kNN
   monitor (z, the official demo's space) at its end; a budget that fits fewer than 2 epochs skips
   that run (one line says so) and reports the one-epoch run alone. Reports seconds per epoch, images/s, the
   peak GPU memory (``torch.cuda.max_memory_allocated``) and the kNN top-1 on the 10,000 test
   images, in ``OUT/gpu_check.json`` and on stdout.

Every number goes to docs/benchmarks.md with the device, date and commit. On a machine without a
GPU, ``--device cpu`` with ``--per-class`` and ``--train-minutes`` small runs the same steps on a
subset (what tests/test_benchmarks.py does), so the script is known to work before a GPU is lent.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from contrastlab.atomic import build_folder, new_folders  # noqa: E402
from contrastlab.config import load_config  # noqa: E402
from contrastlab.train import Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CUDA_TESTS = [
    "tests/views/test_pipeline.py::test_on_cuda_views_never_wait_for_the_device_and_match_the_cpu",
    "tests/transforms/test_feature.py::test_cuda_draws_stay_on_device",
]


def log(line: str) -> None:
    print(line, flush=True)


PREPARED = "prepared.json"  # in the extracted folder, with the --per-class it was made with


def archives_of(folder: Path) -> list[Path]:
    """The two CIFAR-10 archives in ``folder``; a missing one is the user's error, said before
    any step runs."""
    if folder.exists() and not folder.is_dir():
        common.fail(f"--data {folder} is a file; give the folder holding cifar10-train.tar.gz")
    archives = [folder / f"cifar10-{split}.tar.gz" for split in ("train", "test")]
    for archive in archives:
        if not archive.is_file():
            common.fail(f"{archive} does not exist; give --data the folder holding it")
    return archives


def extract_cifar10(archives: Path, dest: Path, per_class: int | None) -> Path:
    """``train/<class>/*.jpg`` and ``test/<class>/*.jpg`` under ``dest`` (all images, or the first
    ``per_class`` of each class of each split), made whole or not at all
    (``contrastlab.atomic.build_folder``): ``dest`` with its ``prepared.json`` saying the same
    ``per_class`` is complete and reused; one made with another ``per_class``, or a half
    extraction of an earlier version (no ``prepared.json``), is made again."""
    wanted = {"per_class": per_class}
    try:
        made = json.loads((dest / PREPARED).read_text())
    except (OSError, ValueError):
        made = None
    if made == wanted:
        return dest
    if dest.exists():
        ours = {"train", "test", PREPARED, ".complete"}  # .complete: the marker before
        if made is None and any(p.name not in ours for p in dest.iterdir()):
            common.fail(f"{dest} holds files gpu_check.py did not make; move it away")
        shutil.rmtree(dest)
    with build_folder(dest) as temp:
        for archive in archives_of(archives):
            taken: dict[str, int] = {}
            with common.open_archive(archive, "--data: the archive") as tar:
                for member in tar:
                    parts = Path(member.name).parts
                    if member.isfile() and len(parts) == 3:
                        count = taken.get(parts[1], 0)
                        if per_class is not None and count >= per_class:
                            continue
                        taken[parts[1]] = count + 1
                    tar.extract(member, temp, filter="data")
        (temp / PREPARED).write_text(json.dumps(wanted) + "\n")  # last
    return dest


def run_step(label: str, argv: list[str], timeout: float) -> dict:
    """Run ``argv`` from the repository root; its output goes through; returns exit code and time."""
    log(f"\n== {label}: {' '.join(argv)}")
    start = time.perf_counter()
    try:
        rc = subprocess.run(argv, cwd=ROOT, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    seconds = time.perf_counter() - start
    log(f"== {label}: exit {rc}, {seconds:.1f} s")
    return {"command": " ".join(argv), "exit": rc, "seconds": round(seconds, 1)}


def train(data: Path, out: Path, name: str, epochs: int, device: str, extra: list[str]) -> dict:
    """One ``moco_v2_cifar`` run of ``epochs`` epochs in this process: wall time, peak memory, kNN."""
    overrides = [
        "dataset=imagefolder",
        f"data.path={data}",
        f"out_dir={out}",
        f"name={name}",
        f"optim.epochs={epochs}",
        f"train.knn_every={epochs}",
        f"train.device={device}",
        "train.amp=true",
        "train.progress=false",
        "train.overwrite=true",
        *extra,
    ]
    cfg = load_config("moco_v2_cifar", overrides)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = Trainer(cfg).fit()
    common.synchronize(torch.device(device))
    seconds = time.perf_counter() - start
    events = [
        json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    rates = sorted(e["images_per_s"] for e in events if e.get("images_per_s"))
    return {
        "command": "contrastlab train --config moco_v2_cifar " + " ".join(overrides),
        "epochs": epochs,
        "steps": result.steps,
        "seconds": round(seconds, 1),
        "final_loss": result.final_loss,
        "knn_top1_z": result.knn_top1,
        "median_images_per_s": rates[len(rates) // 2] if rates else None,
        "peak_gpu_memory_gib": (
            round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None
        ),
    }


STEPS = {"tests", "views", "train"}


def epochs_in_budget(minutes: float, one_epoch_seconds: float) -> int:
    """The epochs of the long run: as many as the one-epoch run (set-up included) says fit in
    ``minutes``; fewer than 2 (no seconds per epoch to tell from set-up) is 0, no long run."""
    epochs = int(minutes * 60 / one_epoch_seconds)
    return epochs if epochs >= 2 else 0


def main() -> None:
    ap = common.OneLineParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--data",
        type=Path,
        default=ROOT.parent / "shared" / "data",
        help="folder with cifar10-train.tar.gz and cifar10-test.tar.gz",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("OUT", "/tmp/gpu_check")),
        help="folder for the extracted images, the runs and gpu_check.json (default: $OUT, "
        "else /tmp/gpu_check)",
    )
    common.add_device(ap, default="cuda")
    ap.add_argument(
        "--train-minutes",
        type=common.positive_number,
        default=5.0,
        help="budget of the long run; one that fits fewer than 2 epochs skips it",
    )
    ap.add_argument(
        "--per-class", type=common.POSITIVE, default=None, help="images per class (a subset)"
    )
    ap.add_argument("--skip", default="", help="comma-separated steps to skip: tests,views,train")
    ap.add_argument("--train-option", action="append", default=[], help="extra KEY=VALUE")
    args = common.parse_args(ap)
    common.device_of(args.device)
    skip = {s for s in args.skip.split(",") if s}
    if skip - STEPS:
        common.fail(
            f"--skip {args.skip}: unknown step(s) {', '.join(sorted(skip - STEPS))}; "
            f"steps are {', '.join(sorted(STEPS))}"
        )
    cfg = common.check_config("--train-option", load_config, "moco_v2_cifar", args.train_option)
    batch = cfg.optim.batch_size
    if "train" not in skip and args.per_class is not None and 10 * args.per_class < batch:
        common.fail(  # CIFAR-10: 10 classes
            f"--per-class {args.per_class}: {10 * args.per_class} training images, fewer than "
            f"one batch (optim.batch_size={batch}); give --per-class {-(-batch // 10)} or more, "
            "or a smaller --train-option optim.batch_size"
        )
    if "train" not in skip:
        archives_of(args.data)  # before the steps that come first: a wrong --data costs nothing
    if args.out.exists() and not args.out.is_dir():
        common.fail(f"--out {args.out} is a file, not a folder; give a folder to write in")
    with new_folders(args.out):  # one made here and left empty by a stop or an error is removed
        args.out.mkdir(parents=True, exist_ok=True)
        checks(args, skip)


def checks(args, skip: set[str]) -> None:
    device = torch.device(args.device)
    report: dict = {"machine": common.machine_info(device)}
    if args.device == "cuda":
        report["machine"]["gpu"] = torch.cuda.get_device_name()
    log(json.dumps(report["machine"]))
    py = [sys.executable]
    if "tests" not in skip:
        report["cuda_tests"] = run_step(
            "CUDA tests", [*py, "-m", "pytest", "-q", "-rs", *CUDA_TESTS], timeout=300
        )
    if "views" not in skip:
        report["views"] = run_step(
            "views/s",
            [*py, "benchmarks/views.py", "--device", args.device, "--rounds", "2", "--no-steps"],
            timeout=240,
        )
    if "train" not in skip:
        data = extract_cifar10(args.data, args.out / "cifar10", args.per_class)
        runs = args.out / "runs"
        log("\n== moco_v2_cifar: one epoch (set-up + epoch)")
        one = train(data, runs, "calibrate", 1, args.device, args.train_option)
        log(json.dumps(one))
        epochs = epochs_in_budget(args.train_minutes, one["seconds"])
        if epochs:
            log(f"\n== moco_v2_cifar: {epochs} epochs")
            full = train(data, runs, "moco_v2_cifar", epochs, args.device, args.train_option)
            full["seconds_per_epoch"] = round((full["seconds"] - one["seconds"]) / (epochs - 1), 2)
            log(json.dumps(full))
        else:
            full = None
            log(
                f"\n== moco_v2_cifar: --train-minutes {args.train_minutes:g} fits fewer than 2 "
                f"epochs (the one-epoch run took {one['seconds']} s); the long run is skipped, "
                f"the one-epoch run is the report (--train-minutes "
                f"{math.ceil(2 * one['seconds'] / 6) / 10:g} or more fits 2)"
            )
        report["train"] = {"one_epoch": one, "run": full}
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"\nwrote {args.out / 'gpu_check.json'}")


if __name__ == "__main__":
    common.run(main)
