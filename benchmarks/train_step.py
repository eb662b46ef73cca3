"""One MoCo v2 training step: contrastlab against lightly's MoCo building blocks, and the data pipeline.

    .venv/bin/python benchmarks/train_step.py [--quick] [--device cpu|cuda] [--rounds 5] [--batch 128]
        [--queue 4096] [--channels-last auto|on|off] [--all] [--flops] [--no-memory] [--no-data]
        [--no-lightly] [--bf16] [--threads N] [--profile VARIANT]

The step: ResNet-18 with the CIFAR stem (3x3 stride-1 conv, no max-pool), MoCo v2 MLP head
512 -> 512 -> 128, queue K (4096), batch 128 of 32x32 images already in memory; forward of both
encoders, InfoNCE against the queue, backward, SGD step (momentum 0.9, weight decay 5e-4), momentum
update and enqueue.

* ``contrastlab``: ``MoCo`` built from the ``moco_v2_cifar`` preset with the MLP head
  (``model.head=mlp model.head_hidden=512``), i.e. split BN with 8 splits and shuffled keys, and
  score statistics recorded every step, as the trainer runs it.
* ``lightly``: lightly's documented MoCo example: the same torchvision backbone with plain BN,
  ``MoCoProjectionHead(512, 512, 128)``, ``deactivate_requires_grad`` on deep copies,
  ``update_momentum`` on backbone and head, ``NTXentLoss(memory_bank_size=(K, 128))``.
* ``contrastlab_plainbn`` (with ``--all``): contrastlab with ``model.bn_splits=1`` (plain BN, no key
  shuffle, as in lightly's example), to show what split BN costs.
* ``contrastlab_nchw`` (with ``--all``): contrastlab in NCHW, i.e. split BN's view of the batch as
  ``[N/S, S*C, H, W]`` instead of its channels_last blocks, to show what the memory format gives.

Variants run in interleaved rounds in one process; the ratio is the median of the per-round
``lightly / contrastlab`` time ratios (> 1: contrastlab is faster). Peak memory: each variant in a
child process (see ``benchmarks/common.py``). The data pipeline is timed separately: MoCo v2 CIFAR
views (two per image) from ``contrastlab.data.augment`` over an in-memory uint8 dataset, through a
DataLoader with 0 and 2 workers.

On CUDA both frameworks run under bf16 autocast with channels_last (contrastlab's CUDA defaults).
On CPU they run in float32; ``--bf16`` adds ``*_bf16`` variants of each under CPU bf16 autocast
(``train.amp=true``), which is fast on CPUs with native bf16 instructions (AVX512-BF16, AMX).
``--channels-last auto`` follows the trainer: contrastlab uses channels_last everywhere (split BN
then normalizes contiguous blocks of the batch); lightly's example uses it on CUDA only.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from contrastlab.config import load_config  # noqa: E402
from contrastlab.methods import build_method  # noqa: E402

HEAD_HIDDEN, DIM = 512, 128
SGD = dict(lr=0.06, momentum=0.9, weight_decay=5e-4)
MOMENTUM, TEMPERATURE = 0.99, 0.1
BASES = ("contrastlab", "contrastlab_nchw", "contrastlab_plainbn", "lightly")
VARIANTS = (*BASES, *(f"{base}_bf16" for base in BASES))


def contrastlab_config(batch: int, queue: int, extra: list[str] = ()):
    return load_config(
        "moco_v2_cifar",
        [
            "model.head=mlp",
            f"model.head_hidden={HEAD_HIDDEN}",
            f"model.dim={DIM}",
            f"optim.batch_size={batch}",
            f"moco.queue_size={queue}",
            f"moco.momentum={MOMENTUM}",
            f"moco.temperature={TEMPERATURE}",
            *extra,
        ],
    )


def lightly_moco(queue: int) -> tuple[nn.Module, nn.Module]:
    """lightly's documented MoCo example on the ResNet-18 CIFAR stem: ``(model, criterion)``.

    torchvision's ResNet-18 with a 3x3 stride-1 conv1 and no max-pool, ``MoCoProjectionHead(512,
    HEAD_HIDDEN, DIM)``, momentum copies with ``deactivate_requires_grad``, and
    ``NTXentLoss(memory_bank_size=(queue, DIM))`` (lightly's examples/pytorch/moco.py and its
    CIFAR-10 benchmark).
    """
    from lightly.loss import NTXentLoss
    from lightly.models.modules import MoCoProjectionHead
    from lightly.models.utils import deactivate_requires_grad
    from torchvision.models import resnet18

    backbone = resnet18()
    backbone.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    backbone.maxpool = nn.Identity()
    backbone.fc = nn.Identity()

    class LightlyMoCo(nn.Module):  # the structure of lightly's MoCo example
        def __init__(self, backbone):
            super().__init__()
            self.backbone = backbone
            self.projection_head = MoCoProjectionHead(512, HEAD_HIDDEN, DIM)
            self.backbone_momentum = copy.deepcopy(self.backbone)
            self.projection_head_momentum = copy.deepcopy(self.projection_head)
            deactivate_requires_grad(self.backbone_momentum)
            deactivate_requires_grad(self.projection_head_momentum)

        def forward(self, x):
            return self.projection_head(self.backbone(x).flatten(start_dim=1))

        def forward_momentum(self, x):
            key = self.backbone_momentum(x).flatten(start_dim=1)
            return self.projection_head_momentum(key).detach()

    criterion = NTXentLoss(temperature=TEMPERATURE, memory_bank_size=(queue, DIM))
    return LightlyMoCo(backbone), criterion


def lightly_step(model, criterion, opt, x_q, x_k, amp: bool, device_type: str) -> torch.Tensor:
    """One step of lightly's example loop: momentum update, forward of both encoders, loss, SGD."""
    from lightly.models.utils import update_momentum

    update_momentum(model.backbone, model.backbone_momentum, m=MOMENTUM)
    update_momentum(model.projection_head, model.projection_head_momentum, m=MOMENTUM)
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
        query = model(x_q)
        key = model.forward_momentum(x_k)
        loss = criterion(query, key)
    loss.backward()
    opt.step()
    opt.zero_grad()
    return loss


