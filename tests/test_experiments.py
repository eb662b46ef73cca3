"""The experiment scripts behind docs/results.md still run against the library."""

import importlib.util
import json
import runpy
import shutil
import signal
import sys
import tarfile
from pathlib import Path

import pytest
from helpers import TINY, overriding

from contrastlab.cli import main as cli_main
from contrastlab.runstate import epochs_done, read_metrics

EXPERIMENTS = Path(__file__).parents[1] / "experiments"


def test_the_supervised_reference_learns_the_synthetic_shapes(monkeypatch, capsys):
    """docs/results.md §6 quotes it as the ceiling of the demo's encoder in the demo's budget: a
    quarter of the demo's epochs already take the kNN monitor on shape past 50% (chance 10%;
    MoCo v2 in the whole demo stays below 40%). The last epoch is measured also where it is not
    a multiple of train.knn_every (it printed no kNN then), and overrides may stand on either
    side of --config."""
    argv = [
        "supervised_reference.py",
        "data.synthetic_test=200",
        "--config",
        "demo",
        "optim.epochs=4",
        "train.knn_every=3",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(EXPERIMENTS / "supervised_reference.py"), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[:4]] == [f"epoch {e}" for e in (1, 2, 3, 4)]
    assert ["kNN top-1" in line for line in lines[:4]] == [False, False, True, True]
    knn = float(lines[3].split("kNN top-1 ")[1].split("%")[0])
    assert knn > 50.0
    assert lines[-1].startswith("classifier test accuracy") and lines[-1].endswith("on 200 images")


@pytest.mark.parametrize(
    "argv, start",
    [
        (["--config", "nosuch"], "error: unknown preset 'nosuch'"),
        (["--config", "{tmp}/some.jpg"], "error: {tmp}/some.jpg holds no settings"),
        (["optim.epochs=-1"], "error: optim.epochs must be an integer >= 1, got -1"),
        (
            ["data.synthetic_train=20", "optim.batch_size=32"],
            "error: optim.batch_size=32 is larger than the 20 training images",
        ),
    ],
)
def test_the_supervised_reference_says_a_config_error_in_one_line(
    argv, start, tmp_path, monkeypatch, capsys
):
    # Before: a UserError traceback; a batch larger than the data: ZeroDivisionError
    (tmp_path / "some.jpg").write_bytes(b"")
    argv = [a.format(tmp=tmp_path) for a in argv]
    monkeypatch.setattr(sys, "argv", ["supervised_reference.py", *argv])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(EXPERIMENTS / "supervised_reference.py"), run_name="__main__")
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(lines) == 1
    assert lines[0].startswith(start.format(tmp=tmp_path)), lines


def _prepare(argv: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["prepare_cifar10.py", *argv])
    monkeypatch.setattr(signal, "signal", lambda *a: None)  # pytest keeps its own handlers
    runpy.run_path(str(EXPERIMENTS / "prepare_cifar10.py"), run_name="__main__")


@pytest.mark.parametrize("stop, status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_prepare_cifar10_stopped_is_one_line_and_leaves_no_folder_it_made(
    stop, status, tmp_path, monkeypatch, capsys
):
    # Before: a KeyboardInterrupt traceback, and the empty --dest folder it had made
    from contrastlab.errors import StopRequested

    for split in ("train", "test"):
        (tmp_path / f"cifar10-{split}.tar.gz").write_bytes(b"")

    def stopped(*a, **k):
        raise KeyboardInterrupt if stop == "SIGINT" else StopRequested(15)

    monkeypatch.setattr(tarfile, "open", stopped)
    dest = tmp_path / "new" / "cifar10"
    with pytest.raises(SystemExit) as end:
        _prepare(["--src", str(tmp_path), "--dest", str(dest)], monkeypatch)
    lines = capsys.readouterr().err.strip().splitlines()
    assert end.value.code == status and len(lines) == 1
    said = "Ctrl-C (SIGINT)" if stop == "SIGINT" else stop  # as contrastlab says it
    assert lines[0].startswith(f"prepare_cifar10.py: stopped by {said}; ")
    assert not (tmp_path / "new").exists()


