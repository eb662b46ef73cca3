"""Cost of score recording: a MoCo-like logits step with and without ``score_stats`` + recorder.

    python benchmarks/score_recording.py [--device cpu|cuda] [--steps 20] [--batch 256]
        [--queue 65536] [--dim 128]

The step is the contrastive part only (logits against the queue, InfoNCE, backward to the query
features), without an encoder, so the printed ratio is an upper bound on the overhead in training.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from contrastlab.scores import ScoreRecorder, score_stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--queue", type=int, default=65536)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--log-every", type=int, default=20)
    args = ap.parse_args()
    dev = torch.device(args.device)
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
        f"threads={torch.get_num_threads()}"
    )
    print(f"step without recording: {base * 1e3:.1f} ms")
    print(f"step with recording:    {rec * 1e3:.1f} ms")
    print(
        f"overhead: {(rec - base) * 1e3:.1f} ms per step = {100 * (rec / base - 1):.1f} % "
        "of this encoder-free step"
    )


if __name__ == "__main__":
    main()
