"""contrastlab analyze: scores against naive float64 loops, views that differ in one augmentation,
the training score format, the CLI, figures and the report."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from helpers import TINY, problem_lines
from torch import nn

from contrastlab.analysis import (
    CONDITIONS,
    Settings,
    _differing,
    _neutral,
    analyze_encoder,
    load_analysis,
    make_views,
    run_analysis,
    view_makers,
)
from contrastlab.checkpoint import make_state, save_checkpoint
from contrastlab.cli import main
from contrastlab.config import load_config
from contrastlab.data.datasets import build_dataset
from contrastlab.data.looc_views import params_equal
from contrastlab.errors import UserError
from contrastlab.eval.context import EvalContext
from contrastlab.methods import build_method
from contrastlab.scores import load_histograms, load_scores


def _cfg(extra=()):
    return load_config(None, TINY + ["data.synthetic_train=64", *extra])


def _checkpoint(path, extra=(), seed=0):
    """An untrained tiny checkpoint (no training needed: the analysis only reads the encoder)."""
    cfg = _cfg(extra)
    torch.manual_seed(seed)
    save_checkpoint(path, make_state(cfg, build_method(cfg), None, 0, 0, None))
    return path


def _image(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=gen)


def test_single_augmentation_records_differ_in_that_augmentation_only():
    _, single = view_makers(_cfg(), 32, (0.5,) * 3, (0.25,) * 3)
    img = _image()
    torch.manual_seed(0)
    for condition in CONDITIONS:
        for _ in range(5):
            base = _neutral(single.sample(img))
            assert base["rotation"] == {"k": 0} and base["texture"]["alpha"] == 0.0
            other = _differing(single, img, base, condition)
            key = condition
            assert not params_equal(other[key], base[key]), condition
            for k in base:
                if k != key:
                    assert params_equal(other[k], base[k]), (condition, k)


def test_rotation_views_are_exact_rotations_and_views_are_seeded():
    """Independent reference: the second view is torch.rot90 of the first by k in {1, 2, 3}."""
    _, single = view_makers(_cfg(), 32, (0.5,) * 3, (0.25,) * 3)
    imgs = [_image(i) for i in range(6)]
    a, b = make_views(imgs, single, "rotation", list(range(6)))
    for x, y in zip(a, b):
        matches = [k for k in (1, 2, 3) if torch.equal(torch.rot90(x, k, dims=(-2, -1)), y)]
        assert len(matches) == 1
    # the same seeds give the same views, whatever the global generator's state
    torch.manual_seed(123)
    a2, b2 = make_views(imgs, single, "rotation", list(range(6)))
    assert torch.equal(a, a2) and torch.equal(b, b2)
    # a crop-only pair has the same colours: the same image under the same colour record
    a3, b3 = make_views(imgs[:1], single, "crop", [7])
    assert not torch.equal(a3, b3)


class _Invariant(nn.Module):
    """Features of known invariance: quadrant means (backbone) and their sorted values (rotation
    invariant), as in tests/eval/conftest.py."""

    feature_spaces = ("backbone", "invariant")

    @torch.no_grad()
    def features(self, x, space="backbone"):
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        g = x.mean(1).double()
        q = torch.stack(
            [
                g[:, :h, :w].mean((1, 2)),
                g[:, :h, w:].mean((1, 2)),
                g[:, h:, :w].mean((1, 2)),
                g[:, h:, w:].mean((1, 2)),
            ],
            1,
        )
        q = q - q.mean(1, keepdim=True)  # brightness removed: rotation is what tells apart
        return q.sort(dim=1).values if space == "invariant" else q


def test_rotation_invariant_space_scores_one_under_rotation(tmp_path):
    cfg = _cfg()
    ds = build_dataset(cfg.data, "train")
    ctx = EvalContext(model=_Invariant(), cfg=cfg, checkpoint=None, data_cfg=cfg.data)
    settings = Settings(images=16, negatives=8, spaces=("backbone", "invariant"), progress=False)
    out = tmp_path / "enc"
    out.mkdir()
    summary = analyze_encoder(ctx, ds, settings, "quadrants", out)["spaces"]
    assert summary["invariant"]["sensitivity"]["rotation"]["q10"] > 1 - 1e-5
    assert summary["backbone"]["sensitivity"]["rotation"]["mean"] < 0.9


def test_scores_match_naive_float64_loops(tmp_path):
    ckpt = _checkpoint(tmp_path / "a.pt")
    settings = Settings(
        images=12, negatives=20, batch_size=5, spaces=("backbone", "z"), progress=False, bins=50
    )
    result = run_analysis([str(ckpt)], settings, tmp_path / "out", labels=["tiny"])
    enc_dir = tmp_path / "out" / "encoders" / "tiny"

    # the independent reference: features of the same views, cosines in float64 loops
    ctx = EvalContext.from_checkpoint(ckpt, device="cpu")
    ds = build_dataset(ctx.data_cfg, "train")
    from contrastlab.analysis import _seed, select_images

    q_idx, b_idx = select_images(len(ds), settings)
    assert len(set(q_idx) | set(b_idx)) == 32
    recipe, single = view_makers(ctx.cfg, 32, *ctx.stats(ds))
    imgs = [ds[int(i)][0] for i in q_idx]
    bank, _ = make_views(
        [ds[int(i)][0] for i in b_idx],
        recipe,
        "bank",
        [_seed(settings, int(i), "bank") for i in b_idx],
    )
    xa, xb = make_views(imgs, recipe, "recipe", [_seed(settings, int(i), "recipe") for i in q_idx])
    rec = load_scores(enc_dir)
    sens = np.load(enc_dir / "sensitivity.npz")
    for space in ("backbone", "z"):
        with torch.no_grad():
            fa = ctx.model.features(xa, space).double().numpy()
            fb = ctx.model.features(xb, space).double().numpy()
            fk = ctx.model.features(bank, space).double().numpy()

        def cos(u, v):
            return sum(u[i] * v[i] for i in range(len(u))) / (
                np.sqrt(sum(t * t for t in u)) * np.sqrt(sum(t * t for t in v))
            )

        pos = np.array([cos(fa[i], fb[i]) for i in range(12)])
        neg = np.array([[cos(fa[i], fk[j]) for j in range(20)] for i in range(12)])
        got = rec.query(space, "raw")
        np.testing.assert_allclose(got["pos"], pos, atol=2e-5)
        np.testing.assert_allclose(got["neg_mean"], neg.mean(1), atol=2e-5)
        np.testing.assert_allclose(got["neg_var"], neg.var(1), atol=2e-5)
        np.testing.assert_allclose(sens[f"{space}/recipe"], pos, atol=2e-5)
        s = result["encoders"][0]["spaces"][space]
        assert s["pos"]["mean"] == pytest.approx(pos.mean(), abs=2e-5)
        h = load_histograms(enc_dir)
        k = h.meta["spaces"].index(space)
        assert h.counts[0, k, 0, 0].sum() == 12 and h.counts[0, k, 0, 1].sum() == 12 * 20
        edges = np.linspace(-1, 1, 51)
        expected, _ = np.histogram(np.clip(neg, -1, 1), edges)
        assert np.abs(h.counts[0, k, 0, 1] - expected).sum() <= 2  # bin-edge float32 rounding
        for c in CONDITIONS:
            assert sens[f"{space}/{c}"].shape == (12,)


def test_cli_several_encoders_figures_scores_and_report(tmp_path, capsys):
    a = _checkpoint(tmp_path / "a.pt", seed=0)
    b = _checkpoint(tmp_path / "b.pt", seed=1)
    out = tmp_path / "cmp"
    argv = [
        "analyze",
        str(a),
        str(b),
        "--images",
        "8",
        "--negatives",
        "8",
        "--no-progress",
        "--space",
        "backbone,z",
        "--labels",
        "MoCo A",
        "MoCo B",
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "| MoCo A |" in text and "pos, only rotation" in text
    for space in ("backbone", "z"):
        for kind in ("distributions", "overlay", "sensitivity"):
            assert (out / "figures" / f"analysis-{space}-{kind}.png").stat().st_size > 5000
    # the stored scores are the training format: `contrastlab scores` draws them
    assert main(["scores", str(out / "encoders" / "MoCo_A"), "--out", str(tmp_path / "s")]) == 0
    # the report includes an analysis folder
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("method: moco\n")
    assert main(["report", str(run), "--analysis", str(out)]) == 0
    page = (run / "report.html").read_text()
    assert "Encoder analysis" in page and "MoCo B" in page and page.count("<img") >= 6


def _error(argv, capsys) -> str:
    assert main(argv) == 2
    (err,) = problem_lines(capsys.readouterr().err)  # one line, after "analyze NAME: ..." lines
    assert err.startswith("error: ")
    return err


def test_errors_are_one_line_and_early(tmp_path, capsys):
    a = _checkpoint(tmp_path / "a.pt")
    out = str(tmp_path / "o")
    err = _error(["analyze", str(a), "--images", "60", "--negatives", "10", "--out", out], capsys)
    assert "70 images" in err and "64" in err
    err = _error(["analyze", str(a), str(tmp_path / "missing.pt"), "--out", out], capsys)
    assert "missing.pt does not exist" in err
    (tmp_path / "folder.pt").mkdir()
    err = _error(["analyze", str(tmp_path / "folder.pt"), "--out", out], capsys)
    assert "folder.pt is a folder, not a checkpoint file" in err
    err = _error(["analyze", str(a), "--space", "color", "--out", out], capsys)
    assert "'color' does not exist" in err and "backbone, z" in err
    err = _error(["analyze", str(a), "--labels", "x", "y", "--out", out], capsys)
    assert "2 labels for 1 checkpoint" in err and "1 checkpoints" not in err


def test_a_negative_seed_is_one_line_before_work(tmp_path, capsys):
    """It was a numpy traceback from inside the analysis."""
    from contrastlab.cli import main

    ckpt = tmp_path / "x.pt"
    ckpt.write_bytes(b"not read: the seed is checked first")
    assert main(["analyze", str(ckpt), "--seed", "-1", "--out", str(tmp_path / "an")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --seed must be in [0, 4294967295], got -1"


def test_every_checkpoint_is_checked_before_the_first_is_analyzed(tmp_path, capsys, monkeypatch):
    """A space missing from the last checkpoint used to fail after the first was analyzed."""
    import contrastlab.analysis as analysis

    moco = _checkpoint(tmp_path / "moco.pt")
    looc = _checkpoint(tmp_path / "looc.pt", ["method=looc", "looc.augmentations=[color]"])
    analyzed = []
    monkeypatch.setattr(analysis, "analyze_encoder", lambda *a: analyzed.append(a))
    out = tmp_path / "o"
    argv = ["analyze", str(looc), str(moco), "--space", "color", "--images", "8", "--negatives"]
    err = _error([*argv, "8", "--out", str(out)], capsys)
    assert "moco.pt: feature space 'color' does not exist" in err
    assert analyzed == [] and not out.exists()


def test_a_rerun_replaces_what_a_failed_run_left(tmp_path, capsys, monkeypatch):
    """The first encoder's finished folder, and the second's unfinished one, were refused as
    files an earlier analysis had not written (there was no analysis.json yet)."""
    import contrastlab.analysis as analysis

    a = _checkpoint(tmp_path / "a.pt", seed=0)
    b = _checkpoint(tmp_path / "b.pt", seed=1)
    out = tmp_path / "o"
    argv = ["analyze", str(a), str(b), "--images", "8", "--negatives", "8", "--no-progress"]
    argv += ["--out", str(out), "--device", "cpu"]
    real = analysis.analyze_encoder

    def fails_on_b(ctx, dataset, settings, label, out_dir):
        if label == "b":
            (out_dir / "sensitivity.npz").write_bytes(b"half written")
            raise UserError("no space left on device while writing sensitivity.npz")
        return real(ctx, dataset, settings, label, out_dir)

    monkeypatch.setattr(analysis, "analyze_encoder", fails_on_b)
    assert main(argv) == 2
    assert (out / "encoders" / "a" / "config.yaml").is_file() and not (
        out / "analysis.json"
    ).exists()
    monkeypatch.undo()
    capsys.readouterr()
    assert main(argv) == 0
    result = load_analysis(out)
    assert [e["label"] for e in result["encoders"]] == ["a", "b"]
    assert result["settings"]["dataset"] == "synthetic"  # each checkpoint's own, named
    # a folder of the user's under an encoder's name is still refused
    (tmp_path / "mine" / "encoders" / "a").mkdir(parents=True)
    (tmp_path / "mine" / "encoders" / "a" / "config.yaml").write_text("my: notes\n")
    err = _error([*argv[:-4], "--out", str(tmp_path / "mine"), "--device", "cpu"], capsys)
    assert "config.yaml already exists" in err


def test_the_recipe_and_checkpoint_analyzed_are_named_everywhere(tmp_path, capsys):
    """--recipe moco_v1 was named in analysis.json only: the table said "pos (recipe)", the
    figures nothing, and encoders/<name>/config.yaml (drawn by `contrastlab scores`) gave the
    checkpoint's recipe; the report showed no checkpoint or recipe per encoder."""
    import yaml

    from contrastlab.analysis import analysis_figures

    cfg = _cfg()
    assert cfg.augment.recipe != "moco_v1"
    torch.manual_seed(0)
    ckpt = tmp_path / "a.pt"
    save_checkpoint(ckpt, make_state(cfg, build_method(cfg), None, 5, 40, None))
    out = tmp_path / "an"
    argv = ["analyze", str(ckpt), "--recipe", "moco_v1", "--images", "8", "--negatives", "8"]
    assert main([*argv, "--no-progress", "--device", "cpu", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| pos (recipe moco_v1) |" in text and "views: recipe moco_v1" in text
    saved = yaml.safe_load((out / "encoders" / "a" / "config.yaml").read_text())
    assert saved["augment"]["recipe"] == "moco_v1"
    (enc,) = load_analysis(out)["encoders"]
    assert (enc["recipe"], enc["epoch"], enc["step"]) == ("moco_v1", 5, 40)
    for stem, fig in analysis_figures(out):
        titles = [fig.get_suptitle()] + [ax.get_title() for ax in fig.axes]
        ticks = [t.get_text() for ax in fig.axes for t in ax.get_xticklabels()]
        assert any("recipe moco_v1" in t for t in titles + ticks), stem
    # the checkpoint's own recipe is named too
    assert (
        main(
            [*argv[:2], "--images", "8", "--negatives", "8", "--no-progress", "--device"]
            + ["cpu", "--out", str(tmp_path / "own")]
        )
        == 0
    )
    own = f"recipe {cfg.augment.recipe}"
    assert f"| pos ({own}) |" in capsys.readouterr().out
    # the report: each encoder's checkpoint, epoch and recipe
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("method: moco\n")
    assert main(["report", str(run), "--analysis", str(out)]) == 0
    page = (run / "report.html").read_text()
    assert f'<td>{ckpt}</td><td class="num">5</td><td class="num">40</td><td>moco_v1</td>' in page
    assert "pos (recipe moco_v1)" in page


def test_a_converted_encoders_recipe_is_named_as_converts_default(tmp_path, capsys, monkeypatch):
    """A torchvision ResNet analyzed beside a trained checkpoint was labelled ``[recipe
    moco_v1]``, as if it had been trained with MoCo v1's views: that recipe is only what
    ``contrastlab convert`` sets for an encoder without a projection head. Its data settings
    are unknown: it reads the trained run's images (it read contrastlab's defaults, the
    synthetic set's 1,000 test images at 224 px, which took 100 s to draw, beside the run's
    own)."""
    import torchvision

    import contrastlab.data.datasets as datasets
    from contrastlab.analysis import encoder_label

    built = []
    build_dataset = datasets.build_dataset

    def spy(cfg, split, transform):
        built.append((cfg.synthetic_test, cfg.image_size))
        return build_dataset(cfg, split, transform)

    monkeypatch.setattr(datasets, "build_dataset", spy)

    source = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), source)
    converted = tmp_path / "r18.pt"
    assert main(["convert", str(source), "--from", "torchvision", "--out", str(converted)]) == 0
    trained = tmp_path / "a.pt"
    _checkpoint(trained)
    out = tmp_path / "an"
    argv = ["analyze", str(converted), str(trained), "--images", "8", "--negatives", "8"]
    argv += ["--dataset", "synthetic", "--space", "backbone", "--no-progress", "--device", "cpu"]
    assert main([*argv, "--out", str(out)]) == 0
    own = _cfg().data
    assert set(built) == {(own.synthetic_test, own.image_size)}, built
    said = capsys.readouterr().out
    assert f"{converted}: its data settings are unknown (converted from another project); " in said
    assert f"evaluated on the synthetic images of {trained}'s settings" in said
    result = load_analysis(out)
    labels = {enc["label"]: encoder_label(result, enc) for enc in result["encoders"]}
    # labelled by its source, as eval labels it (was "r18", the file's name)
    tv = "torchvision (converted)"
    assert labels[tv] == f"{tv} [recipe moco_v1, convert's default]"
    assert labels["a"] == f"a [recipe {_cfg().augment.recipe}]"
    # a torchvision state dict records no training: unknown, not epoch 0, step 0
    (enc,) = [e for e in result["encoders"] if e["label"] == tv]
    assert (enc["epoch"], enc["step"]) == (None, None)
    # the encoder's scores, drawn by contrastlab scores, are labelled as analyze labels them
    from contrastlab.viz.score_plots import load_run

    assert load_run(out / "encoders" / enc["dir"], scores=False).name == tv
    # its config.yaml, read by contrastlab scores and report, showed contrastlab's defaults as
    # the encoder's settings (optim.lr 0.03, ...): they are unknown; the recipe of the views,
    # the architecture read from its weights are known
    import yaml

    shown = yaml.safe_load((out / "encoders" / enc["dir"] / "config.yaml").read_text())
    unknown = "unknown (converted from r18.pth)"
    assert shown["optim"]["lr"] == shown["moco"]["temperature"] == shown["method"] == unknown
    assert (shown["augment"]["recipe"], shown["model"]["backbone"]) == ("moco_v1", "resnet18")
    trained = yaml.safe_load((out / "encoders" / "a" / "config.yaml").read_text())
    assert "unknown" not in yaml.safe_dump(trained)
    from contrastlab.viz.score_plots import run_labels

    folders = [out / "encoders" / e["dir"] for e in result["encoders"]]
    labels = run_labels([load_run(f, scores=False) for f in folders])
    assert not any("unknown" in label for label in labels), labels  # sets no encoder apart
    assert main(["report", str(out / "encoders" / enc["dir"])]) == 0
    page = (out / "encoders" / enc["dir"] / "report.html").read_text()
    assert f"<tr><td>lr</td><td>{unknown}</td></tr>" in page  # not bold: no change


