"""The kNN monitor and checkpoints: feature space, unlabelled images, splits read before the
first step, last.pt before the monitor, and best.pt chosen on a fresh validation metric."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from contrastlab.checkpoint import read_checkpoint
from contrastlab.config import feature_spaces, load_config, preset_names
from contrastlab.data.datasets import TensorImageDataset, build_dataset
from contrastlab.errors import UserError
from contrastlab.methods import build_method
from contrastlab.train import Trainer, eval_transform, knn_monitor_metrics


def naive_knn_accuracy(bank, bank_y, queries, query_y, num_classes, k, t) -> float:
    """Weighted kNN top-1 (%) as a float64 loop, one query at a time (the MoCo demo's rule)."""
    bank = np.asarray(bank, np.float64)
    queries = np.asarray(queries, np.float64)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    hits = 0
    for q, y in zip(queries, query_y):
        sim = bank @ q
        top = np.argsort(-sim, kind="stable")[: min(k, len(bank))]
        scores = np.zeros(num_classes)
        for j in top:
            scores[bank_y[j]] += np.exp(sim[j] / t)
        hits += int(np.argmax(scores) == y)
    return 100.0 * hits / len(queries)


def _features(model, dataset, transform, space):
    """Features one image at a time (no loader, no batching)."""
    model.eval()
    with torch.no_grad():
        rows = [
            model.features(transform(dataset[i][0])[None], space)[0] for i in range(len(dataset))
        ]
    return torch.stack(rows).numpy()


def _naive_monitor(model, cfg, train, test, space) -> float:
    """The monitor's kNN top-1 in ``space``, one image and one query at a time."""
    t = eval_transform(cfg, train)
    return naive_knn_accuracy(
        _features(model, train, t, space),
        train.labels.numpy(),
        _features(model, test, t, space),
        test.labels.numpy(),
        train.num_classes,
        cfg.train.knn_k,
        cfg.train.knn_temperature,
    )


def _with_unlabelled(ds: TensorImageDataset, every: int = 3) -> TensorImageDataset:
    """The same images with every ``every``-th one unlabelled (label -1), as STL-10's train split."""
    labels = ds.labels.clone()
    labels[::every] = -1
    return TensorImageDataset(
        ds.images,
        labels,
        num_classes=ds.num_classes,
        mean=ds.mean,
        std=ds.std,
        image_size=ds.image_size,
    )


# -- A1: the monitor's feature space ---------------------------------------------------------


@pytest.mark.parametrize("space", ["z", "backbone"])
def test_monitor_reads_the_configured_space_and_logs_the_other(tiny_config, space):
    cfg = tiny_config(f"train.knn_space={space}", "train.knn_k=7")
    torch.manual_seed(0)
    model = build_method(cfg)
    train, test = build_dataset(cfg.data, "train"), build_dataset(cfg.data, "test")
    metrics = knn_monitor_metrics(model, cfg, train, test)
    expected = {s: _naive_monitor(model, cfg, train, test, s) for s in ("backbone", "z")}
    assert metrics["knn_top1"] == pytest.approx(expected[space], abs=1e-4)
    assert metrics["knn_top1_backbone"] == pytest.approx(expected["backbone"], abs=1e-4)
    assert metrics["knn_top1_z"] == pytest.approx(expected["z"], abs=1e-4)


def test_a_loocpp_monitor_logs_backbone_and_z0_beside_concat(tiny_config):
    """docs/looc.md: "The kNN monitor reads ... (LooC++: concat); z0 is logged beside it". LooC++
    logged knn_top1_concat alone."""
    cfg = tiny_config("train.knn_k=7", preset="loocpp_color")
    assert cfg.looc.plus_plus and cfg.train.knn_space == "concat"
    torch.manual_seed(0)
    model = build_method(cfg)
    train, test = build_dataset(cfg.data, "train"), build_dataset(cfg.data, "test")
    metrics = knn_monitor_metrics(model, cfg, train, test)
    for s in ("concat", "backbone", "z0"):
        expected = _naive_monitor(model, cfg, train, test, s)
        assert metrics[f"knn_top1_{s}"] == pytest.approx(expected, abs=1e-4), s
    assert metrics["knn_top1"] == metrics["knn_top1_concat"]


def test_knn_space_is_checked_against_the_model():
    with pytest.raises(UserError, match="valid: backbone, z"):
        load_config("moco_v2_cifar", ["train.knn_space=z0"])
    cfg = load_config("looc_color_rotation", ["train.knn_space=rotation"])
    assert cfg.train.knn_space == "rotation"
    with pytest.raises(UserError, match="concat"):
        load_config("looc_color", ["train.knn_space=concat"])  # LooC++ only


def test_feature_spaces_of_the_config_are_those_of_the_model():
    for name in preset_names():
        cfg = load_config(name, ["data.path=/some/images", "model.width=0.0625"])
        assert feature_spaces(cfg) == tuple(build_method(cfg).feature_spaces), name


# -- B1: unlabelled images in the monitor ------------------------------------------------------


def test_unlabelled_images_never_enter_the_monitor(tiny_config):
    cfg = tiny_config("train.knn_k=5")
    torch.manual_seed(0)
    model = build_method(cfg)
    train = _with_unlabelled(build_dataset(cfg.data, "train"))
    test = _with_unlabelled(build_dataset(cfg.data, "test"), every=4)
    metrics = knn_monitor_metrics(model, cfg, train, test)
    t = eval_transform(cfg, train)
    kept_tr = (train.labels >= 0).numpy()
    kept_te = (test.labels >= 0).numpy()
    expected = naive_knn_accuracy(
        _features(model, train, t, "backbone")[kept_tr],
        train.labels.numpy()[kept_tr],
        _features(model, test, t, "backbone")[kept_te],
        test.labels.numpy()[kept_te],
        train.num_classes,
        5,
        cfg.train.knn_temperature,
    )
    assert metrics["knn_top1"] == pytest.approx(expected, abs=1e-4)


def test_training_on_a_partly_unlabelled_split_monitors_and_checkpoints(tiny_config, monkeypatch):
    import contrastlab.train as train_module

    real = train_module.build_dataset
    monkeypatch.setattr(
        train_module,
        "build_dataset",
        lambda data, split, transform=None: _with_unlabelled(real(data, split, transform)),
    )
    result = Trainer(tiny_config("optim.epochs=1")).fit()
    assert result.last_checkpoint is not None and 0 <= result.knn_top1 <= 100


# -- B2: every split checked before the first step; last.pt before the monitor ----------------


def _folder_with_a_corrupt_test_image(root):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 3)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    bad = root / "test" / "b" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return bad


