"""The `scores` command's figures, labels and errors."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from matplotlib.figure import Figure

from contrastlab.cli import main
from contrastlab.errors import UserError
from contrastlab.viz.commands import plot_scores, register
from contrastlab.viz.score_plots import distributions_figure, load_run, run_labels


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_multi_run_plots(fake_runs, tmp_path):
    paths = plot_scores(fake_runs, tmp_path / "out")
    assert [p.name for p in paths] == ["scores-z-curves.png", "scores-z-distributions.png"]
    assert all(_is_png(p) for p in paths)


def test_labels_name_setting_and_accuracy(fake_runs):
    labels = run_labels([load_run(r) for r in fake_runs])
    assert labels[0] == "m0.9 (moco.momentum=0.9), kNN 46.5%"
    assert labels[1] == "m0.99 (moco.momentum=0.99), kNN 56.2%"
    assert labels[2] == "m0.999 (moco.momentum=0.999)"  # no kNN line logged
    assert run_labels([load_run(r) for r in fake_runs], ["a", "b", "c"]) == ["a", "b", "c"]
    with pytest.raises(UserError):
        run_labels([load_run(r) for r in fake_runs], ["a"])


def test_long_labels_do_not_overlap(fake_runs):
    """Run labels name every differing setting and can be long: the ridge panels' titles must
    wrap rather than run into each other."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    runs = [load_run(r) for r in fake_runs]
    labels = [
        f"run{i} (" + ", ".join(f"setting.number{k}={k}" for k in range(8)) + ")" for i in range(3)
    ]
    fig = distributions_figure(runs, "z", labels)
    FigureCanvasAgg(fig).draw()
    boxes = sorted((ax.title.get_window_extent() for ax in fig.axes), key=lambda b: b.x0)
    assert len(boxes) == 3
    for left, right in zip(boxes, boxes[1:]):
        assert left.x1 <= right.x0, "panel titles overlap"


def test_one_figure_set_per_space_default_out(looc_run):
    paths = plot_scores([looc_run])
    assert {p.name for p in paths} == {
        "scores-z0-curves.png",
        "scores-z0-distributions.png",
        "scores-color-curves.png",
        "scores-color-distributions.png",
    }
    assert all(p.parent == looc_run / "figures" and _is_png(p) for p in paths)


def test_bad_run_dirs(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        plot_scores([tmp_path / "nope"], tmp_path)
    # a checkpoint given where the run directory belongs: it exists, so say what to give
    (tmp_path / "r" / "checkpoints").mkdir(parents=True)
    (tmp_path / "r" / "checkpoints" / "last.pt").write_bytes(b"x")
    with pytest.raises(
        UserError, match=r"last.pt names a checkpoint file, not a run directory; .* e.g. .*r$"
    ):
        plot_scores([tmp_path / "r" / "checkpoints" / "last.pt"], tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="recorded scores"):
        plot_scores([tmp_path / "empty"], tmp_path)


def test_cli_registration(monkeypatch, tmp_path, capsys):
    import contrastlab.viz.commands as commands

    calls = []
    monkeypatch.setattr(
        commands, "plot_scores", lambda *a, **k: calls.append(a) or [tmp_path / "x.png"]
    )
    monkeypatch.setattr(commands, "write_report", lambda *a: calls.append(a) or tmp_path / "r.html")
    monkeypatch.chdir(tmp_path)
    for name in ("a", "b"):  # run directories are checked before anything else
        (tmp_path / name).mkdir()
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["scores", "a", "b", "--out", "o", "--labels", "fast", "slow"])
    assert args.func(args) == 0
    args = parser.parse_args(["report", "a"])
    assert args.func(args) == 0
    assert [str(p) for p in calls[0][0]] == ["a", "b"] and calls[0][1:] == ("o", ["fast", "slow"])
    assert str(calls[1][0]) == "a" and calls[1][1] is None
    assert "x.png" in capsys.readouterr().out


