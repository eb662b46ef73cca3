"""Views per second: torchvision transforms per image in DataLoader workers against batched views.

    .venv/bin/python benchmarks/views.py [--batch 256] [--batches 8] [--rounds 3] [--workers 2] [--size 32]
        [--device cpu|cuda] [--steps 6] [--no-steps] [--no-compiled]

Part 1, the pipeline alone. Both paths make training batches of views from the same in-memory
uint8 images (CIFAR-sized by default) with the same recipe:

* ``per_image``: ``data.views=per_image``, torchvision ``transforms.v2`` per image in ``--workers``
  DataLoader worker processes (one torch thread each), collated into batches;
* ``batched``: ``data.views=batched``, per-sample parameters drawn as tensors and every view of the
  batch rendered with batched ops in the main process (``views/``), no workers;
* ``compiled``: the same with ``data.views_compile=true`` (the rendering through ``torch.compile``;
  compiled on the first batch, which is not timed).

Recipes: MoCo v2 (2 views), LooC with one atomic augmentation (colour: q, k0, k1) and with three
(colour, rotation, texture: 5 views). Rounds are interleaved; rates count rendered views.

Part 2, the share of a training step spent making views (``--steps`` steps after a warm-up) for the
``demo`` and ``moco_v2_cifar_cpu`` presets as the trainer runs them (batched views, the presets'
models, bf16 where the presets ask for it): the time of the view call over the time of the whole
step (views, forward, backward, optimizer).

Part 3 times single elementwise ops (``where``, comparisons, ``remainder`` against plain
arithmetic) on tensors the size of one channel of a batch of views: the reason the ops in
``views/ops.py`` are written without them.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from contrastlab.allocator import keep_freed_memory  # noqa: E402
from contrastlab.config import load_config  # noqa: E402
from contrastlab.data.augment import CIFAR10_MEAN, CIFAR10_STD  # noqa: E402
from contrastlab.data.datasets import TensorImageDataset  # noqa: E402
from contrastlab.errors import plural  # noqa: E402
from contrastlab.views.pipeline import build_training_views  # noqa: E402

RECIPES = {
    "moco_v2": ["method=moco"],
    "looc_n1": ["method=looc", "looc.augmentations=color", "train.knn_space=z0"],
    "looc_n3": ["method=looc", "looc.augmentations=color,rotation,texture", "train.knn_space=z0"],
}


def images(n: int, size: int) -> TensorImageDataset:
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)
    return TensorImageDataset(
        pixels, torch.zeros(n), num_classes=1, mean=CIFAR10_MEAN, std=CIFAR10_STD, image_size=size
    )


PIPELINES = {
    "per_image": ["data.views=per_image"],
    "batched": ["data.views=batched"],
    "compiled": ["data.views=batched", "data.views_compile=true"],
}


def pipeline_config(recipe: str, views: str, args):
    return load_config(
        "moco_v2_cifar",
        [
            *RECIPES[recipe],
            *PIPELINES[views],
            f"data.num_workers={args.workers}",
            f"data.image_size={args.size}",
        ],
    )


def pipeline(recipe: str, views: str, args, data, device):
    cfg = pipeline_config(recipe, views, args)
    num_views = 2 if cfg.method == "moco" else len(cfg.looc.augmentations) + 2
    return build_training_views(cfg, data, num_views, args.batch, device, False), num_views


def time_epoch(pipe, epoch: int, device) -> tuple[float, int]:
    """Seconds for the batches after the first (worker start-up excluded), and views made."""
    pipe.set_epoch(epoch, epoch)
    it = iter(pipe)
    next(it)
    common.synchronize(device)
    start, count = time.perf_counter(), 0
    for batch in it:
        count += sum(v.shape[0] for v in batch)
    common.synchronize(device)
    return time.perf_counter() - start, count


def pipeline_rates(args, device) -> None:
    data = images(args.batch * (args.batches + 1), args.size)
    print(
        f"\n1. views/s, batch {args.batch}, {plural(args.batches, 'timed batch', 'timed batches')} "
        f"per round, {args.size} px"
    )
    for recipe in RECIPES:
        rates = {v: [] for v in PIPELINES if v != "compiled" or args.compiled}
        pipes = {v: pipeline(recipe, v, args, data, device)[0] for v in rates}
        for r in range(args.rounds):
            for views in rates if r % 2 == 0 else reversed(list(rates)):
                seconds, count = time_epoch(pipes[views], r, device)
                rates[views].append(count / seconds)
        line = f"  {recipe:8s} per_image ({args.workers} workers) "
        line += f"{statistics.median(rates['per_image']):8.0f} views/s"
        for views in list(rates)[1:]:
            ratios = [b / p for b, p in zip(rates[views], rates["per_image"])]
            line += (
                f"   {views} {statistics.median(rates[views]):8.0f} views/s, "
                f"ratio {statistics.median(ratios):5.1f}x ({min(ratios):.1f}-{max(ratios):.1f}x)"
            )
        print(line, flush=True)


def time_views_and_steps(trainer, device) -> tuple[list[float], list[float]]:
    """Wrap the trainer's view renderer and optimizer step with timers: returns the lists that
    receive the seconds of each view call and the time at the end of each step."""
    pipe, optimizer = trainer.views, trainer.optimizer
    render, optimizer_step = pipe.views, optimizer.step
    spent, ends = [], []

    def timed_views(batch, gen):
        common.synchronize(device)
        t0 = time.perf_counter()
        out = render(batch, gen)
        common.synchronize(device)
        spent.append(time.perf_counter() - t0)
        return out

    def timed_step(*a, **k):
        out = optimizer_step(*a, **k)
        common.synchronize(device)
        ends.append(time.perf_counter())
        return out

    pipe.views, optimizer.step = timed_views, timed_step
    return spent, ends


def step_shares(args, device) -> None:
    """The runs go to a temporary folder, removed at the end."""
    with tempfile.TemporaryDirectory(prefix="contrastlab-views-") as out_dir:
        _step_shares(args, device, out_dir)


def _step_shares(args, device, out_dir: str) -> None:
    from contrastlab.train import Trainer

    print(f"\n2. share of a training step spent making views ({args.steps} steps after 2)")
    for preset, extra in (
        ("demo", []),
        (
            "moco_v2_cifar_cpu",
            ["dataset=synthetic", "data.synthetic_train=4096", "data.synthetic_test=16"],
        ),
    ):
        cfg = load_config(
            preset,
            [
                *extra,
                "train.progress=false",
                f"train.device={device.type}",
                f"out_dir={out_dir}",
                "train.overwrite=true",
            ],
        )
        trainer = Trainer(cfg)
        trainer.steps_per_epoch = args.steps + 2
        trainer.prepare_run_dir()
        spent, ends = time_views_and_steps(trainer, device)
        trainer.train_epoch(0)
        steps = [b - a for a, b in zip(ends[1:], ends[2:])]
        share = sum(spent[2 : 2 + len(steps)]) / sum(steps)
        print(
            f"  {preset:18s} batch {trainer.local_batch}: step {statistics.median(steps) * 1e3:7.1f} ms, "
            f"views {statistics.median(spent[2:]) * 1e3:6.1f} ms = {100 * share:4.1f}% of the step",
            flush=True,
        )


def op_costs(args, device) -> None:
    """Why the ops avoid ``where``, comparisons and ``remainder`` on full-size tensors: each
    elementwise op once over one channel of a batch of views, against a plain add."""
    gen = torch.Generator().manual_seed(0)
    shape = (2 * args.batch, args.size, args.size)
    a = torch.rand(shape, generator=gen).to(device)
    b = torch.rand(shape, generator=gen).to(device)
    mask = a > 0.5
    weight = mask.to(a.dtype)
    ops = {
        "a + b": lambda: a + b,
        "torch.where(mask, a, b)": lambda: torch.where(mask, a, b),
        "torch.lerp(b, a, 0/1 weight)": lambda: torch.lerp(b, a, weight),
        "a == b": lambda: a == b,
        "a.sign()": lambda: a.sign(),
        "torch.remainder(a, 6)": lambda: torch.remainder(a, 6.0),
        "a - 6 floor(a / 6)": lambda: a - 6.0 * torch.floor(a * (1 / 6)),
    }
    print(
        f"\n3. one elementwise op over {shape[0]} x {shape[1]} x {shape[2]} floats (median of 30)"
    )
    base = None
    for name, op in ops.items():
        times = []
        for i in range(33):
            common.synchronize(device)
            t0 = time.perf_counter()
            op()
            common.synchronize(device)
            if i >= 3:
                times.append(time.perf_counter() - t0)
        median = statistics.median(times)
        base = base or median
        print(f"  {name:30s} {median * 1e3:7.3f} ms  ({median / base:5.1f}x a + b)", flush=True)


def main() -> None:
    ap = common.OneLineParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=common.POSITIVE, default=256, help="images per batch")
    ap.add_argument(
        "--batches", type=common.POSITIVE, default=8, help="timed batches per round (part 1)"
    )
    ap.add_argument("--rounds", type=common.POSITIVE, default=3, help="interleaved rounds (part 1)")
    ap.add_argument(
        "--workers",
        type=common.NON_NEGATIVE,
        default=2,
        help="DataLoader workers of the per_image pipeline",
    )
    ap.add_argument("--size", type=common.POSITIVE, default=32, help="image side in pixels")
    ap.add_argument(
        "--steps", type=common.POSITIVE, default=6, help="timed training steps per preset (part 2)"
    )
    ap.add_argument("--no-steps", action="store_true", help="skip part 2 (the training steps)")
    ap.add_argument(
        "--no-compiled",
        dest="compiled",
        action="store_false",
        help="leave out data.views_compile=true (torch.compile; needs a C++ compiler on the CPU)",
    )
    common.add_device(ap, default="cuda" if torch.cuda.is_available() else "cpu")
    args = common.parse_args(ap)
    device = common.device_of(args.device)
    for recipe in RECIPES:  # every size checked before any work
        for views in PIPELINES:
            common.check_config(f"--size {args.size}", pipeline_config, recipe, views, args)
    # the in-memory images of part 1 (uint8), before any work
    need = args.batch * (args.batches + 1) * 3 * args.size**2
    common.check_memory(
        need,
        f"--batch {args.batch} --batches {args.batches} --size {args.size}",
        "--batch, --batches or --size",
    )
    if device.type == "cpu":
        keep_freed_memory()  # as the trainer does
    info = common.machine_info(device)
    common.print_header("views per second", info, vars(args))
    pipeline_rates(args, device)
    if not args.no_steps:
        step_shares(args, device)
    op_costs(args, device)
    print(f"\nload average before: {info['load_before']}; after: {common.load_average()}")


if __name__ == "__main__":
    common.run(main, sizes="--batch, --batches or --size")
