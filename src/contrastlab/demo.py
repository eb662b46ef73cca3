"""``make demo``: MoCo v2 on the built-in synthetic dataset, in a few minutes on two CPU cores.

It trains, then compares the kNN accuracy of the trained encoder with that of the same encoder
untrained (a random network is a surprisingly strong baseline on simple images, so the comparison
is the honest measure of what training added), and writes the score figures and the report.
"""

from __future__ import annotations

from pathlib import Path

import torch

from contrastlab.config import load_config
from contrastlab.data.datasets import build_dataset
from contrastlab.methods import build_method
from contrastlab.train import Trainer, knn_monitor_accuracy, seed_everything


def untrained_knn(cfg) -> tuple[float, int]:
    """kNN accuracy (and class count) of a randomly initialized encoder of the same architecture."""
    seed_everything(cfg.seed)
    model = build_method(cfg).eval()
    train = build_dataset(cfg.data, "train")
    test = build_dataset(cfg.data, "test")
    return knn_monitor_accuracy(model, cfg, train, test), train.num_classes


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 instructions (AVX512-BF16 or AMX), where bf16 autocast is ~2x faster
    (docs/benchmarks.md); elsewhere it is emulated and slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        return True
    try:  # other systems: oneDNN's own check
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def run_demo(out_dir: str = "runs", overrides=()) -> dict:
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    amp = "true" if cpu_has_native_bf16() else "false"  # an explicit train.amp=... still wins
    cfg = load_config(
        "demo", [f"out_dir={out_dir}", "train.overwrite=true", f"train.amp={amp}", *overrides]
    )
    precision = "bf16 autocast" if cfg.train.amp else "float32"
    print(
        f"contrastlab demo: MoCo v2 on {cfg.data.synthetic_train} synthetic {cfg.data.image_size}px "
        f"images, {cfg.optim.epochs} epochs, {cfg.model.backbone} x{cfg.model.width} (CPU, "
        f"{precision})"
    )
    before, num_classes = untrained_knn(cfg)
    print(f"kNN top-1 of the untrained encoder: {before:.2f}%")
    result = Trainer(cfg).fit()
    after = result.knn_top1
    print(
        f"kNN top-1 after {result.epochs} epochs ({result.seconds:.0f} s): {after:.2f}% "
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