def test_a_corrupt_test_image_stops_the_run_before_the_first_step(tiny_config, tmp_path):
    bad = _folder_with_a_corrupt_test_image(tmp_path / "images")
    cfg = tiny_config(
        "dataset=imagefolder", f"data.path={tmp_path / 'images'}", "data.image_size=16"
    )
    with pytest.raises(UserError, match="broken.png"):
        Trainer(cfg)
    assert bad.exists()


def test_last_checkpoint_is_written_before_the_monitor_runs(tiny_config, monkeypatch):
    import contrastlab.train as train_module

    def failing_monitor(*args, **kwargs):
        raise RuntimeError("monitor failed")

    monkeypatch.setattr(train_module, "knn_monitor_metrics", failing_monitor)
    cfg = tiny_config("optim.epochs=1", "train.knn_every=1")
    with pytest.raises(RuntimeError, match="monitor failed"):
        Trainer(cfg).fit()
    assert read_checkpoint(cfg.run_dir / "checkpoints" / "last.pt")["epoch"] == 1


# -- B3: best.pt ------------------------------------------------------------------------------


def _scripted_monitor(monkeypatch, values: list):
    """Replace the monitor by fixed (knn_top1, knn_val_top1) pairs, one per call, in order."""
    import contrastlab.train as train_module

    calls = []

    def monitor(model, cfg, train_images, test_images, device="cpu"):
        test, val = values[len(calls)]
        calls.append((test, val))
        return {"knn_top1": test, "knn_val_top1": val}

    monkeypatch.setattr(train_module, "knn_monitor_metrics", monitor)
    return calls


def test_best_is_never_saved_with_a_stale_metric(tiny_config, monkeypatch):
    calls = _scripted_monitor(monkeypatch, [(30.0, 50.0), (40.0, 40.0)])  # epochs 2 and 4
    cfg = tiny_config(
        "optim.epochs=4", "train.knn_every=2", "train.checkpoint_every=1", "name=stale"
    )
    result = Trainer(cfg).fit()
    assert len(calls) == 2
    best = read_checkpoint(result.best_checkpoint)
    assert best["epoch"] == 2  # epoch 3's weights were never measured
    assert best["metrics"]["knn_val_top1"] == 50.0 and best["best_metric"] == 50.0
    last = read_checkpoint(result.last_checkpoint)
    assert last["epoch"] == 4 and last["metrics"]["knn_top1"] == 40.0