class Setup:
    """Builds one variant's model, optimizer and inputs, and returns its step function."""

    def __init__(self, args, device: torch.device):
        self.args, self.device = args, device
        self.amp = self.channels_last = False  # set per variant by configure()

    def configure(self, amp: bool) -> None:
        """Precision and memory format of the variant about to be built."""
        self.amp = amp or self.device.type == "cuda"
        if self.args.channels_last == "auto":  # as the trainer decides (train.channels_last=null)
            from contrastlab.train import default_channels_last

            self.channels_last = default_channels_last(self.device)
        else:
            self.channels_last = self.args.channels_last == "on"

    def inputs(self) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(1)
        xs = [torch.randn(self.args.batch, 3, 32, 32, generator=g) for _ in range(2)]
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return [x.to(self.device).contiguous(memory_format=fmt) for x in xs]

    def _finish(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model.train()

    def contrastlab(self, extra: list[str] = ()):
        torch.manual_seed(0)
        cfg = contrastlab_config(self.args.batch, self.args.queue, extra)
        model = self._finish(build_method(cfg))
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], **SGD)
        views, amp = self.inputs(), self.amp

        def step():  # as Trainer.train_epoch runs it
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
                out = model(views, 0)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()

        return step

    def lightly(self):
        torch.manual_seed(0)
        model, criterion = lightly_moco(self.args.queue)
        model, criterion = self._finish(model), criterion.to(self.device)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], **SGD)
        x_q, x_k = self.inputs()
        amp, device_type = self.amp, self.device.type

        def step():
            lightly_step(model, criterion, opt, x_q, x_k, amp, device_type)

        return step

    def build(self, name: str):
        """``contrastlab``, ``contrastlab_nchw``, ``contrastlab_plainbn`` or ``lightly``, with
        ``_bf16``: CPU autocast."""
        base, bf16 = name.removesuffix("_bf16"), name.endswith("_bf16")
        if base == "contrastlab":
            self.configure(bf16)
            return self.contrastlab()
        if base == "contrastlab_nchw":  # split BN in NCHW: the trainer's CPU default before
            self.configure(bf16)
            self.channels_last = False
            return self.contrastlab()
        if base == "contrastlab_plainbn":
            self.configure(bf16)
            return self.contrastlab(["model.bn_splits=1"])
        if base == "lightly":
            self.configure(bf16)
            if self.args.channels_last == "auto":
                self.channels_last = self.device.type == "cuda"  # lightly's example: no NHWC on CPU
            return self.lightly()
        raise ValueError(name)


