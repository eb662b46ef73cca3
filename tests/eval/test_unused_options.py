"""Options an evaluation would ignore are refused before any work, and a result says what was
computed: the seed and the checkpoint's epoch and step in ``setup``, images and rotated views
counted apart."""

from __future__ import annotations

import json

import pytest
from helpers import TINY, overriding, trained_checkpoint

from contrastlab.cli import main

COMMON = ["--workers", "0", "--no-progress", "--batch-size", "64"]
MISSING = "/nonexistent/dir"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint of a tiny run on the synthetic dataset (1 epoch of 2 steps)."""
    cfg = overriding(
        TINY,
        "data.image_size=16",
        "optim.epochs=1",
        "train.max_steps_per_epoch=2",
        "train.knn_every=0",
    )
    return trained_checkpoint(tmp_path_factory.mktemp("unused"), cfg)


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a model is built from a checkpoint: every refusal comes before that."""
    import contrastlab.checkpoint as checkpoint

    def built(*args, **kwargs):
        raise AssertionError("a model was built before the options were checked")

    for name in ("model_from_state", "load_model_and_normalization"):
        monkeypatch.setattr(checkpoint, name, built, raising=False)


def _json(path):
    return json.loads(path.read_text())


@pytest.mark.parametrize(
    "argv, said",
    [
        # eval fewshot: the options of the branch --which leaves out
        (
            ["fewshot", "--which", "allway", "--ways", "3"],
            "--ways applies only to --which episodes",
        ),
        (
            ["fewshot", "--which", "allway", "--episode-shots", "1", "--queries", "3"],
            "--episode-shots --queries apply only to --which episodes or both (this is --which "
            "allway)",
        ),
        (["fewshot", "--which", "allway", "--episodes", "9"], "--episodes applies only"),
        (["fewshot", "--which", "allway", "--classifier", "logistic"], "--classifier applies"),
        (
            ["fewshot", "--which", "episodes", "--shots", "2", "--trials", "2"],
            "--shots --trials apply only to --which allway or both (this is --which episodes)",
        ),
        (
            ["fewshot", "--which", "episodes", "--C", "2"],
            "--C applies only to the all-way protocol and --classifier logistic",
        ),
        (
            ["fewshot", "--which", "episodes", "--classifier", "centroid", "--C", "2"],
            "--C applies only to the all-way protocol and --classifier logistic",
        ),
        # eval corruption: kNN's options with the linear classifier
        (
            ["corruption", "--classifier", "linear", "--k", "5", "--temperature", "0.5"],
            "--k --temperature apply only to --classifier knn (this is --classifier linear)",
        ),
        (["corruption", "--temperature", "0.5"], "--temperature applies only to --classifier knn"),
        # eval linear: a fixed C has no sweep to validate
        (
            ["linear", "--fast", "--C", "0.1", "--val-fraction", "0.5"],
            "--val-fraction applies only to the sweep of C, which --C 0.1 fixes",
        ),
        # --data-path of a dataset that is generated, not read
        (["knn", "--dataset", "synthetic", "--data-path", MISSING], "synthetic is generated"),
        (["knn", "--data-path", MISSING], "the checkpoint's dataset, synthetic is generated"),
        (["linear", "--fast", "--data-path", MISSING], "synthetic is generated, it has no path"),
        (["factors", "--data-path", MISSING], "synthetic is generated, it has no path"),
        (["all", "--data-path", MISSING], "synthetic is generated, it has no path"),
        (["all", "--dataset", "synthetic", "--data-path", MISSING], "synthetic is generated"),
        # eval transfer reads its two folders, not --dataset / --data-path
        (["transfer", "--data-path", "DIR"], "from --train-dir and --test-dir; leave --data-path"),
        (["transfer", "--dataset", "cifar10"], "leave --dataset out"),
        # eval all writes a folder
        (["all", "--out", "OUT"], "eval all writes a folder"),
        (["all", "--no-save", "--overwrite"], "--overwrite applies only to the results eval all"),
    ],
)
def test_options_that_would_be_ignored_are_refused_before_work(
    checkpoint, argv, said, no_model, tmp_path, capsys
):
    """All of them used to be accepted and ignored, some recorded in the result as if used
    (``setup.data_path``); ``eval all --out FILE`` made a folder named FILE."""
    folders = tmp_path / "A"
    folders.mkdir()
    out = tmp_path / "result.json"
    argv = [str(out) if a == "OUT" else str(folders) if a == "DIR" else a for a in argv]
    command, options = argv[0], argv[1:]
    if command == "transfer":
        options += ["--train-dir", str(folders), "--test-dir", str(folders)]
    if command == "all" and "--out" not in options:
        options += ["--out-dir", str(tmp_path / "cmp")]
    elif command != "all":
        options += ["--out", str(out)]
    code = main(["eval", command, str(checkpoint), *COMMON, *options])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and said in err, err
    assert not out.exists() and not (tmp_path / "cmp").exists()
    if command == "all" and "--out" in options:
        assert f"--out-dir {out}" in err


