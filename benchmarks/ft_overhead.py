"""Cost of Feature Transformation (positive extrapolation + negative interpolation) in a MoCo step.

    .venv/bin/python benchmarks/ft_overhead.py [--quick] [--device cpu|cuda] [--rounds 15] [--preset-rounds 4]
        [--large-rounds 3] [--no-preset] [--no-large] [--no-scores] [--threads N]

Two measurements, each with FT off and on in interleaved rounds of one process; the overhead is
the median of the per-round ``on / off`` time ratios, minus 1.

1. **Backbone-free step** at K 65536, d 128, batch 256 (the issue's sizes), and at the CIFAR
   preset's sizes (K 4096, batch 128). The real ``MoCo`` training step with its encoders replaced
   by a linear projection 512 -> 128 (+ L2 norm) of fixed random "backbone features": momentum
   update, key shuffle, FT, logits against the queue, InfoNCE, score statistics (on by default,
   as in training; with FT they include the raw cosine scores, one more B x K product), backward,
   SGD step, enqueue. Without a backbone the step is the contrastive part only, so this ratio is
   an upper bound of the overhead in training.
2. **Full steps**: the training step of ``moco_v2_cifar`` against ``moco_v2_cifar_ft`` (ResNet-18
   CIFAR stem, split BN, channels_last as the trainer runs it), (a) at the issue's K 65536 / batch 256 and (b) at the preset's K 4096
   with batch 128 instead of the preset's 512, to keep the run affordable on a CPU (FT's extra work
   does not grow with the backbone, so the smaller batch gives the larger relative overhead). Each
   runs four variants: FT off/on x score recording on/off, so the same run also gives the cost of
   score recording against a real step (the target of ``benchmarks/score_recording.py``). On the
   CPU the score statistics are also timed inside the recording variants' steps, a steadier
   figure than the side-by-side ratio on a noisy machine (but one blind to indirect costs).

Targets (from the issues): FT overhead at most 3%; score recording at most 2% of the step.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from contrastlab.config import load_config  # noqa: E402
from contrastlab.methods import build_method  # noqa: E402
from contrastlab.methods.moco import make_momentum_copy  # noqa: E402

FEATURES = 512


class Projection(nn.Module):
    """Stand-in encoder: linear projection of given features, unit-norm output."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc = nn.Linear(FEATURES, dim)

    def forward(self, x):
        return F.normalize(self.fc(x), dim=1)


def make_step(
    preset: str,
    overrides: list[str],
    device: torch.device,
    amp: bool,
    *,
    backbone_free: bool,
    batch: int,
    channels_last: bool = False,
    recording_times: list[float] | None = None,
):
    """A training step of ``preset``; with ``recording_times``, the time of each step's score
    statistics (``pair_stats``, everything score recording adds to the step) is appended to it."""
    torch.manual_seed(0)
    cfg = load_config(preset, [f"optim.batch_size={batch}", *overrides])
    model = build_method(cfg)
    g = torch.Generator().manual_seed(1)
    if backbone_free:
        model.encoder_q = Projection(cfg.model.dim)
        model.encoder_k = make_momentum_copy(model.encoder_q)
        views = [torch.randn(batch, FEATURES, generator=g) for _ in range(2)]
    else:
        views = [torch.randn(batch, 3, 32, 32, generator=g) for _ in range(2)]
    model = model.to(device).train()
    views = [v.to(device) for v in views]
    if recording_times is not None:
        pair_stats = model.pair_stats

        def timed_pair_stats(*args, **kwargs):
            start = time.perf_counter()
            out = pair_stats(*args, **kwargs)
            recording_times.append(time.perf_counter() - start)
            return out

        model.pair_stats = timed_pair_stats
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
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


