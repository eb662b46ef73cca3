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
    gpu_check = runpy.run_path(str(BENCHMARKS / "gpu_check.py"))
    budgets = []
    gpu_check["main"].__globals__["epochs_in_budget"] = lambda minutes, seconds: (
        budgets.append(minutes) or 2
    )
    gpu_check["main"]()
    assert budgets == [0.01]
    # --per-class takes the first 6 of each class of the training split, all 3 of the test split
    assert len(list((out / "cifar10" / "train").glob("*/*.jpg"))) == 60
    assert len(list((out / "cifar10" / "test").glob("*/*.jpg"))) == 30
    report = json.loads((out / "gpu_check.json").read_text())
    one, run = report["train"]["one_epoch"], report["train"]["run"]
    assert one["epochs"] == 1 and run["epochs"] == 2
    assert run["steps"] == run["epochs"] * 3  # 60 training images at batch 16: 3 full batches
    assert 0 <= run["knn_top1_z"] <= 100 and run["seconds_per_epoch"] is not None
    assert "optim.epochs=%d" % run["epochs"] in run["command"]
    assert "cuda_tests" not in report and "views" not in report
    assert capsys.readouterr().out.rstrip().endswith("gpu_check.json")


def test_gpu_check_keeps_to_a_budget_that_fits_fewer_than_two_epochs(capsys):
    # Before: max(2, ...): a 30 s budget with a 74 s epoch trained 2 epochs all the same
    gpu_check = runpy.run_path(str(BENCHMARKS / "gpu_check.py"))
    assert gpu_check["epochs_in_budget"](0.5, 74.0) == 0
    assert gpu_check["epochs_in_budget"](1.0, 30.0) == 2
    assert gpu_check["epochs_in_budget"](5.0, 30.0) == 10


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
        "error: --size 4: data.image_size must be an integer in [8, 4096]",
    ),  # UserError traceback; then the line named --workers 2 too
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
    "gpu_check --data FILE": (
        "gpu_check.py",
        ["--device", "cpu", "--data", "README.md"],
        "error: --data README.md is a file; give the folder holding cifar10-train.tar.gz",
    ),  # said README.md/cifar10-train.tar.gz does not exist
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


# ----------------------------------------------------------------------------------------------
# Every script: a stop, a failed allocation, a wrong path are one line
# ----------------------------------------------------------------------------------------------


def _common():
    sys.path.insert(0, str(BENCHMARKS))
    import common

    return common


def _stopped(main, capsys) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as stop:
        _common().run(main)
    return stop.value.code, capsys.readouterr().err.strip().splitlines()


def test_every_benchmark_runs_its_main_through_common_run():
    # where a stop, a UserError and a failed allocation are made one line
    for script in sorted(BENCHMARKS.glob("*.py")):
        if script.name != "common.py":
            assert "\n    common.run(main" in script.read_text(), script.name


@pytest.mark.parametrize("signal_name, status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_stop_is_one_line_and_128_plus_the_signal(signal_name, status, capsys):
    # Before: a KeyboardInterrupt traceback (SIGINT), or killed without a word (SIGTERM)
    from contrastlab.errors import StopRequested

    def main():
        if signal_name == "SIGINT":
            raise KeyboardInterrupt
        raise StopRequested(15)

    code, lines = _stopped(main, capsys)
    assert code == status and len(lines) == 1
    said = "Ctrl-C (SIGINT)" if signal_name == "SIGINT" else signal_name  # as contrastlab says it
    assert lines[0].endswith(f": stopped by {said}; the measurement was not finished")


def test_a_stop_inside_a_benchmarks_training_says_to_measure_again(capsys):
    # Before: contrastlab's "to continue, run the same command with train.resume=auto", wrong for
    # a training in a temporary folder that is gone
    from contrastlab.errors import TrainingInterrupted

    def main():
        raise TrainingInterrupted(
            "stopped by SIGTERM in epoch 1 (0 of 1 epoch complete, step 3); checkpoint "
            "/tmp/x/last.pt; to continue, run the same command with train.resume=auto",
            signal_name="SIGTERM",
        )

    code, lines = _stopped(main, capsys)
    assert code == 143 and len(lines) == 1
    assert "stopped by SIGTERM during its training" in lines[0]
    assert "run the same command again" in lines[0] and "resume" not in lines[0]


def test_a_failed_allocation_is_one_line_that_names_the_sizes(capsys):
    # Before: RuntimeError: DefaultCPUAllocator: can't allocate memory, a traceback
    def main():
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 800000000000 bytes. Error code 12"
        )

    with pytest.raises(SystemExit) as stop:
        _common().run(main, sizes="--batch or --queue")
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(lines) == 1
    assert "out of memory (tried to allocate 745.1 GiB)" in lines[0]
    assert lines[0].endswith("lower --batch or --queue")


