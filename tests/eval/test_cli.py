"""End to end: a checkpoint from a tiny training run, evaluated through ``contrastlab.cli.main``."""

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import EVAL_COMMON as COMMON
from helpers import TINY_EVAL as TINY
from helpers import trained_checkpoint
from PIL import Image

from contrastlab.cli import main
from contrastlab.eval.context import EvalContext
from contrastlab.eval.knn import knn_accuracy


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return trained_checkpoint(tmp_path_factory.mktemp("cli"), TINY)


def _json(path):
    return json.loads(path.read_text())


def test_eval_commands_write_json_and_tables(checkpoint, tmp_path, capsys):
    run_dir = checkpoint.parent.parent
    cache = str(tmp_path / "cache")
    knn_args = ["--k", "3", "--temperature", "1.0", "--cache", cache]
    assert main(["eval", "knn", str(checkpoint), *COMMON, *knn_args]) == 0
    knn = _json(run_dir / "eval" / "knn.json")
    assert knn["protocol"] == "knn" and knn["setup"]["temperature"] == 1.0
    # the figure is knn_accuracy with the given k and T, train split as the bank, test as queries
    ctx = EvalContext.from_checkpoint(checkpoint, device="cpu", progress=False)
    (f_tr, y_tr), (f_te, y_te) = ctx.features("train"), ctx.features("test")

    def by_hand(k, t):
        return knn_accuracy(f_tr, y_tr, f_te, y_te, ctx.num_classes(), k=k, temperature=t)

    assert knn["summary"]["top1"] == pytest.approx(by_hand(3, 1.0))
    assert by_hand(3, 1.0) != by_hand(3, 0.01) and by_hand(3, 1.0) != by_hand(200, 1.0)
    out = capsys.readouterr().out
    assert "| top1 |" in out and "**knn** (k 3, T 1, bank of 96 training images, 64 test " in out
    assert main(["eval", "linear", str(checkpoint), *COMMON, "--fast", "--cache", cache]) == 0
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2  # train and test features, shared
    assert (
        main(
            [
                "eval",
                "linear",
                str(checkpoint),
                *COMMON,
                "--epochs",
                "1",
                "--out",
                str(tmp_path / "lin.json"),
            ]
        )
        == 0
    )
    assert _json(tmp_path / "lin.json")["details"]["mode"] == "moco"
    assert (
        main(
            [
                "eval",
                "fewshot",
                str(checkpoint),
                *COMMON,
                "--shots",
                "2",
                "--trials",
                "2",
                "--ways",
                "3",
                "--episode-shots",
                "1",
                "--queries",
                "2",
                "--episodes",
                "5",
            ]
        )
        == 0
    )
    # a selection of K values and N ways: named so, beside a full fewshot.json
    few = _json(run_dir / "eval" / "fewshot-shots2-ways3-episode-shots1.json")["summary"]
    assert {"2-shot", "2-shot ci95", "3-way 1-shot"} <= set(few)
    assert (
        main(
            [
                "eval",
                "factors",
                str(checkpoint),
                *COMMON,
                "--space",
                "z",
                "--factors",
                "color,rotation",
            ]
        )
        == 0
    )
    assert set(_json(run_dir / "eval" / "factors-color+rotation-z.json")["summary"]) == {
        "color",
        "rotation",
    }
    assert (
        main(
            [
                "eval",
                "corruption",
                str(checkpoint),
                *COMMON,
                "--classifier",
                "knn",
                "--k",
                "5",
                "--corruptions",
                "gaussian_noise,frost",
                "--severities",
                "1,5",
                "--max-test",
                "16",
            ]
        )
        == 0
    )
    # the kNN classifier's result does not replace the linear one's (corruption.json)
    cor = _json(
        run_dir / "eval" / "corruption-knn-gaussian_noise+frost-severities1+5-suballx16.json"
    )
    assert set(cor["details"]["corruptions"]) == {"gaussian_noise", "frost"}
    out = capsys.readouterr().out
    assert "| gaussian_noise |" in out
    # each heading says what ran, not the option that chose it ("linear, mode fast")
    for heading in (
        "**linear** (logistic regression on features, C swept on a validation split) — ",
        "**linear** (MoCo's SGD protocol on randomly cropped and flipped images, 1 epoch, lr 30) — ",
        "**fewshot** (all-way 2-shot: 2 draws each, logistic regression; 3-way 1-shot episodes: "
        "5 each, nearest centroid) — ",
        "**corruption** (kNN classifier on clean training features, k 5, T ",
    ):
        assert heading in out, out
    assert cor["setup"]["k"] == 5


