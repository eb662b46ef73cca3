"""Page faults per training step with glibc's default malloc and with freed memory kept.

    .venv/bin/python benchmarks/page_faults.py [--steps 3]

Runs each allocator setting in its own process (malloc settings are per process): MoCo v2 at
batch 64 and 256 and LooC (colour) at batch 64, ResNet-18 CIFAR stem, split BN 8, K 4096, float32.
Prints the best step time of ``--steps`` steps after one warm-up step, the largest number of minor
page faults in a step, and the process's peak resident set size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

VARIANTS = (
    ("MoCo v2, batch 64", "moco_v2_cifar", [], 64),
    ("LooC (colour), batch 64", "looc_color", ["looc.augmentations=[color]"], 64),
    ("MoCo v2, batch 256", "moco_v2_cifar", [], 256),
)


def child(kept: bool, steps: int) -> dict:
    import torch

    from contrastlab.allocator import keep_freed_memory
    from contrastlab.config import load_config
    from contrastlab.methods import build_method

    if kept and not keep_freed_memory():
        return {"error": "mallopt unavailable"}
    out = {}
    for label, preset, extra, batch in VARIANTS:
        torch.manual_seed(0)
        cfg = load_config(
            preset,
            [
                "model.head=mlp",
                "model.head_hidden=512",
                "moco.queue_size=4096",
                f"optim.batch_size={batch}",
                *extra,
            ],
        )
        model = build_method(cfg).train()
        views = [torch.randn(batch, 3, 32, 32) for _ in range(model.num_views)]
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=0.06, momentum=0.9, weight_decay=5e-4)

        def step(model=model, views=views, opt=opt):
            loss = model(views, 0).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step()  # warm-up
        times, faults = [], []
        for _ in range(steps):
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        out[label] = {"best_s": min(times), "max_faults": max(faults)}
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--child", choices=["default", "kept"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child == "kept", args.steps)))
        return
    import torch

    info = common.machine_info(torch.device("cpu"))
    common.print_header("Page faults per step", info, {"steps": args.steps})
    results = {}
    for mode in ("default", "kept"):
        proc = subprocess.run(
            [sys.executable, __file__, "--child", mode, "--steps", str(args.steps)],
            capture_output=True,
            text=True,
            check=True,
        )
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    for label, *_ in VARIANTS:
        cells = [
            f"{m}: {results[m][label]['best_s']:.2f} s, {results[m][label]['max_faults']:,} faults"
            for m in results
        ]
        print(f"  {label:26s} " + "   ".join(cells))
    print("  peak RSS: " + ", ".join(f"{m} {results[m]['peak_rss_mib']:.0f} MiB" for m in results))
    print(f"load average before: {info['load_before']}; after: {common.load_average()}")


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