def test_best_is_chosen_on_the_validation_split_not_on_the_reported_one(tiny_config, monkeypatch):
    _scripted_monitor(monkeypatch, [(10.0, 60.0), (90.0, 20.0)])  # epochs 1 and 2
    result = Trainer(tiny_config("optim.epochs=2", "train.checkpoint_every=1")).fit()
    assert read_checkpoint(result.best_checkpoint)["epoch"] == 1


def test_best_metric_is_that_of_its_own_weights(tiny_config):
    """End to end: the validation kNN stored in best.pt is what its weights give."""
    from contrastlab.checkpoint import load_model

    cfg = tiny_config(
        "optim.epochs=3",
        "train.knn_every=2",
        "train.checkpoint_every=1",
        "train.knn_val_fraction=0.3",
    )
    result = Trainer(cfg).fit()
    best = read_checkpoint(result.best_checkpoint)
    model, saved_cfg = load_model(result.best_checkpoint)
    again = knn_monitor_metrics(
        model, saved_cfg, build_dataset(cfg.data, "train"), build_dataset(cfg.data, "test")
    )
    assert best["metrics"]["knn_val_top1"] == again["knn_val_top1"]
    events = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    measured = {e["epoch"] for e in events if e["event"] == "knn"}
    assert best["epoch"] in measured


def test_no_monitor_means_no_best_checkpoint(tiny_config):
    result = Trainer(tiny_config("optim.epochs=1", "train.knn_every=0")).fit()
    assert result.best_checkpoint is None and result.last_checkpoint is not None


def test_a_knn_k_larger_than_the_bank_is_said(tiny_config, capsys):
    from contrastlab.train import Trainer

    Trainer(tiny_config("train.knn_k=100000", "optim.epochs=1", "name=bigk"))
    err = capsys.readouterr().err
    assert "train.knn_k=100000 is at least the 96 images of the kNN monitor's bank" in err
    # k equal to the bank: every image votes just the same (was silent)
    Trainer(tiny_config("train.knn_k=96", "optim.epochs=1", "name=equalk"))
    assert "every one of them votes" in capsys.readouterr().err
    Trainer(tiny_config("train.knn_k=95", "optim.epochs=1", "name=smallk"))
    assert "every one of them votes" not in capsys.readouterr().err


def test_the_validation_split_holds_an_image_of_every_class_of_two_or_more(tiny_config, capsys):
    """4 images per class at train.knn_val_fraction=0.1 held out round(0.4) = 0 of each: the
    validation split was empty, knn_val_top1 never measured, and no best.pt written, silently.
    It now holds one of each class, as the test split held out of an image folder does."""
    from contrastlab.checkpoint import load_model
    from contrastlab.data.datasets import stratified_holdout

    cfg = tiny_config("data.synthetic_train=40", "optim.epochs=1", "train.knn_k=5", "name=few")
    train, test = build_dataset(cfg.data, "train"), build_dataset(cfg.data, "test")
    labels = train.labels.tolist()
    assert sorted(labels.count(c) for c in set(labels)) == [4] * 10
    assert stratified_holdout(labels, 0.1)[1] == []  # what the monitor drew before
    result = Trainer(cfg).fit()
    assert "validation split" not in capsys.readouterr().err
    best = read_checkpoint(result.best_checkpoint)
    model, saved_cfg = load_model(result.best_checkpoint)
    again = knn_monitor_metrics(model, saved_cfg, train, test)["knn_val_top1"]
    assert best["metrics"]["knn_val_top1"] == pytest.approx(again)


def test_an_empty_validation_split_is_one_warning_line_and_an_event(tiny_config, capsys):
    """Where every class holds a single image the split cannot hold one out: no best.pt, said."""
    few = ("data.synthetic_train=10", "optim.batch_size=8", "optim.epochs=1", "train.knn_k=5")
    cfg = tiny_config(*few, "name=single")
    result = Trainer(cfg).fit()
    line = (
        "warning: the kNN monitor's validation split (train.knn_val_fraction=0.1) is empty: each "
        "of the 10 classes of the training images holds one labelled image, which stays in the "
        "kNN bank, so no best.pt is chosen; add a second image to each class, or set "
        "train.knn_val_fraction=0 to train without best.pt"
    )
    assert capsys.readouterr().err.splitlines().count(line) == 1
    assert result.best_checkpoint is None and result.last_checkpoint is not None
    events = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["message"] for e in events if e["event"] == "warning"] == [line]
    # no validation split asked for: nothing to say
    Trainer(tiny_config(*few, "train.knn_val_fraction=0", "name=noval")).fit()
    assert "validation split" not in capsys.readouterr().err
