"""Checkpoints inside an epoch, stop signals, and an exact resume from them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from helpers import TINY, overriding

from contrastlab.checkpoint import read_checkpoint
from contrastlab.errors import TrainingInterrupted, UserError
from contrastlab.methods.moco import MoCo
from contrastlab.train import Trainer

COMMON = ["optim.epochs=2", "train.checkpoint_every=1", "train.knn_every=0"]


def _equal_states(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _on_step(monkeypatch, step: int, action) -> None:
    """Run ``action()`` after the forward pass of the given (1-based, global) step."""
    original = MoCo.forward
    calls = {"n": 0}

    def forward(self, views, epoch=0):
        out = original(self, views, epoch)
        if self.training:
            calls["n"] += 1
            if calls["n"] == step:
                action()
        return out

    monkeypatch.setattr(MoCo, "forward", forward)


@pytest.fixture
def quiet_signals():
    """Ignore the stop signals unless the trainer handles them (the old code did not)."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGTERM, signal.SIGUSR1)}
    previous[signal.SIGINT] = signal.getsignal(signal.SIGINT)
    yield
    for s, h in previous.items():
        signal.signal(s, h)


def test_time_checkpoint_inside_an_epoch_resumes_bit_identically(tiny_config, monkeypatch):
    straight = Trainer(tiny_config(*COMMON, "name=straight")).fit()

    # a checkpoint after every step (any wall time is due), then a hard stop in step 4 of 6
    cfg = tiny_config(*COMMON, "name=cut", "train.checkpoint_minutes=0.000001")

    def crash():
        raise RuntimeError("killed")

    _on_step(monkeypatch, 4, crash)
    with pytest.raises(RuntimeError, match="killed"):
        Trainer(cfg).fit()
    monkeypatch.undo()
    state = read_checkpoint(cfg.run_dir / "checkpoints" / "last.pt")
    assert state["epoch"] == 0 and state["step"] == 3 and state["position"]["batch"] == 3

    resumed = Trainer(tiny_config(*COMMON, "name=cut", "train.resume=auto")).fit()
    assert resumed.steps == straight.steps == 12
    assert resumed.final_loss == straight.final_loss
    a, b = read_checkpoint(straight.last_checkpoint), read_checkpoint(resumed.last_checkpoint)
    _equal_states(a["model"], b["model"])
    # the score record of the interrupted epoch is whole and the same
    for name in ("queries-epoch0001.npz", "intervals-epoch0001.npz", "hist.npz"):
        with (
            np.load(straight.run_dir / "scores" / name) as x,
            np.load(resumed.run_dir / "scores" / name) as y,
        ):
            assert x.files == y.files
            for key in x.files:
                np.testing.assert_array_equal(x[key], y[key], err_msg=f"{name}:{key}")


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGUSR1", "SIGINT"])
def test_a_stop_signal_finishes_the_step_saves_and_stops(
    tiny_config, monkeypatch, quiet_signals, sig
):
    cfg = tiny_config(*COMMON, f"name=stop-{sig}")
    _on_step(monkeypatch, 2, lambda: os.kill(os.getpid(), getattr(signal, sig)))
    with pytest.raises(TrainingInterrupted) as info:
        Trainer(cfg).fit()
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert sig in message and "train.resume=auto" in message and "last.pt" in message
    # Ctrl-C named as every other stop line names it (it said "stopped by SIGINT" here only)
    said = "Ctrl-C (SIGINT)" if sig == "SIGINT" else sig
    assert message.startswith(f"stopped by {said} in epoch ")
    # the epoch it stopped in and the finished ones, which the stopped event's epoch counts (the
    # line named only the running epoch, one more than the event's)
    lines = (cfg.run_dir / "metrics.jsonl").read_text().splitlines()
    stopped = json.loads(lines[-1])
    assert stopped["event"] == "stopped" and stopped["step"] == 2
    done, n = stopped["epoch"], stopped["batch_in_epoch"]
    assert f"in epoch {done + 1} after {n} of its " in message
    assert f"({done} of 2 epochs complete, step 2); checkpoint " in message
    state = read_checkpoint(cfg.run_dir / "checkpoints" / "last.pt")
    assert state["step"] == 2 and state["position"]["batch"] == 2  # the step that was running
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN  # handlers are put back
    assert not (cfg.run_dir / ".contrastlab.lock").exists()


