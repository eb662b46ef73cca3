"""Training batches: every image once per epoch, order and views reseeded per epoch, the three paths."""

import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from contrastlab.config import AugmentConfig, load_config
from contrastlab.data.datasets import TensorImageDataset, build_dataset
from contrastlab.data.looc_views import ATOMIC
from contrastlab.errors import UserError
from contrastlab.train import Trainer
from contrastlab.views.pipeline import InMemoryViews, LoaderViews, build_training_views
from contrastlab.views.recipes import BatchedViews, recipe_from_config, render


def _numbered_images(n=40, size=8):
    """Image i is the constant value i: a rendered view of recipe "none" tells which image it is."""
    return torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, size, size).contiguous()


def _identities(views: list[torch.Tensor]) -> torch.Tensor:
    return views[0][:, 0, 0, 0].mul(255).round().long()  # mean 0, std 1: the raw value


def _in_memory(n=40, batch=8):
    recipe = recipe_from_config(AugmentConfig(recipe="none"), 8, (0, 0, 0), (1, 1, 1))
    return InMemoryViews(_numbered_images(n), BatchedViews(recipe, 2), batch, "cpu", False, seed=0)


def _epoch(pipeline, epoch, seed):
    pipeline.set_epoch(epoch, seed)
    return torch.cat([_identities(v) for v in pipeline])


def test_an_epoch_sees_each_image_at_most_once_and_epochs_differ():
    pipeline = _in_memory()
    assert len(pipeline) == 5
    first, again, second = _epoch(pipeline, 0, 11), _epoch(pipeline, 0, 11), _epoch(pipeline, 1, 12)
    assert len(first) == 40 and len(set(first.tolist())) == 40
    assert torch.equal(first, again)  # the seed alone decides the order
    assert not torch.equal(first, second)


def test_views_differ_between_epochs_and_repeat_with_the_seed():
    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8)
    recipe = recipe_from_config(AugmentConfig(), 16, (0.5,) * 3, (0.25,) * 3)
    pipeline = InMemoryViews(images, BatchedViews(recipe, 2), 16, "cpu", False, seed=0)

    def views(seed):
        pipeline.set_epoch(0, seed)
        ((q, k),) = list(pipeline)
        return q, k

    a, b, c = views(1), views(1), views(2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def _folder(root: Path, size: int, n=12) -> Path:
    gen = torch.Generator().manual_seed(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(n // 2):
            arr = torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=gen).numpy()
            Image.fromarray(arr).save(root / c / f"{i}.png")
    return root


@pytest.mark.parametrize("views", ["batched", "per_image"])
def test_large_images_are_cropped_in_workers_and_finished_batched(tmp_path, views):
    root = _folder(tmp_path / "big", size=120)
    cfg = load_config(
        "moco_v2",
        [
            f"data.path={root}",
            "data.image_size=32",
            "data.num_workers=0",
            f"data.views={views}",
            "data.holdout_fraction=0",
        ],
    )
    dataset = build_dataset(cfg.data, "train")
    pipeline = build_training_views(cfg, dataset, 2, 4, "cpu", False)
    assert isinstance(pipeline, LoaderViews) and (pipeline.views is None) == (views == "per_image")
    pipeline.set_epoch(0, 0)
    batches = list(pipeline)
    assert len(batches) == 3
    q, k = batches[0]
    assert q.shape == k.shape == (4, 3, 32, 32) and q.dtype == torch.float32
    assert not torch.equal(q, k)


@pytest.mark.parametrize("views", ["batched", "per_image"])
def test_both_paths_train(tiny_config, views):
    result = Trainer(
        tiny_config(f"data.views={views}", "optim.epochs=1", "train.knn_every=0")
    ).fit()
    assert result.steps == 6 and torch.isfinite(torch.tensor(result.final_loss))


def test_in_memory_data_never_goes_through_dataloader_workers(tiny_config):
    trainer = Trainer(tiny_config("data.num_workers=2"))
    assert isinstance(trainer.views, InMemoryViews)
    assert isinstance(trainer.train_images, TensorImageDataset)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_views_never_wait_for_the_device_and_match_the_cpu():
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    atomic = ("color", "rotation", "texture")
    recipe = recipe_from_config(AugmentConfig(blur=True), 32, (0.5,) * 3, (0.25,) * 3, atomic)
    views = BatchedViews(recipe, 5)
    gen = torch.Generator(device="cuda").manual_seed(0)
    on_device = images.cuda()
    views(on_device, gen)  # warm-up: constants are made once per device
    torch.cuda.set_sync_debug_mode("error")
    try:
        params = views.params(64, 32, 32, gen)
        out = render(recipe, on_device.repeat(5, 1, 1, 1), params)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    cpu_params = {g: {k: v.cpu() for k, v in d.items()} for g, d in params.items()}
    expected = render(recipe, images.repeat(5, 1, 1, 1), cpu_params)
    assert (out.cpu() - expected).abs().max().item() <= 1e-4 * 4


@pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "g++")) is None and shutil.which("cc") is None,
    reason="torch.compile on the CPU needs a C++ compiler",
)
def test_compiled_views_equal_the_eager_ones():
    """``data.views_compile=true`` renders the same views as the eager ops, from the same draws
    (LooC with every atomic augmentation: crop, colour, texture, blur-free 32 px, rotation)."""
    recipe = recipe_from_config(
        AugmentConfig(), 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), atomic=ATOMIC
    )
    images = torch.randint(0, 256, (16, 3, 40, 40), dtype=torch.uint8)
    eager = BatchedViews(recipe, len(ATOMIC) + 2)
    fast = BatchedViews(recipe, len(ATOMIC) + 2, compile=True)
    for seed in (0, 1):  # the second batch runs the compiled code without compiling again
        want = eager(images, torch.Generator().manual_seed(seed))
        got = fast(images, torch.Generator().manual_seed(seed))
        for w, g in zip(want, got):
            torch.testing.assert_close(g, w, atol=1e-4, rtol=0)


