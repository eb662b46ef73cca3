"""Run the experiments of docs/results.md: train every variant and seed, evaluate, tabulate.

    .venv/bin/python experiments/run.py ft               # MoCo v2 vs + Feature Transformation (CIFAR-10 subset)
    .venv/bin/python experiments/run.py momentum         # key-encoder momentum study, score curves
    .venv/bin/python experiments/run.py ft_cifar_stem    # both again with the CIFAR stem and 180 steps
    .venv/bin/python experiments/run.py momentum_cifar_stem
    .venv/bin/python experiments/run.py ft_late_start    # FT switched on halfway through the CIFAR-stem runs
    .venv/bin/python experiments/run.py looc_synthetic   # MoCo vs LooC on the synthetic factors
    .venv/bin/python experiments/run.py looc_synthetic_hue   # MoCo, LooC (colour) with hue jitter 0.5
    .venv/bin/python experiments/run.py looc_cifar       # MoCo, MoCo + rotation, LooC(rotation) on CIFAR-10
    .venv/bin/python experiments/run.py looc_cifar_stem  # the same with the CIFAR stem and 180 steps

Every step goes through the ``contrastlab`` command, exactly as a user would run it. A training
that has run all its epochs and an evaluation whose result exists are skipped, and a training that
stopped part-way resumes (``train.resume=auto``), so an interrupted experiment continues where it
stopped: run the same command again. Extra ``key=value`` arguments (before or after the options)
are overrides for every training run. Results go to ``runs/experiments/<experiment>/`` with a
``summary.md`` (mean ± sample std over seeds).
"""

from __future__ import annotations

import argparse
import functools
import json
import signal
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

from contrastlab.errors import EXIT_STOPPED, UserError

CLI = [sys.executable, "-m", "contrastlab"]
CIFAR = "experiments/cifar_cpu.yaml"
CIFAR_STEM = "experiments/cifar_stem_cpu.yaml"
SYNTHETIC = "experiments/synthetic_cpu.yaml"
FT = {
    "MoCo v2": [],
    "+ pos. extrapolation": ["ft.pos=extrapolate"],
    "+ neg. interpolation": ["ft.neg=interpolate"],
    "+ both": ["ft.pos=extrapolate", "ft.neg=interpolate"],
}
LOOC_SYNTHETIC = {
    "MoCo": [],
    "MoCo + rotation aug.": ["augment.rotation=true"],
    "LooC (colour)": ["method=looc", "looc.augmentations=[color]"],
    "LooC (rotation)": ["method=looc", "looc.augmentations=[rotation]"],
    "LooC (colour, rotation)": ["method=looc", "looc.augmentations=[color,rotation]"],
    "LooC++ (colour, rotation)": [
        "method=looc",
        "looc.augmentations=[color,rotation]",
        "looc.plus_plus=true",
    ],
}


def momentum_study(config: str, ft_experiment: str) -> dict:
    """Key-encoder momentum m in {0.9, 0.99, 0.999, 1}, seed 0; m = 0.99 is the MoCo v2 run of
    ``ft_experiment`` (the same settings), evaluated rather than retrained."""
    return dict(
        config=config,
        seeds=[0],
        evals=["linear"],
        variants={f"m={m}": [f"moco.momentum={m}"] for m in (0.9, 0.999, 1.0)},
        reuse={"m=0.99": (ft_experiment, "MoCo v2")},
    )


def looc_cifar(config: str, ft_experiment: str) -> dict:
    """MoCo + rotation augmentation and LooC (rotation) on CIFAR-10, 3 seeds, probed for classes
    and rotation; MoCo is the MoCo v2 run of ``ft_experiment`` (the same settings), evaluated here
    for rotation too."""
    return dict(
        config=config,
        seeds=[0, 1, 2],
        evals=["linear", "rotation"],
        variants={
            "MoCo + rotation aug.": ["augment.rotation=true"],
            "LooC (rotation)": ["method=looc", "looc.augmentations=[rotation]"],
        },
        reuse={"MoCo": (ft_experiment, "MoCo v2")},
    )