def test_the_command_exits_with_its_own_status_on_sigterm(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "contrastlab",
        "train",
        "--config",
        "moco_v2_cifar",
        *overriding(TINY, "optim.epochs=500", "train.knn_every=0"),
        f"out_dir={tmp_path}",
        "name=term",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    metrics = tmp_path / "term" / "metrics.jsonl"
    deadline = time.time() + 600  # starting Python and torch can be slow on a loaded machine
    while not (metrics.exists() and '"train"' in metrics.read_text()):
        assert time.time() < deadline and proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.1)
    logged = max(json.loads(x)["step"] for x in metrics.read_text().splitlines() if '"train"' in x)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 75, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "stopped by SIGTERM" in lines[0], err[-2000:]
    state = read_checkpoint(tmp_path / "term" / "checkpoints" / "last.pt")
    events = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert events[-1]["event"] == "stopped" and events[-1]["step"] == state["step"]
    # the event places the stop as the checkpoint event and the line do: finished epochs, then
    # the steps of the one that was running (it said epoch 6 where the line said "in epoch 7")
    # (or at the boundary, when the signal came in an epoch's last step: no batch_in_epoch)
    saved = [e for e in events if e["event"] == "checkpoint"][-1]
    stopped = events[-1]
    assert (stopped["epoch"], stopped.get("batch_in_epoch")) == (
        saved["epoch"],
        saved.get("batch_in_epoch"),
    )
    if "batch_in_epoch" in stopped:
        n = stopped["batch_in_epoch"]
        assert f"in epoch {stopped['epoch'] + 1} after {n} of its" in lines[0]
    else:
        assert f"after epoch {stopped['epoch']} " in lines[0]
    assert f"({stopped['epoch']} of 500 epochs complete, step {stopped['step']})" in lines[0]
    # the step that was running when the signal came is finished, and no more (one log interval)
    assert logged <= state["step"] <= logged + 3


