"""A stopped and resumed run as report and scores describe it: where it stopped, how to continue,
what changed on each resume (the number of processes too), and the true reason for what is
missing (no curves, no scores) in a run stopped inside its first epoch."""

from __future__ import annotations

import html
import json
import os
import signal

import pytest
from test_preemption import _on_step, quiet_signals  # noqa: F401 - a fixture

from contrastlab.checkpoint import read_checkpoint, save_checkpoint
from contrastlab.errors import TrainingInterrupted, UserError
from contrastlab.train import Trainer
from contrastlab.viz.report import write_report
from contrastlab.viz.score_plots import load_run, plot_scores, run_labels

# 6 steps per epoch; no metrics line before step 50, so a stop at step 2 has logged nothing
COMMON = ["optim.epochs=2", "train.knn_every=0", "train.log_every=50"]


def _events(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _text(page) -> str:
    return html.unescape(page.read_text())


@pytest.mark.usefixtures("quiet_signals")
def test_a_run_stopped_in_its_first_epoch_says_so_and_how_to_continue(
    tiny_config, monkeypatch, tmp_path
):
    cfg = tiny_config(*COMMON, "name=halted")
    _on_step(monkeypatch, 2, lambda: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(TrainingInterrupted):
        Trainer(cfg).fit()
    monkeypatch.undo()
    run = cfg.run_dir
    events = _events(run)
    assert [e["event"] for e in events] == ["start", "checkpoint", "stopped"]
    # the JSON places the stop as the line does: epochs complete, the running one, its steps
    stopped = events[-1]
    assert stopped["epoch"] == stopped["epochs_complete"] == 0  # epoch: as before
    assert (stopped["in_epoch"], stopped["batch_in_epoch"], stopped["steps_per_epoch"]) == (1, 2, 6)
    saved = events[1]
    assert (saved["epochs_complete"], saved["in_epoch"], saved["batch_in_epoch"]) == (0, 1, 2)
    assert events[0]["world_size"] == 1 and events[0]["device"] == "cpu"

    # report: the stop and the way on, and why there are no curves (it said "no metrics.jsonl")
    page = _text(write_report(run, tmp_path / "halted.html"))
    said = "stopped by SIGTERM in epoch 1 after 2 of its 6 steps (0 of 2 epochs complete, step 2)"
    assert said in page and "train.resume=auto" in page
    assert "no metrics.jsonl" not in page
    assert "no training curves yet: the run stopped at step 2, before its first metrics" in page
    # ... and why no scores (it said nothing; scores said "trained with scores.record=false")
    assert "scores.record=false" not in page
    assert "before its first epoch ended" in page
    with pytest.raises(UserError) as info:
        plot_scores([run], tmp_path / "figs")
    message = str(info.value)
    assert "scores.record=false" not in message and "train with scores.record" not in message
    assert said in message and "before its first epoch ended" in message
    assert "train.resume=auto" in message and len(message.splitlines()) == 1

    # resumed to the end: the history names the stop and the resume, and the state is gone
    Trainer(tiny_config(*COMMON, "name=halted", "train.resume=auto")).fit()
    resume = next(e for e in _events(run) if e["event"] == "resume")
    assert (resume["epochs_complete"], resume["in_epoch"], resume["batch_in_epoch"]) == (0, 1, 2)
    assert resume["world_size"] == 1 and "changed" not in resume
    page = _text(write_report(run, tmp_path / "done.html"))
    assert "History (stops and resumes)" in page
    assert f"<li>{said.replace('0 of 2 epochs', '0 epochs')}</li>" in page
    assert "<li>resumed in epoch 1 after 2 of its 6 steps (step 2) from " in page
    assert "to continue, run the same train command" not in page  # no longer stopped


def test_a_resume_on_another_number_of_processes_is_recorded_and_shown(tiny_config, tmp_path):
    cfg = tiny_config(*COMMON, "optim.epochs=1", "name=procs")
    Trainer(cfg).fit()
    run = cfg.run_dir
    last = run / "checkpoints" / "last.pt"
    state = read_checkpoint(last)
    assert state["world_size"] == 1  # each checkpoint says how many processes wrote it
    # as if the first epoch had run under torchrun with 2 processes
    state["world_size"] = 2
    state.pop("checksum", None)
    save_checkpoint(last, state)
    meta_path = run / "scores" / "meta.json"
    meta = json.loads(meta_path.read_text())
    assert meta["world_sizes"] == [1]
    meta_path.write_text(json.dumps({**meta, "world_size": 2, "world_sizes": [2]}))
    lines = _events(run)
    lines[0]["world_size"] = 2  # the start event
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))

    Trainer(tiny_config(*COMMON, "name=procs", "train.resume=auto")).fit()
    resume = next(e for e in _events(run) if e["event"] == "resume")
    # it listed config changes only: the change of processes was recorded nowhere
    assert resume["changed"] == {"optim.epochs": [1, 2], "world_size": [2, 1]}
    # the score record keeps the processes of every epoch, not only of the last part
    meta = json.loads(meta_path.read_text())
    assert meta["epochs"] == [1, 2] and meta["world_sizes"] == [2, 1] and meta["world_size"] == 1
    page = _text(write_report(run, tmp_path / "r.html"))
    assert "changed: optim.epochs 1 -&gt; 2, processes 2 -&gt; 1" in html.escape(page)
    # the scores legend names it when it sets runs apart
    other = tiny_config(*COMMON, "name=plain")
    Trainer(other).fit()
    labels = run_labels([load_run(run), load_run(other.run_dir)])
    assert "processes=2→1" in labels[0] and "processes=1" in labels[1]


