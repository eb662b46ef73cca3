"""One epoch end to end on CIFAR-10: lightly's documented MoCo example against `contrastlab train`.

    .venv/bin/python benchmarks/end_to_end.py [--data DIR | --tar ../shared/data/cifar10-train.tar.gz]
        [--limit N] [--batch 256] [--workers 2] [--bf16 | --as-documented] [--threads N]
        [--no-lightly]

Both train the same model for one epoch over the same images (the ``train/`` class folders of
``--data``, by default the 50,000 CIFAR-10 training images extracted from ``--tar`` into a
temporary folder): ResNet-18 with the CIFAR stem, MLP head 512 -> 512 -> 128, K 4096, m 0.99,
T 0.1, SGD lr 0.06, momentum 0.9, weight decay 5e-4, batch 256, MoCo v2 views without blur.

* ``lightly``: its documented example loop (examples/pytorch/moco.py, with the data set up as in its
  CIFAR-10 benchmark): ``LightlyDataset(train/, MoCoV2Transform(input_size=32, gaussian_blur=0.0))``
  and a ``DataLoader`` (shuffle, drop_last, ``--workers`` workers: each decodes its JPEG files and
  makes the two views per image), the model and step of ``train_step.lightly_moco``/``lightly_step``.
* ``contrastlab``: ``Trainer(cfg).fit()``, i.e. ``contrastlab train --config moco_v2_cifar
  model.head=mlp model.head_hidden=512 optim.batch_size=256 dataset=imagefolder data.path=DIR
  optim.epochs=1 train.knn_every=0`` (split BN, shuffled keys, scores recorded, checkpoint at the
  end), in this process. The folder is decoded into memory once and the views are made per batch
  (``data.views=batched``, the default).

Timed: the epoch (lightly: from creating the loader's iterator, worker start-up included, to the
last step; contrastlab: ``Trainer.train_epoch``). Set-up is reported separately (lightly lists the
folder; contrastlab decodes it into memory and builds the model), as are contrastlab's checkpoint
and the extraction. ``--limit N`` runs only the first N steps of each (N x batch images) and
extrapolates the epoch from their rate, labelled as such.

Threads: each runs as by default: torch's threads (``--threads``) in the main process, plus, for
lightly, its DataLoader workers (one torch thread each); contrastlab has no workers here. lightly
runs first: contrastlab's trainer sets glibc's malloc to keep freed memory (process-wide), which
lightly's example does not do. ``--bf16``: both under CPU bf16 autocast (contrastlab
``train.amp=true``). ``--as-documented``: each at the precision its documentation runs it on this
CPU: lightly's example in float32 (it has no autocast), contrastlab under bf16 autocast (as its CPU
preset ``moco_v2_cifar_cpu`` asks where the CPU has native bf16). That ratio mixes the library with
the precision: lightly's step gains as much from autocast (``--bf16``), so it is reported beside the
equal-precision ratios, never instead of them.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from train_step import SGD, contrastlab_config, lightly_moco, lightly_step  # noqa: E402

QUEUE = 4096


def require_full_batch(args, images: int) -> None:
    """One line and exit 2 where ``--batch`` is larger than the training images: no full batch,
    nothing to time."""
    if args.batch > images:
        common.fail(
            f"--batch {args.batch} is larger than the {images} training images of "
            f"{args.data or args.tar}; give --batch {images} or less"
        )


def training_folder(args, stack: contextlib.ExitStack) -> Path:
    """A folder with ``train/`` class folders: ``--data``, or ``--tar`` extracted to a temp dir."""
    if args.data:
        root = Path(args.data)
        if not (root / "train").is_dir():
            common.fail(f"--data {root} has no train/ folder; give a folder with train/<class>/")
        require_full_batch(args, sum(1 for p in (root / "train").glob("*/*") if p.is_file()))
        return root
    tar = Path(args.tar)
    if not tar.is_file():
        common.fail(f"--tar {tar} does not exist; pass --tar FILE or --data DIR")
    start = time.perf_counter()
    with common.open_archive(tar, "--tar") as f:
        members = f.getmembers()  # listed first: a batch larger than the data costs no extraction
        train = [m for m in members if m.isfile() and m.name.count("/") == 2]
        train = [m for m in train if m.name.startswith("train/")]
        if not train:
            common.fail(f"{tar} holds no train/ folder (expected train/<class>/*.jpg)")
        require_full_batch(args, len(train))
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="contrastlab-e2e-")))
        f.extractall(root, members=members, filter="data")
    print(f"data: extracted {tar} to {root} in {time.perf_counter() - start:.1f} s", flush=True)
    return root


def run_lightly(args, train_dir: Path) -> dict:
    from lightly.data import LightlyDataset
    from lightly.transforms import MoCoV2Transform

    start = time.perf_counter()
    transform = MoCoV2Transform(input_size=32, gaussian_blur=0.0)
    dataset = LightlyDataset(input_dir=str(train_dir), transform=transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch, shuffle=True, drop_last=True, num_workers=args.workers
    )
    torch.manual_seed(0)
    model, criterion = lightly_moco(QUEUE)
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], **SGD)
    setup = time.perf_counter() - start
    steps = min(args.limit or len(loader), len(loader))
    total_loss = torch.zeros(())
    start = time.perf_counter()
    for i, ((x_query, x_key), _, _) in enumerate(loader):
        if i == steps:
            break
        total_loss += lightly_step(
            model, criterion, opt, x_query, x_key, args.lightly_bf16, "cpu"
        ).detach()
    seconds = time.perf_counter() - start
    return dict(
        images=len(dataset),
        full_steps=len(loader),
        steps=steps,
        seconds=seconds,
        setup=setup,
        loss=total_loss.item() / steps,
        threads=f"main {torch.get_num_threads()} + {args.workers} workers x 1",
    )


def run_contrastlab(args, root: Path, out_dir: str) -> dict:
    from contrastlab.train import Trainer

    overrides = [
        "dataset=imagefolder",
        f"data.path={root}",
        "data.holdout_fraction=0",  # all of train/ for training, as lightly
        "optim.epochs=1",
        "train.knn_every=0",
        "train.device=cpu",
        f"train.amp={'true' if args.contrastlab_bf16 else 'false'}",
        "train.progress=false",
        f"out_dir={out_dir}",
        "name=end_to_end",
    ]
    if args.limit:
        overrides.append(f"train.max_steps_per_epoch={args.limit}")
    cfg = contrastlab_config(args.batch, QUEUE, overrides)
    start = time.perf_counter()
    trainer = Trainer(cfg)
    setup = time.perf_counter() - start
    epoch_seconds = []
    train_epoch = trainer.train_epoch

    def timed_epoch(epoch: int) -> float:
        t0 = time.perf_counter()
        loss = train_epoch(epoch)
        epoch_seconds.append(time.perf_counter() - t0)
        return loss

    trainer.train_epoch = timed_epoch
    start = time.perf_counter()
    result = trainer.fit()
    loader = getattr(trainer.views, "loader", None)  # none for images decoded into memory
    workers = loader.num_workers if loader is not None else 0
    return dict(
        images=len(trainer.train_images),
        full_steps=len(trainer.views),
        steps=trainer.steps_per_epoch,
        seconds=epoch_seconds[0],
        setup=setup,
        after=time.perf_counter() - start - epoch_seconds[0],
        loss=result.final_loss,
        threads=f"main {torch.get_num_threads()} + {workers} workers x 1"
        if workers
        else f"main {torch.get_num_threads()}, no workers",
    )


def report(name: str, r: dict, batch: int, what: str) -> float:
    """Print one variant's line; return its images/s."""
    rate = r["steps"] * batch / r["seconds"]
    partial = r["steps"] < r["full_steps"]
    epoch = r["full_steps"] * batch / rate
    timed = (
        f"{r['steps']} of {r['full_steps']} steps in {r['seconds']:.1f} s, PARTIAL epoch: "
        f"the full epoch EXTRAPOLATED to {epoch:.0f} s"
        if partial
        else f"one epoch, {r['steps']} steps, in {r['seconds']:.1f} s"
    )
    print(
        f"  {name:11s} {rate:7.1f} images/s   {timed}; mean loss {r['loss']:.3f}; "
        f"set-up {r['setup']:.1f} s ({what}); threads: {r['threads']}",
        flush=True,
    )
    return rate


