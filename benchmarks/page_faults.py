"""Page faults per training step with glibc's default malloc and with freed memory kept.

    .venv/bin/python benchmarks/page_faults.py [--steps 3] [--variants moco_64,looc_64,moco_256]
        [--batch N]

Runs each allocator setting in its own process (malloc settings are per process): MoCo v2 at
batch 64 and 256 and LooC (colour) at batch 64 (``--variants`` picks some; ``--batch`` runs each
at that batch instead), ResNet-18 CIFAR stem, split BN 8, K 4096, float32, channels_last as the
trainer runs them. Prints a line per variant as it finishes (the best step time of ``--steps``
steps after one warm-up step and the largest number of minor page faults in a step), then both
settings side by side and each process's peak resident set size.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

VARIANTS = {  # name: (label, preset, overrides, batch)
    "moco_64": ("MoCo v2", "moco_v2_cifar", [], 64),
    "looc_64": ("LooC (colour)", "looc_color", ["looc.augmentations=[color]"], 64),
    "moco_256": ("MoCo v2", "moco_v2_cifar", [], 256),
}
MODES = {"default": "glibc's default malloc", "kept": "freed memory kept"}


def variant_names(text: str) -> list[str]:
    """``--variants``: comma-separated names from VARIANTS."""
    names = text.split(",")
    if not all(name in VARIANTS for name in names):
        raise argparse.ArgumentTypeError(
            f"must be names from {', '.join(VARIANTS)} separated by commas, got {text!r}"
        )
    return list(dict.fromkeys(names))


def plan(args) -> dict[str, tuple]:
    """Label -> (preset, overrides, batch) of each variant to run (``--batch`` replaces each
    variant's batch; variants that become the same run once)."""
    out = {}
    for name in args.variants:
        label, preset, extra, batch = VARIANTS[name]
        batch = args.batch or batch
        out[f"{label}, batch {batch}"] = (preset, extra, batch)
    return out


def config(preset: str, extra: list[str], batch: int):
    from contrastlab.config import load_config

    overrides = ["model.head=mlp", "model.head_hidden=512", "moco.queue_size=4096"]
    return load_config(preset, [*overrides, f"optim.batch_size={batch}", *extra])


def child(kept: bool, args) -> None:
    """Run each variant; print a JSON line per variant as it finishes, then the peak RSS."""
    import torch

    from contrastlab.allocator import keep_freed_memory
    from contrastlab.methods import build_method

    if kept and not keep_freed_memory():
        print(json.dumps({"error": "mallopt unavailable"}), flush=True)
        return
    steps = args.steps
    for label, (preset, extra, batch) in plan(args).items():
        torch.manual_seed(0)
        cfg = config(preset, extra, batch)
        _, channels_last = common.trainer_format(cfg, torch.device("cpu"))
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = build_method(cfg).train()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        views = [
            torch.randn(batch, 3, 32, 32).contiguous(memory_format=fmt)
            for _ in range(model.num_views)
        ]
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
        result = {"label": label, "best_s": min(times), "max_faults": max(faults)}
        print(json.dumps(result), flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mib": peak}), flush=True)


def run_child(mode: str, args) -> dict:
    """One allocator setting in its own process; prints each variant's line as it arrives."""
    argv = [sys.executable, __file__, "--child", mode, "--steps", str(args.steps)]
    argv += ["--variants", ",".join(args.variants)]
    if args.batch:
        argv += ["--batch", str(args.batch)]
    out: dict = {}
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as proc:
        for line in proc.stdout:
            result = json.loads(line)
            if "error" in result:
                print(f"  {MODES[mode]}: {result['error']}", flush=True)
            elif "label" in result:
                out[result["label"]] = result
                print(
                    f"  {MODES[mode]:22s} {result['label']:26s} {result['best_s']:.2f} s, "
                    f"{result['max_faults']:,} faults",
                    flush=True,
                )
            else:
                out.update(result)
    if proc.returncode:
        common.fail(f"the {mode} process failed (exit {proc.returncode}); its error is above")
    return out


def main() -> None:
    ap = common.OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=common.POSITIVE, default=3, help="timed steps per variant")
    ap.add_argument(
        "--variants",
        type=variant_names,
        default=list(VARIANTS),
        help=f"which variants, from {','.join(VARIANTS)} (default: all)",
    )
    ap.add_argument(
        "--batch", type=common.POSITIVE, default=None, help="every variant at this batch size"
    )
    ap.add_argument("--child", choices=list(MODES), help=argparse.SUPPRESS)
    args = common.parse_args(ap)
    if args.child:
        child(args.child == "kept", args)
        return
    import torch

    formats = set()
    for preset, extra, batch in plan(args).values():  # checked before any work
        cfg = common.check_config(f"--batch {batch}", config, preset, extra, batch)
        formats.add(common.trainer_format(cfg, torch.device("cpu"))[1])
    info = common.machine_info(torch.device("cpu"))
    common.print_header(
        "Page faults per step",
        info,
        {
            "steps": args.steps,
            "variants": ", ".join(plan(args)),
            "channels_last": "/".join(map(str, formats)),
        },
    )
    results = {mode: run_child(mode, args) for mode in MODES}
    print("both settings:")
    for label in plan(args):
        cells = [
            f"{m}: {results[m][label]['best_s']:.2f} s, {results[m][label]['max_faults']:,} faults"
            for m in results
            if label in results[m]
        ]
        print(f"  {label:26s} " + "   ".join(cells))
    peaks = [f"{m} {r['peak_rss_mib']:.0f} MiB" for m, r in results.items() if "peak_rss_mib" in r]
    print("  peak RSS: " + ", ".join(peaks))
    print(f"load average before: {info['load_before']}; after: {common.load_average()}")


if __name__ == "__main__":
    common.run(main)
