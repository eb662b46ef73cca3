"""A partial evaluation keeps the full result; selections, sizes and checkpoints are checked
before any work, with one line each that is the same in every command."""

import json

import numpy as np
import pytest
from helpers import EVAL_COMMON as COMMON
from helpers import TINY_EVAL as TINY
from helpers import trained_checkpoint
from PIL import Image

from contrastlab.cli import build_parser, main
from contrastlab.eval.commands import result_file


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return trained_checkpoint(tmp_path_factory.mktemp("partial"), TINY)


def _code(argv) -> int:
    """The exit status of the command line (argparse's refusals exit at once)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def _name(checkpoint, *argv) -> str:
    """The file name the command would write its result to."""
    return result_file(
        build_parser().parse_args(["eval", *argv[:1], str(checkpoint), *argv[1:]])
    ).name


def test_a_partial_factor_probe_keeps_the_full_result(checkpoint, capsys):
    """`eval factors --factors texture` replaced factors.json holding all four factors."""
    run_eval = checkpoint.parent.parent / "eval"
    assert main(["eval", "factors", str(checkpoint), *COMMON, "--max-train", "64"]) == 0
    full = run_eval / "factors-sub64xall.json"
    assert set(json.loads(full.read_text())["summary"]) == {"shape", "color", "texture", "rotation"}
    argv = ["eval", "factors", str(checkpoint), *COMMON, "--max-train", "64"]
    assert main([*argv, "--factors", "texture"]) == 0
    assert set(json.loads(full.read_text())["summary"]) == {"shape", "color", "texture", "rotation"}
    part = run_eval / "factors-texture-sub64xall.json"
    assert set(json.loads(part.read_text())["summary"]) == {"texture"}
    assert f"result written to {part}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["corruption"], "corruption.json"),
        (["corruption", "--severities", "5,4,3,2,1"], "corruption.json"),
        (
            ["corruption", "--corruptions", "frost,gaussian_noise", "--severities", "5,1"],
            "corruption-gaussian_noise+frost-severities1+5.json",
        ),
        (
            ["corruption", "--classifier", "knn", "--severities", "3"],
            "corruption-knn-severities3.json",
        ),
        (["factors", "--factors", "rotation,color"], "factors-color+rotation.json"),
        (["fewshot", "--shots", "1,20"], "fewshot-shots1+20.json"),
        (["fewshot", "--ways", "10"], "fewshot-ways10.json"),
        (
            ["fewshot", "--which", "episodes", "--episode-shots", "1"],
            "fewshot-episodes-episode-shots1.json",
        ),
        (["fewshot", "--queries", "5", "--episodes", "10", "--trials", "2"], "fewshot.json"),
        (["knn", "--k", "20", "--space", "backbone"], "knn.json"),
    ],
)
def test_every_selection_of_sub_results_names_the_result(checkpoint, argv, name):
    """A selection of factors, corruptions, severities, K values or N ways holds only part of
    what the full result holds: it gets a name of its own; sizes that only tune a figure do not."""
    assert _name(checkpoint, *argv) == name


def test_eval_all_names_its_partial_results_as_eval_protocol_does(checkpoint, tmp_path):
    argv = ["eval", "all", str(checkpoint), *COMMON, "--protocols", "fewshot", "--max-train", "64"]
    argv += ["--shots", "2", "--ways", "3", "--episode-shots", "1", "--queries", "2"]
    assert main([*argv, "--episodes", "3", "--trials", "1", "--out-dir", str(tmp_path / "c")]) == 0
    (entry,) = json.loads((tmp_path / "c" / "comparison.json").read_text())["entries"]
    name = "fewshot-shots2-ways3-episode-shots1-sub64xall.json"
    assert entry["files"]["fewshot"].endswith(name)
    alone = ["fewshot", "--shots", "2", "--ways", "3", "--episode-shots", "1", "--max-train", "64"]
    assert _name(checkpoint, *alone) == name


def test_impossible_few_shot_sizes_are_refused_before_any_work(checkpoint, tmp_path, capsys):
    """`--ways 50` on 10 classes only warned, and still replaced fewshot.json (exit 0)."""
    out = tmp_path / "fewshot.json"
    out.write_text('{"protocol": "fewshot", "setup": {}, "summary": {"5-shot": 1.0}}')
    argv = ["eval", "fewshot", str(checkpoint), *COMMON, "--out", str(out)]
    for sizes, said in [
        (["--ways", "50"], "50-way 1-shot episodes with 15 queries need 50 classes"),
        (["--queries", "500"], "at least 501 images each in the test split"),
        (["--which", "episodes", "--episode-shots", "100"], "5-way 100-shot episodes"),
        (["--shots", "100"], "100-shot evaluation needs at least 100 training images"),
    ]:
        assert main([*argv, *sizes]) == 2
        err = capsys.readouterr().err
        assert said in err and len(err.strip().splitlines()) == 1
        assert "features" not in err  # nothing was extracted
    assert json.loads(out.read_text())["summary"] == {"5-shot": 1.0}


_LISTS = [
    ["eval", "corruption", "CKPT", "--corruptions"],
    ["eval", "corruption", "CKPT", "--severities"],
    ["eval", "factors", "CKPT", "--factors"],
    ["eval", "fewshot", "CKPT", "--shots"],
    ["eval", "fewshot", "CKPT", "--episode-shots"],
    ["eval", "transfer", "CKPT", "--train-dir", "a", "--test-dir", "b", "--shots"],
    ["eval", "all", "CKPT", "--protocols"],
    ["eval", "all", "CKPT", "--shots"],
    ["eval", "all", "CKPT", "--severities"],
    ["analyze", "CKPT", "--space"],
]


@pytest.mark.parametrize("argv", _LISTS, ids=lambda a: "-".join(a[:2] + a[-1:]))
@pytest.mark.parametrize("value", ["", " ", "1,,5", "1,1"])
def test_empty_or_repeated_list_items_are_refused(argv, value, capsys):
    """`--corruptions ''` (an unset shell variable) ran all 15 corruptions."""
    assert _code([*argv, value]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"argument {argv[-1]}" in err
    assert ("empty" in err) if value.strip() != "1,1" else ("'1' is given twice" in err)


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "knn"],
        ["eval", "linear"],
        ["eval", "linear", "--fast"],
        ["eval", "fewshot"],
        ["eval", "rotation"],
        ["eval", "corruption"],
        ["eval", "factors"],
        ["eval", "transfer", "--train-dir", "a", "--test-dir", "b"],
        ["eval", "all"],
        ["export", "CK", "--out", "e.pt"],
        ["analyze"],
    ],
    ids=lambda a: "-".join(a),
)
def test_a_missing_checkpoint_is_said_alike_by_every_command(argv, tmp_path, monkeypatch, capsys):
    """`eval linear` said "cannot use /abs/X: No such file or directory", `eval knn` "checkpoint
    X does not exist"."""
    monkeypatch.chdir(tmp_path)
    path = "runs/x/checkpoints/last.pt"
    argv = [path if a == "CK" else a for a in argv]
    argv = argv if path in argv else [*argv[:2], path, *argv[2:]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == "error: checkpoint runs/x/checkpoints/last.pt does not exist\n"


def _classes(root, n):
    rng = np.random.default_rng(0)
    for c, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(n):
            img = np.clip(rng.normal(colour, 20, (20, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / f"class{c}" / f"{i}.png")


@pytest.mark.parametrize("role", ["train", "test"])
def test_transfer_names_the_folder_of_an_unreadable_image_by_its_role(
    checkpoint, tmp_path, capsys, role
):
    """A bad image in --test-dir was "in the train split of <test dir>"; one image was
    "them"."""
    _classes(tmp_path / "train", 6)
    _classes(tmp_path / "test", 6)
    (tmp_path / role / "class1" / "bad.png").write_bytes(b"xx")
    argv = ["eval", "transfer", str(checkpoint), *COMMON, "--out", str(tmp_path / "r.json")]
    argv += ["--train-dir", str(tmp_path / "train"), "--test-dir", str(tmp_path / "test")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"unreadable image in --{role}-dir {tmp_path / role}: " in err
    assert "split" not in err and "fix or delete it, or pass --skip-bad-images" in err


def test_extract_features_of_a_raw_dataset_says_which_transform_to_pass(checkpoint):
    """The documented call on `build_dataset(cfg.data, "test")` failed in the model with a
    ValueError about uint8; the error now names the transform, and the documented recipe runs."""
    from contrastlab.checkpoint import load_model
    from contrastlab.data.datasets import build_dataset
    from contrastlab.errors import UserError
    from contrastlab.eval.context import EvalContext
    from contrastlab.eval.features import extract_features

    model, cfg = load_model(checkpoint)
    with pytest.raises(UserError, match=r"uint8 images.*EvalContext.from_checkpoint\(CKPT\)"):
        extract_features(model, build_dataset(cfg.data, "test"), "backbone", 64, "cpu")
    transform = EvalContext.from_checkpoint(checkpoint, device="cpu").eval_transform()
    ds = build_dataset(cfg.data, "test", transform=transform)
    feats, labels = extract_features(model, ds, "backbone", 64, "cpu", progress=False)
    assert feats.shape[0] == labels.shape[0] == 64
