"""The prepared GPU check (benchmarks/gpu_check.py) runs its steps on a CPU, so that a lent GPU's
few minutes are not spent finding a fault in the script."""

import io
import json
import runpy
import sys
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def _archive(path: Path, split: str, per_class: int) -> None:
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for c in range(10):
            for i in range(per_class):
                buf = io.BytesIO()
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(buf, format="JPEG")
                info = tarfile.TarInfo(f"{split}/class{c}/{i:04d}.jpg")
                info.size = buf.tell()
                buf.seek(0)
                tar.addfile(info, buf)


def test_gpu_check_trains_the_epochs_that_fit_and_reports_them(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    data.mkdir()
    _archive(data / "cifar10-train.tar.gz", "train", 8)
    _archive(data / "cifar10-test.tar.gz", "test", 3)
    out = tmp_path / "out"
    argv = ["gpu_check.py", "--device", "cpu", "--data", str(data), "--out", str(out)]
    argv += ["--per-class", "6", "--train-minutes", "0.01", "--skip", "tests,views"]
    argv += ["--train-option", "model.width=0.125", "--train-option", "optim.batch_size=16"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(BENCHMARKS / "gpu_check.py"), run_name="__main__")
    # --per-class takes the first 6 of each class of the training split, all 3 of the test split
    assert len(list((out / "cifar10" / "train").glob("*/*.jpg"))) == 60
    assert len(list((out / "cifar10" / "test").glob("*/*.jpg"))) == 30
    report = json.loads((out / "gpu_check.json").read_text())
    one, run = report["train"]["one_epoch"], report["train"]["run"]
    assert one["epochs"] == 1 and run["epochs"] >= 2  # at least two, whatever the budget
    assert run["steps"] == run["epochs"] * 3  # 60 training images at batch 16: 3 full batches
    assert 0 <= run["knn_top1_z"] <= 100 and run["seconds_per_epoch"] is not None
    assert "optim.epochs=%d" % run["epochs"] in run["command"]
    assert "cuda_tests" not in report and "views" not in report
    assert capsys.readouterr().out.rstrip().endswith("gpu_check.json")
