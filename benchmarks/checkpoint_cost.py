"""Cost of preemption safety at the CIFAR preset: durable checkpoints and the per-step stop check.

What ``train.checkpoint_minutes`` and the durability steps add to a training run:

* one durable save of the ``moco_v2_cifar`` state (ResNet-18 CIFAR stem, K 4096, SGD momentum):
  the non-finite check, the SHA-256 of the payload, ``torch.save`` to a temporary file, fsync,
  the hard link for ``best.pt``, the renames and the directory fsyncs; and the plain
  ``torch.save`` + rename that checkpoints cost before, for comparison;
* one load with the checksum verified (what a resume pays once);
* the check after every step (``StopPolicy.poll``: a signal flag and a clock in one process).

The overhead of a run is ``save / (60 * checkpoint_minutes) + poll / step``; the step time is an
argument (default: the preset's median step on this 2-core CPU, docs/benchmarks.md section 1,
scaled from batch 128 to the preset's 512).

    .venv/bin/python benchmarks/checkpoint_cost.py [--rounds 5] [--minutes 30] [--step-seconds 12.0]
        [--dir FOLDER]
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from contrastlab.checkpoint import make_state, read_checkpoint, save_checkpoint  # noqa: E402
from contrastlab.config import load_config  # noqa: E402
from contrastlab.methods import build_method  # noqa: E402
from contrastlab.preemption import StopPolicy, StopSignals  # noqa: E402


def main() -> None:
    ap = common.OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=common.POSITIVE, default=5)
    ap.add_argument(
        "--minutes", type=common.positive_number, default=30.0, help="train.checkpoint_minutes"
    )
    ap.add_argument(
        "--step-seconds", type=common.positive_number, default=4 * 2.99, help="seconds per step"
    )
    ap.add_argument(
        "--dir",
        default=None,
        help="an existing folder on the file system to time: the checkpoints go to a temporary "
        "folder made inside it and removed at the end (default: the system's temporary folder)",
    )
    args = common.parse_args(ap)
    cfg = common.check_config(
        f"--minutes {args.minutes:g}",
        load_config,
        "moco_v2_cifar",
        [f"train.checkpoint_minutes={args.minutes:g}"],
    )
    if args.dir is not None and not Path(args.dir).is_dir():
        common.fail(f"--dir {args.dir} is not a folder; give an existing folder to write in")
    try:  # nothing of what --dir holds is touched
        folder = Path(tempfile.mkdtemp(prefix="ckpt-bench-", dir=args.dir))
    except OSError as e:
        common.fail(f"--dir {args.dir}: cannot write there ({e.strerror}); give a writable folder")
    try:
        measure(args, cfg, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def measure(args, cfg, folder: Path) -> None:
    torch.set_num_threads(2)
    info = common.machine_info(torch.device("cpu"))
    common.print_header(
        "checkpoint cost (moco_v2_cifar)",
        info,
        {
            "rounds": args.rounds,
            "minutes": args.minutes,
            "step_seconds": args.step_seconds,
            "folder": folder,
        },
    )
    model = build_method(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():  # momentum buffers, as after the first step
        p.grad = torch.zeros_like(p)
    opt.step()
    state = make_state(cfg, model, opt, 3, 1000, 1.0, {"loss": 1.0, "knn_top1": None})
    last, best = folder / "last.pt", folder / "best.pt"

    def plain() -> None:  # what a checkpoint cost before: torch.save and a rename
        tmp = folder / ".plain.tmp"
        torch.save(state, tmp)
        os.replace(tmp, folder / "plain.pt")

    variants = {
        "plain save (before)": plain,
        "durable save, last.pt": lambda: save_checkpoint(last, state),
        "durable save, last.pt + best.pt": lambda: save_checkpoint(last, state, also=(best,)),
        "load with checksum": lambda: read_checkpoint(last),
    }
    save_checkpoint(last, state)
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - t)
            print(f"round {r + 1} {name}: {times[name][-1]:.3f} s", flush=True)
    size = last.stat().st_size / 2**20
    policy = StopPolicy(StopSignals(), args.minutes)
    n = 100_000
    t = time.perf_counter()
    for _ in range(n):
        policy.poll()
    poll = (time.perf_counter() - t) / n

    print(f"checkpoint size: {size:.1f} MiB")
    print("| operation | median | best |")
    print("|---|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.3f} s | {min(ts):.3f} s |")
    print(f"| stop check per step | {poll * 1e6:.2f} us | |")
    save = statistics.median(times["durable save, last.pt + best.pt"])
    extra = save - statistics.median(times["plain save (before)"])
    overhead = save / (60 * args.minutes) + poll / args.step_seconds
    print(
        f"overhead of checkpoint_minutes={args.minutes:g}: {100 * overhead:.4f}% of training time "
        f"(a durable save every {args.minutes:g} min + the check each {args.step_seconds:g} s "
        f"step); durability adds {extra:.3f} s per save over a plain one"
    )
    print(f"load average before: {info['load_before']}; after: {common.load_average()}")


if __name__ == "__main__":
    common.run(main)