# ----------------------------------------------------------------------------------------------
# Data pipeline
# ----------------------------------------------------------------------------------------------


class InMemoryImages(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), 0


def data_pipeline(args) -> dict[int, float]:
    from contrastlab.data.augment import CIFAR10_MEAN, CIFAR10_STD, MultiView, build_train_transform

    cfg = contrastlab_config(args.batch, args.queue)
    views = MultiView(build_train_transform(cfg.augment, 32, CIFAR10_MEAN, CIFAR10_STD), 2)
    n = args.batch * (args.data_batches + 1)
    images = torch.randint(
        0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    rates = {}
    threads = torch.get_num_threads()
    for workers, main_threads in ((0, threads), (0, 1), (2, threads)):
        torch.set_num_threads(main_threads)  # workers run with one thread each
        loader = torch.utils.data.DataLoader(
            InMemoryImages(images, views),
            batch_size=args.batch,
            shuffle=True,
            drop_last=True,
            num_workers=workers,
        )
        it = iter(loader)
        next(it)  # worker start-up and the first batch are not counted
        t0 = time.perf_counter()
        count = 0
        for batch, _ in it:
            count += batch[0].shape[0]
        rates[(workers, main_threads)] = count / (time.perf_counter() - t0)
        where = f"main process with {main_threads} torch thread(s)" if not workers else "workers"
        print(
            f"  data pipeline, {workers} workers ({where}): {rates[(workers, main_threads)]:.0f} "
            f"images/s (2 views each, {count} images)",
            flush=True,
        )
    torch.set_num_threads(threads)
    return rates


def comparisons(names: list[str]) -> list[tuple[str, str]]:
    """The ``(contrastlab variant, lightly variant)`` pairs held against the target: only pairs
    at one precision (bf16 autocast speeds up either framework, so a mixed pair measures the
    precision, not the library)."""
    return [
        (name, ref)
        for ref in ("lightly", "lightly_bf16")
        if ref in names
        for name in names
        if name.startswith("contrastlab") and name.endswith("_bf16") == ref.endswith("_bf16")
    ]


def count_flops(step) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def main() -> None:
    ap = common.OneLineParser(description=__doc__.splitlines()[0])
    common.add_device(ap)
    ap.add_argument("--batch", type=common.POSITIVE, default=128)
    ap.add_argument("--queue", type=common.POSITIVE, default=4096)
    ap.add_argument(
        "--rounds", type=common.POSITIVE, default=5, help="interleaved rounds (--quick: 2)"
    )
    ap.add_argument("--steps", type=common.POSITIVE, default=1, help="steps per variant per round")
    ap.add_argument("--warmup", type=common.NON_NEGATIVE, default=1)
    ap.add_argument(
        "--channels-last",
        default="auto",
        choices=["auto", "on", "off"],
        help="auto: as each framework's default (contrastlab: everywhere, as its trainer; "
        "lightly's example: CUDA only); on/off: every variant",
    )
    ap.add_argument(
        "--bf16", action="store_true", help="CPU: also time every variant under bf16 autocast"
    )
    ap.add_argument("--all", action="store_true", help="also time contrastlab with plain BN")
    ap.add_argument("--flops", action="store_true", help="count the FLOPs of contrastlab's step")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-data", action="store_true")
    ap.add_argument("--no-lightly", action="store_true")
    ap.add_argument(
        "--no-timing", action="store_true", help="skip the step timing (memory/data only)"
    )
    ap.add_argument(
        "--data-batches", type=common.POSITIVE, default=8, help="timed data batches (--quick: 3)"
    )
    ap.add_argument(
        "--threads",
        type=common.POSITIVE,
        default=None,
        help="torch.set_num_threads (default: torch's)",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="2 rounds, 3 data batches, where --rounds / --data-batches are not given",
    )
    ap.add_argument(
        "--profile",
        default=None,
        choices=VARIANTS,
        metavar="VARIANT",
        help="print torch.profiler's operator table for one step of VARIANT (e.g. "
        "contrastlab_plainbn) and exit",
    )
    ap.add_argument("--memory-child", default=None, choices=VARIANTS, help=argparse.SUPPRESS)
    common.add_allocator_flag(ap)
    args = common.parse_args(ap, quick={"rounds": 2, "data_batches": 3})
    device = common.device_of(args.device)
    names = ["contrastlab"] + (["contrastlab_nchw", "contrastlab_plainbn"] if args.all else [])
    names += [] if args.no_lightly else ["lightly"]
    if args.bf16 and device.type == "cpu":
        names += [f"{name}_bf16" for name in names]
    if args.profile or args.memory_child:
        names = [args.profile or args.memory_child]
    if any(name.startswith("lightly") for name in names):
        common.require_lightly()
    # every size checked before any work: the configs the variants are built from
    sizes = f"--batch {args.batch} --queue {args.queue}"
    common.check_config(sizes, contrastlab_config, args.batch, args.queue)
    common.set_threads(args.threads)
    malloc = common.configure_allocator(args, device)
    setup = Setup(args, device)

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        step = setup.build(args.profile)
        step(), step()  # warm-up: allocator, oneDNN primitives, optimizer state
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
        return

    if args.memory_child:  # child process: one variant's peak memory
        step = setup.build(args.memory_child)
        common.report_child_memory(step, steps=2, device=device)
        return

    info = common.machine_info(device)
    common.print_header(
        "MoCo v2 training step (ResNet-18 CIFAR stem)",
        info,
        {
            "batch": args.batch,
            "queue": args.queue,
            "malloc": malloc,
            "head": f"512-{HEAD_HIDDEN}-{DIM}",
            "rounds": args.rounds,
            "steps_per_round": args.steps,
            "channels_last": args.channels_last,
            "amp_bf16": "on"
            if device.type == "cuda"
            else ("fp32 and bf16" if args.bf16 else "off"),
        },
    )

    steps = {} if args.no_timing else {name: setup.build(name) for name in names}
    t = (
        None
        if args.no_timing
        else common.interleaved(
            steps, rounds=args.rounds, calls=args.steps, warmup=args.warmup, device=device
        )
    )
    if t is not None:
        print("step times (median over rounds; best; CPU seconds per step):")
    for name in names if t is not None else []:
        print(
            f"  {name:20s} {common.fmt_ms(t.median(name)):>10s}  {args.batch / t.median(name):6.1f} img/s"
            f"   best {args.batch / t.best(name):6.1f} img/s   cpu {t.cpu_median(name):.2f} s"
        )
    for name, ref in comparisons(names) if t is not None else []:
        r = t.ratios(ref, name)
        print(
            f"  speed-up {name} vs {ref}: {t.ratio(ref, name):.2f}x "
            f"(per round: {', '.join(f'{x:.2f}' for x in r)}; target >= 1.3x)"
        )

    if args.flops and t is not None:
        flops = count_flops(steps["contrastlab"])
        print(
            f"  contrastlab step: {flops / 1e9:.1f} GFLOP ({flops / args.batch / 1e9:.2f} GFLOP/image); "
            f"achieved {flops / t.median('contrastlab') / 1e9:.0f} GFLOP/s at the median time"
        )

    if not args.no_memory:
        del steps
        print("peak memory (each variant in a child process, 2 steps):")
        for name in names:
            argv = [
                __file__,
                "--memory-child",
                name,
                "--device",
                args.device,
                "--batch",
                str(args.batch),
                "--queue",
                str(args.queue),
                "--channels-last",
                args.channels_last,
            ]
            if args.threads:
                argv += ["--threads", str(args.threads)]
            if args.default_malloc:
                argv.append("--default-malloc")
            m = common.child_peak_memory(argv)
            if m:
                label = "above set-up" if m["kind"] == "cpu_peak_rss" else "above allocated before"
                print(
                    f"  {name:20s} peak {m['peak_mib']:7.0f} MiB ({m['kind']}), "
                    f"{m['step_mib']:6.0f} MiB {label}",
                    flush=True,
                )

    if not args.no_data:
        print(
            f"data pipeline (MoCo v2 CIFAR views, in-memory uint8, batch {args.batch}):", flush=True
        )
        data_pipeline(args)
    print(f"load average before: {info['load_before']}; after: {common.load_average()}")


if __name__ == "__main__":
    common.run(main, sizes="--batch or --queue")