def test_labels_name_the_method_settings_first():
    """Five settings differ; the label shows four: the method-defining one must be among them."""
    from types import SimpleNamespace

    def run(name, plus_plus, shift):
        config = {"looc.plus_plus": plus_plus, "method": "looc"}
        config |= {f"data.k{i}": i + shift for i in range(4)}
        return SimpleNamespace(name=name, config=config, knn=None)

    labels = run_labels([run("a", False, 0), run("b", True, 1)])
    assert labels[0].startswith("a (looc.plus_plus=false, data.k0=0")
    assert labels[1].startswith("b (looc.plus_plus=true, ")


def test_a_run_with_one_logged_interval_gets_visible_markers(short_run):
    from contrastlab.viz.score_plots import curves_figure

    run = load_run(short_run)
    fig = curves_figure([run], "z", ["short"])
    lines = [line for ax in fig.axes for line in ax.get_lines()]
    assert lines and all(len(line.get_xdata()) < 3 for line in lines)
    assert all(line.get_marker() == "o" for line in lines)


def test_scores_on_a_full_disk_is_one_line_and_keeps_the_figures(fake_runs, tmp_path, capsys):
    from helpers import full_disk, temporary_files

    from contrastlab.cli import main

    out = tmp_path / "figs"
    assert main(["scores", str(fake_runs[0]), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as mp:
        full_disk(mp)
        code = main(["scores", str(fake_runs[0]), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "no space left on device" in err and "run the command again" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert temporary_files(out) == []


def test_scores_does_not_replace_a_users_file_without_overwrite(fake_runs, tmp_path, capsys):
    from contrastlab.cli import main

    out = tmp_path / "figs"
    out.mkdir()
    (out / "scores-z-curves.png").write_bytes(b"my own figure")
    assert main(["scores", str(fake_runs[0]), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already exists" in err and "--overwrite" in err
    assert (out / "scores-z-curves.png").read_bytes() == b"my own figure"
    assert not (out / "scores-z-distributions.png").exists()  # refused before any figure
    assert main(["scores", str(fake_runs[0]), "--out", str(out)]) == 2
    assert main(["scores", str(fake_runs[0]), "--out", str(out), "--overwrite"]) == 0
    assert main(["scores", str(fake_runs[0]), "--out", str(out)]) == 0  # its own: replaced


def test_score_figures_show_the_range_where_the_scores_are():
    """All of [-1, 1] left scores that sit in [0.5, 1] squeezed into a quarter of the axis."""
    from contrastlab.viz.score_plots import occupied_range

    edges = np.linspace(-1, 1, 101)  # bins of 0.02
    scores = np.array([0.53, 0.61, 0.87])
    counts = np.histogram(scores, edges)[0]
    assert occupied_range([counts], edges) == pytest.approx((0.5, 0.9))
    other = np.histogram(np.array([-0.35]), edges)[0]
    assert occupied_range([counts, other[None]], edges) == pytest.approx((-0.4, 0.9))
    assert occupied_range([np.zeros(100)], edges) == (-1.0, 1.0)
    top = np.histogram(np.array([0.999]), edges)[0]
    assert occupied_range([top], edges) == pytest.approx((0.9, 1.0))


def _labels_drawn(monkeypatch) -> list:
    """The labels ``plot_scores`` draws, captured."""
    import contrastlab.viz.score_plots as score_plots

    drawn, real = [], score_plots.run_labels
    monkeypatch.setattr(score_plots, "run_labels", lambda *a: drawn.append(real(*a)) or drawn[-1])
    return drawn


def test_a_run_without_scores_is_left_out_with_a_warning(tmp_path, capsys, monkeypatch, run_maker):
    """A run trained with scores.record=false was dropped without a word, and still made the
    other runs' labels name the settings it differs in."""
    import shutil

    make_run = run_maker
    from contrastlab.cli import main

    shown = make_run(tmp_path, "shown", 0.9, 46.5, knn_space="z")
    other = make_run(tmp_path, "other", 0.99, 50.0, config={"scores.record": False})
    shutil.rmtree(other / "scores")
    drawn = _labels_drawn(monkeypatch)
    out = tmp_path / "figs"
    assert main(["scores", str(shown), str(other), "--out", str(out)]) == 0
    warnings = [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning:")]
    assert len(warnings) == 1 and str(other) in warnings[0]
    assert "scores.record=true" in warnings[0]
    # momentum differs from a run not shown (labels are worked out per figure: two here)
    assert drawn == [["shown, kNN (z) 46.5%"]] * 2
    # --labels: one per run given, the left-out run's dropped with it
    assert main(["scores", str(shown), str(other), "--out", str(out), "--labels", "a", "b"]) == 0
    assert drawn[-1] == ["a"]
    # none has scores: one line, no figure
    assert main(["scores", str(other), "--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert "recorded scores" in err and "scores.record=true" in err and "Traceback" not in err
    assert not (tmp_path / "none").exists() or not any((tmp_path / "none").iterdir())


def test_labels_leave_out_settings_without_effect_and_name_the_knn_space(tmp_path, run_maker):
    """looc.* on a MoCo run and FT settings of a run without FT differ, but explain nothing."""
    make_run = run_maker
    moco = make_run(
        tmp_path,
        "moco",
        0.99,
        11.0,
        knn_space="z",
        config={"looc.augmentations": ["color"], "ft.renormalize_negatives": True},
    )
    looc = make_run(
        tmp_path,
        "looc",
        0.99,
        12.0,
        knn_space="color",
        config={
            "method": "looc",
            "looc.augmentations": ["color", "rotation"],
            "ft.renormalize_negatives": False,
        },
    )
    labels = run_labels([load_run(moco), load_run(looc)])
    assert labels == [
        "moco (method=moco), kNN (z) 11.0%",
        "looc (method=looc), kNN (color) 12.0%",
    ]
    # two LooC runs: their augmentations do tell them apart
    looc2 = make_run(
        tmp_path, "looc2", 0.99, None, config={"method": "looc", "looc.augmentations": ["color"]}
    )
    labels = run_labels([load_run(looc), load_run(looc2)])
    assert labels[0].startswith("looc (looc.augmentations=color,rotation)")
    assert labels[1] == "looc2 (looc.augmentations=color)"


def _curves(runs, labels=None):
    from contrastlab.viz.score_plots import score_figures

    return {stem: fig for stem, fig in score_figures(runs, labels)}


def test_runs_of_other_steps_per_epoch_share_an_epoch_axis(tmp_path, run_maker):
    """Runs of batch 256 and 128 (5 and 11 steps per epoch) were drawn against the step, as if
    step 5 of the one were step 5 of the other."""
    fast = load_run(run_maker(tmp_path, "fast", 0.9, None, epochs=2, steps=5))
    slow = load_run(run_maker(tmp_path, "slow", 0.99, None, epochs=2, steps=11))
    same = load_run(run_maker(tmp_path, "same", 0.999, None, epochs=2, steps=5))
    fig = _curves([fast, slow])["scores-z-curves"]
    for ax in fig.axes:
        assert ax.get_xlabel() == "epoch (step / steps per epoch: 5, 11)"
        ends = [max(line.get_xdata()) for line in ax.get_lines()]
        assert ends == pytest.approx([2.0, 2.0])  # both runs end at epoch 2
    # equal steps per epoch: the steps stay
    fig = _curves([fast, same])["scores-z-curves"]
    assert fig.axes[0].get_xlabel() == "step"
    assert [max(line.get_xdata()) for line in fig.axes[0].get_lines()] == [10, 10]
    from contrastlab.viz.score_plots import steps_per_epoch

    assert steps_per_epoch(fast) == 5 and steps_per_epoch(slow) == 11
    # without metrics.jsonl the score record tells the steps per epoch
    (tmp_path / "slow" / "metrics.jsonl").unlink()
    assert steps_per_epoch(load_run(tmp_path / "slow")) == 11


def test_the_figures_of_all_spaces_share_one_x_axis(tmp_path, run_maker):
    """The axis was chosen per figure: a space of one run only (color) was drawn in steps where
    the shared one (z), of runs of 5 and 11 steps per epoch, was drawn in epochs."""
    a = load_run(run_maker(tmp_path, "a", 0.9, None, epochs=2, steps=5))
    b = load_run(run_maker(tmp_path, "b", 0.99, None, spaces=("z", "color"), epochs=2, steps=11))
    figs = _curves([a, b])
    for stem in ("scores-z-curves", "scores-color-curves"):
        for ax in figs[stem].axes:
            assert ax.get_xlabel() == "epoch (step / steps per epoch: 5, 11)", stem
            assert max(max(line.get_xdata()) for line in ax.get_lines()) == pytest.approx(2.0)
    # runs that agree: steps in every figure
    c = load_run(run_maker(tmp_path, "c", 0.999, None, spaces=("z", "color"), epochs=2, steps=5))
    figs = _curves([a, c])
    assert {ax.get_xlabel() for s, f in figs.items() if s.endswith("curves") for ax in f.axes} == {
        "step"
    }


def test_each_figure_labels_its_runs_by_what_differs_among_them(tmp_path, run_maker):
    """Two MoCo runs and a LooC run (no space z): the z figures showed the keys that set the
    MoCo runs apart from the LooC run (method, moco.*), the same on both curves, and cut the
    ones that differ between them (batch size, learning rate) off with "…"."""
    moco = {"moco.temperature": 0.1, "moco.queue_size": 256}
    a = run_maker(tmp_path, "A", 0.99, None, config=moco | {"optim.batch_size": 256})
    b = run_maker(
        tmp_path, "B", 0.99, None, config=moco | {"optim.batch_size": 128, "optim.lr": 0.015}
    )
    c = run_maker(
        tmp_path,
        "C",
        0.99,
        None,
        spaces=("z0", "color"),
        config={"method": "looc", "moco.temperature": 0.2, "moco.queue_size": 512},
    )
    figs = _curves([load_run(a), load_run(b), load_run(c)])
    for stem in ("scores-z-curves", "scores-z-distributions"):
        fig = figs[stem]
        texts = (
            [t.get_text() for t in fig.legends[0].get_texts()]
            if stem.endswith("curves")
            else [ax.get_title().replace("\n", " ") for ax in fig.axes]
        )
        assert texts == [
            "A (optim.batch_size=256, optim.lr=0.03)",
            "B (optim.batch_size=128, optim.lr=0.015)",
        ], stem
    # the LooC run's own figures: one run, nothing to set it apart from
    assert [t.get_text() for t in figs["scores-z0-curves"].legends[0].get_texts()] == ["C"]


def test_score_curves_have_whole_step_and_epoch_ticks(tmp_path, run_maker):
    """A run of a few steps had ticks at 4.5 and 5.5 steps."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    runs = [load_run(run_maker(tmp_path, "few", 0.9, None, epochs=2, steps=3))]
    runs.append(load_run(run_maker(tmp_path, "more", 0.99, None, epochs=2, steps=4)))
    for chosen in (runs[:1], runs):  # steps, and epochs (3 and 4 steps per epoch)
        fig = _curves(chosen)["scores-z-curves"]
        FigureCanvasAgg(fig).draw()
        for ax in fig.axes:
            assert all(float(t).is_integer() for t in ax.get_xticks()), ax.get_xticks()


def test_score_curves_start_at_step_or_epoch_zero_not_before(tmp_path, run_maker):
    """Runs of 3 and 4 steps per epoch over 2 epochs, drawn in epochs (points from 1/4 to 2),
    had an axis from epoch -1: no score is recorded before the start of training."""
    runs = [load_run(run_maker(tmp_path, "few", 0.9, None, epochs=2, steps=3))]
    runs.append(load_run(run_maker(tmp_path, "more", 0.99, None, epochs=2, steps=4)))
    for chosen in (runs[:1], runs):
        for ax in _curves(chosen)["scores-z-curves"].axes:
            low, high = ax.get_xlim()
            assert low == 0 and high >= ax.dataLim.intervalx[1], (ax.get_xlabel(), low, high)


def test_labels_name_what_sets_the_curves_apart_and_the_panels_say_what_they_show(
    tmp_path, run_maker
):
    """The legend named bookkeeping settings (train.overwrite, train.knn_every, ...), showed
    train.amp=None instead of what it came to, and the panels had no y-axis label."""
    bookkeeping = {
        "train.overwrite": True,
        "train.knn_every": 5,
        "train.checkpoint_every": 3,
        "train.keep_every": 2,
        "train.checkpoint_minutes": 5.0,
        "train.knn_k": 20,
        "train.progress": False,
    }
    a = run_maker(tmp_path, "a", 0.99, None, config={"train.amp": None, "train.device": "cpu"})
    b = run_maker(tmp_path, "b", 0.99, None, config={"train.amp": True, **bookkeeping})
    labels = run_labels([load_run(a), load_run(b)])
    assert labels == ["a (train.amp=false)", "b (train.amp=true)"]
    # on train.device=auto: what the run's start event recorded
    lines = [json.dumps({"event": "start", "epoch": 0, "step": 0, "world_size": 1, "amp": True})]
    (a / "metrics.jsonl").write_text("\n".join(lines) + "\n" + (a / "metrics.jsonl").read_text())
    (a / "config.yaml").write_text((a / "config.yaml").read_text().replace("cpu", "auto"))
    assert run_labels([load_run(a), load_run(b)]) == ["a", "b"]
    fig = _curves([load_run(a), load_run(b)])["scores-z-curves"]
    panels = fig.axes[:3]
    assert all("cosine similarity" in ax.get_ylabel() and "'z'" in ax.get_ylabel() for ax in panels)
    assert all("cos(query" in ax.get_title() for ax in panels)
    assert "cosine similarities" in fig.get_suptitle()


def _record(run, steps, spaces=("backbone", "z"), epoch=0, effective=None):
    """A run directory with scores recorded at ``steps`` (all in one epoch) and no metrics, as
    ``contrastlab analyze`` writes one per encoder; ``effective(pos, neg)`` gives the effective
    scores (default: none, the raw ones)."""
    from types import SimpleNamespace

    import torch

    from contrastlab.scores import ScoreRecorder, score_stats

    run.mkdir(parents=True)
    (run / "config.yaml").write_text("method: moco\n")
    rec = ScoreRecorder(run, SimpleNamespace(record=True, bins=50, low=-1.0, high=1.0), 1 << 30)
    g = torch.Generator().manual_seed(0)
    for step in steps:
        stats = {}
        for space in spaces:
            pos = (0.97 + 0.01 * torch.randn(8, generator=g)).clamp(-1, 1)
            neg = (0.05 * torch.randn(8, 16, generator=g)).clamp(-1, 1)
            stats[(space, "raw")] = score_stats(pos, neg, bins=50)
            if effective is not None:
                stats[(space, "effective")] = score_stats(*effective(pos, neg), bins=50)
        rec.update(step, epoch, stats)
    rec.end_epoch(epoch)
    rec.close()
    return run


def test_a_record_of_one_step_gets_no_curves_figure_and_one_line_why(tmp_path, capsys):
    """An analyze encoder's record (one step, epoch 0) was drawn as one point at step 0 with
    ticks -0.045 ... 0.045, as a 'curve' over training."""
    run = _record(tmp_path / "enc", steps=[0])
    paths = plot_scores([run], tmp_path / "out")
    assert sorted(p.name for p in paths) == [
        "scores-backbone-distributions.png",
        "scores-z-distributions.png",
    ]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no curves figure of spaces 'backbone', 'z'" in err[0]
    assert "recorded at one step only (step 0)" in err[0]


def test_a_point_within_one_step_gets_whole_ticks(tmp_path):
    """Two steps in one interval: one point (at step 1), whose axis had fractional ticks."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    run = load_run(_record(tmp_path / "enc", steps=[0, 1]))
    figs = _curves([run])
    assert set(figs) == {f"scores-{s}-{k}" for s in ("backbone", "z") for k in _KINDS}
    for space in ("backbone", "z"):  # every space alike
        fig = figs[f"scores-{space}-curves"]
        FigureCanvasAgg(fig).draw()
        for ax in fig.axes:
            ticks = ax.get_xticks()
            assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks
            assert [line.get_marker() for line in ax.get_lines()] == ["o"]


_KINDS = ("curves", "distributions")


def test_scores_counted_in_the_end_bins_beyond_the_range_are_noted(tmp_path):
    """Effective scores above 1 (a feature transformation without re-normalization) were counted
    in the last bin and drawn as an unmarked spike at the clipped axis's end."""
    run = load_run(
        _record(
            tmp_path / "ft",
            steps=[1, 2],
            spaces=("z",),
            epoch=1,
            effective=lambda p, n: (p, n * 30),
        )
    )
    fig = distributions_figure([run], "z", ["ft"])
    texts = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    c = run.hists.epoch_counts("z", "effective")[0, 1]
    assert f"effective neg: {int(c[-1]):,} scores in the end bin [0.96, 1]" in texts
    assert "any above 1 counted at 1" in texts and "any below -1 counted at -1" in texts
    assert "raw" not in texts  # raw cosine scores cannot lie beyond [-1, 1]
    # no effective stage, nothing beyond: no note, though the raw pos scores fill the last bin
    plain = load_run(_record(tmp_path / "plain", steps=[1, 2], spaces=("z",), epoch=1))
    assert plain.hists.epoch_counts("z")[0, 0, -1] > 0
    assert not [t for ax in distributions_figure([plain], "z", ["p"]).axes for t in ax.texts]


def test_a_run_given_twice_is_drawn_once_with_one_warning(fake_runs, tmp_path, capsys, monkeypatch):
    from contrastlab.cli import main

    drawn = []
    monkeypatch.setattr(
        "contrastlab.viz.score_plots._FIGURES",
        {"curves": lambda runs, space, labels: drawn.append(labels) or Figure()},
    )
    monkeypatch.chdir(fake_runs[0].parent)
    name = fake_runs[0].name
    argv = ["scores", name, f"./{name}/", str(fake_runs[0]), fake_runs[1].name, "--out", "o"]
    assert main(argv) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"warning: the run {name} is given 3 times (as {name}, ./{name}/, "
        f"{fake_runs[0]}); drawn once"
    ]
    assert len(drawn) == 1 and len(drawn[0]) == 2  # the two runs, each once


def test_a_scores_or_analysis_folder_given_for_a_run_names_the_folder_to_give(tmp_path, capsys):
    from contrastlab.cli import main

    run = _record(tmp_path / "ana" / "encoders" / "A", steps=[0])
    (tmp_path / "ana" / "analysis.json").write_text("{}")
    for command in ("scores", "report"):
        assert main([command, str(run / "scores")]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (
            f"error: {run / 'scores'} is a run's scores folder; give the run directory (it also "
            f"holds the run's config.yaml and metrics.jsonl), e.g. {run}"
        )
        assert main([command, str(tmp_path / "ana")]) == 2
        assert capsys.readouterr().err.strip().endswith(f"e.g. {run}")


def test_a_string_is_one_run_or_one_label(fake_runs, tmp_path):
    """A string where a list belongs was read one character at a time."""
    paths = plot_scores(str(fake_runs[0]), tmp_path / "one", labels="the run")
    assert [p.name for p in paths] == ["scores-z-curves.png", "scores-z-distributions.png"]
    assert run_labels([load_run(fake_runs[0])], "the run") == ["the run"]
    with pytest.raises(UserError, match="labels must be a str or a list of them"):
        plot_scores([fake_runs[0]], tmp_path / "two", labels=[1])


def _full_config(**changes) -> dict:
    """Every key of a saved config.yaml (as training writes it), with ``changes`` (dotted keys
    spelt with "__" for ".")."""
    from contrastlab.config import Config, config_to_dict
    from contrastlab.runstate import flatten

    config = flatten(config_to_dict(Config()))
    for key in ("name", "out_dir", "data.path"):
        config.pop(key, None)
    config |= {"optim.epochs": 3, "optim.batch_size": 16, "moco.queue_size": 256}
    config |= {"ft.pos": "extrapolate", "ft.neg": "interpolate"}
    return config | {k.replace("__", "."): v for k, v in changes.items()}


def test_labels_name_each_chosen_setting_once_and_the_users_first(tmp_path, run_maker):
    """Runs of another ft.granularity, ft.renormalize and ft.start_epoch were labelled
    `ft.granularity=…, ft.granularity_neg=…, ft.granularity_pos=…, ft.renormalize=…, …`: the null
    keys that follow ft.granularity took two of the four places, and ft.start_epoch, the
    setting that set one run apart, was cut."""
    runs = {
        name: load_run(run_maker(tmp_path, name, 0.99, None, ft=True, config=_full_config(**c)))
        for name, c in (
            ("A", {}),
            ("B", {"ft__granularity": "sample"}),
            ("C", {"ft__renormalize": True}),
            ("D", {"ft__start_epoch": 1}),
            ("E", {"ft__granularity_pos": "element"}),
        )
    }
    assert run_labels([runs[n] for n in "ABCD"]) == [
        "A (ft.granularity=step, ft.renormalize=false, ft.start_epoch=0)",
        "B (ft.granularity=sample, ft.renormalize=false, ft.start_epoch=0)",
        "C (ft.renormalize=true, ft.granularity=step, ft.start_epoch=0)",
        "D (ft.start_epoch=1, ft.granularity=step, ft.renormalize=false)",
    ]
    # a granularity set on its own is the user's choice; the other run's null one is named by
    # what it came to, since ft.granularity, which it follows, sets neither run apart
    assert run_labels([runs["A"], runs["E"]]) == [
        "A (ft.granularity_pos=step)",
        "E (ft.granularity_pos=element)",
    ]
    # a null key equal to what the same key was set to in another run is no difference
    same = load_run(
        run_maker(
            tmp_path, "F", 0.99, None, ft=True, config=_full_config(ft__granularity_pos="step")
        )
    )
    assert run_labels([runs["A"], same]) == ["A", "F"]
    # ... and the two stay alike beside a third run that differs: A was left bare while F
    # was labelled with the same value, as if A differed from F
    assert run_labels([runs["A"], same, runs["E"]]) == [
        "A (ft.granularity_pos=step)",
        "F (ft.granularity_pos=step)",
        "E (ft.granularity_pos=element)",
    ]


def _shaded(ax) -> list[tuple[float, float]]:
    """The x-spans shaded in a panel (``axvspan``: the only patches the curves draw)."""
    return [(p.get_x(), p.get_x() + p.get_width()) for p in ax.patches]


def test_the_steps_before_the_queue_filled_are_marked(tmp_path, run_maker):
    """The neg scores of the first K/B steps are those of the queue's random initial vectors,
    and nothing on the figure said so."""
    queue = {"moco.queue_size": 64, "optim.batch_size": 16}  # full after step 4
    run = load_run(run_maker(tmp_path, "q", 0.99, None, config=queue))
    fig = _curves([run])["scores-z-curves"]
    assert all(_shaded(ax) == [(0, 4)] for ax in fig.axes)
    legend = [t.get_text().replace("\n", " ") for t in fig.legends[1].get_texts()]
    assert legend == [
        "until the queue filled (step 4): the negatives include its random initial vectors"
    ]
    # as the record says it (a run trained since it does), whatever config.yaml says
    meta_path = run.path / "scores" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "queue_filled_step": 6}))
    fig = _curves([load_run(run.path)])["scores-z-curves"]
    assert _shaded(fig.axes[0]) == [(0, 6)]
    # in epochs (runs of 6 and 3 steps per epoch): a step of 4 is at 4 / 6 of an epoch
    other = load_run(run_maker(tmp_path, "o", 0.9, None, steps=3, config=queue))
    fig = _curves([load_run(run.path), other])["scores-z-curves"]
    assert _shaded(fig.axes[0]) == [(0, 1.0), (0, pytest.approx(4 / 3))]
    # a record of contrastlab analyze: its negatives are no queue
    fig = _curves([load_run(_record(tmp_path / "enc", steps=[0, 1, 2, 3]))])["scores-z-curves"]
    assert _shaded(fig.axes[0]) == [] and len(fig.legends) == 1


def test_one_interval_draws_raw_and_effective_apart_and_the_legend_says_how(tmp_path, run_maker):
    """With one logged interval the raw and effective scores were the same round marker, while
    the figure said "dashed: effective" of a point that has no line."""
    run = load_run(run_maker(tmp_path, "one", 0.99, None, ft=True, epochs=1, steps=2))
    fig = _curves([run])["scores-z-curves"]
    for ax in fig.axes:
        drawn = [(line.get_marker(), line.get_linestyle()) for line in ax.get_lines()]
        assert drawn == [("o", "-"), ("^", "--")]
        assert len(ax.get_lines()[0].get_xdata()) == 1
    style = fig.legends[1]
    assert [t.get_text().replace("\n", " ") for t in style.get_texts()][:2] == [
        "raw cosine scores",
        "effective (after feature transformation)",
    ]
    assert [h.get_marker() for h in style.legend_handles[:2]] == ["o", "^"]
    assert "dashed" not in fig.get_suptitle()
    assert "point" in fig.get_suptitle() and "bar for a single interval" in fig.get_suptitle()
    # many intervals: lines, and the legend draws no markers
    many = load_run(run_maker(tmp_path, "many", 0.99, None, ft=True))
    style = _curves([many])["scores-z-curves"].legends[1]
    assert [h.get_marker() for h in style.legend_handles[:2]] == ["None", "None"]


def test_a_reused_folder_holds_only_this_runs_figures(fake_runs, looc_run, tmp_path, capsys):
    """Figures of an earlier run into the same folder that this run does not draw (another
    space) are removed, with one line saying so; a user's own file and a PNG that contrastlab
    did not write stay."""
    out = tmp_path / "plots"
    assert main(["scores", str(looc_run), str(fake_runs[0]), "--out", str(out)]) == 0
    assert (out / "scores-color-curves.png").is_file()
    (out / "notes.txt").write_text("mine")
    (out / "scores-mine-curves.png").write_bytes(b"\x89PNG not ours")
    capsys.readouterr()
    assert main(["scores", str(fake_runs[0]), str(fake_runs[1]), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    left = sorted(p.name for p in out.iterdir())
    assert left == [
        "notes.txt",
        "scores-mine-curves.png",
        "scores-z-curves.png",
        "scores-z-distributions.png",
    ]
    removed = [line for line in err.splitlines() if line.startswith("removed ")]
    assert len(removed) == 1 and "scores-color-curves.png" in removed[0], err