def test_a_real_sigterm_stops_a_benchmark_with_one_line():
    # the handler common.run installs: SIGTERM as Ctrl-C, cleaned up, one line, 143
    path = str(BENCHMARKS / "views.py")
    code = (
        f"import sys, os, signal, time; sys.path.insert(0, {str(BENCHMARKS)!r}); import common; "
        "common.machine_info = lambda d: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(30)); "
        f"sys.argv = [{path!r}, '--device', 'cpu']; import runpy; "
        f"runpy.run_path({path!r}, run_name='__main__')"
    )
    proc = _run(["-c", code])
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert proc.stderr.strip() == "views.py: stopped by SIGTERM; the measurement was not finished"


def _script(name: str, argv: list[str], monkeypatch) -> dict:
    monkeypatch.setattr(sys, "argv", [name, *argv])
    return runpy.run_path(str(BENCHMARKS / name))


def test_views_refuses_sizes_whose_images_exceed_the_memory(monkeypatch, capsys):
    # Before: RuntimeError: can't allocate memory, a traceback after the header
    views = _script("views.py", ["--batch", "1000000000", "--device", "cpu"], monkeypatch)
    code, lines = _stopped(views["main"], capsys)
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith("error: --batch 1000000000 --batches 8 --size 32: needs 25749.2 GiB")
    assert lines[0].endswith("lower --batch, --batches or --size")
    assert "== " not in capsys.readouterr().out


