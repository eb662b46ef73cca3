"""The trainer's kNN monitor and ``eval knn`` read the same checkpoint alike: the same images,
the same evaluation view for the bank and the queries, the same classifier, hence the same
top-1, whatever the sizes and modes of an image folder's files and however it is loaded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import TINY, overriding
from PIL import Image

from contrastlab.config import load_config
from contrastlab.eval.context import EvalContext
from contrastlab.eval.protocols import run_corruption, run_knn
from contrastlab.train import Trainer


def _messy_folder(root):
    """train/: JPEG, grey, RGBA and palette PNGs, a 12 px, a 400x30 image and a nested folder;
    test/: 32 px images only (so, on its own, a split of one small size held in memory)."""
    rng = np.random.default_rng(0)

    def pixels(w, h, c):
        base = np.array([[40, 60, 200], [200, 80, 40]][c], dtype=np.int64)
        noise = rng.integers(-60, 61, (h, w, 3))
        return np.clip(base + noise, 0, 255).astype(np.uint8)

    for c, name in enumerate(("a", "b")):
        train, test = root / "train" / name, root / "test" / name
        (train / "sub" / "deeper").mkdir(parents=True)
        test.mkdir(parents=True)
        for i in range(6):
            Image.fromarray(pixels(32, 32, c)).save(train / f"{i}.jpg", quality=90)
            Image.fromarray(pixels(40, 36, c)).convert("L").save(train / f"grey{i}.png")
            Image.fromarray(pixels(48, 48, c)).convert("RGBA").save(train / f"rgba{i}.png")
            Image.fromarray(pixels(32, 32, c)).convert("P").save(train / "sub" / f"p{i}.png")
        Image.fromarray(pixels(12, 12, c)).save(train / "small.png")
        Image.fromarray(pixels(400, 30, c)).save(train / "sub" / "deeper" / "wide.jpg")
        for i in range(10):
            Image.fromarray(pixels(32, 32, c)).save(test / f"{i}.png")
    return root


@pytest.fixture(scope="module", params=["null", "true", "false", "null-amp"])
def trained(request, tmp_path_factory):
    """(last.pt, the monitor's last metrics) of a run on the messy folder, per data.in_memory;
    ``-amp``: trained under bf16 autocast, which the monitor runs outside of (float32 as eval)."""
    torch.set_num_threads(1)  # as conftest does for each test (this fixture runs before it)
    in_memory, _, amp = request.param.partition("-")
    tmp = tmp_path_factory.mktemp(f"in_memory_{request.param}")
    folder = _messy_folder(tmp / "messy")
    cfg = load_config(
        "moco_v2_cifar",
        overriding(
            TINY,
            f"out_dir={tmp / 'runs'}",
            "dataset=imagefolder",
            f"data.path={folder}",
            "data.image_size=32",
            f"data.in_memory={in_memory}",
            f"train.amp={'true' if amp else 'false'}",
            "optim.epochs=1",
            "train.knn_every=1",
            "train.knn_k=7",
        ),
    )
    result = Trainer(cfg).fit()
    events = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    return result.last_checkpoint, [e for e in events if e["event"] == "knn"][-1]


# --norm target: the folder's own statistics, its training split's (ImageNet's, as stored in the
# checkpoint: mixed sizes), for the queries too, although the 32 px test split alone has CIFAR's
@pytest.mark.parametrize(
    "space, norm", [("backbone", "checkpoint"), ("z", "checkpoint"), ("backbone", "target")]
)
def test_the_monitors_last_knn_is_eval_knns_on_the_same_checkpoint(trained, space, norm):
    checkpoint, monitor = trained
    ctx = EvalContext.from_checkpoint(
        checkpoint, device="cpu", progress=False, space=space, norm=norm
    )
    res = run_knn(ctx)
    assert res["details"]["num_test"] == monitor["knn_queries"] == 20
    assert res["setup"]["k"] == 7
    assert res["summary"]["top1"] == pytest.approx(monitor[f"knn_top1_{space}"], abs=1e-6)


def test_corruptions_start_from_the_same_view_of_the_test_images(trained):
    """``eval corruption --classifier knn``'s clean accuracy is the monitor's: its test images
    are resized and cropped as the bank's, before being corrupted."""
    checkpoint, monitor = trained
    ctx = EvalContext.from_checkpoint(checkpoint, device="cpu", progress=False)
    res = run_corruption(ctx, "knn", ["gaussian_noise"], [1])
    assert res["summary"]["clean"] == pytest.approx(monitor["knn_top1_backbone"], abs=1e-6)