def main() -> None:
    ap = common.OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="folder with train/<class>/ images")
    ap.add_argument(
        "--tar",
        default="../shared/data/cifar10-train.tar.gz",
        help="without --data: this archive is extracted to a temporary folder",
    )
    ap.add_argument(
        "--limit", type=common.POSITIVE, default=None, help="only the first N steps of each"
    )
    ap.add_argument("--batch", type=common.POSITIVE, default=256)
    ap.add_argument(
        "--workers", type=common.NON_NEGATIVE, default=2, help="lightly's DataLoader workers"
    )
    ap.add_argument("--no-lightly", action="store_true", help="time contrastlab alone (no ratio)")
    precision = ap.add_mutually_exclusive_group()
    precision.add_argument("--bf16", action="store_true", help="both under CPU bf16 autocast")
    precision.add_argument(
        "--as-documented",
        action="store_true",
        help="lightly in float32 as its example, contrastlab under bf16 autocast as its CPU preset",
    )
    ap.add_argument(
        "--threads", type=common.POSITIVE, default=None, help="torch threads of the main process"
    )
    args = common.parse_args(ap)
    if not args.no_lightly:
        common.require_lightly()
    common.check_config(f"--batch {args.batch}", contrastlab_config, args.batch, QUEUE)
    common.set_threads(args.threads)
    info = common.machine_info(torch.device("cpu"))
    args.lightly_bf16 = args.bf16
    args.contrastlab_bf16 = args.bf16 or args.as_documented
    if args.contrastlab_bf16 and info["cpu_bf16"] == "none":
        common.fail("this CPU has no native bf16; run without --bf16 / --as-documented")
    with contextlib.ExitStack() as stack:
        root = training_folder(args, stack)
        settings = {**vars(args), "data": root, "queue": QUEUE}
        if args.data:
            del settings["tar"]  # not used
        common.print_header(
            "one epoch end to end: lightly's MoCo example vs contrastlab train", info, settings
        )
        out_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="contrastlab-e2e-run-"))
        lightly = None if args.no_lightly else run_lightly(args, root / "train")
        if lightly:
            print(f"lightly done (load average {common.load_average()})", flush=True)
        ours = run_contrastlab(args, root, out_dir)
    if lightly is None:
        print(
            f"images/s over the timed steps ({ours['images']} training images, batch {args.batch}):"
        )
        report(
            "contrastlab", ours, args.batch, "decodes the folder into memory and builds the model"
        )
        print(
            f"cpu: {info['cpu']}; load average before: {info['load_before']}; "
            f"after: {common.load_average()}"
        )
        return
    if lightly["images"] != ours["images"]:
        print(f"WARNING: lightly saw {lightly['images']} images, contrastlab {ours['images']}")
    print(
        f"images/s over the timed steps ({lightly['images']} training images, batch {args.batch}):"
    )
    base = report(
        "lightly",
        lightly,
        args.batch,
        "lists the folder, builds the model; JPEGs are decoded in the epoch",
    )
    rate = report(
        "contrastlab", ours, args.batch, "decodes the folder into memory and builds the model"
    )
    print(f"  contrastlab after the epoch (checkpoint, closing the records): {ours['after']:.1f} s")
    label = " (partial epochs, extrapolated)" if args.limit else ""
    if args.as_documented:
        label += ", lightly in float32 and contrastlab in bf16, as each is documented"
    print(f"  speed-up contrastlab vs lightly{label}: {rate / base:.2f}x (target >= 2x)")
    print(
        f"cpu: {info['cpu']}; load average before: {info['load_before']}; "
        f"after: {common.load_average()}"
    )


if __name__ == "__main__":
    common.run(main, sizes="--batch")
