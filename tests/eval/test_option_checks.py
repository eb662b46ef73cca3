"""Evaluation options are checked before any work: one line, exit status 2."""

from __future__ import annotations

import pytest
import torch

from contrastlab.cli import main
from contrastlab.errors import UserError


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a checkpoint is loaded: every check must come before that."""
    import contrastlab.checkpoint as checkpoint

    def loaded(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the options were checked")

    monkeypatch.setattr(checkpoint, "load_model", loaded)


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["eval", "knn", "CK", "--temperature", "0"], "--temperature must be in [0.001, 10]"),
        (["eval", "knn", "CK", "--temperature", "1e-30"], "--temperature must be in [0.001, 10]"),
        (["eval", "knn", "CK", "--seed", "-1"], "--seed must be in [0, 4294967295]"),
        (["eval", "knn", "CK", "--cache", "CACHEFILE"], "--cache CACHEFILE is a file"),
        (["eval", "all", "CK", "--protocols", "corruption", "--severities", "9"], "within 1..5"),
        (["eval", "all", "CK", "--out-dir", "CACHEFILE"], "--out-dir CACHEFILE is a file"),
        (["eval", "knn", "CK", "--workers", "-1"], "--workers must be 0 or more"),
        (["eval", "knn", "CK", "--k", "0"], "--k must be at least 1"),
        (
            ["eval", "linear", "CK", "--fast", "--val-fraction", "1.5"],
            "--val-fraction must be in (0, 1)",
        ),
        (["eval", "fewshot", "CK", "--shots", "0"], "--shots must be one or more K values"),
        (["eval", "fewshot", "CK", "--episodes", "0"], "--episodes must be at least 1"),
        (["eval", "all", "CK", "--k", "0"], "--k must be at least 1"),
        (["eval", "corruption", "CK", "--corruptions", "fogg"], "unknown corruption fogg"),
        (["eval", "corruption", "CK", "--severities", "6"], "--severities must be within 1..5"),
    ],
)
def test_bad_options_are_one_line_before_work(argv, expected, no_work, capsys, tmp_path):
    cache_file = tmp_path / "cache"
    cache_file.write_text("not a folder")
    argv = [str(cache_file) if a == "CACHEFILE" else a for a in argv]
    expected = expected.replace("CACHEFILE", str(cache_file))
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and expected in err, err


@pytest.mark.parametrize("command", [["eval", "knn"], ["export"]])
def test_an_unwritable_out_is_found_before_work(command, tmp_path, no_work, capsys):
    (tmp_path / "file").write_text("x")
    code = main([*command, "CK", "--out", str(tmp_path / "file" / "result.json")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "is a file, not a folder" in err


def test_more_shots_than_images_per_class_is_an_error():
    from contrastlab.eval.fewshot import allway_kshot

    g = torch.Generator().manual_seed(0)
    feats, labels = torch.randn(9, 4, generator=g), torch.arange(3).repeat(3)  # 3 per class
    with pytest.raises(UserError, match="the smallest has 3"):
        allway_kshot(feats, labels, feats, labels, shots=(10,), trials=1)


def test_a_missing_cifar_copy_gets_advice_that_fits_eval(tmp_path, capsys):
    """eval has no data.download: the message names --data-path, and train's download option
    as a full command."""
    from helpers import TINY

    from contrastlab.config import load_config
    from contrastlab.train import Trainer

    cfg = load_config("moco_v2_cifar", [*TINY, f"out_dir={tmp_path}", "optim.epochs=1"])
    ckpt = Trainer(cfg).fit().last_checkpoint
    capsys.readouterr()
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["eval", "knn", str(ckpt), "--dataset", "cifar10", "--data-path", str(empty)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--data-path" in err and "contrastlab train" in err


@pytest.mark.parametrize("command", [["eval", "knn", "CK"], ["analyze", "CK"]])
def test_an_unknown_device_is_one_line(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--device", "gpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and "invalid choice: 'gpu'" in err[-1]
