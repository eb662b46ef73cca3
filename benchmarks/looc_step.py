"""LooC / LooC++ training step against the MoCo step with the same backbone and batch.

    .venv/bin/python benchmarks/looc_step.py [--quick] [--device cpu|cuda] [--batch 64] [--rounds 3]
        [--no-plus-plus] [--threads N]

Variants (all: ResNet-18 CIFAR stem, split BN with 8 splits, MLP head 512 -> 512 -> 128, K 4096
per queue, T 0.2, score statistics recorded, inputs already in memory; channels_last, and bf16
autocast on CUDA, as the trainer runs the presets):

* ``moco``: the ``moco_v2_cifar`` preset with the LooC presets' head (``model.head=mlp
  model.head_hidden=512``, T 0.2): one query view (forward + backward), one key view (forward);
* ``looc_n``: ``looc_color`` with ``looc.augmentations`` = color / color,rotation /
  color,rotation,texture for n = 1, 2, 3: one query view, n + 1 key views through the key encoder,
  n + 1 heads and queues;
* ``loocpp_n``: the same with ``looc.plus_plus=true`` (n extra copies of layer4 in both encoders).

Each step: forward, loss, backward, SGD step, momentum update, enqueue. Variants run in
interleaved rounds; each ratio is the median of the per-round ``variant / moco`` time ratios.
Target (from the issue): at most 1 + 0.3 n times the MoCo step.

Counting passes of the backbone (backward ~ 2 forwards), MoCo costs 3 + 1 = 4 forward units and LooC
3 + (n + 1), i.e. 1 + n / 4 times MoCo, under the target. LooC++ also runs n more layer4 stages
(about a quarter of the CIFAR ResNet-18's FLOPs each) for the query and for each of the n + 1 keys,
which puts its arithmetic alone above 1 + 0.3 n (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from contrastlab.config import load_config  # noqa: E402
from contrastlab.methods import build_method  # noqa: E402

AUGMENTATIONS = {1: "[color]", 2: "[color,rotation]", 3: "[color,rotation,texture]"}
HEAD = ["model.head=mlp", "model.head_hidden=512", "model.dim=128", "moco.temperature=0.2"]


def numbers_of_augmentations(text: str) -> list[int]:
    """``--n``: comma-separated numbers of atomic augmentations, each 1, 2 or 3."""
    try:
        ns = [int(v) for v in text.split(",")]
    except ValueError:
        ns = []
    if not ns or any(n not in AUGMENTATIONS for n in ns):
        raise argparse.ArgumentTypeError(
            f"must be numbers of atomic augmentations from 1, 2, 3 separated by commas "
            f"(e.g. 1,2), got {text!r}"
        )
    return list(dict.fromkeys(ns))


def variants(args) -> dict[str, tuple[str, list[str]]]:
    """Each variant's preset and overrides (besides the batch size)."""
    out = {"moco": ("moco_v2_cifar", HEAD)}
    for pp in [False] if args.no_plus_plus else [False, True]:
        for n in args.n:
            out[f"{'loocpp' if pp else 'looc'}_{n}"] = (
                "looc_color",
                [f"looc.augmentations={AUGMENTATIONS[n]}", f"looc.plus_plus={str(pp).lower()}"],
            )
    return out


def make_step(cfg, device: torch.device, amp: bool, channels_last: bool):
    torch.manual_seed(0)
    batch = cfg.optim.batch_size
    model = build_method(cfg).to(device).train()
    g = torch.Generator().manual_seed(1)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    views = [
        torch.randn(batch, 3, 32, 32, generator=g).to(device).contiguous(memory_format=fmt)
        for _ in range(model.num_views)
    ]
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.06, momentum=0.9, weight_decay=5e-4
    )

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(views, 0)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    return step


def main() -> None:
    ap = common.OneLineParser(description=__doc__.splitlines()[0])
    common.add_device(ap)
    ap.add_argument("--batch", type=common.POSITIVE, default=64, help="(--quick: 32)")
    ap.add_argument("--rounds", type=common.POSITIVE, default=3, help="(--quick: 2)")
    ap.add_argument(
        "--n",
        type=numbers_of_augmentations,
        default=[1, 2, 3],
        help="numbers of atomic augmentations to time, from 1,2,3",
    )
    ap.add_argument("--no-plus-plus", action="store_true", help="skip LooC++")
    ap.add_argument("--threads", type=common.POSITIVE, default=None)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="batch 32, 2 rounds, where --batch / --rounds are not given",
    )
    common.add_allocator_flag(ap)
    args = common.parse_args(ap, quick={"batch": 32, "rounds": 2})
    device = common.device_of(args.device)
    configs = {  # every size checked before any work
        name: common.check_config(
            f"--batch {args.batch}",
            load_config,
            preset,
            [f"optim.batch_size={args.batch}", *extra],
        )
        for name, (preset, extra) in variants(args).items()
    }
    # as the trainer runs them: bf16 autocast on CUDA, channels_last everywhere (the presets
    # leave train.amp and train.channels_last unset)
    amp, cl = common.trainer_format(configs["moco"], device)
    common.set_threads(args.threads)
    malloc = common.configure_allocator(args, device)
    info = common.machine_info(device)
    common.print_header(
        "LooC / LooC++ step vs MoCo",
        info,
        {
            "batch": args.batch,
            "rounds": args.rounds,
            "queue": 4096,
            "bn_splits": 8,
            "amp_bf16": amp,
            "malloc": malloc,
            "channels_last": cl,
        },
    )

    steps = {name: make_step(cfg, device, amp, cl) for name, cfg in configs.items()}
    t = common.interleaved(steps, rounds=args.rounds, warmup=1, device=device)
    print(f"  {'variant':10s} {'median':>10s} {'best':>10s} {'ratio':>7s} {'target':>7s}")
    for name in steps:
        if name == "moco":
            print(
                f"  {name:10s} {common.fmt_ms(t.median(name)):>10s} {common.fmt_ms(t.best(name)):>10s}"
            )
            continue
        n = int(name.rsplit("_", 1)[1])
        ratio, target = t.ratio(name, "moco"), 1 + 0.3 * n
        verdict = "ok" if ratio <= target else "MISSED"
        rs = ", ".join(f"{r:.2f}" for r in t.ratios(name, "moco"))
        print(
            f"  {name:10s} {common.fmt_ms(t.median(name)):>10s} {common.fmt_ms(t.best(name)):>10s} "
            f"{ratio:6.2f}x {target:6.2f}x  {verdict}  (per round: {rs})",
            flush=True,
        )
    print(f"load average before: {info['load_before']}; after: {common.load_average()}")


if __name__ == "__main__":
    common.run(main, sizes="--batch")
