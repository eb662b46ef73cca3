"""The demo command end to end, shrunk to seconds: it trains, compares, and writes its outputs."""

from __future__ import annotations

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
    assert "kNN top-1 of the untrained encoder" in out and "after 1 epochs" in out
    assert 0 <= result["knn_untrained"] <= 100 and 0 <= result["knn_trained"] <= 100
    run = tmp_path / "demo"
    assert (run / "report.html").is_file()
    assert list((run / "figures").glob("scores-z-*.png"))
    assert f"report      {run / 'report.html'}" in out
