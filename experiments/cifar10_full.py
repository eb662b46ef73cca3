"""MoCo v2 on the full CIFAR-10 on a CPU (docs/results.md §0): train, then the kNN curve in both
spaces and the final linear probe.

    .venv/bin/python experiments/cifar10_full.py [--data data/cifar10] [--out runs] [--seed 0] [key=value ...]

The run directory is ``OUT/moco_v2_cifar_cpu-sSEED``; extra ``key=value`` arguments (before or
after the options) are overrides for the training, e.g. ``optim.epochs=2`` for a short try.

1. ``contrastlab train --config moco_v2_cifar_cpu data.path=DATA train.keep_every=10`` (the run's
   own kNN monitor measures both spaces every 10 epochs; ``keep_every`` keeps those weights);
2. ``contrastlab eval knn SNAPSHOT --space backbone|z`` for every kept snapshot that the monitor
   did not measure (z: the official CIFAR demo's monitor space, the normalized 128-d output),
   k 200, T 0.1, all 50,000 training images as the bank and the 10,000 test images as queries;
3. ``contrastlab eval linear last.pt --fast`` (logistic regression on frozen backbone features);
4. the table and the figure ``curve.png`` of both kNN curves, in the output folder.

Every step goes through the ``contrastlab`` command and is skipped when its result exists (the
training when it has run all its ``optim.epochs``), so an interrupted run continues where it
stopped: run the same command again (the training resumes with train.resume=auto). A failing step
ends the script with the command's own error line and one line of the script's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import CLI, sh, train_epochs  # noqa: E402  (experiments/run.py)

from contrastlab.errors import UserError  # noqa: E402

PRESET = "moco_v2_cifar_cpu"
SPACES = ("backbone", "z")


def run(argv: list[str]) -> None:
    sh([*CLI, *argv], prog="cifar10_full.py")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="data/cifar10")
    ap.add_argument("--out", default="runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("overrides", nargs="*", help="key=value overrides for the training")
    args = ap.parse_intermixed_args()
    try:
        full(args)
    except UserError as e:  # a setting the config refuses, before any training
        print(f"cifar10_full.py: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def full(args: argparse.Namespace) -> None:
    from contrastlab.rundir import existing_checkpoints
    from contrastlab.runstate import finished, read_metrics

    name = f"{PRESET}-s{args.seed}"
    run_dir = Path(args.out) / name
    last = run_dir / "checkpoints" / "last.pt"
    settings = [
        f"data.path={args.data}",
        f"seed={args.seed}",
        "train.keep_every=10",
        "train.progress=false",
        *args.overrides,
        f"out_dir={args.out}",
        f"name={name}",
    ]
    metrics = run_dir / "metrics.jsonl"
    if not last.exists() or not finished(read_metrics(metrics), train_epochs(PRESET, settings)):
        again = ["train.resume=auto"] if existing_checkpoints(run_dir) else []
        run(["train", "--config", PRESET, *settings, *again])

    curve = {}  # epoch -> {space: kNN top-1}: the monitor's figures, then the snapshots'
    for event in map(json.loads, metrics.read_text().splitlines()):
        if event["event"] == "knn":
            for space in SPACES:
                if f"knn_top1_{space}" in event:
                    curve.setdefault(event["epoch"], {})[space] = event[f"knn_top1_{space}"]
    for snapshot in sorted(run_dir.glob("checkpoints/epoch-*.pt")):
        epoch = int(snapshot.stem.split("-")[1])
        for space in SPACES:
            if space in curve.get(epoch, {}):
                continue
            out = run_dir / "eval" / f"knn-{space}-{snapshot.stem}.json"
            if not out.exists():
                run(
                    [
                        "eval",
                        "knn",
                        str(snapshot),
                        "--space",
                        space,
                        "--data-path",
                        args.data,
                        "--no-progress",
                        "--out",
                        str(out),
                    ]
                )
            curve.setdefault(epoch, {})[space] = json.loads(out.read_text())["summary"]["top1"]
    linear = run_dir / "eval" / "linear-fast.json"  # as eval linear --fast names it
    if not linear.exists():
        run(
            [
                "eval",
                "linear",
                str(last),
                "--fast",
                "--data-path",
                args.data,
                "--no-progress",
                "--out",
                str(linear),
            ]
        )
    probe = json.loads(linear.read_text())["summary"]

    lines = ["| epoch | kNN backbone (%) | kNN z (%) |", "|---|---|---|"]
    for epoch in sorted(curve):
        cells = [f"{curve[epoch][s]:.1f}" if s in curve[epoch] else "" for s in ("backbone", "z")]
        lines.append(f"| {epoch} | {cells[0]} | {cells[1]} |")
    lines.append("")
    lines.append(f"linear probe (backbone, --fast): {json.dumps(probe)}")
    (run_dir / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for space, label in (("backbone", "backbone (pooled, 128-d)"), ("z", "z (normalized output)")):
        points = sorted((e, c[space]) for e, c in curve.items() if space in c)
        if points:
            ax.plot(*zip(*points), marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("kNN top-1 on the 10,000 test images (%)")
    ax.set_title(f"{PRESET} on CIFAR-10, seed {args.seed}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "curve.png", dpi=120)


if __name__ == "__main__":
    main()