def test_prepare_cifar10_says_a_file_for_a_folder_or_an_archive(tmp_path, monkeypatch, capsys):
    # Before: NotADirectoryError and tarfile.ReadError tracebacks
    for split in ("train", "test"):
        (tmp_path / f"cifar10-{split}.tar.gz").write_text("not an archive")
    (tmp_path / "file").write_text("")
    for dest, said in (
        (tmp_path / "file", f"--dest {tmp_path / 'file'}: {tmp_path / 'file'} is a file"),
        (tmp_path / "out", f"{tmp_path / 'cifar10-train.tar.gz'} is not a tar archive"),
    ):
        with pytest.raises(SystemExit) as end:
            _prepare(["--src", str(tmp_path), "--dest", str(dest)], monkeypatch)
        lines = capsys.readouterr().err.strip().splitlines()
        assert end.value.code == 2 and len(lines) == 1
        assert lines[0].startswith(f"prepare_cifar10.py: error: {said}"), lines
    assert not (tmp_path / "out").exists()


def test_cifar10_full_help_describes_it_in_whole_sentences(monkeypatch, capsys):
    # Before: "... then the kNN curve in both" and no more
    monkeypatch.setattr(sys, "argv", ["cifar10_full.py", "--help"])
    with pytest.raises(SystemExit):
        runpy.run_path(str(EXPERIMENTS / "cifar10_full.py"), run_name="__main__")
    assert "in both spaces and the final linear probe." in " ".join(capsys.readouterr().out.split())


