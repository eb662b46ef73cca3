"""The experiment scripts behind docs/results.md still run against the library."""

import runpy
import sys
from pathlib import Path

EXPERIMENTS = Path(__file__).parents[1] / "experiments"


def test_the_supervised_reference_learns_the_synthetic_shapes(monkeypatch, capsys):
    """docs/results.md §6 quotes it as the ceiling of the demo's encoder in the demo's budget: a
    quarter of the demo's epochs already take the kNN monitor on shape past 50% (chance 10%;
    MoCo v2 in the whole demo stays below 40%)."""
    argv = [
        "supervised_reference.py",
        "--config",
        "demo",
        "data.synthetic_test=200",
        "optim.epochs=4",
        "train.knn_every=4",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(EXPERIMENTS / "supervised_reference.py"), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[:4]] == [f"epoch {e}" for e in (1, 2, 3, 4)]
    assert "kNN top-1" in lines[3] and "kNN top-1" not in lines[2]
    knn = float(lines[3].split("kNN top-1 ")[1].split("%")[0])
    assert knn > 50.0
    assert lines[-1].startswith("classifier test accuracy") and lines[-1].endswith("on 200 images")