def test_analyze_says_what_it_runs_and_shows_progress_without_a_bar(tmp_path, capsys, monkeypatch):
    """Off a terminal (or with --no-progress) tqdm draws nothing, and analyze gave no sign of
    life until it ended: it now names the work first, then says how far it is."""
    import contrastlab.eval.progress as progress

    monkeypatch.setattr(progress, "INTERVAL", 0.0)  # a line after every batch
    ckpt = tmp_path / "a.pt"
    _checkpoint(ckpt)
    argv = ["analyze", str(ckpt), "--images", "8", "--negatives", "8", "--batch-size", "4"]
    assert main([*argv, "--no-progress", "--device", "cpu", "--out", str(tmp_path / "an")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        "analyze a: 8 images x 5 view pairs against 8 negatives, spaces backbone, on cpu"
    )
    assert "analyze a: negatives, batch 1 of 4, " in err[1] and "left" in err[1]
    assert "analyze a: view pairs, batch 4 of 4, " in err[-1]


@pytest.mark.parametrize(
    "images, negatives, said",
    [
        (256, 2048, "split has 1500; give --negatives 1244 or less with --images 256"),
        (256, 1400, "--negatives 1244 or less with --images 256 or --images 100 or less with"),
        (1600, 100, "give --images 1400 or less with --negatives 100"),
        (1500, 1500, "give --images N and --negatives K, N + K at most 1500"),
    ],
)
def test_too_many_images_names_the_largest_values_that_fit(images, negatives, said):
    """It said only "lower them": the user had to work out by how much."""
    from contrastlab.analysis import Settings, select_images

    with pytest.raises(UserError, match=re.escape(said)):
        select_images(1500, Settings(images=images, negatives=negatives))


def test_analyze_help_shows_the_defaults(capsys):
    from contrastlab.cli import main

    with pytest.raises(SystemExit):
        main(["analyze", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in (
        "images with two views (default: 256)",
        "bank images (negatives) (default: 2048, or where the split has fewer images the most",
        "(default: train)",
        "seed of the images and their views (default: 0)",
        "(default: 128)",
    ):
        assert shown in text


def test_analyze_skips_unreadable_images_with_its_flag(tmp_path, capsys):
    """An unreadable image stopped analyze with advice to pass data.skip_bad_images=true, which
    analyze does not accept: the message names --skip-bad-images, which skips them."""
    from PIL import Image

    a = _checkpoint(tmp_path / "a.pt")
    folder = tmp_path / "messy"
    for c in range(2):
        (folder / f"class{c}").mkdir(parents=True)
        for i in range(12):
            img = _image(10 * c + i).permute(1, 2, 0).numpy()
            Image.fromarray(img).save(folder / f"class{c}" / f"{i}.png")
    (folder / "class0" / "broken.png").write_bytes(b"\x89PNG not really")
    argv = ["analyze", str(a), "--dataset", "imagefolder", "--data-path", str(folder)]
    argv += ["--images", "4", "--negatives", "4", "--no-progress", "--out", str(tmp_path / "o")]
    err = _error(argv, capsys)
    assert "broken.png" in err and "pass --skip-bad-images to skip" in err
    assert "data.skip_bad_images" not in err
    with pytest.warns(UserWarning, match="skipped 1 unreadable image"):
        assert main([*argv, "--skip-bad-images"]) == 0


def test_a_string_of_spaces_checkpoints_or_labels_is_not_read_letter_by_letter(tmp_path):
    """Settings(spaces="backbone") was read as the spaces 'b', 'a', ...: "feature space 'b' does
    not exist for this model"; a checkpoint or label given as one string fared alike."""
    assert Settings(spaces="backbone").spaces == ("backbone",)
    assert Settings(spaces="backbone, z").spaces == ("backbone", "z")  # as --space takes them
    assert Settings(spaces=["z"]).spaces == ("z",)
    with pytest.raises(UserError, match="spaces must be a str or a list of them"):
        Settings(spaces=3)
    with pytest.raises(UserError, match="at least one space"):
        Settings(spaces=" , ")
    a = _checkpoint(tmp_path / "a.pt")
    settings = Settings(spaces="z", images=4, negatives=4, progress=False, device="cpu")
    result = run_analysis(str(a), settings, tmp_path / "out", labels="only")
    assert [enc["label"] for enc in result["encoders"]] == ["only"]
    assert list(result["encoders"][0]["spaces"]) == ["z"]


def test_a_checkpoint_given_twice_is_analyzed_once_with_one_warning(tmp_path, capsys):
    """The same checkpoint under two spellings was analyzed twice, as 'a (a.pt)' both times."""
    a = _checkpoint(tmp_path / "a.pt")
    out = tmp_path / "out"
    (tmp_path / "sub").mkdir()
    again = tmp_path / "sub" / ".." / "a.pt"
    argv = ["analyze", str(a), str(again), "--images", "4", "--negatives", "4"]
    assert main([*argv, "--no-progress", "--device", "cpu", "--out", str(out)]) == 0
    err = problem_lines(capsys.readouterr().err)
    assert err == [f"warning: the checkpoint {a} is given 2 times (as {a}, {again}); analyzed once"]
    assert [e["label"] for e in load_analysis(out)["encoders"]] == ["a"]


def _negative_scores(monkeypatch) -> list:
    """Collects the negative scores that analyze bins (every [queries, K] block, per space)."""
    import contrastlab.scores as scores

    seen, score_stats = [], scores.score_stats

    def collect(pos, neg, *args, **kwargs):
        seen.append(neg.detach().double().numpy().ravel())
        return score_stats(pos, neg, *args, **kwargs)

    monkeypatch.setattr(scores, "score_stats", collect)
    return seen


def test_bins_sets_the_histograms_that_negative_quantiles_and_figures_come_from(
    tmp_path, capsys, monkeypatch
):
    """The command line had no --bins: negative quantiles were only accurate to 0.01, the width
    of 200 bins over [-1, 1], however close together the scores lay."""
    ckpt = _checkpoint(tmp_path / "a.pt")
    argv = ["analyze", str(ckpt), "--images", "8", "--negatives", "40", "--batch-size", "4"]
    argv += ["--no-progress", "--device", "cpu"]
    errors = {}
    for bins in (None, 20000):
        seen = _negative_scores(monkeypatch)
        out = tmp_path / f"bins{bins}"
        assert main([*argv, "--out", str(out), *(["--bins", str(bins)] if bins else [])]) == 0
        result = load_analysis(out)
        assert result["settings"]["bins"] == (bins or 200)
        enc_dir = out / "encoders" / "a"
        h = load_histograms(enc_dir)
        assert h.meta["bins"] == (bins or 200) and len(h.edges) == (bins or 200) + 1
        for stem in ("distributions", "overlay"):
            assert (out / "figures" / f"analysis-backbone-{stem}.png").stat().st_size > 5000
        exact = np.quantile(np.concatenate(seen), [0.1, 0.5, 0.9])
        neg = result["encoders"][0]["spaces"]["backbone"]["neg"]
        errors[bins] = np.abs(np.array([neg["q10"], neg["q50"], neg["q90"]]) - exact)
        assert (errors[bins] <= 2 / (bins or 200) + 1e-6).all()  # within a bin
    assert errors[20000].sum() < errors[None].sum()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["analyze", "--help"])
    assert "--bins N" in capsys.readouterr().out


@pytest.mark.parametrize("bins", ["9", "100001", "0", "-5"])
def test_bins_out_of_range_is_one_line_before_any_work(tmp_path, capsys, bins):
    ckpt = tmp_path / "x.pt"
    ckpt.write_bytes(b"not read: --bins is checked first")
    out = tmp_path / "an"
    assert main(["analyze", str(ckpt), "--bins", bins, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: --bins must be a whole number from 10 to 100000 (histogram bins over [-1, 1]; "
        f"200, the default, are 0.01 wide), got {bins}"
    )
    assert not out.exists()
    with pytest.raises(UserError, match="--bins must be a whole number"):
        Settings(bins=20.5)


def test_negatives_not_given_is_the_most_that_fit_a_small_split(tmp_path, capsys, monkeypatch):
    """With fewer than 2,048 + 256 images, analyze without --negatives stopped: the user had not
    asked for 2,048 negatives, the default had."""
    import contrastlab.analysis as analysis

    ckpt = _checkpoint(tmp_path / "a.pt")  # 64 training images
    argv = ["analyze", str(ckpt), "--images", "8", "--no-progress", "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "fit")]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "--negatives" in line]
    line = (
        "analyze uses --negatives 56, the most that fit: the default 2048 and --images 8 need "
        "more than the 64 images of the train split; give --negatives K to choose another"
    )
    assert said == [line]
    settings = load_analysis(tmp_path / "fit")["settings"]
    assert settings["negatives"] == 56 and settings["negatives_fitted"] == line
    assert load_scores(tmp_path / "fit" / "encoders" / "a").query("backbone", "raw")["pos"].size
    # a default that fits is used as it is, without a word
    monkeypatch.setattr(analysis, "NEGATIVES", 40)
    assert main([*argv, "--out", str(tmp_path / "default")]) == 0
    assert "--negatives" not in capsys.readouterr().err
    settings = load_analysis(tmp_path / "default")["settings"]
    assert settings["negatives"] == 40 and "negatives_fitted" not in settings
    # a value given that does not fit stays an error, before any work
    err = _error([*argv, "--negatives", "57", "--out", str(tmp_path / "given")], capsys)
    assert "give --negatives 56 or less with --images 8" in err
    assert not (tmp_path / "given" / "analysis.json").exists()


def test_a_reused_folder_holds_only_this_analysis(tmp_path, capsys):
    """An analysis into the folder of an earlier one removes the earlier encoders' folders and
    figures that it does not write again, with one line saying so; the user's own files stay."""
    a = _checkpoint(tmp_path / "a.pt", seed=0)
    b = _checkpoint(tmp_path / "b.pt", seed=1)
    out = tmp_path / "an"
    small = ["--images", "4", "--negatives", "4", "--no-progress", "--device", "cpu"]
    argv = ["analyze", str(a), str(b), "--labels", "A", "B", "--space", "backbone,z"]
    assert main([*argv, *small, "--out", str(out)]) == 0
    (out / "encoders" / "A" / "mine.txt").write_text("mine")
    (out / "figures" / "mine.txt").write_text("mine")
    capsys.readouterr()
    assert main(["analyze", str(b), "--labels", "B", *small, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert [enc["label"] for enc in load_analysis(out)["encoders"]] == ["B"]
    assert sorted(p.name for p in (out / "figures").iterdir()) == [
        "analysis-backbone-distributions.png",
        "analysis-backbone-overlay.png",
        "analysis-backbone-sensitivity.png",
        "mine.txt",
    ]
    # A's folder keeps the user's file only
    assert [p.name for p in (out / "encoders" / "A").rglob("*")] == ["mine.txt"]
    removed = [line for line in err.splitlines() if line.startswith("removed ")]
    assert len(removed) == 1 and "analysis-z-overlay.png" in removed[0], err