def test_a_k_larger_than_the_bank_is_said_and_recorded(checkpoint, tmp_path, capsys):
    out = tmp_path / "knn.json"
    args = ["--k", "100000", "--out", str(out), "--max-train", "40"]
    assert main(["eval", "knn", str(checkpoint), *COMMON, *args]) == 0
    err = capsys.readouterr().err
    assert "k=100000 is at least the 40 images of the kNN bank: every one of them votes" in err
    assert _json(out)["details"]["num_train"] == 40


def test_eval_rotation_and_errors(checkpoint, capsys):
    assert (
        main(
            ["eval", "rotation", str(checkpoint), *COMMON, "--max-train", "32", "--max-test", "16"]
        )
        == 0
    )
    rot = _json(checkpoint.parent.parent / "eval" / "rotation-sub32x16.json")
    assert rot["details"]["chance"] == 25.0 and rot["setup"]["max_train"] == 32
    assert main(["eval", "knn", str(checkpoint), *COMMON, "--space", "nope"]) == 2
    assert "valid spaces: backbone, z" in capsys.readouterr().err
    assert main(["eval", "knn", "missing.pt", *COMMON]) == 2


def _folder(root, classes, n, seed):
    rng = np.random.default_rng(seed)
    for c, colour in enumerate(classes):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i in range(n):
            img = np.clip(rng.normal(colour, 20, (20, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{i}.png")


def test_eval_transfer(checkpoint, tmp_path, capsys):
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    _folder(tmp_path / "A", colours, 12, 0)
    _folder(tmp_path / "B", colours, 8, 1)
    assert (
        main(
            [
                "eval",
                "transfer",
                str(checkpoint),
                *COMMON,
                "--train-dir",
                str(tmp_path / "A"),
                "--test-dir",
                str(tmp_path / "B"),
                "--shots",
                "2",
                "--trials",
                "2",
                "--episodes",
                "3",
            ]
        )
        == 0
    )
    # named after the two folders: another pair does not replace it (it was transfer.json)
    out = checkpoint.parent.parent / "eval" / f"transfer-shots2-{tmp_path.name}-A-B.json"
    res = _json(out)
    assert res["summary"]["linear top1"] > 60.0  # colour classes: trivially separable
    assert "linear top5" not in res["summary"]  # 3 classes: 100% by construction
    assert "top5" not in res["details"]["linear"]
    # the heading names the folder pair: two transfers read apart on screen too
    assert f"dataset imagefolder ({tmp_path / 'A'} -> {tmp_path / 'B'})" in capsys.readouterr().out
    assert "skipped" in res["details"]["episodes"]  # 3 classes: no 5-way episodes


def test_eval_all_and_export(checkpoint, tmp_path, capsys):
    # a run without a kNN monitor writes no best.pt: compare last.pt with a copy of it
    best = checkpoint.parent / "copy.pt"
    shutil.copyfile(checkpoint, best)
    out = tmp_path / "cmp"
    assert (
        main(
            [
                "eval",
                "all",
                str(checkpoint),
                str(best),
                *COMMON,
                "--protocols",
                "knn,linear",
                "--k",
                "5",
                "--out-dir",
                str(out),
                "--no-save",
            ]
        )
        == 0
    )
    data = _json(out / "comparison.json")
    assert [e["label"] for e in data["entries"]] == ["tiny/last", "tiny/copy"]
    table = (out / "comparison.md").read_text()
    assert "linear: top1" in table
    assert table.startswith(
        "Feature space `backbone`; linear probe: logistic regression on features, C swept"
    )
    assert (out / "comparison.png").stat().st_size > 1000

    from contrastlab.checkpoint import load_model
    from contrastlab.models.backbones import build_backbone

    model, cfg = load_model(checkpoint)
    target = tmp_path / "backbone.pt"
    capsys.readouterr()
    assert main(["export", str(checkpoint), "--format", "torchvision", "--out", str(target)]) == 0
    # TINY's width 0.0625: torchvision's resnet18() cannot hold it, and the command says so
    assert "stage widths 4-8-16-32" in capsys.readouterr().out
    net, _ = build_backbone(cfg.model)
    net.load_state_dict(torch.load(target, weights_only=True), strict=True)
    net.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(net(x), model.features(x))
    # TINY's CIFAR stem: Detectron2's ResNet cannot hold it, so no file is written
    d2 = tmp_path / "d2.pkl"
    assert main(["export", str(checkpoint), "--format", "detectron2", "--out", str(d2)]) == 2
    err = capsys.readouterr().err
    assert "Detectron2's ResNet cannot load it" in err and not d2.exists()


def test_an_empty_class_folder_is_left_out_alike_by_training_data_and_transfer(
    checkpoint, tmp_path, capsys
):
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    _folder(tmp_path / "A", colours, 12, 0)
    (tmp_path / "A" / "empty").mkdir()  # a class folder that holds nothing
    argv = ["eval", "transfer", str(checkpoint), *COMMON, "--train-dir", str(tmp_path / "A")]
    argv += ["--test-dir", str(tmp_path / "A"), "--shots", "2", "--trials", "1"]
    argv += ["--episodes", "2", "--out", str(tmp_path / "t.json")]
    with pytest.warns(UserWarning, match="1 class folder.* hold no images and are left out"):
        assert main(argv) == 0
    assert _json(tmp_path / "t.json")["protocol"] == "transfer"


@pytest.mark.parametrize(
    "argv, said",
    [
        (["linear", "--fast", "--mode", "moco"], "not allowed with argument"),
        (["linear", "--mode", "fast", "--fast"], "not allowed with argument"),
        (["linear", "--fast", "--epochs", "5"], "--epochs applies only to --mode moco"),
        (["linear", "--fast", "--lr", "1", "--momentum", "0.5"], "--lr --momentum apply only"),
        (["linear", "--C", "2"], "--C applies only to --mode fast"),
        (["linear", "--mode", "moco", "--val-fraction", "0.3"], "--val-fraction applies only"),
        (["all", "--linear-mode", "fast", "--epochs", "5"], "only to --linear-mode moco"),
        (["all", "--protocols", "knn", "--trials", "2"], "the fewshot protocol, which"),
        (["all", "--protocols", "linear", "--k", "5"], "the knn protocol, which"),
        (["all", "--protocols", "knn", "--severities", "1"], "the corruption protocol"),
    ],
)
def test_options_the_chosen_mode_or_protocols_would_ignore_are_refused(
    checkpoint, capsys, argv, said, tmp_path
):
    """They used to be ignored in silence (``--fast --mode moco`` trained SGD for 100 epochs)."""
    out = ["--out-dir", str(tmp_path / "all")] if argv[0] == "all" else []
    try:
        code = main(["eval", argv[0], str(checkpoint), *COMMON, *argv[1:], *out])
    except SystemExit as e:  # refused by the parser
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert said in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "all").exists()


def test_help_names_each_default_once(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "linear", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and ") (default:" not in text
    epochs = "moco mode: epochs, the learning rate divided by 10 at 60% and 80% (default: 100)"
    assert f"--epochs EPOCHS {epochs}" in text
    assert "--seed SEED seed of the subsets, splits and classifiers drawn (default: 0)" in text


def test_transfer_results_are_named_after_their_folders(tmp_path):
    from argparse import Namespace

    from contrastlab.eval.commands import _dataset_tag

    def tag(train, test):
        return _dataset_tag(Namespace(train_dir=str(train), test_dir=str(test)))

    assert tag(tmp_path / "A", tmp_path / "B") == f"{tmp_path.name}-A-B"
    assert (
        tag(tmp_path / "flowers" / "train", tmp_path / "flowers" / "test") == "flowers-train-test"
    )
    assert tag(tmp_path / "x" / "A", tmp_path / "y" / "B") == "A-B"


def _on_imagefolder(checkpoint, folder, target):
    """A copy of ``checkpoint`` that says it was trained on the image folder ``folder``."""
    from contrastlab.checkpoint import CHECKSUM_KEY, payload_checksum

    state = torch.load(checkpoint, weights_only=False)
    state["config"]["data"].update(name="imagefolder", path=str(folder))
    state[CHECKSUM_KEY] = payload_checksum(state)
    torch.save(state, target)
    return target


def test_eval_all_names_each_rows_dataset_and_warns_when_they_differ(
    checkpoint, tmp_path, capsys, monkeypatch
):
    """Each checkpoint is scored on its own dataset: rows of a synthetic run and of an image
    folder run looked comparable (no dataset in the table, JSON or plot, no warning)."""
    import contrastlab.eval.compare as compare

    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    _folder(tmp_path / "flowers", colours, 20, 0)
    other = _on_imagefolder(checkpoint, tmp_path / "flowers", tmp_path / "folder.pt")
    titles, legends = [], []
    real_save = compare.save_figure
    monkeypatch.setattr(
        compare,
        "save_figure",
        lambda fig, path, **kw: (
            titles.append(fig.axes[0].get_title()),
            legends.append([t.get_text() for t in fig.axes[0].get_legend().get_texts()]),
            real_save(fig, path),
        )[2],
    )
    argv = ["eval", "all", str(checkpoint), str(other), *COMMON, "--protocols", "knn,linear"]
    argv += ["--k", "3", "--no-save"]
    capsys.readouterr()
    assert main([*argv, "--out-dir", str(tmp_path / "mixed")]) == 0
    out, err = capsys.readouterr()
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "not comparable" in warnings[0]
    assert "--dataset NAME --data-path DIR" in warnings[0]
    data = _json(tmp_path / "mixed" / "comparison.json")
    rows = [(e["dataset"], e["num_test"]) for e in data["entries"]]
    assert rows[0] == ("synthetic", 64) and rows[1][0] == "imagefolder (flowers)"
    assert data["comparable"] is False
    table = (tmp_path / "mixed" / "comparison.md").read_text()
    assert "| checkpoint | dataset | test images |" in table and "not comparable" in table
    assert "| tiny/last | synthetic | 64 |" in out
    assert "synthetic" in titles[0] and "imagefolder (flowers)" in titles[0]
    assert "space backbone" in titles[0] and "linear probe: logistic regression" in titles[0]
    # each bar says which dataset it was measured on
    assert legends[0][0] == "tiny/last (synthetic, 64)"
    assert legends[0][1] == "tiny/folder (imagefolder (flowers), 6)"
    # on one dataset: comparable, no warning
    assert main([*argv, "--dataset", "synthetic", "--out-dir", str(tmp_path / "one")]) == 0
    assert "warning:" not in capsys.readouterr().err
    data = _json(tmp_path / "one" / "comparison.json")
    assert data["comparable"] is True
    assert {(e["dataset"], e["num_test"]) for e in data["entries"]} == {("synthetic", 64)}


def _bar_chart_of_two(monkeypatch, tmp_path, results: dict, chance: dict | None = None):
    """The axes of ``eval all``'s bar chart for checkpoints ``a`` and ``b`` with ``results``."""
    import contrastlab.eval.compare as compare

    figures = []
    monkeypatch.setattr(compare, "save_figure", lambda fig, path, **kw: figures.append(fig))
    entry = {"dataset": "synthetic", "num_test": 64, "results": results}
    if chance is not None:
        entry["chance"] = chance
    compare.bar_chart([{**entry, "label": name} for name in ("a", "b")], tmp_path / "c.png")
    (ax,) = figures[0].axes
    return ax


def test_the_comparison_plot_draws_error_bars_only_where_there_is_a_spread(tmp_path, monkeypatch):
    """A zero-length error bar (yerr=0) drew black caps on every kNN and linear bar."""
    from matplotlib.container import BarContainer, ErrorbarContainer

    results = {"knn": {"top1": 50.0}, "fewshot": {"5-shot": 40.0, "5-shot ci95": 2.5}}
    ax = _bar_chart_of_two(monkeypatch, tmp_path, results)
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(bars) == 2 and all(c.errorbar is None for c in bars)
    spreads = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    # one error bar per checkpoint: the 5-shot figure's interval, none on knn's top-1
    assert len(spreads) == 2
    assert all(len(c.lines[2][0].get_segments()) == 1 for c in spreads)


def test_the_comparison_plot_marks_the_chance_level_of_each_bar_that_has_one(tmp_path, monkeypatch):
    """eval all's table gave factor probes their chance levels, its bar chart did not: a 25% bar
    of a 4-way texture probe looked like learning."""
    from matplotlib.collections import LineCollection

    results = {"knn": {"top1": 50.0}, "factors": {"shape": 30.0, "texture": 40.0}}
    chance = {"factors": {"shape": 10.0, "texture": 25.0}}
    ax = _bar_chart_of_two(monkeypatch, tmp_path, results, chance)
    marks = [c for c in ax.collections if isinstance(c, LineCollection)]
    levels = sorted(seg[0][1] for c in marks for seg in c.get_segments())
    assert levels == [10.0, 10.0, 25.0, 25.0]  # two factors x two checkpoints, none on knn
    for c in marks:  # each mark spans one bar, not the whole group
        (seg,) = c.get_segments()
        assert abs((seg[1][0] - seg[0][0]) - 0.4) < 1e-9
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sorted(labels) == ["a", "b", "chance level"]  # one legend entry for all marks


def test_linear_modes_keep_their_own_results_and_headings(checkpoint, tmp_path, capsys):
    """eval linear --fast and eval linear (SGD) both wrote eval/linear.json, the second
    replacing the first, under a heading that named no mode."""
    from contrastlab.viz.report import _eval_section
    from contrastlab.viz.score_plots import load_run

    run_dir = checkpoint.parent.parent
    argv = ["eval", "linear", str(checkpoint), *COMMON, "--max-train", "32", "--max-test", "16"]
    assert main([*argv, "--fast"]) == 0
    fast = "**linear** (logistic regression on features, C swept on a validation split) —"
    assert fast in capsys.readouterr().out
    assert main([*argv, "--epochs", "1"]) == 0
    sgd = "**linear** (MoCo's SGD protocol on randomly cropped and flipped images, 1 epoch,"
    assert sgd in capsys.readouterr().out
    assert _json(run_dir / "eval" / "linear-fast-sub32x16.json")["setup"]["mode"] == "fast"
    assert _json(run_dir / "eval" / "linear-sub32x16.json")["setup"]["mode"] == "moco"
    section = _eval_section(load_run(run_dir))
    assert "<td>linear-fast-sub32x16</td>" in section and "<td>linear-sub32x16</td>" in section
    # eval all saves its fast-mode result under the same name; --fast is --linear-mode fast
    (run_dir / "eval" / "linear-fast.json").unlink()
    argv = ["eval", "all", str(checkpoint), *COMMON, "--protocols", "linear", "--fast"]
    assert main([*argv, "--out-dir", str(tmp_path / "cmp")]) == 0
    assert (run_dir / "eval" / "linear-fast.json").is_file()


def test_eval_all_takes_the_few_shot_sizes_its_errors_advise(checkpoint, tmp_path, capsys):
    """A few-shot part that the data could not hold told eval all's user to lower --shots,
    --ways or --queries, which eval all did not take: it takes them now, as eval fewshot does,
    and refuses them when --protocols leaves few-shot out."""
    argv = ["eval", "all", str(checkpoint), *COMMON, "--protocols", "fewshot", "--no-save"]
    sizes = ["--shots", "2", "--ways", "3", "--episode-shots", "1", "--queries", "2"]
    out = tmp_path / "cmp"
    assert main([*argv, *sizes, "--episodes", "4", "--trials", "2", "--out-dir", str(out)]) == 0
    (entry,) = _json(out / "comparison.json")["entries"]
    assert set(entry["results"]["fewshot"]) >= {"2-shot", "3-way 1-shot"}
    capsys.readouterr()
    knn_only = ["eval", "all", str(checkpoint), *COMMON, "--protocols", "knn", "--ways", "3"]
    assert main([*knn_only, "--out-dir", str(tmp_path / "k")]) == 2
    assert "--ways" in capsys.readouterr().err


def test_variants_and_spaces_name_the_result_file(tmp_path):
    from contrastlab.eval.results import result_path, variant_of

    ckpt = tmp_path / "r" / "checkpoints" / "last.pt"
    assert variant_of("linear", {"mode": "fast"}) == "fast"
    assert variant_of("linear", {"mode": "moco"}) is None
    assert variant_of("corruption", {"classifier": "knn"}) == "knn"
    assert variant_of("fewshot", {"classifier": "logistic"}) is None
    # a part of the few-shot protocol does not replace the result of both parts
    assert variant_of("fewshot", {"which": "allway"}) == "allway"
    assert variant_of("fewshot", {"which": "episodes"}) == "episodes"
    assert variant_of("fewshot", {"which": "both"}) is None
    path = result_path(ckpt, "linear", space="z", dataset="cifar10", variant="fast")
    assert path.name == "linear-fast-z-cifar10.json"
    assert result_path(ckpt, "corruption", variant="knn").name == "corruption-knn.json"


def test_eval_all_fast_and_linear_mode_are_one_option_with_help(capsys, checkpoint):
    with pytest.raises(SystemExit):
        main(["eval", "all", str(checkpoint), "--fast", "--linear-mode", "moco"])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "all", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--linear-mode {moco,fast} linear protocol: moco" in text
    assert "(default: fast)" in text and "--fast same as --linear-mode fast" in text


def test_out_help_states_the_default_file_pattern(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "knn", "--help"])
    text = "".join(capsys.readouterr().out.split())  # without the wrapping's spaces
    pattern = (
        "<protocol>[-<variant>][-<selection>][-<space>][-<dataset>[-<folder>]][-sub<train>x<test>]"
        "[-<checkpoint>].json"
    )
    assert pattern in text and "knn-z.json" in text and "knn-sub200x100.json" in text
    assert "factors-texture.json" in text


_READS_A_FOLDER = [
    ["knn"],
    ["linear", "--fast"],
    ["fewshot", "--which", "allway", "--shots", "1", "--trials", "1"],
    ["rotation"],
    ["corruption", "--corruptions", "gaussian_noise", "--severities", "1"],
    ["all", "--protocols", "knn"],
    ["transfer", "--shots", "1", "--trials", "1", "--episodes", "2"],
]


@pytest.mark.parametrize("argv", _READS_A_FOLDER, ids=lambda a: "-".join(a[:2]))
def test_every_eval_protocol_skips_unreadable_images_with_its_flag(
    checkpoint, tmp_path, capsys, argv
):
    """An unreadable image used to stop eval with advice to pass data.skip_bad_images=true,
    which no eval command accepts: the message names --skip-bad-images, which skips them."""
    folder = tmp_path / "messy"
    _folder(folder, [(200, 30, 30), (30, 200, 30), (30, 30, 200)], 10, 0)
    (folder / "class1" / "broken.png").write_bytes(b"\x89PNG not really")
    protocol, *options = argv
    where = ["--dataset", "imagefolder", "--data-path", str(folder)]
    if protocol == "transfer":
        where = ["--train-dir", str(folder), "--test-dir", str(folder)]
    out = ["--out-dir", str(tmp_path / "cmp"), "--no-save"] if protocol == "all" else []
    out = out or ["--out", str(tmp_path / "r.json")]
    base = ["eval", protocol, str(checkpoint), *COMMON, *where, *out, *options]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "pass --skip-bad-images to skip" in err
    assert "data.skip_bad_images" not in err
    with pytest.warns(UserWarning, match="skipped 1 unreadable image"):
        assert main([*base, "--skip-bad-images"]) == 0


def test_eval_names_its_data_path_option_in_data_errors(checkpoint, tmp_path, capsys):
    """Errors about the data path named data.path, a setting eval does not take."""
    argv = ["eval", "knn", str(checkpoint), *COMMON, "--out", str(tmp_path / "r.json")]
    missing = tmp_path / "missing"
    assert main([*argv, "--dataset", "imagefolder", "--data-path", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"--data-path {missing} does not exist; point --data-path at" in err
    assert main([*argv, "--dataset", "cifar10", "--data-path", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "point --data-path at a folder that holds a copy" in err
    assert "(eval:" not in err and "contrastlab train ... data.path=" in err
    (tmp_path / "file").write_text("x")
    assert main([*argv, "--dataset", "cifar10", "--data-path", str(tmp_path / "file")]) == 2
    assert "--data-path" in capsys.readouterr().err


def test_top5_is_left_out_with_5_classes_or_fewer_in_every_protocol(checkpoint, tmp_path, capsys):
    """knn, linear (both modes) and eval all printed and saved top-5 = 100.00 on 5 classes or
    fewer, where it is so by construction; eval transfer alone left it out."""
    folder = tmp_path / "three"
    _folder(folder, [(200, 30, 30), (30, 200, 30), (30, 30, 200)], 10, 0)
    where = [*COMMON, "--dataset", "imagefolder", "--data-path", str(folder)]
    for protocol, *options in (["knn"], ["linear", "--fast"], ["linear", "--epochs", "1"]):
        out = tmp_path / f"{protocol}-{len(options)}.json"
        argv = ["eval", protocol, str(checkpoint), *where, "--out", str(out), *options]
        assert main(argv) == 0
        printed = capsys.readouterr().out
        assert "| top5 |" not in printed
        assert "with 3 classes it is 100% by construction" in printed
        res = _json(out)
        assert "top1" in res["summary"] and "top5" not in res["summary"]
        assert "top5" not in json.dumps(res["details"])
    argv = ["eval", "all", str(checkpoint), *where, "--protocols", "knn,linear", "--no-save"]
    assert main([*argv, "--out-dir", str(tmp_path / "cmp")]) == 0
    assert ": top5" not in capsys.readouterr().out  # the comparison's columns
    # with more classes (the checkpoint's own synthetic shapes: 10) top-5 is reported
    argv = ["eval", "knn", str(checkpoint), *COMMON, "--out", str(tmp_path / "ten.json")]
    assert main(argv) == 0
    assert "top5" in _json(tmp_path / "ten.json")["summary"]
    assert "by construction" not in capsys.readouterr().out


def test_results_are_named_by_the_dataset_actually_evaluated(checkpoint, tmp_path, capsys):
    """eval factors of an image-folder run evaluates on synthetic but wrote factors.json, and
    factors-synthetic.json for the same result with --dataset synthetic; eval knn of a synthetic
    run with --dataset synthetic wrote knn-synthetic.json beside the same result's knn.json."""
    folder_run = tmp_path / "folder" / "checkpoints"
    folder_run.mkdir(parents=True)
    on_folder = _on_imagefolder(checkpoint, tmp_path / "flowers", folder_run / "last.pt")
    factors = ["eval", "factors", str(on_folder), *COMMON, "--factors", "shape"]
    for extra in ([], ["--dataset", "synthetic"]):
        assert main([*factors, *extra]) == 0
        assert sorted(p.name for p in (tmp_path / "folder" / "eval").iterdir()) == [
            "factors-shape-synthetic.json"  # one factor of four: -shape
        ]
    synthetic_run = tmp_path / "syn" / "checkpoints"
    synthetic_run.mkdir(parents=True)
    shutil.copy(checkpoint, synthetic_run / "last.pt")
    knn = ["eval", "knn", str(synthetic_run / "last.pt"), *COMMON, "--k", "3"]
    for extra in ([], ["--dataset", "synthetic"]):
        assert main([*knn, *extra]) == 0
        assert sorted(p.name for p in (tmp_path / "syn" / "eval").iterdir()) == ["knn.json"]
    capsys.readouterr()


def test_eval_all_checks_every_checkpoints_space_before_the_first_protocol(
    checkpoint, tmp_path, capsys
):
    """A ``--space`` the last checkpoint lacks was found only on reaching it, after the earlier
    checkpoints' protocols had run; now it is refused before any work, naming that checkpoint."""
    from contrastlab.checkpoint import CHECKSUM_KEY, payload_checksum

    state = torch.load(checkpoint, weights_only=False)
    state["converted"] = {"format": "torchvision", "head": False}  # an encoder without a head
    state[CHECKSUM_KEY] = payload_checksum(state)
    headless = tmp_path / "headless.pt"
    torch.save(state, headless)
    first = tmp_path / "first.pt"
    shutil.copy(checkpoint, first)
    argv = ["eval", "all", str(first), str(headless), *COMMON, "--protocols", "knn,linear"]
    capsys.readouterr()
    assert main([*argv, "--space", "z", "--out-dir", str(tmp_path / "cmp")]) == 2
    out, err = capsys.readouterr()
    assert f"{headless}: feature space 'z' does not exist" in err
    assert "valid spaces: backbone" in err
    assert not (tmp_path / "cmp").exists()  # no protocol ran, nothing was written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.pt", "headless.pt"]


def test_eval_all_refuses_factor_probes_of_a_later_checkpoint_before_any_work(
    checkpoint, tmp_path, capsys
):
    """``--protocols factors`` with a later checkpoint trained on an image folder (no generating
    factors) was refused only on reaching it; now before the first checkpoint's protocols."""
    _folder(tmp_path / "flowers", [(200, 30, 30), (30, 200, 30)], 8, 0)
    other = _on_imagefolder(checkpoint, tmp_path / "flowers", tmp_path / "folder.pt")
    argv = ["eval", "all", str(checkpoint), str(other), *COMMON, "--protocols", "knn,factors"]
    capsys.readouterr()
    assert main([*argv, "--no-save", "--out-dir", str(tmp_path / "cmp")]) == 2
    out, err = capsys.readouterr()
    assert f"{other}: dataset 'imagefolder' has no generating factors" in err
    assert "knn" not in out.lower() and not (tmp_path / "cmp").exists()


def test_eval_all_refuses_a_few_shot_size_the_data_lacks_before_the_first_protocol(
    checkpoint, tmp_path, capsys
):
    """``--shots 50`` on classes of about 10 training images was refused only when few-shot's
    turn came, after kNN had run and rewritten its saved result; now before any protocol."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    ckpt = run_dir / "checkpoints" / "last.pt"
    shutil.copy(checkpoint, ckpt)
    argv = ["eval", "all", str(ckpt), *COMMON, "--protocols", "knn,fewshot", "--shots", "50"]
    capsys.readouterr()
    assert main([*argv, "--out-dir", str(tmp_path / "cmp")]) == 2
    out, err = capsys.readouterr()
    assert f"{ckpt}: 50-shot evaluation needs at least 50 training images" in err
    assert not (run_dir / "eval").exists() and not (tmp_path / "cmp").exists()