def test_analyze_refuses_a_data_path_for_the_synthetic_dataset(checkpoint, tmp_path, capsys):
    out = tmp_path / "analysis"
    argv = ["analyze", str(checkpoint), "--data-path", MISSING, "--out", str(out)]
    code = main([*argv, "--images", "4", "--negatives", "4", "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "synthetic is generated" in err, err
    assert not (out / "analysis.json").exists()


def test_the_options_each_branch_uses_are_taken(checkpoint, tmp_path, capsys):
    """--C is used by the all-way protocol and by episodes with --classifier logistic. The
    heading says what ran, where it said "fewshot, which allway"."""
    out = tmp_path / "fewshot.json"
    episodes = ["--ways", "2", "--episode-shots", "1", "--queries", "2", "--episodes", "2"]
    argv = ["eval", "fewshot", str(checkpoint), *COMMON, "--which", "episodes", *episodes]
    assert main([*argv, "--classifier", "logistic", "--C", "0.5", "--out", str(out)]) == 0
    assert _json(out)["details"]["episodes"]["C"] == 0.5
    heading = "**fewshot** (2-way 1-shot episodes: 2 each, logistic regression) — "
    assert heading in capsys.readouterr().out
    argv = ["eval", "fewshot", str(checkpoint), *COMMON, "--which", "allway", "--shots", "1"]
    assert main([*argv, "--trials", "1", "--C", "0.25", "--out", str(out)]) == 0
    assert _json(out)["details"]["allway"]["C"] == 0.25
    assert list(_json(out)["details"]) == ["allway"]
    out = capsys.readouterr().out
    assert "**fewshot** (all-way 1-shot: 1 draw each, logistic regression) — " in out
    assert "which" not in out


def test_the_setup_records_the_seed_and_the_checkpoint_state(checkpoint, tmp_path):
    """Two seeds draw two --max-train subsets: their setups used to be identical; and the epoch
    and step of the checkpoint tell an older last.pt apart."""
    from contrastlab.checkpoint import read_checkpoint

    state = read_checkpoint(checkpoint)
    setups = []
    for seed in (0, 1):
        out = tmp_path / f"knn-{seed}.json"
        argv = ["eval", "knn", str(checkpoint), *COMMON, "--max-train", "40", "--k", "3"]
        assert main([*argv, "--seed", str(seed), "--out", str(out)]) == 0
        setups.append(_json(out)["setup"])
    assert [s["seed"] for s in setups] == [0, 1]
    assert setups[0]["epoch"] == state["epoch"] == 1 and setups[0]["step"] == state["step"] == 2


def test_rotation_counts_images_and_rotated_views_apart(checkpoint, tmp_path):
    """``eval rotation --max-test 16`` used to report num_test 64 (its rotated copies)."""
    limits = ["--max-train", "32", "--max-test", "16"]
    out = tmp_path / "rotation.json"
    assert main(["eval", "rotation", str(checkpoint), *COMMON, *limits, "--out", str(out)]) == 0
    details = _json(out)["details"]
    assert "num_test" not in details and "num_train" not in details
    assert (details["num_test_images"], details["num_test_views"]) == (16, 64)
    assert (details["num_train_images"], details["num_train_views"]) == (32, 128)
    argv = ["eval", "factors", str(checkpoint), *COMMON, *limits, "--factors", "shape,rotation"]
    assert main([*argv, "--out", str(out)]) == 0
    details = _json(out)["details"]
    assert (details["rotation"]["num_test_images"], details["rotation"]["num_test_views"]) == (
        16,
        64,
    )
    assert details["shape"]["num_test_images"] == 16


def test_eval_all_says_which_space_it_reads(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "all", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "feature space of every protocol and checkpoint, knn included: backbone (default)" in (
        text
    )
    assert "monitor read" not in text and "--out FILE" not in text


def test_eval_all_saves_beside_each_checkpoint_only_what_it_may_replace(
    checkpoint, tmp_path, capsys
):
    """Each result saved by eval all is named like eval's own (``-<dataset>`` for a dataset other
    than the checkpoint's own: none for --dataset synthetic of a synthetic run;
    ``-sub<train>x<test>`` with --max-test),
    and a file there that is not an eval result is replaced only with --overwrite."""
    saved = checkpoint.parent.parent / "eval" / "knn-suballx8.json"
    saved.parent.mkdir(exist_ok=True)
    saved.write_text("my notes\n")
    argv = ["eval", "all", str(checkpoint), *COMMON, "--protocols", "knn", "--k", "3"]
    argv += ["--dataset", "synthetic", "--max-test", "8", "--out-dir", str(tmp_path / "cmp")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "add --no-save to save no result" in err and len(err.splitlines()) == 1, err
    assert saved.read_text() == "my notes\n" and not (tmp_path / "cmp").exists()
    assert main([*argv, "--overwrite"]) == 0
    assert _json(saved)["setup"]["dataset"] == "synthetic"
