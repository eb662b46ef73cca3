"""The demo command end to end, shrunk to seconds: it trains, compares, and writes its outputs."""

from __future__ import annotations

import json

import pytest

from contrastlab.demo import run_demo


def test_demo_trains_compares_and_writes_figures_and_report(tmp_path, capsys):
    result = run_demo(
        str(tmp_path),
        [
            "data.synthetic_train=64",
            "data.synthetic_test=32",
            "data.num_workers=0",
            "optim.batch_size=16",
            "optim.epochs=1",
            "model.width=0.0625",
            "moco.queue_size=32",
            "train.knn_every=1",
            "train.progress=false",
        ],
    )
    out = capsys.readouterr().out
    assert "kNN top-1 of the untrained encoder" in out and "after 1 epoch (" in out
    # the figures printed are the ones returned, and the trained one is the run's last kNN monitor
    assert f"untrained encoder: {result['knn_untrained']:.2f}%" in out
    events = [json.loads(line) for line in (tmp_path / "demo" / "metrics.jsonl").open()]
    assert result["knn_trained"] == [e["knn_top1"] for e in events if e["event"] == "knn"][-1]
    for value in (result["knn_untrained"], result["knn_trained"]):  # shares of 32 test images
        assert value * 32 / 100 == pytest.approx(round(value * 32 / 100))
    run = tmp_path / "demo"
    assert (run / "report.html").is_file()
    assert list((run / "figures").glob("scores-z-*.png"))
    assert f"report      {run / 'report.html'}" in out
    assert "replacing the earlier demo run" not in out
    run_demo(
        str(tmp_path),
        ["data.synthetic_train=64", "data.synthetic_test=32", "optim.epochs=1"]
        + ["data.num_workers=0", "optim.batch_size=16", "model.width=0.0625", "moco.queue_size=32"]
        + ["train.knn_every=1", "train.progress=false"],
    )
    # a second demo replaces the first, and says so (it did so in silence)
    assert f"replacing the earlier demo run in {run}" in capsys.readouterr().out


def test_out_dir_among_the_overrides_is_refused_before_work(tmp_path, capsys):
    """It silently replaced --out-dir: the run went to the other folder."""
    from contrastlab.cli import main

    argv = ["demo", "--out-dir", str(tmp_path / "a"), f"out_dir={tmp_path / 'b'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: contrastlab demo takes its folder from --out-dir, not from {argv[-1]}; "
        f"use --out-dir {tmp_path / 'b'}"
    )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    "overrides, name",
    [
        ([], "MoCo v2"),
        (["augment.recipe=moco_v1", "model.head=linear"], "MoCo v1"),
        (["augment.recipe=moco_v1"], "MoCo v1 with an MLP head"),
        (["model.head=linear"], "MoCo v2 with a linear head"),
        (["augment.recipe=none"], "MoCo without augmentations"),
        (
            ["method=looc", "looc.augmentations=[color,rotation]"],
            "LooC (color, rotation) on MoCo v2 views",
        ),
        (
            [
                "method=looc",
                "looc.augmentations=[rotation]",
                "looc.plus_plus=true",
                "augment.recipe=none",
            ],
            "LooC++ (rotation) on crops",
        ),
        (["ft.pos=extrapolate"], "MoCo v2 + Feature Transformation"),
    ],
)
def test_the_banner_names_what_is_trained(overrides, name):
    """It said "MoCo v2" whatever the overrides."""
    from contrastlab.config import load_config
    from contrastlab.demo import method_name

    assert method_name(load_config("demo", overrides)) == name
