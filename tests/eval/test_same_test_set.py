"""Which results are on the same test images: eval all's comparability check, the names of
results on subsets, few-shot's refusal of short classes and the corruption sweep's estimate."""

import json
import shutil

import pytest
import torch
from helpers import trained_checkpoint
from test_cli import COMMON, TINY, _folder

from contrastlab.cli import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return trained_checkpoint(tmp_path_factory.mktemp("sametest"), TINY)


def _json(path):
    return json.loads(path.read_text())


def _with_data(checkpoint, target, section="data", **data):
    """A copy of ``checkpoint`` at ``target`` whose training config says ``data`` (in its
    ``section``)."""
    from contrastlab.checkpoint import CHECKSUM_KEY, payload_checksum

    state = torch.load(checkpoint, weights_only=False)
    state["config"][section].update(data)
    state[CHECKSUM_KEY] = payload_checksum(state)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, target)
    return target


def _eval_all(checkpoints, out_dir, capsys, *extra):
    argv = ["eval", "all", *map(str, checkpoints), *COMMON, "--protocols", "knn", "--k", "3"]
    capsys.readouterr()
    assert main([*argv, "--no-save", "--out-dir", str(out_dir), *extra]) == 0
    err = capsys.readouterr().err
    return [line for line in err.splitlines() if line.startswith("warning:")]


def test_eval_all_tells_synthetic_test_sets_of_other_settings_apart(checkpoint, tmp_path, capsys):
    """Two synthetic runs with other data.synthetic_test, cut to the same --max-test, were called
    comparable: only the dataset's name, path and count were compared."""
    other = _with_data(checkpoint, tmp_path / "t2" / "checkpoints" / "last.pt", synthetic_test=96)
    warnings = _eval_all([checkpoint, other], tmp_path / "cmp", capsys, "--max-test", "48")
    data = _json(tmp_path / "cmp" / "comparison.json")
    assert [e["num_test"] for e in data["entries"]] == [48, 48]
    assert data["comparable"] is False
    assert len(warnings) == 1 and "not comparable" in warnings[0]
    assert "synthetic_test 64 / 96" in warnings[0] and "own data config" in warnings[0]
    assert "not comparable" in (tmp_path / "cmp" / "comparison.md").read_text()
    assert data["entries"][1]["test_set"]["synthetic_test"] == 96
    # the same settings, another seed of the data set: other images too
    seeded = _with_data(checkpoint, tmp_path / "t3" / "checkpoints" / "last.pt", synthetic_seed=5)
    warnings = _eval_all([checkpoint, seeded], tmp_path / "seed", capsys)
    assert len(warnings) == 1 and "synthetic_seed 0 / 5" in warnings[0]
    # a copy of the same run is comparable, and the file it was evaluated from does not matter
    same = _with_data(checkpoint, tmp_path / "t4" / "checkpoints" / "last.pt")
    assert _eval_all([checkpoint, same], tmp_path / "same", capsys, "--max-test", "48") == []
    assert _json(tmp_path / "same" / "comparison.json")["comparable"] is True


def test_eval_all_tells_image_folder_holdouts_apart(checkpoint, tmp_path, capsys):
    """One folder, test splits held out at other fractions (cut to one size) are other images;
    a relative and an absolute path to one folder are the same images."""
    _folder(tmp_path / "flowers", [(200, 30, 30), (30, 200, 30), (30, 30, 200)], 20, 0)
    a = _with_data(
        checkpoint, tmp_path / "a" / "checkpoints" / "last.pt", name="imagefolder",
        path=str(tmp_path / "flowers"), holdout_fraction=0.1,
    )  # fmt: skip
    b = _with_data(
        checkpoint, tmp_path / "b" / "checkpoints" / "last.pt", name="imagefolder",
        path=str(tmp_path / "flowers"), holdout_fraction=0.2,
    )  # fmt: skip
    warnings = _eval_all([a, b], tmp_path / "cmp", capsys, "--max-test", "5")
    assert len(warnings) == 1 and "holdout_fraction 0.1 / 0.2" in warnings[0]
    assert _json(tmp_path / "cmp" / "comparison.json")["comparable"] is False


def test_results_on_subsets_do_not_replace_the_full_sets(checkpoint, tmp_path, capsys):
    """eval all --max-train/--max-test saved its subset result over the full set's knn.json."""
    run = tmp_path / "run"
    shutil.copytree(checkpoint.parent.parent, run)
    ckpt = run / "checkpoints" / "last.pt"
    knn = ["--k", "3"]
    assert main(["eval", "knn", str(ckpt), *COMMON, *knn]) == 0
    full = _json(run / "eval" / "knn.json")
    assert full["setup"]["max_train"] is None
    assert main(["eval", "knn", str(ckpt), *COMMON, *knn, "--max-train", "50"]) == 0
    assert _json(run / "eval" / "knn-sub50xall.json")["setup"]["max_train"] == 50
    argv = ["eval", "all", str(ckpt), *COMMON, "--protocols", "knn,rotation", *knn]
    argv += ["--max-train", "50", "--max-test", "30", "--out-dir", str(tmp_path / "cmp")]
    assert main(argv) == 0
    assert _json(run / "eval" / "knn.json") == full
    sub = _json(run / "eval" / "knn-sub50x30.json")
    assert (sub["setup"]["max_train"], sub["setup"]["max_test"]) == (50, 30)
    assert _json(run / "eval" / "rotation-sub50x30.json")["setup"]["max_test"] == 30
    files = _json(tmp_path / "cmp" / "comparison.json")["entries"][0]["files"]
    assert files["knn"].endswith("knn-sub50x30.json")
    # the subset drawn is part of what the result says it was scored on
    assert sub["setup"]["test_set"] == {
        "dataset": "synthetic",
        "synthetic_test": 64,
        "synthetic_seed": 0,
        "image_size": 16,
        "max_test": 30,
        "subset_seed": 0,
    }
    assert "max_test" not in full["setup"]["test_set"]
    names = sorted(p.name for p in (run / "eval").glob("*.json"))
    assert names == [
        "knn-sub50x30.json",
        "knn-sub50xall.json",
        "knn.json",
        "rotation-sub50x30.json",
    ]


