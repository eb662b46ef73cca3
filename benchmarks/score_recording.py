"""Cost of score recording: a MoCo-like logits step with and without ``score_stats`` + recorder.

    .venv/bin/python benchmarks/score_recording.py [--device cpu|cuda] [--steps 20] [--batch 256]
        [--queue 65536] [--dim 128] [--calls 20] [--default-malloc]

The step is the contrastive part only (logits against the queue, InfoNCE, backward to the query
features), without an encoder, so the printed ratio is an upper bound on the overhead in training.
It also times the pieces of ``score_stats`` against the plain alternatives on the same B x K score
matrix (median of ``--calls`` interleaved calls), and negative interpolation as written out vs ``lerp``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from contrastlab.scores import ScoreRecorder, histogram, score_stats  # noqa: E402
from contrastlab.transforms.feature import interpolate_negatives  # noqa: E402


def main() -> None:
    ap = common.OneLineParser(description=__doc__.splitlines()[0])
    common.add_device(ap, default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=common.POSITIVE, default=20)
    ap.add_argument("--batch", type=common.POSITIVE, default=256)
    ap.add_argument("--queue", type=common.POSITIVE, default=65536)
    ap.add_argument("--dim", type=common.POSITIVE, default=128)
    ap.add_argument("--log-every", type=common.POSITIVE, default=20)
    ap.add_argument(
        "--calls", type=common.POSITIVE, default=20, help="calls of each piece (interleaved)"
    )
    common.add_allocator_flag(ap)
    args = common.parse_args(ap)
    dev = common.device_of(args.device)
    malloc = common.configure_allocator(args, dev)
    info = common.machine_info(dev)
    common.print_header(
        "score recording on an encoder-free step",
        info,
        {**{k: v for k, v in vars(args).items() if k != "default_malloc"}, "malloc": malloc},
    )
    g = torch.Generator(device="cpu").manual_seed(0)
    feats = torch.randn(args.batch, args.dim, generator=g).to(dev).requires_grad_()
    keys = F.normalize(torch.randn(args.batch, args.dim, generator=g), dim=1).to(dev)
    queue = F.normalize(torch.randn(args.queue, args.dim, generator=g), dim=1).to(dev)
    labels = torch.zeros(args.batch, dtype=torch.long, device=dev)

    def step(recorder, i):
        q = F.normalize(feats, dim=1)
        pos = (q * keys).sum(1)
        neg = q @ queue.T
        loss = F.cross_entropy(torch.cat([pos[:, None], neg], 1) / 0.2, labels)
        loss.backward()
        if recorder is not None:
            st = score_stats(pos, neg)
            recorder.update(i, 1, {("z", "raw"): st, ("z", "effective"): st})

    def timed(recorder) -> float:
        for i in range(3):
            step(recorder, i)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for i in range(args.steps):
            step(recorder, 3 + i)
        if recorder is not None:
            recorder.end_epoch(1)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / args.steps

    with tempfile.TemporaryDirectory() as tmp:
        cfg = SimpleNamespace(record=True, bins=200, low=-1.0, high=1.0)
        base = min(timed(None) for _ in range(2))
        rec = min(timed(ScoreRecorder(Path(tmp), cfg, args.log_every)) for _ in range(2))
    print(
        f"device={dev} B={args.batch} K={args.queue} d={args.dim} steps={args.steps} "
        f"threads={torch.get_num_threads()} malloc={malloc}"
    )
    print(f"step without recording: {base * 1e3:.1f} ms")
    print(f"step with recording:    {rec * 1e3:.1f} ms")
    print(
        f"overhead: {(rec - base) * 1e3:.1f} ms per step = {100 * (rec / base - 1):.1f} % "
        "of this encoder-free step"
    )
    components(queue, feats.detach(), args.calls)
    print(f"load average before: {info['load_before']}; after: {common.load_average()}")


def components(queue: torch.Tensor, feats: torch.Tensor, calls: int) -> None:
    """The pieces of score_stats and negative interpolation, each against the plain alternative
    (all timed in interleaved rounds, one call each per round)."""
    with torch.no_grad():
        neg = F.normalize(feats, dim=1) @ queue.T
        pos = neg[:, 0].clone()
        perm = torch.randperm(queue.shape[0])
        lam = torch.tensor(0.3)

        def two_pass():
            mean = neg.mean(dim=1)
            return torch.linalg.vector_norm(neg - mean[:, None], dim=1).square_() / neg.shape[1]

        rows = {
            "variance: torch.var_mean": lambda: torch.var_mean(neg, dim=1, correction=0),
            "variance: mean + two-pass vector_norm (score_stats)": two_pass,
            "histogram: clamp + torch.histc": lambda: torch.histc(
                neg.clamp(-1.0, 1.0), bins=200, min=-1.0, max=1.0
            ),
            "histogram: torch.histc alone (no clamp)": lambda: torch.histc(
                neg, bins=200, min=-1.0, max=1.0
            ),
            "histogram: byte index + bincount (histogram(), CPU)": lambda: histogram(
                neg, 200, -1.0, 1.0
            ),
            "statistics, each pass over the whole matrix": lambda: (
                two_pass(),
                histogram(neg, 200, -1.0, 1.0),
            ),
            "statistics in row blocks of 1M scores (score_stats, CPU)": lambda: score_stats(
                pos, neg
            ),
            "neg. interpolation: lam*n + (1-lam)*n[perm]": lambda: (
                lam * queue + (1 - lam) * queue[perm]
            ),
            "neg. interpolation: lerp (interpolate_negatives)": lambda: interpolate_negatives(
                queue, lam, perm
            ),
        }
    with torch.no_grad():
        t = common.interleaved(rows, rounds=calls, device=queue.device, verbose=False)
    print(f"pieces on the {neg.shape[0]} x {neg.shape[1]} scores (median of {calls} calls):")
    for name in rows:
        print(f"  {name:58s} {t.median(name) * 1e3:7.1f} ms")


if __name__ == "__main__":
    common.run(main, sizes="--batch, --queue or --dim")
