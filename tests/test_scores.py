"""Score statistics, the recorder's files and loaders, and gathering under DDP."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from contrastlab import scores
from contrastlab.errors import UserError
from contrastlab.scores import (
    ScoreRecorder,
    ScoreStats,
    histogram,
    load_histograms,
    load_scores,
    score_stats,
)

BINS, LOW, HIGH = 20, -1.0, 1.0


@pytest.fixture(params=["cpu", "device"])
def branch(request, monkeypatch):
    """Each statistics test runs the CPU branch and the accelerator branch (histc), here on the CPU."""
    monkeypatch.setattr(scores, "FORCE_DEVICE_PATH", request.param == "device")
    return request.param


def _cfg(bins=BINS, record=True):
    return SimpleNamespace(record=record, bins=bins, low=LOW, high=HIGH)


@pytest.mark.parametrize("block", [None, 100])  # 100: the CPU path's row blocks of 2 rows
def test_score_stats_matches_naive_float64(block, monkeypatch, branch):
    if block:
        monkeypatch.setattr(scores, "_CPU_BLOCK_SCORES", block)
    g = torch.Generator().manual_seed(0)
    pos = torch.rand(7, generator=g) * 2.4 - 1.2  # some outside [-1, 1]: counted in the end bins
    neg = torch.rand(7, 50, generator=g) * 2.4 - 1.2
    st = score_stats(pos, neg, bins=BINS, low=LOW, high=HIGH)
    p64, n64 = pos.double().numpy(), neg.double().numpy()
    for i in range(7):
        row = n64[i]
        mean = sum(row) / len(row)
        var = sum((x - mean) ** 2 for x in row) / len(row)
        assert st.neg_mean[i].item() == pytest.approx(mean, abs=1e-6)
        assert st.neg_var[i].item() == pytest.approx(var, abs=1e-6)
    np.testing.assert_array_equal(st.pos.numpy(), pos.numpy())
    for got, values in ((st.pos_hist, p64), (st.neg_hist, n64.ravel())):
        expected, _ = np.histogram(np.clip(values, LOW, HIGH), bins=BINS, range=(LOW, HIGH))
        np.testing.assert_array_equal(got.numpy(), expected)
    assert st.pos_hist.sum().item() == 7 and st.neg_hist.sum().item() == 7 * 50


def test_score_stats_in_range_and_collapsed(branch):
    """All scores in range (no clamp needed) and nearly equal, as in a collapsed space: the
    variance must keep its relative precision, not cancel to zero or go negative."""
    g = torch.Generator().manual_seed(1)
    neg = 0.999 + 1e-4 * torch.randn(5, 4000, generator=g, dtype=torch.float64)
    pos = torch.full((5,), 0.9995, dtype=torch.float64)
    st = score_stats(pos.float(), neg.float(), bins=BINS, low=LOW, high=HIGH)
    n32 = neg.float().double().numpy()  # what score_stats sees, in float64
    np.testing.assert_allclose(st.neg_var.double().numpy(), n32.var(axis=1), rtol=1e-3)
    np.testing.assert_allclose(st.neg_mean.double().numpy(), n32.mean(axis=1), rtol=1e-6)
    expected, _ = np.histogram(n32.ravel(), bins=BINS, range=(LOW, HIGH))
    np.testing.assert_array_equal(st.neg_hist.numpy(), expected)
    assert st.pos_hist.sum().item() == 5


@pytest.mark.parametrize("bins", [16, 200, 300])  # 300: bin indices beyond one byte
def test_histogram_bins_like_float64_reference(bins, branch):
    """Every value lands in the bin a float64 computation gives it: values spread over each bin
    (away from its edges, where float32 rounding may legitimately differ), the edges themselves
    where they are exact in float32, the range's ends, and values outside it."""
    g = torch.Generator().manual_seed(bins)
    width = (HIGH - LOW) / bins
    which = torch.randint(0, bins, (5000,), generator=g, dtype=torch.float64)
    inside = (
        LOW + (which + 0.02 + 0.96 * torch.rand(5000, generator=g, dtype=torch.float64)) * width
    )
    exact_edges = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0], dtype=torch.float64)
    outside = torch.tensor([-3.0, -1.0001, 1.0001, 2.5], dtype=torch.float64)
    for values in (torch.cat([inside, exact_edges]), torch.cat([inside, outside])):
        got = histogram(values.float(), bins, LOW, HIGH)
        v64 = values.float().double().numpy()  # what histogram sees, in float64
        expected = np.zeros(bins)
        for v in np.clip(v64, LOW, HIGH):
            expected[min(int((v - LOW) * bins / (HIGH - LOW)), bins - 1)] += 1
        assert got.dtype == torch.float32
        np.testing.assert_array_equal(got.numpy(), expected)