def test_a_changed_list_setting_is_shown_as_a_list_in_history_and_table(tiny_config, tmp_path):
    """optim.milestones [1] -> [2]: config.yaml's history, the report's history line and its
    configuration table write the lists as YAML does, not as bare numbers (``1 -> 2``)."""
    step = [*COMMON, "optim.schedule=step", "name=ms"]
    Trainer(tiny_config(*step, "optim.milestones=[1]")).fit()
    again = tiny_config(*step, "optim.epochs=3", "optim.milestones=[2]", "train.resume=auto")
    Trainer(again).fit()
    assert "optim.milestones [1] -> [2]" in (again.run_dir / "config.yaml").read_text()
    page = _text(write_report(again.run_dir, tmp_path / "r.html"))
    assert "optim.milestones [1] -> [2]" in page
    assert "<td>milestones</td><td>[2]</td>" in page


# channels-last steps crashed (a segmentation fault in backward) on a loaded two-core CPU
_NO_CRASH = ["train.channels_last=false"]


def _crash_at(monkeypatch, step: int) -> None:
    """A kill in the given (1-based) step: no stop event, no checkpoint of its own."""

    def crash():
        raise RuntimeError("killed")

    _on_step(monkeypatch, step, crash)


def _tensorboard_steps(run_dir, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [s.step for s in events.Scalars(tag)]


def test_a_resume_after_a_kill_cuts_the_records_made_after_its_checkpoint(tiny_config, monkeypatch):
    """Steps 7-9, trained and logged after the checkpoint of epoch 1 (step 6), are trained again
    on resume: metrics.jsonl and TensorBoard keep each step once, as the run that never stopped."""
    every_step = [*COMMON, "train.log_every=1", "train.checkpoint_every=1", *_NO_CRASH]
    straight = Trainer(tiny_config(*every_step, "name=straight")).fit()
    _crash_at(monkeypatch, 10)
    with pytest.raises(RuntimeError, match="killed"):
        Trainer(tiny_config(*every_step, "name=killed")).fit()
    monkeypatch.undo()
    resumed = Trainer(tiny_config(*every_step, "name=killed", "train.resume=auto")).fit()
    assert resumed.final_loss == straight.final_loss

    def curves(run_dir):
        return [(e["step"], e["loss"]) for e in _events(run_dir) if e["event"] == "train"]

    assert curves(resumed.run_dir) == curves(straight.run_dir)
    assert [s for s, _ in curves(straight.run_dir)] == list(range(1, 13))
    # the history stays: both starts, and the resume after the first
    kinds = [e["event"] for e in _events(resumed.run_dir)]
    assert kinds.count("start") == 2 and kinds.index("resume") > kinds.index("start")
    # TensorBoard hides the first file's steps 7-9, and shows its step 6 (the checkpoint's)
    assert _tensorboard_steps(resumed.run_dir, "train/loss") == list(range(1, 13))
    assert _tensorboard_steps(resumed.run_dir, "epoch/loss") == [6, 12]


@pytest.mark.parametrize("again", [[], ["train.resume=auto"], ["optim.lr=0.01"]])
def test_a_fresh_start_removes_the_records_of_a_start_without_checkpoint(
    tiny_config, monkeypatch, capsys, again
):
    """A run killed before its first checkpoint left metrics.jsonl and tensorboard/; the next
    start of the run (nothing to resume) appended to them, mixing two runs' curves."""
    _crash_at(monkeypatch, 2)
    cfg = tiny_config(*COMMON, "train.log_every=1", *_NO_CRASH, "name=again")
    with pytest.raises(RuntimeError, match="killed"):
        Trainer(cfg).fit()
    monkeypatch.undo()
    assert (cfg.run_dir / "metrics.jsonl").exists()
    assert not list((cfg.run_dir / "checkpoints").glob("*.pt"))
    capsys.readouterr()
    Trainer(tiny_config(*COMMON, "train.log_every=1", *_NO_CRASH, "name=again", *again)).fit()
    said = capsys.readouterr().err
    assert said.count("warning: ") == 1, said
    assert "(metrics.jsonl, tensorboard/) of an earlier start of this run" in said
    kinds = [e["event"] for e in _events(cfg.run_dir)]
    assert kinds.count("start") == 1 and kinds.count("epoch") == 2
    assert len(list((cfg.run_dir / "tensorboard").iterdir())) == 1
    assert _tensorboard_steps(cfg.run_dir, "train/loss") == list(range(1, 13))


def test_a_stop_by_ctrl_c_is_named_as_the_stop_lines_name_it():
    from contrastlab.runstate import stop_text

    event = {"event": "stopped", "signal": "SIGINT", "epoch": 1, "step": 12}
    assert (
        stop_text(event, 4)
        == "stopped by Ctrl-C (SIGINT) after epoch 1 (1 of 4 epochs complete, step 12)"
    )