def overhead(t: common.Timings, num: str, den: str) -> str:
    """``num`` over ``den`` as a percentage: median of per-round ratios, quartiles, best-vs-best;
    and the time per step it adds, paired as the ratios (not a difference of two medians, which
    can disagree with them in sign)."""
    rs = sorted(t.ratios(num, den))
    q1, q3 = rs[len(rs) // 4], rs[(3 * len(rs)) // 4]
    return (
        f"{100 * (t.ratio(num, den) - 1):+.1f}% (median of {len(rs)} per-round ratios; quartiles "
        f"{100 * (q1 - 1):+.1f}% .. {100 * (q3 - 1):+.1f}%; best-vs-best "
        f"{100 * (t.best(num) / t.best(den) - 1):+.1f}%); "
        f"{1e3 * t.difference(num, den):+.1f} ms per step (median of the per-round differences)"
    )


def compare(
    title: str, steps: dict, *, rounds: int, calls: int, device, recording_times=None
) -> common.Timings:
    """Time the variants interleaved; print FT's overhead and, when timed, score recording's."""
    print(f"{title}:", flush=True)
    t = common.interleaved(
        steps, rounds=rounds, calls=calls, warmup=2, device=device, verbose=False
    )
    for name in steps:
        print(
            f"  {name:22s} {common.fmt_ms(t.median(name)):>10s} (best {common.fmt_ms(t.best(name))})"
        )
    for scores in ("", "_no_scores"):
        if f"ft_on{scores}" in steps:
            label = "scores off" if scores else "scores recorded"
            print(
                f"  FT overhead, {label}: {overhead(t, f'ft_on{scores}', f'ft_off{scores}')}; target <= 3%"
            )
    for ft in ("ft_off", "ft_on"):
        if f"{ft}_no_scores" in steps:
            print(
                f"  score recording overhead, {ft.replace('_', ' ')}: "
                f"{overhead(t, ft, f'{ft}_no_scores')}; target <= 2%"
            )
    for name, times in (recording_times or {}).items():
        # The statistics timed inside the same steps: no cross-variant noise, but also no
        # indirect cost (caches); the side-by-side ratio above has both.
        inside = statistics.median(times[-rounds * calls :])
        print(
            f"  score recording timed inside the {name} steps: {common.fmt_ms(inside)} = "
            f"{100 * inside / t.median(name):.1f}% of its median step; target <= 2%"
        )
    return t


def main() -> None:
    ap = common.OneLineParser(description=__doc__.splitlines()[0])
    common.add_device(ap)
    ap.add_argument(
        "--rounds",
        type=common.POSITIVE,
        default=15,
        help="rounds of the backbone-free steps (--quick: 5)",
    )
    ap.add_argument(
        "--calls", type=common.POSITIVE, default=3, help="backbone-free steps per variant per round"
    )
    ap.add_argument(
        "--preset-rounds",
        type=common.POSITIVE,
        default=4,
        help="rounds of the full CIFAR step (--quick: 2)",
    )
    ap.add_argument("--preset-batch", type=common.POSITIVE, default=128)
    ap.add_argument("--no-preset", action="store_true", help="skip the full CIFAR-preset step")
    ap.add_argument(
        "--large-rounds",
        type=common.POSITIVE,
        default=3,
        help="rounds of the full K 65536 step (--quick: 1)",
    )
    ap.add_argument(
        "--no-large", action="store_true", help="skip the full K 65536 / batch 256 step"
    )
    ap.add_argument("--no-scores", action="store_true", help="scores.record=false in every variant")
    ap.add_argument("--threads", type=common.POSITIVE, default=None)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="5 rounds, 2 preset rounds, 1 large round, where those options are not given",
    )
    common.add_allocator_flag(ap)
    args = common.parse_args(ap, quick={"rounds": 5, "preset_rounds": 2, "large_rounds": 1})
    device = common.device_of(args.device)
    if not args.no_preset:  # checked before any work
        cfg = common.check_config(
            f"--preset-batch {args.preset_batch}",
            load_config,
            "moco_v2_cifar",
            [f"optim.batch_size={args.preset_batch}"],
        )
    else:
        cfg = load_config("moco_v2_cifar")
    # the full steps as the trainer runs the presets: bf16 autocast on CUDA, channels_last
    amp, channels_last = common.trainer_format(cfg, device)
    common.set_threads(args.threads)
    malloc = common.configure_allocator(args, device)
    info = common.machine_info(device)
    common.print_header(
        "Feature Transformation overhead",
        info,
        {
            "ft": "pos extrapolate Beta(2,2) + neg interpolate Beta(1.6,1.6), one lambda per step",
            "scores_recorded": not args.no_scores,
            "amp_bf16": amp,
            "channels_last_full_steps": channels_last,
            "malloc": malloc,
        },
    )
    no_scores = ["scores.record=false"]
    extra = no_scores if args.no_scores else []
    # moco_v2 preset's FT settings, on the CIFAR preset's model (any backbone; it is replaced)
    for queue, batch in ((65536, 256), (4096, 128)):
        sizes = [f"moco.queue_size={queue}", "model.dim=128", *extra]
        steps = {
            ft: make_step(preset, sizes, device, amp, backbone_free=True, batch=batch)
            for ft, preset in (("ft_off", "moco_v2_cifar"), ("ft_on", "moco_v2_cifar_ft"))
        }
        compare(
            f"backbone-free step, K {queue}, d 128, batch {batch}",
            steps,
            rounds=args.rounds,
            calls=args.calls,
            device=device,
        )
        del steps
    full = []
    if not args.no_large:
        full.append((65536, 256, args.large_rounds))
    if not args.no_preset:
        full.append((4096, args.preset_batch, args.preset_rounds))
    for queue, batch, rounds in full:
        # Full steps, ResNet-18 CIFAR stem as the preset; FT on/off x scores recorded/not.
        steps, recording_times = {}, {}
        for ft, preset in (("ft_off", "moco_v2_cifar"), ("ft_on", "moco_v2_cifar_ft")):
            for suffix, more in (("", extra), ("_no_scores", no_scores)):
                if suffix and args.no_scores:
                    continue
                if not suffix and not args.no_scores and device.type == "cpu":
                    recording_times[ft] = []  # (on CUDA this would time kernel launches only)
                steps[ft + suffix] = make_step(
                    preset,
                    [f"moco.queue_size={queue}", *more],
                    device,
                    amp,
                    backbone_free=False,
                    batch=batch,
                    channels_last=channels_last,
                    recording_times=recording_times.get(ft + suffix),
                )
        compare(
            f"full step, moco_v2_cifar vs moco_v2_cifar_ft (ResNet-18 CIFAR stem), K {queue}, "
            f"batch {batch}",
            steps,
            rounds=rounds,
            calls=1,
            device=device,
            recording_times=recording_times,
        )
        del steps
    print(f"load average before: {info['load_before']}; after: {common.load_average()}")


if __name__ == "__main__":
    common.run(main)
