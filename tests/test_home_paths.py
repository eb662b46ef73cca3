"""``~`` in a path the shell leaves alone (``key=~/x``, ``--flag=~/x``, a YAML file) means the home
folder, as it does in a word of its own: every command and setting that names a file or folder."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY, overriding
from PIL import Image

from contrastlab.cli import PATH_ARGUMENTS, _expand_home, build_parser, main


def _image_folder(root: Path, per_class: int = 12) -> None:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    _image_folder(tmp_path / "images")
    return tmp_path


TRAIN = overriding(
    TINY,
    "dataset=imagefolder",
    "data.image_size=16",
    "data.holdout_fraction=0.25",
    "optim.epochs=1",
    "train.knn_every=0",
    "model.bn_splits=1",
    "optim.batch_size=8",
)


def test_train_reads_data_path_and_writes_out_dir_under_home(home, capsys):
    code = main(["train", "--config", "demo", *TRAIN, "data.path=~/images", "out_dir=~/runs"])
    assert code == 0, capsys.readouterr().err
    assert (home / "runs" / "demo" / "checkpoints" / "last.pt").is_file()
    assert not (home / "~").exists()  # no folder literally named "~" in the working directory


def test_train_resume_and_config_file_under_home(home, capsys):
    (home / "mine.yaml").write_text("base: demo\nname: mine\n")
    first = ["train", "--config=~/mine.yaml", *TRAIN, "data.path=~/images", "out_dir=~/runs"]
    assert main(first) == 0, capsys.readouterr().err
    last = "~/runs/mine/checkpoints/last.pt"
    again = overriding(first, "optim.epochs=2", f"train.resume={last}")
    assert main(again) == 0, capsys.readouterr().err
    capsys.readouterr()
    import torch

    assert torch.load(home / last[2:], map_location="cpu", weights_only=False)["epoch"] == 2


def test_eval_takes_checkpoint_data_path_and_out_under_home(home, capsys):
    assert main(["train", "--config", "demo", *TRAIN, "data.path=~/images", "out_dir=~/runs"]) == 0
    capsys.readouterr()
    code = main(
        [
            "export",
            "~/runs/demo/checkpoints/last.pt",
            "--out=~/encoder.pt",
            "--format",
            "torchvision",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert (home / "encoder.pt").is_file()


def test_every_path_argument_of_every_command_is_expanded(monkeypatch, tmp_path):
    """Each subcommand's options that name files: their dests are in PATH_ARGUMENTS, so that a new
    option cannot be added without it (a `--thing-dir` or `--...-path` left out fails here)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    path_like = ("dir", "path", "out", "file", "checkpoint", "run", "config", "src", "cache")
    not_paths = {"help", "overrides", "prints_only", "overwrite", "format", "fmt", "command"}
    checked = []

    def walk(parser, prog: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, command in action.choices.items():
                    walk(command, f"{prog} {name}")
                continue
            words = f"{action.dest} {action.metavar or ''}".lower()
            if action.dest in not_paths or not any(w in words for w in path_like):
                continue
            checked.append(action.dest)
            if action.dest not in PATH_ARGUMENTS:
                pytest.fail(f"{prog} {action.option_strings or action.dest}: not in PATH_ARGUMENTS")

    walk(build_parser(), "contrastlab")
    assert {"cache", "train_dir", "data_path", "checkpoint", "out"} <= set(checked)

    class Args:
        out = "~/x.pt"
        runs = ["~/a", "b"]
        data_path = None

    args = Args()
    _expand_home(args)
    assert args.out == str(tmp_path / "x.pt") and args.runs == [str(tmp_path / "a"), "b"]