def load_script(name: str):
    """An experiment script as a module (its ``main`` not run)."""
    spec = importlib.util.spec_from_file_location(
        f"experiment_{Path(name).stem}", EXPERIMENTS / name
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY_EXPERIMENT = dict(
    config="moco_v2_cifar", variants={"MoCo v2": []}, seeds=[0], evals=["linear"]
)


def test_run_py_resumes_a_stopped_training_and_tables_the_fast_linear_probe(
    tmp_path, monkeypatch, capsys
):
    """run.py read eval/linear.json where ``eval linear --fast`` writes linear-fast.json (a
    crash at the summary, and every linear probe run again), skipped a training whose last.pt
    existed although it had stopped part-way, and refused overrides after its options."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run = load_script("run.py")
    monkeypatch.setitem(run.EXPERIMENTS, "tiny", TINY_EXPERIMENT)
    settings = overriding(TINY, "optim.epochs=2", "train.knn_every=0")
    run_dir = tmp_path / "tiny" / "moco_v2-s0"
    # a training stopped after the first of its two epochs: last.pt holds epoch 1
    first = overriding(settings, "optim.epochs=1")
    assert (
        cli_main(
            ["train", "--config", "moco_v2_cifar", *first, "seed=0"]
            + [f"out_dir={run_dir.parent}", "name=moco_v2-s0"]
        )
        == 0
    )
    steps = []
    real_sh = run.sh

    def sh(args, prog="run.py"):  # the commands themselves, but the figures (not checked here)
        steps.append(args[3:])
        if args[3] != "scores":
            real_sh(args, prog)

    monkeypatch.setattr(run, "sh", sh)
    # the overrides after run.py's options
    argv = ["run.py", "tiny", "--seeds", "0", "--root", str(tmp_path), *settings]
    monkeypatch.setattr(sys, "argv", argv)
    run.main()
    assert [s[:2] for s in steps] == [
        ["train", "--config"],
        ["eval", "linear"],
        ["scores", str(run_dir)],
    ]
    assert steps[0][-1] == "train.resume=auto"
    metrics = read_metrics(run_dir / "metrics.jsonl")
    assert epochs_done(metrics) == 2 and any(e["event"] == "resume" for e in metrics)
    assert (run_dir / "eval" / "linear-fast.json").is_file()
    row = (tmp_path / "tiny" / "summary.md").read_text().splitlines()[2]
    assert row.startswith("| MoCo v2 | ") and row.split("|")[3].strip() != "–"
    steps.clear()
    run.main()  # again: nothing is trained or evaluated twice
    assert [s[0] for s in steps] == ["scores"]


def test_run_py_ends_a_failed_or_stopped_step_with_one_line(tmp_path, monkeypatch, capsys):
    """A contrastlab command that failed or was stopped (exit 75) ended run.py with a
    CalledProcessError traceback."""
    run = load_script("run.py")
    monkeypatch.setitem(run.EXPERIMENTS, "tiny", TINY_EXPERIMENT)
    argv = ["run.py", "tiny", "--root", str(tmp_path), "--seeds", "0", *TINY]
    monkeypatch.setattr(sys, "argv", argv)
    for code, said in ((75, "run.py: stopped in `"), (2, "run.py: `")):
        # the command as a stand-in that exits as a stopped training / a refused setting does
        monkeypatch.setattr(run, "CLI", [sys.executable, "-c", f"raise SystemExit({code})"])
        with pytest.raises(SystemExit) as info:
            run.main()
        assert info.value.code == code
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith(said), err
        assert "run the same run.py command again" in err[0]
    monkeypatch.setattr(sys, "argv", [*argv, "optim.lr=fast"])
    with pytest.raises(SystemExit) as info:
        run.main()
    assert info.value.code == 2
    assert capsys.readouterr().err == "run.py: error: optim.lr must be a number > 0, got 'fast'\n"


def test_cifar10_full_takes_overrides_and_the_epochs_of_its_resolved_config(
    tmp_path, monkeypatch, capsys
):
    """cifar10_full.py took only --data/--out/--seed and counted a run finished at a hard-coded
    60 epochs: a shrunk run (optim.epochs=1) was not possible."""
    full = load_script("cifar10_full.py")
    calls = []

    def fake_run(argv):  # records each step; an eval writes a result as the command would
        calls.append(argv)
        if argv[0] == "eval":
            out = Path(argv[argv.index("--out") + 1])
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"summary": {"top1": 12.5}}))

    monkeypatch.setattr(full, "run", fake_run)
    run_dir = tmp_path / "moco_v2_cifar_cpu-s0"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"")
    epoch = {"event": "epoch", "epoch": 1, "step": 3, "loss": 1.0}
    knn = {"event": "knn", "epoch": 1, "knn_top1_backbone": 20.0, "knn_top1_z": 21.0}
    (run_dir / "metrics.jsonl").write_text(json.dumps(epoch) + "\n" + json.dumps(knn) + "\n")
    argv = ["cifar10_full.py", "--out", str(tmp_path), "optim.epochs=2", "--data", "d"]
    monkeypatch.setattr(sys, "argv", argv)
    full.main()  # 1 of 2 epochs: the training resumes, with the overrides
    assert calls[0][:3] == ["train", "--config", "moco_v2_cifar_cpu"]
    assert "optim.epochs=2" in calls[0] and calls[0][-1] == "train.resume=auto"
    assert [c[:2] for c in calls[1:]] == [["eval", "linear"]]
    (run_dir / "eval" / "linear-fast.json").unlink()
    calls.clear()
    monkeypatch.setattr(sys, "argv", [*argv[:3], "optim.epochs=1", *argv[4:]])
    full.main()  # the run has its 1 epoch: only the linear probe is left
    assert [c[:2] for c in calls] == [["eval", "linear"]]
    assert "| 1 | 20.0 | 21.0 |" in (run_dir / "summary.md").read_text()


def fake_cifar_archives(folder: Path, train: int = 3, test: int = 2) -> Path:
    """cifar10-train.tar.gz and cifar10-test.tar.gz with two classes of tiny 'images'."""
    import tarfile

    folder.mkdir()
    for split, n in (("train", train), ("test", test)):
        tree = folder / "tree"
        for cls in ("cat", "dog"):
            (tree / split / cls).mkdir(parents=True)
            for i in range(n):
                (tree / split / cls / f"{i:04d}.jpg").write_bytes(b"jpg")
        with tarfile.open(folder / f"cifar10-{split}.tar.gz", "w:gz") as tar:
            tar.add(tree / split, arcname=split)
        shutil.rmtree(tree)
    return folder


def prepare(monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["prepare_cifar10.py", *args])
    runpy.run_path(str(EXPERIMENTS / "prepare_cifar10.py"), run_name="__main__")


def test_prepare_cifar10_checks_its_arguments_and_never_reuses_another_subset(
    tmp_path, monkeypatch, capsys
):
    """--per-class -1 took all but one image of each class, 0 none; a missing --src was a
    traceback; a subset made with another --test-per-class was reused as it was."""
    src = fake_cifar_archives(tmp_path / "src")
    dest = tmp_path / "data" / "cifar10"
    for bad, said in (  # the missing archives first: nothing is extracted yet
        (["--src", str(tmp_path / "nothing")], f"{tmp_path / 'nothing' / 'cifar10-train.tar.gz'}"),
        (["--per-class", "-1"], "--per-class must be a number of images >= 1, got -1"),
        (["--per-class", "0"], "--per-class must be a number of images >= 1, got 0"),
        (["--test-per-class", "0"], "--test-per-class must be a number of images >= 1, got 0"),
        (["--per-class", "4"], "--per-class 4 is more than the 3 train images of the smallest"),
    ):
        with pytest.raises(SystemExit) as info:
            prepare(monkeypatch, "--src", str(src), "--dest", str(dest), *bad)
        assert info.value.code == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("prepare_cifar10.py: error: ") and said in err[0]
    subset = tmp_path / "data" / "cifar10-2"
    prepare(
        monkeypatch,
        "--src",
        str(src),
        "--dest",
        str(dest),
        "--per-class",
        "2",
        "--test-per-class",
        "1",
    )
    assert capsys.readouterr().out.endswith(f"{subset}: 4 training and 2 test images\n")
    prepare(
        monkeypatch,
        "--src",
        str(src),
        "--dest",
        str(dest),
        "--per-class",
        "2",
        "--test-per-class",
        "2",
    )
    assert capsys.readouterr().out.endswith(f"{subset}: 4 training and 4 test images\n")
    prepare(monkeypatch, "--src", str(src), "--dest", str(dest), "--per-class", "2")  # all tests
    assert capsys.readouterr().out.endswith(f"{subset}: 4 training and 4 test images\n")
    assert (subset / "test").is_symlink()


@pytest.mark.parametrize("stop", [KeyboardInterrupt, "full disk"])
def test_prepare_cifar10_makes_an_interrupted_extraction_again(tmp_path, monkeypatch, capsys, stop):
    """Ctrl-C or a full disk during the extraction left a half train/ folder, which the next run
    took as complete: its subset was short of images, and nothing said so."""
    import errno
    import tarfile

    src = fake_cifar_archives(tmp_path / "src")
    dest = tmp_path / "data" / "cifar10"
    real, written = tarfile.TarFile.makefile, []

    def stops_after_two_images(self, member, path):
        if len(written) == 2:
            if stop == "full disk":
                raise OSError(errno.ENOSPC, "No space left on device", path)
            raise stop
        written.append(path)
        real(self, member, path)

    monkeypatch.setattr(tarfile.TarFile, "makefile", stops_after_two_images)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        prepare(monkeypatch, "--src", str(src), "--dest", str(dest), "--per-class", "3")
    if stop == "full disk":  # one line, as every error of the script
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and "no space left on device while making" in err[0], err
    assert not (tmp_path / "data").exists()  # no half folder, no temporary one, no folder it made
    # a run killed outright leaves its temporary folder: the next run replaces it
    leftover = dest / ".train.partial" / "cat"
    leftover.mkdir(parents=True)
    (leftover / "9999.jpg").write_bytes(b"jpg")
    monkeypatch.setattr(tarfile.TarFile, "makefile", real)
    prepare(monkeypatch, "--src", str(src), "--dest", str(dest), "--per-class", "3")
    subset = tmp_path / "data" / "cifar10-3"
    assert capsys.readouterr().out.endswith(f"{subset}: 6 training and 4 test images\n")
    assert sorted(p.name for p in dest.iterdir()) == ["test", "train"]
    assert sorted(p.name for p in (dest / "train" / "cat").iterdir()) == [
        "0000.jpg",
        "0001.jpg",
        "0002.jpg",
    ]
