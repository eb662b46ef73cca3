"""The prepared GPU check (benchmarks/gpu_check.py) runs its steps on a CPU, so that a lent GPU's
few minutes are not spent finding a fault in the script."""

import io
import json
import os
import runpy
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
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


def test_gpu_check_makes_an_interrupted_or_other_extraction_again(tmp_path, monkeypatch):
    """An extraction stopped half-way (Ctrl-C, a full disk) left OUT/cifar10 without its marker
    and was extracted over; one made with another --per-class was reused as it was."""
    gpu_check = runpy.run_path(str(BENCHMARKS / "gpu_check.py"))
    data = tmp_path / "data"
    data.mkdir()
    _archive(data / "cifar10-train.tar.gz", "train", 3)
    _archive(data / "cifar10-test.tar.gz", "test", 2)
    dest = tmp_path / "out" / "cifar10"

    def images(split: str) -> int:
        return len(list((dest / split).glob("*/*.jpg")))

    real, seen = tarfile.TarFile.makefile, []

    def ctrl_c_at_the_fifth(self, member, path):
        seen.append(path)
        if len(seen) == 5:
            raise KeyboardInterrupt
        real(self, member, path)

    monkeypatch.setattr(tarfile.TarFile, "makefile", ctrl_c_at_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        gpu_check["extract_cifar10"](data, dest, None)
    assert not dest.exists() and not any(dest.parent.iterdir())  # nothing half-made is left
    monkeypatch.setattr(tarfile.TarFile, "makefile", real)
    gpu_check["extract_cifar10"](data, dest, 2)
    assert (images("train"), images("test")) == (20, 20)
    gpu_check["extract_cifar10"](data, dest, None)  # another --per-class: made again
    assert (images("train"), images("test")) == (30, 20)
    # a half extraction of the version before (its marker was .complete, written last)
    (dest / "prepared.json").unlink()
    for extra in (dest / "train").iterdir():
        if extra.name != "class0":
            shutil.rmtree(extra)
    gpu_check["extract_cifar10"](data, dest, None)
    assert (images("train"), images("test")) == (30, 20)


# ----------------------------------------------------------------------------------------------
# Every script: a bad option is one line and exit 2, before any measuring
# ----------------------------------------------------------------------------------------------

ROOT = BENCHMARKS.parent
NO_LIGHTLY = (
    "import sys, runpy; sys.modules['lightly'] = None; sys.argv = {argv!r}; "
    "runpy.run_path({path!r}, run_name='__main__')"
)

BAD_OPTIONS = {
    # script, options, the error line's start (old behaviour in the comment)
    "train_step --steps 0": (
        "train_step.py",
        ["--steps", "0"],
        "error: train_step.py: argument --steps: must be an integer >= 1",
    ),  # ZeroDivisionError
    "train_step --batch 8": (
        "train_step.py",
        ["--batch", "8", "--no-lightly"],
        "error: --batch 8 --queue 4096: optim.batch_size=8 with model.bn_splits=8",
    ),  # UserError traceback
    "train_step --profile": (
        "train_step.py",
        ["--profile", "nosuch"],
        "error: train_step.py: argument --profile: invalid choice",
    ),  # ValueError traceback
    "train_step --quick --rounds 0": (
        "train_step.py",
        ["--quick", "--rounds", "0"],
        "error: train_step.py: argument --rounds",
    ),  # --quick made it 2 and measured
    "train_step --threads 0": (
        "train_step.py",
        ["--threads", "0"],
        "error: train_step.py: argument --threads",
    ),  # taken silently
    "looc_step --n 4": (
        "looc_step.py",
        ["--n", "4"],
        "error: looc_step.py: argument --n: must be numbers of atomic augmentations",
    ),  # KeyError
    "looc_step --quick --batch 8": (
        "looc_step.py",
        ["--quick", "--batch", "8"],
        "error: --batch 8: optim.batch_size=8",
    ),  # --quick made it 32 and measured
    "ft_overhead --quick --rounds 0": (
        "ft_overhead.py",
        ["--quick", "--rounds", "0"],
        "error: ft_overhead.py: argument --rounds",
    ),  # --quick made it 5 and crashed in the step
    "ft_overhead --preset-batch 8": (
        "ft_overhead.py",
        ["--preset-batch", "8"],
        "error: --preset-batch 8: optim.batch_size=8",
    ),  # a traceback after the first measurements
    "score_recording --batch 0": (
        "score_recording.py",
        ["--batch", "0"],
        "error: score_recording.py: argument --batch",
    ),  # a 30344 % overhead
    "views --workers -1": (
        "views.py",
        ["--workers", "-1"],
        "error: views.py: argument --workers: must be an integer >= 0",
    ),  # ValueError traceback
    "views --size 4": (
        "views.py",
        ["--size", "4"],
        "error: --size 4 --workers 2: data.image_size must be an integer in [8, 4096]",
    ),  # UserError traceback
    "checkpoint_cost --dir": (
        "checkpoint_cost.py",
        ["--dir", "/proc/nope"],
        "error: --dir /proc/nope is not a folder",
    ),  # FileNotFoundError traceback
    "checkpoint_cost --step-seconds -1": (
        "checkpoint_cost.py",
        ["--step-seconds", "-1"],
        "error: checkpoint_cost.py: argument --step-seconds: must be a number > 0",
    ),  # taken silently
    "end_to_end --workers -1": (
        "end_to_end.py",
        ["--workers", "-1"],
        "error: end_to_end.py: argument --workers",
    ),  # ValueError traceback
    "page_faults --variants": (
        "page_faults.py",
        ["--variants", "x"],
        "error: page_faults.py: argument --variants",
    ),  # no such option
    "gpu_check --skip": (
        "gpu_check.py",
        ["--device", "cpu", "--skip", "foo"],
        "error: --skip foo: unknown step(s) foo",
    ),  # ignored silently
}


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def _one_error_line(proc: subprocess.CompletedProcess, start: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(start), proc.stderr[-2000:]
    assert "== " not in proc.stdout  # refused before the header and any measuring


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_a_bad_option_is_one_line_and_exit_2(case):
    script, options, start = BAD_OPTIONS[case]
    _one_error_line(_run([str(BENCHMARKS / script), *options]), start)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here")
@pytest.mark.parametrize("script", ["train_step.py", "score_recording.py"])
def test_device_cuda_without_cuda_is_one_line(script):
    # Before: a traceback from torch (train_step.py), or the run on a missing device
    _one_error_line(
        _run([str(BENCHMARKS / script), "--device", "cuda"]),
        "error: --device cuda: no CUDA device here",
    )


@pytest.mark.parametrize("script", ["train_step.py", "end_to_end.py"])
def test_lightly_missing_is_one_line_that_says_how_to_install_it(script):
    # Before: ModuleNotFoundError traceback
    path = str(BENCHMARKS / script)
    code = NO_LIGHTLY.format(argv=[path], path=path)
    start = "error: lightly is not installed: .venv/bin/python -m pip install -c constraints.txt lightly, or --no-lightly"
    _one_error_line(_run(["-c", code]), start)


def test_quick_sets_only_the_options_not_given(monkeypatch):
    sys.path.insert(0, str(BENCHMARKS))
    import common

    ap = common.OneLineParser()
    ap.add_argument("--rounds", type=common.POSITIVE, default=5)
    ap.add_argument("--batch", type=common.POSITIVE, default=64)
    ap.add_argument("--quick", action="store_true")
    monkeypatch.setattr(sys, "argv", ["x", "--quick", "--rounds", "7"])
    args = common.parse_args(ap, quick={"rounds": 2, "batch": 32})
    assert (args.rounds, args.batch) == (7, 32)


def test_bf16_ratios_compare_only_equal_precision():
    # Before: contrastlab_bf16 vs lightly and contrastlab vs lightly_bf16 were held against the
    # target too
    sys.path.insert(0, str(BENCHMARKS))
    import train_step

    names = ["contrastlab", "contrastlab_plainbn", "lightly"]
    names += [f"{n}_bf16" for n in names]
    assert train_step.comparisons(names) == [
        ("contrastlab", "lightly"),
        ("contrastlab_plainbn", "lightly"),
        ("contrastlab_bf16", "lightly_bf16"),
        ("contrastlab_plainbn_bf16", "lightly_bf16"),
    ]


def test_ft_overhead_backbone_free_step_runs():
    # Before: AttributeError: 'Projection' object has no attribute 'backbone' in MoCo.forward
    sys.path.insert(0, str(BENCHMARKS))
    import ft_overhead

    for preset in ("moco_v2_cifar", "moco_v2_cifar_ft"):
        step = ft_overhead.make_step(
            preset,
            ["moco.queue_size=64", "model.dim=16", "model.width=0.0625"],
            torch.device("cpu"),
            False,
            backbone_free=True,
            batch=16,
        )
        step()


def test_score_recording_prints_the_machine_and_the_load_before_and_after():
    # Before: neither the machine nor the load average
    proc = _run(
        [
            str(BENCHMARKS / "score_recording.py"),
            "--device",
            "cpu",
            "--steps",
            "1",
            "--calls",
            "1",
            "--batch",
            "4",
            "--queue",
            "64",
            "--dim",
            "8",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\nmachine: " in proc.stdout and "load_before=" in proc.stdout
    assert proc.stdout.rstrip().splitlines()[-1].startswith("load average before: ")
