"""What eval commands say about what they run: the kNN vote's k, T and sizes, what ± means,
few-shot parts the data cannot support, and progress where no bar is shown."""

import json

import pytest
from helpers import trained_checkpoint
from test_cli import COMMON, TINY

from contrastlab.cli import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    # enough training images for eval all's default 10-shot draws
    tiny = [
        ("data.synthetic_train=300" if o.startswith("data.synthetic_train=") else o) for o in TINY
    ]
    return trained_checkpoint(tmp_path_factory.mktemp("headings"), tiny)


def _json(path):
    return json.loads(path.read_text())


def test_knn_heading_names_k_t_and_sizes_and_warns_when_k_covers_the_bank(
    checkpoint, tmp_path, capsys
):
    out = tmp_path / "knn.json"
    args = ["--k", "40", "--temperature", "0.5", "--max-train", "40", "--max-test", "20"]
    assert main(["eval", "knn", str(checkpoint), *COMMON, *args, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "(k 40, T 0.5, bank of 40 training images, 20 test queries)" in captured.out
    # k equal to the bank: every image votes (only k > bank was said before)
    assert "k=40 is at least the 40 images of the kNN bank: every one of them votes" in (
        captured.err
    )
    args[1] = "39"
    assert main(["eval", "knn", str(checkpoint), *COMMON, *args, "--out", str(out)]) == 0
    assert "every one of them votes" not in capsys.readouterr().err


def test_corruption_knn_warns_when_k_covers_the_bank_and_names_it(checkpoint, tmp_path, capsys):
    args = [
        *("--classifier", "knn", "--k", "30", "--max-train", "30", "--max-test", "10"),
        *("--corruptions", "gaussian_noise", "--severities", "1"),
        *("--out", str(tmp_path / "c.json")),
    ]
    assert main(["eval", "corruption", str(checkpoint), *COMMON, *args]) == 0
    captured = capsys.readouterr()
    assert "k=30 is at least the 30 images of the kNN bank" in captured.err
    assert "k 30, T 0.1, bank of 30 training images" in captured.out


def test_fewshot_defaults_skip_the_episodes_the_test_split_cannot_hold(
    checkpoint, tmp_path, capsys
):
    out = tmp_path / "fewshot.json"
    args = ["--shots", "2", "--trials", "3", "--max-test", "40", "--out", str(out)]
    # 40 test images over 10 classes: no class holds 1 + 15 images for 5-way episodes
    assert main(["eval", "fewshot", str(checkpoint), *COMMON, *args]) == 0
    captured = capsys.readouterr()
    res = _json(out)
    assert "2-shot" in res["summary"] and "allway" in res["details"]
    skipped = res["details"]["episodes"]["skipped"]
    assert "in the test split; the test split's 10 classes have" in skipped
    assert "episodes skipped: 5-way 1-shot episodes" in captured.out
    assert "eval fewshot: episodes skipped: 5-way 1-shot" in captured.err
    # what ± means, under the table
    assert "2-shot | " in captured.out and " ± " in captured.out
    assert "mean ± 95% confidence interval (Student t) over 3 trials (all-way)" in captured.out
    # the episodes alone: still an error, naming the split and its counts
    args = ["--which", "episodes", "--max-test", "40", "--out", str(tmp_path / "e.json")]
    assert main(["eval", "fewshot", str(checkpoint), *COMMON, *args]) == 2
    err = capsys.readouterr().err
    assert "images each in the test split; the test split's 10 classes have" in err
    assert "so 0 have that many" in err


def test_episodes_say_what_their_interval_is(checkpoint, tmp_path, capsys):
    args = [
        *("--which", "episodes", "--ways", "2", "--queries", "2", "--episode-shots", "1"),
        *("--episodes", "7", "--out", str(tmp_path / "e.json")),
    ]
    assert main(["eval", "fewshot", str(checkpoint), *COMMON, *args]) == 0
    out = capsys.readouterr().out
    assert "mean ± 95% confidence interval (Student t) over 7 episodes (2-way)" in out


def test_eval_all_says_what_its_intervals_are(checkpoint, tmp_path, capsys):
    args = [
        *("--protocols", "fewshot", "--trials", "2", "--episodes", "3", "--max-test", "40"),
        *("--out-dir", str(tmp_path / "all"), "--no-save"),
    ]
    assert main(["eval", "all", str(checkpoint), *COMMON, *args]) == 0
    out = capsys.readouterr().out
    assert "fewshot: mean ± 95% confidence interval (Student t) over 2 trials (all-way)" in out
    assert "fewshot: mean ± 95%" in (tmp_path / "all" / "comparison.md").read_text()


@pytest.fixture
def every_step(monkeypatch):
    """A progress line at every step instead of every 30 s (stderr is not a terminal here)."""
    import contrastlab.eval.progress as progress

    monkeypatch.setattr(progress, "INTERVAL", 0.0)


def test_the_sgd_probe_says_what_runs_and_how_far_it_is_without_a_bar(
    checkpoint, tmp_path, capsys, every_step
):
    """It printed nothing for its whole run off a terminal (11 minutes in the report)."""
    args = ["--epochs", "2", "--max-train", "40", "--max-test", "20", "--batch-size", "16"]
    assert (
        main(
            [
                "eval",
                "linear",
                str(checkpoint),
                *args,
                "--workers",
                "0",
                "--out",
                str(tmp_path / "l.json"),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(
        "eval linear: MoCo's SGD protocol on randomly cropped and flipped "
        "images, 2 epochs, lr 30; 40 training and 20 test images at 16 px, on cpu"
    )
    assert "--fast" in err[0]
    sgd = [line for line in err if line.startswith("linear probe (SGD): ")]
    assert "epoch 2/2, batch 3/3" in sgd[-1] and " elapsed, about " in sgd[-1], err
    assert sgd[-1].endswith(" left")


def test_feature_extraction_and_corruption_report_progress_without_a_bar(
    checkpoint, tmp_path, capsys, every_step
):
    args = [
        *("--max-train", "40", "--max-test", "20", "--batch-size", "8", "--workers", "0"),
        *("--corruptions", "gaussian_noise,contrast", "--severities", "1,2"),
        *("--out", str(tmp_path / "c.json")),
    ]
    assert main(["eval", "corruption", str(checkpoint), "--no-progress", *args]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(
        "eval corruption: linear classifier; the test images clean and "
        "under 2 corruptions x 2 severities: 5 passes"
    )
    assert any(line.startswith("train features: 32/40 images, ") for line in err), err
    assert any(line.startswith("corruption: contrast 2, test set 5/5, ") for line in err), err


def test_eval_all_announces_each_protocol(checkpoint, tmp_path, capsys):
    args = [
        *("--protocols", "knn,linear", "--k", "5", "--max-train", "40", "--max-test", "20"),
        *("--out-dir", str(tmp_path / "all"), "--no-save"),
    ]
    assert main(["eval", "all", str(checkpoint), *COMMON, *args]) == 0
    err = capsys.readouterr().err
    assert "eval knn: weighted kNN, k 5, T 0.1, space backbone; 40 training and 20 test" in err
    assert "eval linear: logistic regression on features, C swept on a validation split;" in err