def test_compiled_views_need_batched_views():
    with pytest.raises(UserError, match="data.views_compile=true .* data.views=batched"):
        load_config("demo", ["data.views=per_image", "data.views_compile=true"])


def _no_compiler(monkeypatch):
    """torch.compile as inductor without a C++ compiler fails: a wrapper whose own first line
    says nothing, with the compiler's reason inside."""

    class InvalidCxxCompiler(RuntimeError):
        pass

    def fails(*args, **kwargs):
        try:
            raise InvalidCxxCompiler("No working C++ compiler found in cpp.cxx: (None, 'g++')")
        except InvalidCxxCompiler as inner:
            raise RuntimeError("backend='inductor' raised:\n") from inner

    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fails)


def test_a_compile_failure_names_the_compilers_reason(monkeypatch):
    # Before: "torch.compile could not build the views (backend='inductor' raised:)"
    _no_compiler(monkeypatch)
    recipe = recipe_from_config(AugmentConfig(), 32, (0.5,) * 3, (0.25,) * 3)
    views = BatchedViews(recipe, 2, compile=True)
    with pytest.raises(UserError) as e:
        views(torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.Generator().manual_seed(0))
    assert str(e.value) == (
        "data.views_compile=true: torch.compile could not build the views (InvalidCxxCompiler: "
        "No working C++ compiler found in cpp.cxx: (None, 'g++')); install a C++ compiler (CPU) "
        "or set data.views_compile=false"
    )


def test_a_compile_failure_stops_the_run_before_its_directory_holds_anything(
    tiny_config, monkeypatch
):
    # Before: the run had printed its start line and left config.yaml, metrics.jsonl, an empty
    # checkpoints/ and a tensorboard file behind

    _no_compiler(monkeypatch)
    cfg = tiny_config("optim.epochs=1", "train.knn_every=0", "data.views_compile=true")
    with pytest.raises(UserError, match="No working C\\+\\+ compiler"):
        Trainer(cfg)
    assert not cfg.run_dir.exists()