EXPERIMENTS = {
    "ft": dict(config=CIFAR, variants=FT, seeds=[0, 1, 2], evals=["linear"]),
    "momentum": momentum_study(CIFAR, "ft"),
    # the same two studies with the CIFAR stem and 180 steps, where MoCo v2 learns (bf16 on CPU)
    "ft_cifar_stem": dict(config=CIFAR_STEM, variants=FT, seeds=[0, 1, 2], evals=["linear"]),
    "momentum_cifar_stem": momentum_study(CIFAR_STEM, "ft_cifar_stem"),
    # FT switched on halfway (ft.start_epoch=6: epochs 7-12 of 12), after plain MoCo v2; against
    # the runs of ft_cifar_stem with FT from the first step
    "ft_late_start": dict(
        config=CIFAR_STEM,
        seeds=[0, 1, 2],
        evals=["linear"],
        variants={
            "+ pos. extrapolation from epoch 7": ["ft.pos=extrapolate", "ft.start_epoch=6"],
            "+ both from epoch 7": ["ft.pos=extrapolate", "ft.neg=interpolate", "ft.start_epoch=6"],
        },
        reuse={
            "MoCo v2": ("ft_cifar_stem", "MoCo v2"),
            "+ pos. extrapolation from epoch 1": ("ft_cifar_stem", "+ pos. extrapolation"),
        },
    ),
    "looc_synthetic": dict(
        config=SYNTHETIC, variants=LOOC_SYNTHETIC, seeds=[0, 1, 2], evals=["factors"]
    ),
    # MoCo and LooC (colour) again with a hue jitter that erases the synthetic set's 8 hues
    # (augment.hue=0.5: any hue), the premise of the paper's colour experiment
    "looc_synthetic_hue": dict(
        config=SYNTHETIC,
        seeds=[0, 1, 2],
        evals=["factors"],
        variants={
            label: ["augment.hue=0.5", *LOOC_SYNTHETIC[label]]
            for label in ("MoCo", "LooC (colour)")
        },
    ),
    "looc_cifar": looc_cifar(CIFAR, "ft"),
    # the same with the CIFAR stem and 180 steps, where MoCo v2 learns (bf16 on CPU)
    "looc_cifar_stem": looc_cifar(CIFAR_STEM, "ft_cifar_stem"),
}


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_").replace("__", "_")


STOP_SIGNALS = [getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, n)]


def sh(args: list[str], prog: str = "run.py") -> None:
    """Run one command. When it fails, its own error line is above: one more line names the step
    and how to go on, and ``prog`` exits with the command's status. A stop signal (Ctrl-C,
    SIGTERM, SIGUSR1) is left to the running command (a training writes its checkpoint, exit 75;
    the signal reaches it with the process group, as Ctrl-C, timeout and SLURM send it); ``prog``
    stops after it with one line, and its next run resumes there."""
    shown = " ".join(args[2:] if args[:2] == CLI[:2] else args)
    print("$", shown, flush=True)
    received = []
    previous = {sig: signal.signal(sig, lambda n, f: received.append(n)) for sig in STOP_SIGNALS}
    try:
        code = subprocess.run(args).returncode
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code == EXIT_STOPPED or received:
        print(
            f"{prog}: stopped in `{shown}`; to continue, run the same {prog} command again "
            "(a training resumes from its checkpoint, finished steps are skipped)",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_STOPPED)
    if code:
        print(
            f"{prog}: `{shown}` failed (exit status {code}, its error is above); fix that and run "
            f"the same {prog} command again (finished steps are skipped)",
            file=sys.stderr,
        )
        raise SystemExit(code if code > 0 else 1)


@functools.cache
def _cli_parser() -> argparse.ArgumentParser:
    from contrastlab.cli import build_parser

    return build_parser()


def result_file(argv: list[str]) -> Path:
    """Where ``contrastlab eval ...`` (``argv``) writes its result: the command's own naming
    (``linear-fast.json`` for ``eval linear --fast``)."""
    from contrastlab.eval.commands import result_file

    return result_file(_cli_parser().parse_args(argv))


def eval_argv(protocol: str, checkpoint: Path, space: str) -> list[str]:
    argv = ["eval", protocol, str(checkpoint), "--space", space, "--no-progress"]
    if protocol == "linear":
        argv.append("--fast")
    return argv  # eval factors reads the synthetic set without --dataset: factors.json


def train_epochs(config: str, overrides: list[str]) -> int:
    """``optim.epochs`` of the training that ``--config config overrides`` runs."""
    from contrastlab.config import load_config

    with warnings.catch_warnings():  # the train command itself warns
        warnings.simplefilter("ignore")
        return load_config(config, overrides).optim.epochs


def spaces_of(overrides: list[str]) -> list[str]:
    """Feature spaces to probe: the backbone, and for LooC every head (and LooC++'s concat)."""
    if "method=looc" not in overrides:
        return ["backbone"]
    augs = next(o for o in overrides if o.startswith("looc.augmentations="))
    names = augs.split("=", 1)[1].strip("[]").split(",")
    extra = ["concat"] if "looc.plus_plus=true" in overrides else []
    return ["backbone", "z0", *names, *extra]