def _as_process_of_two(rank: int, port: int) -> None:
    """This spawned process as ``rank`` of a torchrun job of two on the CPU, SIGUSR1 ignored."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def _ddp_worker(rank: int, port: int, overrides: list, out: str) -> None:
    from contrastlab.config import load_config

    _as_process_of_two(rank, port)
    original = MoCo.forward
    calls = {"n": 0}

    def forward(self, views, epoch=0):
        result = original(self, views, epoch)
        calls["n"] += 1
        if rank == 1 and calls["n"] == 2:  # only one process is signalled
            os.kill(os.getpid(), signal.SIGUSR1)
        return result

    MoCo.forward = forward
    from contrastlab.train import train

    try:
        train(load_config("moco_v2_cifar", overrides))
        outcome = {"stopped": False}
    except TrainingInterrupted as e:
        outcome = {"stopped": True, "is_main": e.is_main, "message": str(e)}
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(outcome, f)


def test_under_ddp_every_process_stops_at_the_same_step(tmp_path):
    import torch.multiprocessing as mp
    from helpers import free_port

    overrides = [*TINY, *COMMON, "model.bn_splits=1", f"out_dir={tmp_path}", "name=ddp"]
    mp.spawn(_ddp_worker, args=(free_port(), overrides, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["stopped"] and r1["stopped"] and r0["is_main"] and not r1["is_main"]
    assert "a stop signal to another process" in r0["message"]
    state = read_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")
    assert state["step"] == 2 and len(state["position"]["rng"]) == 2


class _SignalDispositions(torch.utils.data.Dataset):
    """Each item: whether this process ignores SIGTERM, SIGINT and SIGUSR1 (1.0 each), label 0."""

    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)  # what a dataset gives the view pipeline

    def __len__(self):
        return 4

    def __getitem__(self, i):
        names = ("SIGTERM", "SIGINT", "SIGUSR1")
        ignored = [float(signal.getsignal(getattr(signal, n)) == signal.SIG_IGN) for n in names]
        return torch.tensor(ignored), 0


class _Passthrough(torch.nn.Module):
    feature_spaces = ("backbone",)

    def features(self, x, space):
        return x


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="POSIX signals")
def test_training_data_workers_leave_stop_signals_to_the_main_process(tiny_config):
    # timeout, Ctrl-C and SLURM signal the whole process group: a worker killed by SIGTERM made
    # torch raise "DataLoader worker ... is killed by signal" in the middle of the stop
    from contrastlab.eval.features import extract_features
    from contrastlab.views.pipeline import build_training_views

    cfg = tiny_config("data.views=per_image", "data.num_workers=1")
    views = build_training_views(cfg, _SignalDispositions(), 2, 2, "cpu", False)
    probe = torch.utils.data.DataLoader(
        _SignalDispositions(),
        batch_size=2,
        num_workers=1,
        worker_init_fn=views.loader.worker_init_fn,
    )
    assert all(bool(x.all()) for x, _ in probe)
    # the kNN monitor's feature extraction, which runs inside training, does the same
    feats, _ = extract_features(_Passthrough(), _SignalDispositions(), "backbone", 2, "cpu", 1)
    assert feats.shape == (4, 3) and bool(feats.all())
    assert signal.getsignal(signal.SIGTERM) != signal.SIG_IGN  # the main process is untouched


def test_a_stop_between_the_epoch_checkpoint_and_the_monitor_is_caught_up_on_resume(
    tiny_config, monkeypatch
):
    settings = ["optim.epochs=3", "train.checkpoint_every=1", "train.knn_every=1"]
    straight = Trainer(tiny_config(*settings, "name=straight")).fit()

    # killed after epoch 1's checkpoint, before its kNN monitor has run
    def crash(self):
        raise RuntimeError("killed")

    monkeypatch.setattr(Trainer, "knn_monitor", crash)
    cfg = tiny_config(*settings, "name=cut")
    with pytest.raises(RuntimeError, match="killed"):
        Trainer(cfg).fit()
    monkeypatch.undo()

    resumed = Trainer(tiny_config(*settings, "name=cut", "train.resume=auto")).fit()
    assert resumed.knn_top1 == straight.knn_top1
    for name in ("last.pt", "best.pt"):
        a = read_checkpoint(straight.run_dir / "checkpoints" / name)
        b = read_checkpoint(resumed.run_dir / "checkpoints" / name)
        assert (a["epoch"], a["best_metric"]) == (b["epoch"], b["best_metric"]), name
        _equal_states(a["model"], b["model"])

    def monitored(run_dir):
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return [json.loads(x)["epoch"] for x in lines if '"event": "knn"' in x]

    assert monitored(resumed.run_dir) == monitored(straight.run_dir) == [1, 2, 3]


def test_a_stop_signal_during_the_monitor_stops_at_the_epoch_boundary(
    tiny_config, monkeypatch, quiet_signals, capsys
):
    """It used to train one more step of the next epoch first, and to drop the line of the epoch
    whose monitor had finished."""
    settings = ["optim.epochs=2", "train.checkpoint_every=2", "train.knn_every=1"]
    straight = Trainer(tiny_config(*settings, "name=straight")).fit()
    monitor = Trainer.knn_monitor

    def signalled(self):
        os.kill(os.getpid(), signal.SIGTERM)
        return monitor(self)

    monkeypatch.setattr(Trainer, "knn_monitor", signalled)
    cfg = tiny_config(*settings, "name=cut")
    capsys.readouterr()
    with pytest.raises(TrainingInterrupted, match=r"after epoch 1 \(1 of 2 epochs complete, "):
        Trainer(cfg).fit()
    monkeypatch.undo()
    assert "epoch 1 of 2: loss " in capsys.readouterr().out.split("kNN top-1 ")[0]
    state = read_checkpoint(cfg.run_dir / "checkpoints" / "last.pt")
    assert state["epoch"] == 1 and state.get("position") is None  # saved at the boundary
    resumed = Trainer(tiny_config(*settings, "name=cut", "train.resume=auto")).fit()
    assert resumed.final_loss == straight.final_loss and resumed.knn_top1 == straight.knn_top1
    _equal_states(
        read_checkpoint(straight.last_checkpoint)["model"],
        read_checkpoint(resumed.last_checkpoint)["model"],
    )


def test_a_stop_signal_during_the_last_monitor_leaves_a_finished_run(
    tiny_config, monkeypatch, quiet_signals
):
    """Nothing is left to do: the run ends as finished, not with "to continue"."""
    settings = ["optim.epochs=2", "train.knn_every=1"]
    straight = Trainer(tiny_config(*settings, "name=straight")).fit()
    monitor = Trainer.knn_monitor

    def signalled(self):
        if self.epoch == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return monitor(self)

    monkeypatch.setattr(Trainer, "knn_monitor", signalled)
    result = Trainer(tiny_config(*settings, "name=cut")).fit()
    assert (result.epochs, result.knn_top1) == (2, straight.knn_top1)
    assert read_checkpoint(result.last_checkpoint).get("monitor_pending") is not True


def test_a_stop_signal_before_the_last_monitor_says_the_monitor_is_left(
    tiny_config, monkeypatch, quiet_signals, capsys
):
    settings = ["optim.epochs=2", "train.knn_every=1"]
    epoch = Trainer.train_epoch

    def signalled(self, number):
        loss = epoch(self, number)
        if number == 1:  # the last epoch's steps are done; its checkpoint and monitor are not
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    monkeypatch.setattr(Trainer, "train_epoch", signalled)
    with pytest.raises(TrainingInterrupted, match="before its kNN monitor.*to run the monitor"):
        Trainer(tiny_config(*settings, "name=cut")).fit()
    monkeypatch.undo()
    # the epoch's training is complete: its line (without a kNN figure) before the stop's
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("epoch 2 of 2")]
    assert line.startswith("epoch 2 of 2: loss ") and "kNN" not in line
    resumed = Trainer(tiny_config(*settings, "name=cut", "train.resume=auto")).fit()
    assert resumed.knn_top1 is not None and resumed.epochs == 2


def test_a_stop_signal_after_the_last_epoch_without_a_monitor_finishes(
    tiny_config, monkeypatch, quiet_signals
):
    epoch = Trainer.train_epoch

    def signalled(self, number):
        loss = epoch(self, number)
        if number == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    monkeypatch.setattr(Trainer, "train_epoch", signalled)
    result = Trainer(tiny_config("optim.epochs=2", "train.knn_every=0", "name=cut")).fit()
    assert result.epochs == 2 and result.last_checkpoint is not None


@pytest.mark.parametrize("torchrun", [False, True])
def test_under_torchrun_the_stop_line_says_what_torchrun_prints_after_it(
    tiny_config, monkeypatch, quiet_signals, torchrun
):
    """torchrun's agent reports a clean stop as its own failure: a SignalException traceback
    (a signal to the agent) or a ChildFailedError report of status 75 (to the workers), exit
    status 1. The stop line said nothing of it; under torchrun (TORCHELASTIC_RUN_ID, which torchrun
    sets in every worker) it says how to tell the clean stop."""
    if torchrun:
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    else:
        monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    cfg = tiny_config(*COMMON, "name=stop-torchrun")
    _on_step(monkeypatch, 2, lambda: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(TrainingInterrupted) as info:
        Trainer(cfg).fit()
    message = str(info.value)
    assert len(message.splitlines()) == 1 and "train.resume=auto" in message
    said = "torchrun does not pass status 75 on" in message
    assert said == torchrun
    if torchrun:
        assert "exits with 1" in message and "last metrics.jsonl event is `stopped`" in message
    last = json.loads((cfg.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "stopped"


# -- a resume inside an epoch continues that very epoch -------------------------------------


def _stopped_inside_epoch(tiny_config, monkeypatch, name: str, step: int, *overrides: str):
    """A run stopped by SIGTERM after ``step`` (global) steps, with ``overrides``; its config."""
    cfg = tiny_config(*COMMON, f"name={name}", *overrides)
    _on_step(monkeypatch, step, lambda: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(TrainingInterrupted):
        Trainer(cfg).fit()
    monkeypatch.undo()
    return cfg


def _files(run_dir) -> dict:
    return {p: p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "change, key",
    [
        ("optim.batch_size=32", "optim.batch_size 16 -> 32"),
        ("data.synthetic_train=128", "data.synthetic_train 96 -> 128"),
        ("data.synthetic_seed=1", "data.synthetic_seed 0 -> 1"),
        ("seed=1", "seed 0 -> 1"),
        ("data.views=per_image", "data.views batched -> per_image"),  # as YAML spells it
        ("train.max_steps_per_epoch=2", "train.max_steps_per_epoch=2 ends it before the 3"),
    ],
)
def test_a_resume_inside_an_epoch_with_another_order_is_refused(
    tiny_config, monkeypatch, quiet_signals, change, key
):
    """The position in an epoch is a number of batches of an order drawn from the seed, the data
    set and the batch size: batch 3 of 32 is not where batch 3 of 16 had reached (the resume
    was accepted, trained some images twice and skipped others)."""
    cfg = _stopped_inside_epoch(tiny_config, monkeypatch, "order", 3)
    before = _files(cfg.run_dir)
    again = tiny_config(*COMMON, "name=order", change, "train.resume=auto")
    with pytest.raises(UserError) as info:
        Trainer(again).fit()
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert "inside epoch 1, after 3 of its 6 steps" in message and key in message
    assert "resume with the earlier values" in message and "start a new run" in message
    assert _files(cfg.run_dir) == before  # nothing written, not even a resume event


def test_the_refusal_names_a_kept_end_of_epoch_checkpoint_which_resumes(
    tiny_config, monkeypatch, quiet_signals, capsys
):
    cfg = _stopped_inside_epoch(tiny_config, monkeypatch, "kept", 8, "train.keep_every=1")
    kept = cfg.run_dir / "checkpoints" / "epoch-0001.pt"
    again = ["name=kept", "train.keep_every=1", "optim.batch_size=32"]
    with pytest.raises(UserError, match=f"train.resume={kept}"):
        Trainer(tiny_config(*COMMON, *again, "train.resume=auto")).fit()
    # from the end of an epoch another batch size is allowed, with the changed-settings warning
    capsys.readouterr()
    result = Trainer(tiny_config(*COMMON, *again, f"train.resume={kept}")).fit()
    assert result.epochs == 2
    assert "changed settings: optim.batch_size 16 -> 32" in capsys.readouterr().err


def test_a_resume_inside_an_epoch_of_a_changed_image_folder_is_refused(
    tiny_config, monkeypatch, quiet_signals, tmp_path
):
    """Images added to the folder between the stop and the resume: no setting changed."""
    from PIL import Image

    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(24):
            pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")
    folder = ["dataset=imagefolder", f"data.path={root}", "data.image_size=16"]
    cfg = _stopped_inside_epoch(tiny_config, monkeypatch, "folder", 1, *folder)
    before = _files(cfg.run_dir)
    for i in range(24, 40):
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "a" / f"{i}.png")
    again = tiny_config(*COMMON, "name=folder", *folder, "train.resume=auto")
    with pytest.raises(
        UserError, match="the training set holds .* images, .* when the epoch began"
    ):
        Trainer(again).fit()
    assert _files(cfg.run_dir) == before


def test_an_epoch_resumed_with_another_step_cap_has_the_mean_loss_of_its_steps(
    tiny_config, monkeypatch, quiet_signals, capsys
):
    """train.max_steps_per_epoch changed on a resume is said (every train.* key was exempt),
    and the epoch's loss is the mean over the steps it took: the same as a run that never
    stopped (a constant learning rate, so that the cap changes no step)."""
    flat = ["optim.schedule=step", "optim.milestones=[100]", "optim.warmup_epochs=0"]
    straight = Trainer(
        tiny_config(*COMMON, *flat, "name=capped", "train.max_steps_per_epoch=4")
    ).fit()
    cfg = _stopped_inside_epoch(tiny_config, monkeypatch, "cut", 2, *flat)
    capsys.readouterr()
    again = tiny_config(
        *COMMON, *flat, "name=cut", "train.max_steps_per_epoch=4", "train.resume=auto"
    )
    resumed = Trainer(again).fit()
    assert "changed settings: train.max_steps_per_epoch null -> 4" in capsys.readouterr().err

    def epoch_losses(run_dir):
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return [e["loss"] for e in map(json.loads, lines) if e["event"] == "epoch"]

    assert epoch_losses(cfg.run_dir) == epoch_losses(straight.run_dir)
    assert resumed.final_loss == straight.final_loss and resumed.steps == straight.steps == 8


def test_a_checkpoint_of_an_older_version_is_judged_by_its_settings(
    tiny_config, monkeypatch, quiet_signals
):
    """A checkpoint without the epoch's order (older versions) is compared by the settings that
    make the order; a change that leaves it alone (optim.lr) still resumes."""
    from contrastlab.checkpoint import save_checkpoint

    cfg = _stopped_inside_epoch(tiny_config, monkeypatch, "older", 3)
    last = cfg.run_dir / "checkpoints" / "last.pt"
    state = read_checkpoint(last)
    del state["position"]["order"], state["checksum"]
    save_checkpoint(last, state)
    again = ["name=older", "train.resume=auto"]
    with pytest.raises(UserError, match=r"after 3 steps, .*data.synthetic_train 96 -> 128"):
        Trainer(tiny_config(*COMMON, *again, "data.synthetic_train=128")).fit()
    assert Trainer(tiny_config(*COMMON, *again, "optim.lr=0.01")).fit().steps == 12


def test_a_resume_inside_an_epoch_says_so_at_the_start_and_counts_the_rest_of_it(
    tmp_path, monkeypatch, capsys
):
    """Stopped in step 4 of epoch 1 (6 steps each) and resumed: the start line said nothing of
    the resume, and the last line counted the rest of epoch 1 as a whole epoch ("2 more")."""
    from contrastlab.cli import main

    argv = ["train", "--config", "moco_v2_cifar", *TINY, *COMMON, f"out_dir={tmp_path}"]
    argv += ["name=r", "train.checkpoint_minutes=0.000001"]

    def crash():
        raise RuntimeError("killed")

    _on_step(monkeypatch, 4, crash)
    with pytest.raises(RuntimeError, match="killed"):
        main(argv)
    monkeypatch.undo()
    capsys.readouterr()
    assert main([*argv, "train.resume=auto"]) == 0
    lines = capsys.readouterr().out.splitlines()
    last = tmp_path / "r" / "checkpoints" / "last.pt"
    assert lines[0].startswith(
        f"training r, resumed from {last} at step 3 (3 of epoch 1's steps done): epochs 1-2 of 2"
    )

    assert "trained to epoch 2 (the rest of epoch 1 and 1 more, 9 steps)" in lines[-2]


def _ddp_resume_worker(rank: int, port: int, overrides: list, out: str) -> None:
    """A straight run ``a``; run ``b`` stopped inside epoch 2 (SIGUSR1 to rank 1), then resumed."""
    from contrastlab.config import load_config
    from contrastlab.train import train

    _as_process_of_two(rank, port)

    losses = {"a": train(load_config("moco_v2_cifar", [*overrides, "name=a"])).final_loss}
    original = MoCo.forward
    calls = {"n": 0}

    def forward(self, views, epoch=0):
        result = original(self, views, epoch)
        calls["n"] += 1
        if rank == 1 and calls["n"] == 9:  # step 3 of the 6 of epoch 2
            os.kill(os.getpid(), signal.SIGUSR1)
        return result

    MoCo.forward = forward
    try:
        train(load_config("moco_v2_cifar", [*overrides, "name=b"]))
    except TrainingInterrupted:
        pass
    MoCo.forward = original
    resumed = train(load_config("moco_v2_cifar", [*overrides, "name=b", "train.resume=auto"]))
    losses["b"] = resumed.final_loss
    with open(os.path.join(out, f"losses{rank}.json"), "w") as f:
        json.dump(losses, f)


def test_under_ddp_a_resume_inside_an_epoch_keeps_each_process_s_running_sums(tmp_path):
    """The epoch's loss, its logged intervals and the FT λ means sum each process's own running
    sums: a checkpoint inside the epoch keeps every process's (it kept rank 0's, which every
    process then took on resume, so the mean over processes counted it twice)."""
    import torch.multiprocessing as mp
    from helpers import free_port

    overrides = [
        *TINY,
        *COMMON,
        "model.bn_splits=1",
        "ft.pos=extrapolate",
        "ft.neg=interpolate",
        "train.channels_last=false",  # crashes two gloo processes on some CPUs (heap corruption)
        f"out_dir={tmp_path}",
    ]
    mp.spawn(_ddp_resume_worker, args=(free_port(), overrides, str(tmp_path)), nprocs=2, join=True)
    losses = json.loads((tmp_path / "losses0.json").read_text())
    assert losses["a"] == losses["b"]
    state = read_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    assert state["step"] == 12

    def curves(name):
        events = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").open()]
        return [
            (e["event"], e["step"], e.get("loss"), e.get("lam_pos"), e.get("lam_neg"))
            for e in events
            if e["event"] in ("train", "epoch", "ft") and e["step"] > 8
        ]

    assert curves("b") == curves("a") and curves("a")
