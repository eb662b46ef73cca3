"""The command line: one clear error line and a non-zero exit for bad input, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from contrastlab.cli import main


@pytest.mark.parametrize(
    "args,expected",
    [
        (["train", "--config", "moco_v3"], "unknown preset 'moco_v3'"),
        (["train", "--config", "moco_v2_cifar", "optim.lrr=0.1"], "unknown config key 'optim.lrr'"),
        (["train", "--config", "moco_v2_cifar", "method=simclr"], "valid values: moco, looc"),
        (["train", "--config", "moco_v2_cifar", "optim.lr=fast"], "optim.lr must be a number"),
        (
            ["train", "--config", "moco_v2_cifar", "moco.momentum=1.5"],
            "moco.momentum must be a number in [0, 1]",
        ),
        (
            ["train", "--config", "moco_v2_cifar", "dataset=imagenet"],
            "valid values: synthetic, cifar10",
        ),
        (["train", "--config", "missing.yaml"], "config file missing.yaml does not exist"),
        (
            ["train", "--config", "moco_v2_cifar", "dataset=imagefolder", "data.path=/no/such/dir"],
            "/no/such/dir",
        ),
        (["train", "--config", "moco_v2_cifar", "lr"], "must look like key=value"),
    ],
)
def test_bad_input_is_one_error_line(args, expected, capsys, tmp_path):
    code = main([*args, f"out_dir={tmp_path}"] if args[-1] != "lr" else args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert expected in err


def test_warnings_before_an_error_are_single_lines_too(tmp_path):
    """With data.skip_bad_images=true on a folder whose images are all unreadable: one
    ``warning:`` line (how many were skipped) and one ``error:`` line, no file names or source
    lines of Python's warning format."""
    folder = tmp_path / "corrupt" / "a"
    folder.mkdir(parents=True)
    for i in range(3):
        (folder / f"{i}.png").write_bytes(b"\x89PNG broken" * i)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "contrastlab",
            "train",
            "--config",
            "demo",
            "dataset=imagefolder",
            f"data.path={tmp_path / 'corrupt'}",
            "data.skip_bad_images=true",
            f"out_dir={tmp_path / 'runs'}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2
    assert [line.split(":")[0] for line in lines] == ["warning", "error"], proc.stderr


def test_error_from_the_installed_command_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "contrastlab",
            "train",
            "--config",
            "moco_v2_cifar",
            "ft.pos=extrapolat",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "did you mean 'extrapolate'" in proc.stderr


def test_train_command_runs_end_to_end(tmp_path, capsys):
    from helpers import TINY

    code = main(
        [
            "train",
            "--config",
            "moco_v2_cifar",
            *TINY,
            "optim.epochs=1",
            f"out_dir={tmp_path}",
            "name=cli",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "kNN top-1" in out and "% (z, 48 test images)" in out and str(tmp_path / "cli") in out
    assert (tmp_path / "cli" / "config.yaml").is_file()


def test_config_reference_in_docs_is_current():
    from pathlib import Path

    from contrastlab.config import reference_markdown

    doc = (Path(__file__).parents[1] / "docs" / "config.md").read_text()
    assert reference_markdown() in doc, "regenerate the table in docs/config.md (see its header)"


def test_a_second_ctrl_c_during_training_says_how_to_resume(monkeypatch, capsys):
    import contrastlab.train

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(contrastlab.train, "train", interrupted)
    assert main(["train", "--config", "demo"]) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.resume=auto" in err


def test_a_resumed_run_says_so_and_a_finished_one_trains_nothing(tmp_path, capsys, monkeypatch):
    from helpers import TINY

    base = ["train", "--config", "moco_v2_cifar", *TINY, f"out_dir={tmp_path}", "name=r"]
    base += ["train.knn_every=0"]
    assert main([*base, "optim.epochs=1"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("trained 1 epoch (") and "resumed from" not in first

    assert main([*base, "optim.epochs=2", "train.resume=auto"]) == 0
    out = capsys.readouterr().out.splitlines()[-2]
    last = tmp_path / "r" / "checkpoints" / "last.pt"
    assert out.startswith(f"resumed from {last} at step ") and "(in epoch 2);" in out
    assert "trained to epoch 2 (1 more," in out and "final loss nan" not in out

    import contrastlab.train

    def no_data(*args, **kwargs):
        raise AssertionError("a finished run built its data")

    monkeypatch.setattr(contrastlab.train, "build_dataset", no_data)
    assert main([*base, "optim.epochs=2", "train.resume=auto"]) == 0
    out = capsys.readouterr().out.splitlines()[-2]
    assert out.startswith(f"nothing to train: {last} already holds 2 epochs (all of optim")
    assert "larger optim.epochs" in out
    assert main([*base, "optim.epochs=1", "train.resume=auto"]) == 0
    assert "2 epochs (more than optim.epochs=1)" in capsys.readouterr().out


def _resnet18_source(tmp_path):
    import torchvision

    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def test_a_full_disk_outside_training_says_to_run_the_command_again(tmp_path, capsys, monkeypatch):
    import errno
    import os

    source = _resnet18_source(tmp_path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    code = main(["convert", str(source), "--out", str(tmp_path / "c.pt")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "no space left on device" in err and "run the command again" in err
    assert "train.resume" not in err and not (tmp_path / "c.pt").exists()


def test_a_refused_file_operation_is_one_line_naming_the_path(tmp_path, capsys, monkeypatch):
    import errno

    source = _resnet18_source(tmp_path)
    target = tmp_path / "c.pt"

    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(target))

    import contrastlab.checkpoint

    monkeypatch.setattr(contrastlab.checkpoint, "durable_write", refused)
    code = main(["convert", str(source), "--out", str(target)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert (
        err == f"error: cannot use {target}: Permission denied; check the path and its permissions"
    )


def test_overrides_may_come_before_and_after_the_config(capsys):
    assert main(["config", "optim.epochs=3", "-c", "demo", "name=mixed", "optim.lr=0.1"]) == 0
    out = capsys.readouterr().out
    assert "name: mixed" in out and "epochs: 3" in out and "lr: 0.1" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["export", "x.pt", "--format", "nosuch", "--out", "y.pt"],
        ["eval", "linear", "x.pt", "--fast", "--C", "abc"],
        ["train", "-c", "demo", "--bogus"],
        ["nosuch"],
    ],
)
def test_argument_errors_are_one_line(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: contrastlab") and "--help" in err


def test_presets_print_whole_first_sentences(capsys):
    assert main(["presets"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["loocpp_color"].endswith("also what the kNN monitor reads).")
    assert lines["demo"].endswith("on two CPU cores.")


def test_a_closed_pipe_ends_quietly():
    # stdout is a pipe whose reader is gone (``contrastlab presets | head -n 0``)
    code = (
        "import os, sys; r, w = os.pipe(); os.close(r); os.dup2(w, 1); "
        "from contrastlab.cli import main; sys.exit(main(['presets']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr == ""