def run_variant(
    spec: dict, label: str, overrides: list[str], seed: int, root: Path, extra: list[str]
) -> Path:
    from contrastlab.rundir import existing_checkpoints
    from contrastlab.runstate import finished, read_metrics

    name = f"{slug(label)}-s{seed}"
    run_dir = root / name
    ckpt = run_dir / "checkpoints" / "last.pt"
    settings = [*overrides, *extra, f"seed={seed}", f"out_dir={root}", f"name={name}"]
    epochs = train_epochs(spec["config"], settings)
    if not ckpt.exists() or not finished(read_metrics(run_dir / "metrics.jsonl"), epochs):
        # continue a training that stopped part-way; clear a folder without a checkpoint
        again = "train.resume=auto" if existing_checkpoints(run_dir) else "train.overwrite=true"
        sh([*CLI, "train", "--config", spec["config"], *settings, again])
    for protocol in spec["evals"]:
        for space in spaces_of(overrides):
            argv = eval_argv(protocol, ckpt, space)
            if not result_file(argv).exists():
                sh([*CLI, *argv])
    return run_dir


def last(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "last.pt"


def final_knn(run_dir: Path) -> float | None:
    knn = None
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("event") == "knn":
            knn = record["knn_top1"]
    return knn


def mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def summarize(spec: dict, runs: dict[str, list[Path]]) -> str:
    n = len(spec["seeds"])
    lines = []
    if spec["evals"] == ["factors"]:
        lines += [
            "| method | space | shape | colour | texture | rotation |",
            "|---|---|---|---|---|---|",
        ]
        for label, dirs in runs.items():
            for space in spaces_of(spec["variants"].get(label, [])):
                rows = [
                    json.loads(result_file(eval_argv("factors", last(d), space)).read_text())[
                        "summary"
                    ]
                    for d in dirs
                ]
                cells = [
                    mean_std([r[f] for r in rows])
                    for f in ("shape", "color", "texture", "rotation")
                ]
                lines.append(f"| {label} | {space} | " + " | ".join(cells) + " |")
    else:
        protocols = spec["evals"]
        header = ["method", "kNN top-1"] + [
            {"linear": "linear top-1", "rotation": "rotation probe"}[p] for p in protocols
        ]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for label, dirs in runs.items():
            cells = [mean_std([final_knn(d) for d in dirs])]
            for p in protocols:
                cells.append(
                    mean_std(
                        [
                            json.loads(result_file(eval_argv(p, last(d), "backbone")).read_text())[
                                "summary"
                            ]["top1"]
                            for d in dirs
                        ]
                    )
                )
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Mean ± sample standard deviation over {n} seed(s) ({', '.join(map(str, spec['seeds']))})."
    )
    return "\n".join(lines) + "\n"


def seed_list(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers (e.g. 0,1,2)"
        ) from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", choices=sorted(EXPERIMENTS))
    parser.add_argument("--root", default="runs/experiments")
    parser.add_argument(
        "--seeds",
        type=seed_list,
        default=None,
        help="comma-separated seeds (default: the experiment's)",
    )
    parser.add_argument("overrides", nargs="*", help="extra key=value for every training run")
    args = parser.parse_intermixed_args()  # key=value before and after the options
    try:
        run(args)
    except UserError as e:  # a setting the config refuses, before any training
        print(f"run.py: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def run(args: argparse.Namespace) -> None:
    spec = dict(EXPERIMENTS[args.experiment])
    if args.seeds:
        spec["seeds"] = args.seeds
    root = Path(args.root) / args.experiment
    start = time.time()
    runs: dict[str, list[Path]] = {}
    for seed in spec["seeds"]:  # seed-major: a partial experiment still covers every variant
        for label, (source, source_label) in spec.get("reuse", {}).items():
            # a run of another experiment with exactly these settings: evaluated, not retrained
            source_spec = EXPERIMENTS[source]
            runs.setdefault(label, []).append(
                run_variant(
                    {**source_spec, "evals": spec["evals"]},
                    source_label,
                    source_spec["variants"][source_label],
                    seed,
                    Path(args.root) / source,
                    args.overrides,
                )
            )
        for label, overrides in spec["variants"].items():
            runs.setdefault(label, []).append(
                run_variant(spec, label, overrides, seed, root, args.overrides)
            )
    table = summarize(spec, runs)
    (root / "summary.md").write_text(table)
    print(table)
    print(f"{args.experiment}: {time.time() - start:.0f} s")
    # score curves of the first seed of every variant, overlaid; the labels name the settings
    # that differ and each run's final kNN accuracy
    first = [dirs[0] for dirs in runs.values()]
    sh([*CLI, "scores", *map(str, first), "--out", str(root / "figures")])


if __name__ == "__main__":
    main()
