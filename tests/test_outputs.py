"""--out never destroys the user's files: every command that writes one checks it before any work."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY as HELPERS_TINY

from contrastlab.cli import main

TINY = [*HELPERS_TINY, "optim.epochs=1", "train.max_steps_per_epoch=2", "train.knn_every=0"]
EVAL = ["--workers", "0", "--no-progress", "--max-train", "64", "--max-test", "32"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    torch.set_num_threads(1)
    assert main(["train", "--config", "demo", *TINY, f"out_dir={root}", "name=r"]) == 0
    return root / "r"


def _refused(argv, capsys, phrase) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and phrase in err, err
    return err


def _commands(run, out):
    ckpt = str(run / "checkpoints" / "last.pt")
    return {
        "eval": ["eval", "knn", ckpt, *EVAL, "--out", str(out)],
        "export": ["export", ckpt, "--out", str(out)],
        "convert": ["convert", ckpt, "--from", "auto", "--out", str(out)],
        "report": ["report", str(run), "--out", str(out)],
    }


@pytest.mark.parametrize("command", ["eval", "export", "convert", "report"])
def test_an_existing_file_of_another_kind_is_never_replaced(run, tmp_path, capsys, command):
    for victim in (run / "config.yaml", run / "metrics.jsonl", run / "checkpoints" / "last.pt"):
        before = victim.read_bytes()
        _refused(_commands(run, victim)[command], capsys, "")
        assert victim.read_bytes() == before, victim
    mine = tmp_path / "notes.txt"
    mine.write_text("my notes")
    err = _refused(_commands(run, mine)[command], capsys, "already exists")
    assert "--overwrite" in err and mine.read_text() == "my notes"


@pytest.mark.parametrize("command", ["export", "convert"])
def test_the_input_checkpoint_is_refused_even_with_overwrite(run, capsys, command):
    ckpt = run / "checkpoints" / "last.pt"
    before = ckpt.read_bytes()
    argv = [*_commands(run, ckpt)[command], "--overwrite"]
    _refused(argv, capsys, "is the file this command reads")
    assert ckpt.read_bytes() == before


def test_overwrite_replaces_a_users_file_and_earlier_results_are_replaced(run, tmp_path, capsys):
    mine = tmp_path / "old.pt"
    mine.write_bytes(b"an old export")
    assert main([*_commands(run, mine)["export"], "--overwrite"]) == 0
    assert mine.read_bytes() != b"an old export"
    result = tmp_path / "knn.json"
    assert main(_commands(run, result)["eval"]) == 0
    assert main(_commands(run, result)["eval"]) == 0  # an earlier eval result: replaced
    report = tmp_path / "r.html"
    assert main(_commands(run, report)["report"]) == 0
    assert main(_commands(run, report)["report"]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("command", ["report", "scores", "eval", "analyze"])
def test_an_output_under_a_file_is_one_line(run, capsys, command):
    under = run / "config.yaml" / "x"
    ckpt = str(run / "checkpoints" / "last.pt")
    argv = {
        "report": ["report", str(run), "--out", str(under / "r.html")],
        "scores": ["scores", str(run), "--out", str(under)],
        "eval": ["eval", "knn", ckpt, *EVAL, "--out", str(under / "k.json")],
        "analyze": ["analyze", ckpt, "--out", str(under)],
    }[command]
    _refused(argv, capsys, "config.yaml is a file, not a folder")


def test_a_result_on_another_dataset_does_not_replace_the_runs_own(run, tmp_path, capsys):
    import json

    from PIL import Image

    folder = tmp_path / "f1"
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True)
        for i in range(12):
            colour = (200, 30, 30) if label == "a" else (30, 30, 200)
            Image.new("RGB", (16, 16), (colour[0] + i, colour[1], colour[2])).save(
                folder / label / f"{i}.png"
            )
    ckpt = str(run / "checkpoints" / "last.pt")
    assert main(["eval", "knn", ckpt, *EVAL]) == 0
    own = run / "eval" / "knn-sub64x32.json"  # EVAL limits both splits
    before = own.read_text()
    argv = ["eval", "knn", ckpt, *EVAL, "--dataset", "imagefolder", "--data-path", str(folder)]
    assert main(argv) == 0
    other = run / "eval" / "knn-imagefolder-f1-sub64x32.json"
    assert own.read_text() == before
    assert json.loads(other.read_text())["protocol"] == "knn"
    assert str(other) in capsys.readouterr().out


def _checkpoint_for(fmt, run, tmp_path):
    """The run's checkpoint, or for detectron2 (which refuses TINY's CIFAR stem) an untrained
    ResNet-50 with the ImageNet stem, which Detectron2's ResNet can hold."""
    if fmt != "detectron2":
        return run / "checkpoints" / "last.pt"
    from helpers import untrained_checkpoint

    folder = tmp_path / "r50"
    folder.mkdir()
    overrides = ("model.backbone=resnet50", "model.cifar_stem=false")
    return untrained_checkpoint(folder / "last.pt", *overrides)


@pytest.mark.parametrize("fmt", ["torchvision", "detectron2", "safetensors"])
def test_export_again_to_the_same_out_replaces_its_earlier_export(run, tmp_path, capsys, fmt):
    if fmt == "safetensors":
        pytest.importorskip("safetensors")
    ckpt = str(_checkpoint_for(fmt, run, tmp_path))
    out = tmp_path / f"b.{fmt}"
    argv = ["export", ckpt, "--format", fmt, "--out", str(out)]
    assert main(argv) == 0
    assert main(argv) == 0  # its own earlier export: replaced, not refused
    out.write_bytes(b"\x80" + b"my own weights" * 30)  # the user's file of that name: kept
    _refused(argv, capsys, "already exists")
    assert out.read_bytes().startswith(b"\x80my own weights")