def test_allway_refuses_short_classes_and_names_the_shots_that_fit():
    """The docs said a short class contributes all it has; the code refuses (a K-shot figure
    needs K images of every class), and said "use --shots between 1 and 1"."""
    from contrastlab.errors import UserError
    from contrastlab.eval.fewshot import allway_kshot

    labels = torch.tensor([0] + [1] * 2 + [2] * 3 + [3] * 40)
    feats = torch.randn(len(labels), 4)
    with pytest.raises(UserError) as e:
        allway_kshot(feats, labels, feats, labels, shots=[10], trials=1)
    assert "3 of 4 classes have fewer (the smallest has 1); use --shots 1" in str(e.value)
    assert "between" not in str(e.value)
    with pytest.raises(UserError, match=r"use --shots between 1 and 2$"):
        allway_kshot(feats[1:], labels[1:], feats, labels, shots=[5], trials=1)
    out = allway_kshot(feats, labels, feats, labels, shots=[1], trials=2)
    assert set(out["shots"]["1"]) == {"mean", "ci95", "trials"}
    from pathlib import Path

    docs = (Path(__file__).parents[2] / "docs" / "evaluation.md").read_text()
    assert "contributes all it has" not in docs and "short_classes" not in docs


def test_corruption_estimate_weighs_each_corruption_by_its_own_cost(monkeypatch, capsys):
    """The rest of a sweep was the elapsed time spread evenly: one slow corruption (glass blur)
    made the estimate far off, with nothing saying it was rough."""
    import time

    import contrastlab.eval.features as features
    import contrastlab.eval.progress as progress
    from contrastlab.eval.corruption import corruption_eval

    clock = [0.0]
    cost = {"clean": 1, "gaussian_noise": 1, "shot_noise": 1, "glass_blur": 20, "contrast": 1}

    def fake_extract(model, ds, space, desc, **kwargs):
        clock[0] += cost[desc.split()[0]]
        return torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)

    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(progress, "INTERVAL", 0.0)
    monkeypatch.setattr(progress, "_last_line", [0.0])  # no earlier test's real time
    monkeypatch.setattr(progress, "bar_shown", lambda shown: False)
    monkeypatch.setattr(features, "extract_features", fake_extract)
    corruption_eval(
        None,
        lambda f: torch.zeros(len(f), dtype=torch.long),
        [torch.zeros(3, 8, 8, dtype=torch.uint8)] * 4,
        lambda x: x,
        corruptions=["gaussian_noise", "shot_noise", "glass_blur", "contrast"],
        severities=[1, 2, 3],
        extract_kwargs={"progress": False},
    )
    lines = {
        line.split(", test set")[0].removeprefix("corruption: "): line
        for line in capsys.readouterr().err.splitlines()
        if line.startswith("corruption: ")
    }
    # glass blur 3: its last test set at its own pace (20 s), contrast at the others' (3 x 1 s)
    assert "47 s elapsed, about 23 s left (rough: 1 corruption not" in lines["glass_blur 3"]
    # before glass blur has run, the estimate cannot know it and says so
    assert lines["glass_blur 1"].endswith(
        "about 6 s left (rough: 2 corruptions not timed yet, and some cost far more than others)"
    ), lines
    # contrast 2, every corruption timed: the rest at contrast's own pace, nothing rough (the
    # elapsed time spread evenly said 12 s)
    assert lines["contrast 2"].endswith("1 min 08 s elapsed, about 2 s left"), lines


def _with_train(checkpoint, target, **train):
    """A copy of ``checkpoint`` at ``target`` whose training config says ``train``."""
    return _with_data(checkpoint, target, section="train", **train)


def test_eval_all_records_each_rows_settings_and_warns_where_they_differ(tmp_path, capsys):
    """kNN of two runs with their own train.knn_k (no --k) was shown side by side as one
    measure; comparison.json did not record k."""
    from helpers import untrained_checkpoint

    checkpoint = untrained_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    other = _with_train(checkpoint, tmp_path / "o" / "checkpoints" / "last.pt", knn_k=7)
    argv = ["eval", "all", str(checkpoint), str(other), *COMMON, "--no-save"]
    argv += ["--protocols", "knn,fewshot", "--episodes", "20", "--trials", "2", "--shots", "2"]
    argv += ["--queries", "3", "--episode-shots", "1"]  # the 48 test images: 4-5 per class
    capsys.readouterr()
    assert main([*argv, "--out-dir", str(tmp_path / "cmp")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning:" in line]
    data = _json(tmp_path / "cmp" / "comparison.json")
    ks = [e["settings"]["knn"]["k"] for e in data["entries"]]
    assert ks == [5, 7]
    assert data["entries"][0]["settings"]["fewshot"]["episodes episodes"] == 20
    assert list(data["settings_differ"]) == ["knn"]
    assert data["settings_differ"]["knn"]["k"] == ks
    assert len(warnings) == 1 and "k 5 / 7" in warnings[0] and "knn" in warnings[0]
    assert "k 5 / 7" in (tmp_path / "cmp" / "comparison.md").read_text()
    # one k given for all: the same settings, no warning
    assert main([*argv, "--k", "3", "--out-dir", str(tmp_path / "one")]) == 0
    assert "warning:" not in capsys.readouterr().err
    assert _json(tmp_path / "one" / "comparison.json")["settings_differ"] == {}