def test_end_to_end_refuses_a_batch_larger_than_the_data(tmp_path, monkeypatch, capsys):
    # Before: ZeroDivisionError after the set-up, from a 60-image folder at the default batch 256
    for i in range(60):
        (tmp_path / "train" / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        (tmp_path / "train" / f"c{i % 3}" / f"{i}.jpg").write_bytes(b"")
    e2e = _script(
        "end_to_end.py", ["--data", str(tmp_path), "--no-lightly", "--limit", "2"], monkeypatch
    )
    code, lines = _stopped(e2e["main"], capsys)
    assert code == 2 and lines == [
        f"error: --batch 256 is larger than the 60 training images of {tmp_path}; "
        "give --batch 60 or less"
    ]
    assert "== " not in capsys.readouterr().out


def test_end_to_end_refuses_a_batch_larger_than_an_archive_before_extracting(
    tmp_path, monkeypatch, capsys
):
    # Before: the whole archive was extracted first (minutes for CIFAR-10), then refused
    import tarfile

    archive = tmp_path / "small.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for i in range(40):
            info = tarfile.TarInfo(f"train/c{i % 2}/{i}.jpg")
            tar.addfile(info)
        tar.addfile(tarfile.TarInfo("test/c0/0.jpg"))  # not counted: test images
    extracted = []
    monkeypatch.setattr(tarfile.TarFile, "extractall", lambda *a, **k: extracted.append(a))
    e2e = _script("end_to_end.py", ["--tar", str(archive), "--no-lightly"], monkeypatch)
    code, lines = _stopped(e2e["main"], capsys)
    assert code == 2 and lines == [
        f"error: --batch 256 is larger than the 40 training images of {archive}; "
        "give --batch 40 or less"
    ]
    assert extracted == []


def test_end_to_end_says_a_tar_that_is_not_one(tmp_path, monkeypatch, capsys):
    # Before: tarfile.ReadError traceback
    (tmp_path / "x.tar.gz").write_text("not an archive")
    e2e = _script(
        "end_to_end.py", ["--tar", str(tmp_path / "x.tar.gz"), "--no-lightly"], monkeypatch
    )
    code, lines = _stopped(e2e["main"], capsys)
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(f"error: --tar {tmp_path / 'x.tar.gz'} is not a tar archive")


def test_gpu_check_out_a_file_is_one_line_and_a_folder_it_made_goes_on_a_stop(
    tmp_path, monkeypatch, capsys
):
    # Before: FileExistsError traceback; a stop left the empty --out it had made
    (tmp_path / "file").write_text("")
    base = ["--device", "cpu", "--skip", "tests,views,train", "--out"]
    gpu_check = _script("gpu_check.py", [*base, str(tmp_path / "file")], monkeypatch)
    code, lines = _stopped(gpu_check["main"], capsys)
    assert code == 2 and lines == [
        f"error: --out {tmp_path / 'file'} is a file, not a folder; give a folder to write in"
    ]
    gpu_check = _script("gpu_check.py", [*base, str(tmp_path / "new" / "out")], monkeypatch)

    def stop(args, skip):
        raise KeyboardInterrupt

    gpu_check["main"].__globals__["checks"] = stop  # run_path returns a copy of the globals
    code, lines = _stopped(gpu_check["main"], capsys)
    assert code == 130 and not (tmp_path / "new").exists()


def test_gpu_check_refuses_a_subset_smaller_than_a_batch(monkeypatch, capsys):
    # Before: the training said so, after the extraction
    argv = ["--device", "cpu", "--per-class", "3", "--data", "/nonexistent"]
    code, lines = _stopped(_script("gpu_check.py", argv, monkeypatch)["main"], capsys)
    assert code == 2 and lines == [
        "error: --per-class 3: 30 training images, fewer than one batch "
        "(optim.batch_size=512); give --per-class 52 or more, or a smaller --train-option "
        "optim.batch_size"
    ]


def test_views_runs_its_trainings_in_a_temporary_folder(monkeypatch):
    # Before: /tmp/contrastlab-bench, never removed
    import contrastlab.train

    views = _script("views.py", [], monkeypatch)
    seen = []

    class Stop(Exception):
        pass

    def trainer(cfg):
        seen.append(Path(cfg.out_dir))
        assert seen[0].is_dir()
        raise Stop

    monkeypatch.setattr(contrastlab.train, "Trainer", trainer)
    with pytest.raises(Stop):
        views["step_shares"](type("Args", (), {"steps": 1})(), torch.device("cpu"))
    assert seen and "contrastlab-bench" not in str(seen[0]) and not seen[0].exists()


def test_views_counts_one_timed_batch_in_the_singular(monkeypatch, capsys):
    views = _script("views.py", [], monkeypatch)
    views["RECIPES"].clear()
    args = type("Args", (), {"batch": 2, "batches": 1, "size": 8})()
    views["pipeline_rates"](args, torch.device("cpu"))
    assert "batch 2, 1 timed batch per round, 8 px" in capsys.readouterr().out


@pytest.mark.parametrize(
    "script, option",
    [("views.py", "--batches"), ("views.py", "--size"), ("gpu_check.py", "--data")],
)
def test_options_have_help(script, option, monkeypatch, capsys):
    main = _script(script, ["--help"], monkeypatch)["main"]
    with pytest.raises(SystemExit):
        main()
    help_text = " ".join(capsys.readouterr().out.split())
    upper = option.lstrip("-").upper()
    assert f"{option} {upper} " in help_text
    after = help_text.split(f"{option} {upper} ", 1)[1]
    assert not after.startswith("--"), after[:80]


def test_ft_overhead_labels_the_time_per_step_as_paired(monkeypatch):
    # Before: "-16.5% (median of 5 per-round ratios ...); 32.4 ms per step", a difference of the
    # two medians that disagreed in sign with the median ratio
    common = _common()
    ft = _script("ft_overhead.py", [], monkeypatch)
    t = common.Timings(
        wall={"on": [0.08, 0.09, 0.20, 0.21, 0.22], "off": [0.10, 0.11, 0.12, 0.25, 0.26]}
    )
    line = ft["overhead"](t, "on", "off")
    assert line.startswith("-16.0%")
    assert line.endswith("-20.0 ms per step (median of the per-round differences)")


def test_a_failed_memory_child_is_one_warning_line(capsys):
    # Before: "memory child [...] failed (exit 1):" and then the child's whole traceback
    sys.path.insert(0, str(BENCHMARKS))
    import common

    script = "import sys; sys.stderr.write('Traceback...\\n  File x\\nRuntimeError: out of memory\\n'); sys.exit(1)"
    assert common.child_peak_memory(["-c", script, "--batch", "8"]) is None
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        "warning: the peak memory of -c "
        + script
        + " --batch 8 was not measured: its child process failed (exit 1): "
        "RuntimeError: out of memory"
    ]