def _stats(seed: int, b: int = 4, n: int = 30) -> tuple[ScoreStats, np.ndarray, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(b, generator=g) * 2 - 1
    neg = torch.rand(b, n, generator=g) * 2 - 1
    return score_stats(pos, neg, bins=BINS), pos.numpy(), neg.numpy()


def _feed(rec: ScoreRecorder, steps_per_epoch=5, epochs=2, ft=True, seed_base=0, b=4):
    """Feed known stats; return {(epoch, stage): expected hist [2, bins]} and the fed pos values."""
    expected, fed = {}, []
    step = 0
    for epoch in range(1, epochs + 1):
        for _ in range(steps_per_epoch):
            raw, pos, neg = _stats(seed_base + step, b)
            eff = _stats(seed_base + 1000 + step, b)[0] if ft else raw
            rec.update(step, epoch, {("z", "raw"): raw, ("z", "effective"): eff})
            for stage, st in (("raw", raw), ("effective", eff)):
                h = expected.setdefault((epoch, stage), np.zeros((2, BINS)))
                h += np.stack([st.pos_hist.numpy(), st.neg_hist.numpy()])
            fed.append((step, epoch, raw, eff))
            step += 1
        rec.end_epoch(epoch)
    rec.close()
    return expected, fed


@pytest.mark.parametrize("ft", [True, False])
def test_recorder_round_trip(tmp_path, ft):
    rec = ScoreRecorder(tmp_path, _cfg(), log_every=2)
    expected, fed = _feed(rec, ft=ft)
    record = load_scores(tmp_path)
    assert record.meta["spaces"] == ["z"] and record.meta["epochs"] == [1, 2]
    for table in (record.queries, record.intervals):
        lengths = {len(v) for v in table.values()}
        assert len(lengths) == 1
        assert all(v.ndim == 1 and v.dtype != object for v in table.values())
    raw = record.query("z", "raw")
    eff = record.query("z", "effective")
    assert len(raw["pos"]) == 10 * 4 and len(eff["pos"]) == 10 * 4
    # With FT off, effective rows are not stored twice but read back as the raw ones.
    assert len(record.queries["pos"]) == (80 if ft else 40)
    for step, epoch, r, e in fed:
        m = raw["step"] == step
        assert (raw["epoch"][m] == epoch).all()
        np.testing.assert_array_equal(raw["pos"][m], r.pos.numpy())
        np.testing.assert_array_equal(raw["neg_mean"][m], r.neg_mean.numpy())
        np.testing.assert_array_equal(raw["neg_var"][m], r.neg_var.numpy())
        np.testing.assert_array_equal(eff["pos"][m], e.pos.numpy())
    # Intervals: 5 steps per epoch in intervals of 2 -> 3 intervals per epoch (2 + 2 + 1 steps).
    iv = record.interval("z", "raw")
    assert list(iv["first_step"]) == [0, 2, 4, 5, 7, 9] and list(iv["n"]) == [8, 8, 4, 8, 8, 4]
    first = raw["pos"][raw["step"] < 2].astype(np.float64)
    assert iv["pos_mean"][0] == pytest.approx(first.mean())
    assert iv["pos_q90"][0] == pytest.approx(np.quantile(first, 0.9))
    assert list(record.interval("z", "effective")["same_as_raw"]) == [not ft] * 6

    hist = load_histograms(tmp_path)
    assert list(hist.epoch) == [1, 2] and hist.counts.shape == (2, 1, 2, 2, BINS)
    np.testing.assert_allclose(hist.edges, np.linspace(-1, 1, BINS + 1))
    for e, epoch in enumerate((1, 2)):
        for g, stage in enumerate(("raw", "effective")):
            np.testing.assert_array_equal(hist.counts[e, 0, g], expected[(epoch, stage)])
        assert (
            hist.counts[e, 0, 0, 0].sum() == 5 * 4 and hist.counts[e, 0, 0, 1].sum() == 5 * 4 * 30
        )
    # Interval histograms add up to the epoch's.
    rows = (hist.intervals["epoch"] == 1) & (hist.intervals["stage"] == 0)
    np.testing.assert_array_equal(hist.interval_counts[rows].sum(0), expected[(1, "raw")])
    assert all(v.dtype != object for v in hist.intervals.values())


def test_files_are_plain_numpy(tmp_path):
    _feed(ScoreRecorder(tmp_path, _cfg(), log_every=3), epochs=1)
    for path in (tmp_path / "scores").glob("*.npz"):
        with np.load(path, allow_pickle=False) as f:  # no object arrays, no pickle
            assert all(f[n].dtype != object for n in f.files)
    assert not list((tmp_path / "scores").glob("*.tmp"))
    meta = json.loads((tmp_path / "scores" / "meta.json").read_text())
    assert meta["bins"] == BINS and meta["stages"] == ["raw", "effective"]


def test_resume_replaces_later_epochs(tmp_path):
    _feed(ScoreRecorder(tmp_path, _cfg(), log_every=2), epochs=2)
    rec = ScoreRecorder(tmp_path, _cfg(), log_every=2)  # resumed after epoch 1
    rec.update(5, 2, {("z", "raw"): _stats(99)[0]})
    rec.close()
    hist = load_histograms(tmp_path)
    assert list(hist.epoch) == [1, 2] and hist.counts[1, 0, 0, 0].sum() == 4
    assert set(
        load_scores(tmp_path).queries["step"][load_scores(tmp_path).queries["epoch"] == 2]
    ) == {5}


def test_disabled_and_missing(tmp_path):
    rec = ScoreRecorder(tmp_path, _cfg(record=False), log_every=2)
    rec.update(0, 1, {("z", "raw"): _stats(0)[0]})
    rec.close()
    assert not (tmp_path / "scores").exists()
    with pytest.raises(UserError):
        load_scores(tmp_path)


def test_tensorboard_calls(tmp_path):
    class Writer:
        def __init__(self):
            self.scalars, self.hists = [], []

        def add_scalar(self, tag, value, step):
            self.scalars.append(tag)

        def add_histogram_raw(self, tag, **kw):
            assert len(kw["bucket_limits"]) == len(kw["bucket_counts"])
            self.hists.append(tag)

        def flush(self):
            pass

    w = Writer()
    _feed(ScoreRecorder(tmp_path, _cfg(), log_every=2, tb_writer=w), epochs=1, ft=False)
    assert "scores/z/raw/pos_mean" in w.scalars and "scores/z/raw/neg_var_mean" in w.scalars
    assert not any("effective" in t for t in w.scalars)  # identical to raw: not drawn twice
    assert "scores/z/effective/neg" in w.hists


# -- DDP ------------------------------------------------------------------------------------------


def _ddp_worker(rank: int, world: int, port: int, run_dir: str) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        rec = ScoreRecorder(Path(run_dir), _cfg(), log_every=2)
        for step in range(3):
            b = 3 if (step == 2 and rank == 1) else 4  # rank 1's last batch is short
            pos = torch.full((b,), 0.1 * rank + 0.01 * step)
            neg = torch.full((b, 5), -0.5 + rank * 0.5)
            rec.update(step, 1, {("z", "raw"): score_stats(pos, neg, bins=BINS)})
        rec.end_epoch(1)
        rec.close()
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_gather(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    q = load_scores(tmp_path).queries
    assert len(q["pos"]) == 4 + 4 + 4 + 4 + 4 + 3
    for rank in (0, 1):
        mine = q["rank"] == rank
        np.testing.assert_allclose(q["pos"][mine & (q["step"] == 2)], 0.1 * rank + 0.02)
        np.testing.assert_allclose(q["neg_mean"][mine], -0.5 + rank * 0.5)
    hist = load_histograms(tmp_path)
    neg = hist.counts[0, 0, 0, 1]
    assert neg.sum() == 23 * 5
    assert neg[np.searchsorted(hist.edges, -0.5, side="right") - 1] == 12 * 5
    assert hist.counts[0, 0, 0, 0].sum() == 23


# -- mean exp(score / T) ---------------------------------------------------------------------------


@pytest.mark.parametrize("block", [None, 100])
def test_exp_statistics_match_naive_float64(block, monkeypatch):
    """exp(pos / T) and the mean over negatives of exp(neg / T), the terms the Feature
    Transformation reference code keeps, against a loop in float64."""
    if block:
        monkeypatch.setattr(scores, "_CPU_BLOCK_SCORES", block)
    g = torch.Generator().manual_seed(2)
    pos = torch.rand(6, generator=g) * 2 - 1
    neg = torch.rand(6, 40, generator=g) * 2 - 1
    t = 0.07
    st = score_stats(pos, neg, bins=BINS, temperature=t)
    for i in range(6):
        row = [float(v) for v in neg[i].double()]
        expected = sum(np.exp(v / t) for v in row) / len(row)
        assert st.neg_exp[i].item() == pytest.approx(expected, rel=1e-5)
        assert st.pos_exp[i].item() == pytest.approx(np.exp(float(pos[i]) / t), rel=1e-5)
    no_t = score_stats(pos, neg, bins=BINS)
    assert torch.isnan(no_t.pos_exp).all() and torch.isnan(no_t.neg_exp).all()


def test_exp_statistics_recorded_and_old_records_still_read(tmp_path):
    """The recorder stores pos_exp / neg_exp per query and per interval; a record written in the
    previous format (without them) still loads, with NaN in those columns."""
    g = torch.Generator().manual_seed(4)
    rec = ScoreRecorder(tmp_path, _cfg(), log_every=2)
    fed = []
    for step in range(4):
        pos, neg = torch.rand(3, generator=g), torch.rand(3, 10, generator=g)
        st = score_stats(pos, neg, bins=BINS, temperature=0.2)
        rec.update(step, 1, {("z", "raw"): st})
        fed.append(st)
    rec.close()
    record = load_scores(tmp_path)
    assert record.meta["format"] == "contrastlab-scores-v2"
    raw = record.query("z", "raw")
    np.testing.assert_array_equal(raw["neg_exp"], torch.cat([s.neg_exp for s in fed]).numpy())
    np.testing.assert_array_equal(raw["pos_exp"], torch.cat([s.pos_exp for s in fed]).numpy())
    iv = record.interval("z", "raw")
    first = torch.cat([s.neg_exp for s in fed[:2]]).double().numpy()
    assert iv["neg_exp_mean"][0] == pytest.approx(first.mean())

    # the same directory as the previous format wrote it: no exp columns, format v1
    folder = tmp_path / "scores"
    for path in folder.glob("*-epoch*.npz"):
        with np.load(path) as f:
            kept = {n: f[n] for n in f.files if "_exp" not in n}
        np.savez(path, **kept)
    meta = json.loads((folder / "meta.json").read_text())
    meta["format"] = "contrastlab-scores-v1"
    (folder / "meta.json").write_text(json.dumps(meta))
    old = load_scores(tmp_path)
    np.testing.assert_array_equal(old.query("z", "raw")["pos"], raw["pos"])
    assert np.isnan(old.queries["neg_exp"]).all() and len(old.queries["neg_exp"]) == 12
    assert np.isnan(old.intervals["pos_exp_mean"]).all()
    assert load_histograms(tmp_path).counts.shape == (1, 1, 2, 2, BINS)
    # a resumed run appends to the old record
    rec = ScoreRecorder(tmp_path, _cfg(), log_every=2)
    pos, neg = torch.rand(3, generator=g), torch.rand(3, 10, generator=g)
    rec.update(10, 2, {("z", "raw"): score_stats(pos, neg, bins=BINS, temperature=0.2)})
    rec.close()
    both = load_scores(tmp_path)
    assert both.meta["epochs"] == [1, 2]
    assert np.isfinite(both.queries["neg_exp"][both.queries["epoch"] == 2]).all()
    assert np.isnan(both.queries["neg_exp"][both.queries["epoch"] == 1]).all()


def _two_epochs(tmp_path):
    _feed(ScoreRecorder(tmp_path, _cfg(), log_every=2), epochs=2)
    return tmp_path


def test_an_epoch_space_or_stage_not_recorded_names_those_that_were(tmp_path):
    run = _two_epochs(tmp_path)
    for epochs in ([7], [0], [1, 7]):
        with pytest.raises(UserError, match=r"no scores of epoch 7|no scores of epoch 0") as e:
            load_scores(run, epochs=epochs)
        assert "recorded epochs: [1, 2]" in str(e.value) and isinstance(e.value, KeyError)
    with pytest.raises(UserError, match="a list of epoch numbers"):
        load_scores(run, epochs="1")
    assert set(load_scores(run, epochs=2).queries["epoch"]) == {2}  # one epoch alone
    rec, hists = load_scores(run), load_histograms(run)
    for read in (rec.query, rec.interval, hists.epoch_counts):
        with pytest.raises(
            KeyError, match=r"no stage 'eff'; the stages are \['raw', 'effective'\]"
        ):
            read("z", "eff")
        with pytest.raises(UserError, match=r"no scores for space 'zz'; recorded: \['z'\]"):
            read("zz", "raw")
    np.testing.assert_array_equal(hists.epoch_counts("z", "effective"), hists.counts[:, 0, 1])


def test_a_missing_path_a_file_and_the_scores_folder_itself(tmp_path):
    run = _two_epochs(tmp_path / "run")
    for load in (load_scores, load_histograms):
        with pytest.raises(UserError, match=r"run directory .*nonexist does not exist$"):
            load(tmp_path / "nonexist")
        with pytest.raises(
            UserError, match=r"meta.json names a file, not a run directory; .* e.g. .*run$"
        ):
            load(run / "scores" / "meta.json")
    # the scores folder is read as its run
    np.testing.assert_array_equal(
        load_scores(run / "scores").queries["pos"], load_scores(run).queries["pos"]
    )
    np.testing.assert_array_equal(
        load_histograms(run / "scores").counts, load_histograms(run).counts
    )


def test_the_format_docs_loading_example_runs_and_says_where_each_array_is(tmp_path):
    """docs/scores-format.md: its example runs against a record, the interval histograms are
    where it says (file: pos_hist / neg_hist; loaded: interval_counts, not the intervals table),
    and pandas is named as optional (it is not a dependency)."""
    import re
    import tomllib

    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "scores-format.md").read_text()
    example = re.search(r"## Loading\n\n```python\n(.*?)```", doc, re.S).group(1)
    run = _two_epochs(tmp_path / "m099")
    env: dict = {}
    exec(example.replace('"runs/m099"', repr(str(run))), env)
    rec, h = env["rec"], env["h"]
    assert "pos_hist" not in rec.intervals and all(v.ndim == 1 for v in rec.intervals.values())
    with np.load(run / "scores" / "intervals-epoch0001.npz") as f:
        first = len(f["pos_hist"])
        np.testing.assert_array_equal(env["pos_hist"][:first], f["pos_hist"])
        np.testing.assert_array_equal(h.interval_counts[:first, 1], f["neg_hist"])
    assert "`interval_counts`" in doc and "no `pos_hist`" in doc
    deps = " ".join(tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"])
    assert "pandas" not in deps and "not a\ndependency" in doc


def _public_loaders():
    from contrastlab import analysis, checkpoint, convert, export
    from contrastlab.viz import score_plots

    return {
        "load_scores": (scores.load_scores, "run_dir"),
        "load_histograms": (scores.load_histograms, "run_dir"),
        "load_run": (score_plots.load_run, "run_dir"),
        "read_checkpoint": (checkpoint.read_checkpoint, "checkpoint"),
        "load_model": (checkpoint.load_model, "checkpoint"),
        "load_model_and_normalization": (checkpoint.load_model_and_normalization, "checkpoint"),
        "read_source": (convert.read_source, "source"),
        "read_encoder": (convert.read_encoder, "source"),
        "load_analysis": (analysis.load_analysis, "analysis folder"),
        "export_checkpoint": (
            lambda p: export.export_checkpoint(p, "safetensors", "x"),
            "checkpoint",
        ),
    }


@pytest.mark.parametrize("value", [None, 5, ""])
@pytest.mark.parametrize("loader", list(_public_loaders()))
def test_a_loader_given_something_that_is_not_a_path_says_so(loader, value):
    # before: "TypeError: expected str, bytes or os.PathLike object, not NoneType"; "" read the
    # current folder as the run
    load, what = _public_loaders()[loader]
    with pytest.raises(UserError, match=rf"^{what} must be a path \(str or os.PathLike\), got "):
        load(value)


def test_export_refuses_an_output_that_is_not_a_path(tmp_path):
    from contrastlab.export import export_checkpoint

    with pytest.raises(UserError, match=r"^out must be a path"):
        export_checkpoint(tmp_path / "missing.pt", "safetensors", None)


def test_the_record_says_when_the_queue_filled(tmp_path):
    """The first K/B steps score against the queue's random initial vectors: the record says
    after which step every negative is a key, and a resumed run keeps its first part's value."""
    from contrastlab.scores import queue_filled_step

    assert queue_filled_step(4096, 256) == 16  # K/B steps exactly
    assert queue_filled_step(40, 16) == 3  # a last step that fills it partly
    assert queue_filled_step(40, 16, symmetric=True) == 2  # two keys per image
    assert queue_filled_step(8, 16) == 1
    _feed(ScoreRecorder(tmp_path, _cfg(), log_every=2, queue_filled_step=3), epochs=1)
    assert load_scores(tmp_path, queries=False).meta["queue_filled_step"] == 3
    # resumed with another batch size: the queue was filled at the first part's
    rec = ScoreRecorder(tmp_path, _cfg(), log_every=2, queue_filled_step=9)
    rec.update(5, 2, {("z", "raw"): _stats(99)[0]})
    rec.close()
    assert load_scores(tmp_path, queries=False).meta["queue_filled_step"] == 3
    # not a queue (the bank of contrastlab analyze): null
    _feed(ScoreRecorder(tmp_path / "bank", _cfg(), log_every=2), epochs=1)
    assert load_scores(tmp_path / "bank", queries=False).meta["queue_filled_step"] is None