def test_checkpoints_side_by_side_keep_their_own_results(run, tmp_path, capsys):
    import json
    import shutil

    # converted or downloaded encoders are often kept in one folder: a.pt, b.pth.tar
    for name in ("a.pt", "b.pth.tar"):
        shutil.copy(run / "checkpoints" / "last.pt", tmp_path / name)
        assert main(["eval", "knn", str(tmp_path / name), *EVAL]) == 0
    results = {p.name: json.loads(p.read_text()) for p in (tmp_path / "eval").glob("*.json")}
    assert set(results) == {"knn-sub64x32-a.json", "knn-sub64x32-b.json"}  # EVAL's subsets
    assert results["knn-sub64x32-b.json"]["setup"]["checkpoint"].endswith("b.pth.tar")
    # in a run, best.pt does not replace the result of last.pt (read by the report)
    shutil.copy(run / "checkpoints" / "last.pt", run / "checkpoints" / "best.pt")
    assert main(["eval", "knn", str(run / "checkpoints" / "best.pt"), *EVAL]) == 0
    assert main(["eval", "knn", str(run / "checkpoints" / "last.pt"), *EVAL]) == 0
    assert {"knn-sub64x32.json", "knn-sub64x32-best.json"} <= {
        p.name for p in (run / "eval").glob("*.json")
    }
    capsys.readouterr()


def test_analyze_does_not_replace_a_users_analysis_json(run, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "analysis.json").write_text('{"x": 1}')
    ckpt = str(run / "checkpoints" / "last.pt")
    argv = ["analyze", ckpt, "--images", "8", "--negatives", "16", "--out", str(folder)]
    _refused(argv, capsys, "already exists")
    assert (folder / "analysis.json").read_text() == '{"x": 1}'


def _disk_full(argv, capsys, monkeypatch, folder, only=None) -> None:
    """``argv`` on a nearly full disk: one line, exit 2, no traceback, no temporary file."""
    from helpers import full_disk, problem_lines, temporary_files

    capsys.readouterr()
    with monkeypatch.context() as mp:
        full_disk(mp, only=only)
        code = main(argv)
    # the error is one line, after the lines in which eval and analyze say what they run
    err = "\n".join(problem_lines(capsys.readouterr().err))
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "no space left on device" in err and "run the command again" in err, err
    assert temporary_files(folder) == []


@pytest.mark.parametrize("fmt", ["torchvision", "detectron2", "safetensors"])
def test_export_on_a_full_disk_keeps_the_earlier_export(run, tmp_path, capsys, monkeypatch, fmt):
    if fmt == "safetensors":
        pytest.importorskip("safetensors")
    out = tmp_path / f"b.{fmt}"
    argv = ["export", str(_checkpoint_for(fmt, run, tmp_path)), "--format", fmt, "--out", str(out)]
    assert main(argv) == 0
    before = out.read_bytes()
    _disk_full(argv, capsys, monkeypatch, tmp_path)
    assert out.read_bytes() == before


def test_report_on_a_full_disk_keeps_the_earlier_report(run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "r.html"
    assert main(["report", str(run), "--out", str(out)]) == 0
    before = out.read_bytes()
    _disk_full(["report", str(run), "--out", str(out)], capsys, monkeypatch, tmp_path)
    assert out.read_bytes() == before


def test_eval_cache_and_result_on_a_full_disk(run, tmp_path, capsys, monkeypatch):
    ckpt = str(run / "checkpoints" / "last.pt")
    argv = ["eval", "knn", ckpt, *EVAL, "--cache", str(tmp_path / "cache")]
    _disk_full([*argv, "--out", str(tmp_path / "k.json")], capsys, monkeypatch, tmp_path)
    assert not (tmp_path / "k.json").exists()


def test_analyze_on_a_full_disk_is_one_line(run, tmp_path, capsys, monkeypatch):
    ckpt = str(run / "checkpoints" / "last.pt")
    out = tmp_path / "a"
    argv = ["analyze", ckpt, "--images", "8", "--negatives", "16", "--no-progress"]
    _disk_full([*argv, "--out", str(out)], capsys, monkeypatch, tmp_path)
    # the disk fills up at the per-image scores, after the score statistics are written
    _disk_full([*argv, "--out", str(out)], capsys, monkeypatch, tmp_path, "sensitivity.npz")
    assert list(out.rglob("*sensitivity.npz*")) == []


def test_analyze_does_not_replace_a_users_figure(run, tmp_path, capsys):
    folder = tmp_path / "mine"
    (folder / "figures").mkdir(parents=True)
    mine = folder / "figures" / "analysis-backbone-overlay.png"
    mine.write_bytes(b"my own figure")
    ckpt = str(run / "checkpoints" / "last.pt")
    argv = ["analyze", ckpt, "--images", "8", "--negatives", "16", "--no-progress"]
    err = _refused([*argv, "--out", str(folder)], capsys, "already exists")
    assert "--overwrite" in err and mine.read_bytes() == b"my own figure"
    assert not (folder / "analysis.json").exists()  # refused before any work
    assert main([*argv, "--out", str(folder), "--overwrite"]) == 0
    assert main([*argv, "--out", str(folder)]) == 0  # its own earlier analysis: replaced
    capsys.readouterr()
