"""``make demo``: MoCo v2 on the built-in synthetic dataset, in about a minute and a half on two
CPU cores.

It trains, then compares the kNN accuracy of the trained encoder with that of the same encoder
untrained (a random network is a surprisingly strong baseline on simple images, so the comparison
is the honest measure of what training added), and writes the score figures and the report.
"""

from __future__ import annotations

from pathlib import Path

import torch

from contrastlab.config import load_config
from contrastlab.data.datasets import build_dataset
from contrastlab.errors import UserError
from contrastlab.methods import build_method
from contrastlab.train import Trainer, cpu_has_native_bf16, knn_monitor_accuracy, seed_everything


def untrained_knn(cfg) -> tuple[float, int]:
    """kNN accuracy (and class count) of a randomly initialized encoder of the same architecture."""
    seed_everything(cfg.seed)
    model = build_method(cfg).eval()
    train = build_dataset(cfg.data, "train")
    test = build_dataset(cfg.data, "test")
    return knn_monitor_accuracy(model, cfg, train, test), train.num_classes


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def method_name(cfg) -> str:
    """What the run trains, in the papers' words: "MoCo v2", "MoCo v1 with an MLP head",
    "LooC++ (color, rotation) on MoCo v2 views", "MoCo v2 + Feature Transformation"."""
    views = {"moco_v1": "MoCo v1", "moco_v2": "MoCo v2", "none": "MoCo"}[cfg.augment.recipe]
    if cfg.method == "looc":
        name = f"LooC{'++' if cfg.looc.plus_plus else ''} ({', '.join(cfg.looc.augmentations)})"
        name += f" on {views} views" if cfg.augment.recipe != "none" else " on crops"
    else:
        name = views if cfg.augment.recipe != "none" else "MoCo without augmentations"
        usual = "mlp" if cfg.augment.recipe == "moco_v2" else "linear"
        if cfg.augment.recipe != "none" and cfg.model.head != usual:
            name += f" with {'an MLP' if cfg.model.head == 'mlp' else 'a linear'} head"
    if cfg.ft.pos != "none" or cfg.ft.neg != "none":
        name += " + Feature Transformation"
    return name


def run_demo(out_dir: str = "runs", overrides=()) -> dict:
    """Train the ``demo`` preset (with ``overrides``) into ``out_dir``, printing the kNN accuracy
    before and after; returns the run's outputs. ``out_dir=`` among the overrides is refused: the
    folder is ``out_dir`` (the command's ``--out-dir``), which it would silently replace."""
    for text in overrides:
        if text.split("=", 1)[0].strip() == "out_dir":
            raise UserError(
                f"contrastlab demo takes its folder from --out-dir, not from {text}; use "
                f"--out-dir {text.split('=', 1)[1] or 'DIR'}"
            )
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    amp = "true" if cpu_has_native_bf16() else "false"  # an explicit train.amp=... still wins
    # the demo starts afresh each time, unless asked to continue (train.resume=...)
    resumes = any(text.split("=", 1)[0].strip() == "train.resume" for text in overrides)
    fresh = [] if resumes else ["train.overwrite=true"]
    cfg = load_config(
        "demo", [f"out_dir={out_dir}", *fresh, f"train.amp={amp}", *overrides], warn_unused=True
    )
    precision = "bf16 autocast" if cfg.train.amp else "float32"
    earlier = cfg.run_dir / "checkpoints"
    if not resumes and earlier.is_dir() and any(earlier.glob("*.pt")):
        # the demo starts afresh every time: say so before the earlier run's files go
        print(
            f"replacing the earlier demo run in {cfg.run_dir} (to keep it, give this one "
            "another name=NAME or --out-dir DIR)"
        )
    print(
        f"contrastlab demo: {method_name(cfg)} on {cfg.data.synthetic_train} synthetic "
        f"{cfg.data.image_size}px images, {_count(cfg.optim.epochs, 'epoch')}, {cfg.model.backbone} "
        f"x{cfg.model.width} (CPU, {precision})"
    )
    before, num_classes = untrained_knn(cfg)
    print(f"kNN top-1 of the untrained encoder: {before:.2f}%")
    result = Trainer(cfg).fit()
    after = result.knn_top1
    print(
        f"kNN top-1 after {_count(result.epochs, 'epoch')} ({result.seconds:.0f} s): {after:.2f}% "
        f"(untrained {before:.2f}%, chance {100 / num_classes:.0f}%)"
    )
    run_dir = Path(result.run_dir)
    outputs = {
        "config": run_dir / "config.yaml",
        "metrics": run_dir / "metrics.jsonl",
        "checkpoint": result.last_checkpoint,
        "tensorboard": run_dir / "tensorboard",
    }
    try:
        from contrastlab.viz.commands import plot_scores, write_report
    except ImportError:
        plot_scores = write_report = None
    if plot_scores is not None:
        figures = plot_scores([run_dir], run_dir / "figures", overwrite=True)
        outputs["figures"] = run_dir / "figures" if figures else None
        outputs["report"] = write_report(run_dir)
    print(f"run directory: {run_dir}")
    for name, path in outputs.items():
        if path is not None:
            print(f"  {name:11s} {path}")
    return {"knn_untrained": before, "knn_trained": after, "run_dir": str(run_dir)}
