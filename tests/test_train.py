"""The training loop: exact resume, divergence handling, checkpoint checks, run directory."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from torch.utils._python_dispatch import TorchDispatchMode

from contrastlab.checkpoint import load_model, read_checkpoint
from contrastlab.errors import TrainingDiverged, UserError
from contrastlab.train import Trainer, learning_rate


def _states_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("knn_every", [0, 1])  # with the monitor: eval mode between epochs
def test_resume_gives_the_same_result_as_an_uninterrupted_run(tiny_config, monkeypatch, knn_every):
    common = ["optim.epochs=3", "train.checkpoint_every=1", f"train.knn_every={knn_every}"]
    straight = Trainer(tiny_config(*common, "name=straight")).fit()

    cfg = tiny_config(*common, "name=stopped")
    original = Trainer.train_epoch

    def stop_in_epoch_two(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", stop_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg).fit()
    monkeypatch.setattr(Trainer, "train_epoch", original)
    assert read_checkpoint(cfg.run_dir / "checkpoints" / "last.pt")["epoch"] == 1

    resumed = Trainer(tiny_config(*common, "name=stopped", "train.resume=auto")).fit()
    assert resumed.steps == straight.steps
    a = read_checkpoint(straight.last_checkpoint)
    b = read_checkpoint(resumed.last_checkpoint)
    _states_equal(a["model"], b["model"])  # weights, momentum encoder, queue and pointer
    assert resumed.final_loss == straight.final_loss


def test_training_writes_the_run_directory(tiny_config):
    result = Trainer(tiny_config("name=full")).fit()
    run = result.run_dir
    assert (run / "config.yaml").is_file() and (run / "tensorboard").is_dir()
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"train", "epoch", "knn", "checkpoint"} <= {e["event"] for e in events}
    knn = [e["knn_top1"] for e in events if e["event"] == "knn"]
    # the monitor's figure is a share of the 48 test images, and the last one is the run's result
    assert len(knn) == 2 and knn[-1] == result.knn_top1
    assert all(v * 48 / 100 == pytest.approx(round(v * 48 / 100)) for v in knn)
    assert result.best_checkpoint.is_file()
    model, cfg = load_model(result.last_checkpoint)
    assert cfg.model.dim == 8 and not model.training
    # the checkpoint is a plain dict that loads without unpickling objects
    state = torch.load(result.last_checkpoint, weights_only=True)
    assert "queue" in state["model"] and "queue_ptr" in state["model"]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_config, monkeypatch):
    cfg = tiny_config("optim.epochs=3", "train.checkpoint_every=1", "train.knn_every=0", "name=nan")
    from contrastlab.methods.moco import MoCo

    original = MoCo.forward
    calls = {"n": 0}

    def poisoned(self, views, epoch=0):
        out = original(self, views, epoch)
        calls["n"] += 1
        if epoch == 1:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(MoCo, "forward", poisoned)
    last = cfg.run_dir / "checkpoints" / "last.pt"
    with pytest.raises(TrainingDiverged, match="intact"):
        Trainer(cfg).fit()
    assert read_checkpoint(last)["epoch"] == 1  # epoch 1 is saved, nothing from the bad epoch
    assert not list(last.parent.glob(".*tmp*"))


def test_resuming_with_a_different_model_says_what_differs(tiny_config):
    Trainer(tiny_config("optim.epochs=1", "train.knn_every=0", "name=a")).fit()
    with pytest.raises(UserError, match=r"model.dim: checkpoint 8, now 16"):
        Trainer(tiny_config("optim.epochs=2", "name=a", "model.dim=16", "train.resume=auto")).fit()


def test_resuming_with_changed_settings_says_so_and_keeps_the_old_values(tiny_config, capsys):
    first = Trainer(tiny_config("optim.epochs=1", "train.knn_every=0", "name=c"))
    first.fit()
    capsys.readouterr()
    again = tiny_config(
        "optim.epochs=2",
        "train.knn_every=0",
        "name=c",
        "optim.lr=0.5",
        "seed=3",
        "train.channels_last=false",
        "train.resume=auto",
    )
    Trainer(again).fit()
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if "changed settings" in line]
    assert len(warning) == 1, err
    assert "optim.lr" in warning[0] and "-> 0.5" in warning[0] and "seed 0 -> 3" in warning[0]
    # as YAML spells them, not Python's None -> False
    assert "train.channels_last null -> false" in warning[0]
    assert "train.resume" not in warning[0]
    # the cosine schedule of the new length and lr: said with the learning rate it resumes at
    assert "optim.epochs 1 -> 2" in warning[0] and "recomputed for 2 epochs" in warning[0]
    events = [json.loads(x) for x in (again.run_dir / "metrics.jsonl").read_text().splitlines()]
    resume = next(e for e in events if e["event"] == "resume")
    assert resume["changed"]["seed"] == [0, 3] and resume["changed"]["optim.epochs"] == [1, 2]
    assert resume["changed"]["optim.lr"][1] == 0.5
    # config.yaml holds the new values, and says so: it used to read as the whole run's settings
    saved = (again.run_dir / "config.yaml").read_text()
    assert yaml.safe_load(saved)["optim"]["lr"] == 0.5
    header = [line for line in saved.splitlines() if line.startswith("#")]
    assert "resumed with changed settings" in header[0]
    assert header[2].startswith("# resumed after epoch 1") and "seed 0 -> 3" in header[2]


def test_a_resume_that_only_trains_longer_leaves_config_yaml_without_a_history(tiny_config, capsys):
    """Raising optim.epochs of a step schedule is the documented way to train longer: the steps
    already trained had the new schedule's learning rates, so nothing is warned about and
    config.yaml stays plain YAML."""
    step = ["optim.schedule=step", "optim.milestones=[1]", "train.knn_every=0", "name=d"]
    Trainer(tiny_config("optim.epochs=1", *step)).fit()
    capsys.readouterr()
    again = tiny_config("optim.epochs=2", *step, "train.resume=auto")
    Trainer(again).fit()
    assert "changed settings" not in capsys.readouterr().err
    assert "#" not in (again.run_dir / "config.yaml").read_text()


def test_a_longer_cosine_schedule_on_resume_says_the_learning_rate_jumps(tiny_config, capsys):
    """optim.epochs 1 -> 2 recomputes the cosine: the learning rate goes from the end of the
    1-epoch cosine (0) back up to the middle of the 2-epoch one (lr / 2), which used to go
    unsaid; the resume says so, and config.yaml's history keeps the earlier length."""
    common = ["train.knn_every=0", "name=cos", "optim.lr=0.1", "optim.warmup_epochs=0"]
    Trainer(tiny_config("optim.epochs=1", *common)).fit()
    capsys.readouterr()
    again = tiny_config("optim.epochs=2", *common, "train.resume=auto")
    Trainer(again).fit()
    warning = [x for x in capsys.readouterr().err.splitlines() if "changed settings" in x]
    assert len(warning) == 1
    assert "optim.epochs 1 -> 2: the cosine schedule is recomputed for 2 epochs" in warning[0]
    assert "goes up from 0 to 0.05 at this resume, the start of epoch 2" in warning[0]
    events = [json.loads(x) for x in (again.run_dir / "metrics.jsonl").read_text().splitlines()]
    at = next(i for i, e in enumerate(events) if e["event"] == "resume")
    before = [e["lr"] for e in events[:at] if e["event"] == "train"]
    after = [e["lr"] for e in events[at:] if e["event"] == "train"]
    assert after[0] > before[-1]  # the jump the warning announces
    assert "optim.epochs 1 -> 2" in (again.run_dir / "config.yaml").read_text()


@pytest.mark.parametrize(
    ("changed", "progress", "warmup", "said"),
    [
        (
            {"optim.epochs": [3, 5]},
            3.0,
            0,
            "goes up from 0 to 0.01036 at this resume, the start of epoch 4",
        ),
        ({"optim.epochs": [5, 3]}, 2.0, 0, "goes down from 0.01964 to 0.0075"),
        ({"optim.warmup_epochs": [0, 2]}, 3.0, 2, "the learning-rate schedule changes"),
        ({"optim.epochs": [3, 5]}, 0.5, 1, None),  # inside the warm-up: a fresh run's rates
        ({"optim.epochs": [5, 3]}, 2.5, 0, "partway through epoch 3"),
    ],
)
def test_a_schedule_change_on_resume_says_the_learning_rate_it_resumes_at(
    changed, progress, warmup, said
):
    from contrastlab.config import Config
    from contrastlab.train import schedule_change

    cfg = Config()
    cfg.optim.lr, cfg.optim.epochs, cfg.optim.warmup_epochs = 0.03, 5, warmup
    if "optim.epochs" in changed:
        cfg.optim.epochs = changed["optim.epochs"][1]
    text = schedule_change(cfg, changed, progress)
    assert text is None if said is None else said in text


def test_a_schedule_change_keeping_the_rate_says_it_stays_with_lists_in_brackets():
    """Step milestones [1] -> [2] resumed at epoch 2 (printed 3 of 3): 0.003 under both
    schedules, said in one phrase, with the lists as YAML writes them."""
    from contrastlab.config import Config
    from contrastlab.train import schedule_change

    cfg = Config()
    cfg.optim.lr, cfg.optim.epochs, cfg.optim.schedule, cfg.optim.warmup_epochs = 0.03, 3, "step", 0
    cfg.optim.milestones = [2]
    text = schedule_change(cfg, {"optim.milestones": [[1], [2]]}, 2.0)
    assert text.startswith("optim.milestones [1] -> [2]: the learning-rate schedule changes; ")
    assert "the learning rate stays at 0.003 at this resume, the start of epoch 3, and" in text
    assert "goes" not in text


def test_a_changed_knn_monitor_on_resume_says_best_pt_compares_with_the_old_best(
    tiny_config, capsys
):
    """train.knn_k and the other monitor keys change what knn_val_top1 measures, against which
    best.pt's earlier best is kept: once there is a best, the resume says so."""
    common = ["optim.schedule=step", "train.knn_every=1", "name=mon"]
    Trainer(tiny_config("optim.epochs=1", *common)).fit()
    capsys.readouterr()
    Trainer(tiny_config("optim.epochs=2", *common, "train.knn_k=3", "train.resume=auto")).fit()
    warning = [x for x in capsys.readouterr().err.splitlines() if "changed settings" in x]
    assert len(warning) == 1 and "train.knn_k " in warning[0] and "-> 3:" in warning[0]
    assert "best.pt is replaced only by an epoch reaching the earlier best" in warning[0]


def test_an_existing_run_is_not_overwritten_by_accident(tiny_config):
    Trainer(tiny_config("optim.epochs=1", "train.knn_every=0", "name=b")).fit()
    with pytest.raises(UserError, match="train.resume=auto"):
        Trainer(tiny_config("optim.epochs=1", "name=b")).fit()


def test_learning_rate_schedules(tiny_config):
    cfg = tiny_config("optim.epochs=10", "optim.lr=1.0", "optim.warmup_epochs=2")
    assert learning_rate(cfg, 0.0) == 0.0
    assert learning_rate(cfg, 1.0) == pytest.approx(0.5)
    assert learning_rate(cfg, 2.0) == pytest.approx(1.0)
    assert learning_rate(cfg, 10.0) == pytest.approx(0.0, abs=1e-12)
    step = tiny_config(
        "optim.epochs=10", "optim.lr=1.0", "optim.schedule=step", "optim.milestones=[4,8]"
    )
    assert [learning_rate(step, e) for e in (0, 4, 8.5)] == pytest.approx([1.0, 0.1, 0.01])


def test_bf16_autocast_on_cpu(tiny_config):
    """train.amp=true runs the CPU step under bf16 autocast; weights and queue stay float32."""
    common = ["optim.epochs=1", "train.knn_every=0"]
    fp32 = Trainer(tiny_config(*common, "name=fp32")).fit()
    bf16 = Trainer(tiny_config(*common, "name=bf16", "train.amp=true")).fit()
    assert bf16.steps == fp32.steps
    assert torch.isfinite(torch.tensor(bf16.final_loss))
    assert bf16.final_loss != fp32.final_loss  # bf16 arithmetic was used
    assert bf16.final_loss == pytest.approx(fp32.final_loss, rel=0.05)
    state = read_checkpoint(bf16.last_checkpoint)["model"]
    assert all(t.dtype != torch.bfloat16 for t in state.values())
    assert state["queue"].dtype == torch.float32


def test_keep_every_keeps_snapshots_of_those_epochs(tiny_config):
    result = Trainer(
        tiny_config(
            "optim.epochs=3", "train.checkpoint_every=5", "train.keep_every=2", "train.knn_every=0"
        )
    ).fit()
    kept = sorted(p.name for p in result.run_dir.glob("checkpoints/epoch-*.pt"))
    assert kept == ["epoch-0002.pt"]
    snapshot = read_checkpoint(result.run_dir / "checkpoints" / "epoch-0002.pt")
    assert snapshot["epoch"] == 2 and snapshot["step"] == 12
    assert read_checkpoint(result.last_checkpoint)["epoch"] == 3
    # each kept snapshot is a checkpoint event of metrics.jsonl, with its path, epoch and step
    events = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()]
    paths = [e["path"] for e in events if e["event"] == "checkpoint" and e.get("path")]
    assert str(result.run_dir / "checkpoints" / "epoch-0002.pt") in paths
    (kept,) = [e for e in events if e["event"] == "checkpoint" and e.get("kept")]
    assert (kept["epoch"], kept["step"], kept["best"]) == (2, 12, False)


def test_on_a_terminal_each_epoch_still_prints_its_line(tiny_config, monkeypatch, capsys):
    """The bar (leave=False) is erased each epoch: the results used to vanish from the screen."""
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    Trainer(tiny_config("optim.epochs=2", "train.knn_every=1", "train.progress=true")).fit()
    captured = capsys.readouterr()
    assert "epoch 1/2" in captured.err  # the bar was shown
    assert "a bar and a line per epoch" in captured.out
    for number in (1, 2):
        (line,) = [x for x in captured.out.splitlines() if x.startswith(f"epoch {number} of 2:")]
        assert "kNN top-1 " in line


def test_a_kept_snapshot_rewritten_after_the_monitor_is_logged_once(tiny_config):
    """The snapshot is written before the kNN monitor and again with its figures: one event."""
    cfg = tiny_config(
        "optim.epochs=4", "train.checkpoint_every=3", "train.knn_every=2", "train.keep_every=2"
    )
    result = Trainer(cfg).fit()
    events = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()]
    kept = [e["path"] for e in events if e["event"] == "checkpoint" and e.get("kept")]
    folder = result.run_dir / "checkpoints"
    assert kept == [str(folder / "epoch-0002.pt"), str(folder / "epoch-0004.pt")]
    snapshot = read_checkpoint(folder / "epoch-0002.pt")
    assert "knn_top1" in snapshot["metrics"] and not snapshot.get("monitor_pending")


def test_a_best_checkpoint_written_alone_is_logged_with_its_path(tiny_config):
    """The monitor of an epoch without a save writes best.pt only: its event names that file."""
    result = Trainer(
        tiny_config("optim.epochs=2", "train.checkpoint_every=5", "train.knn_every=1")
    ).fit()
    events = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()]
    first = [e for e in events if e["event"] == "checkpoint" and e["epoch"] == 1]
    assert first and all(e["best"] for e in first)
    assert {e["path"] for e in first} == {str(result.run_dir / "checkpoints" / "best.pt")}


def test_a_best_checkpoint_written_beside_last_is_named_in_its_event(tiny_config):
    """An epoch that saves last.pt and improves the monitor writes best.pt too: its event said
    ``"path": ".../last.pt", "best": true`` and named no best.pt, which read as the wrong file."""
    result = Trainer(
        tiny_config("optim.epochs=1", "train.checkpoint_every=1", "train.knn_every=1")
    ).fit()
    events = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()]
    (saved,) = [e for e in events if e["event"] == "checkpoint" and e["best"]]
    folder = result.run_dir / "checkpoints"
    assert saved["path"] == str(folder / "last.pt")
    assert saved["best_path"] == str(folder / "best.pt") and (folder / "best.pt").is_file()


def test_a_single_class_makes_the_monitor_warn(tmp_path, capsys):
    from helpers import TINY, overriding
    from PIL import Image

    from contrastlab.config import load_config

    for split in ("train", "test"):
        folder = tmp_path / "one" / split / "only"
        folder.mkdir(parents=True)
        for i in range(20):
            Image.new("RGB", (16, 16), (10 * i, 40, 90)).save(folder / f"{i}.png")
    overrides = ["dataset=imagefolder", f"data.path={tmp_path / 'one'}", "optim.epochs=1"]
    cfg = load_config("moco_v2_cifar", [*overriding(TINY, *overrides), f"out_dir={tmp_path}"])
    Trainer(cfg)
    err = capsys.readouterr().err
    assert "single class, so the kNN monitor reads 100% by construction" in err


def test_a_per_process_batch_norm_group_of_one_is_refused_before_work(tiny_config, monkeypatch):
    """batch 8 with 4 splits is fine in one process, one sample per group over two processes."""
    from contrastlab import distributed
    from contrastlab.errors import UserError
    from contrastlab.train import Trainer

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    cfg = tiny_config("optim.batch_size=8", "model.bn_splits=4", "name=bn1")
    with pytest.raises(UserError, match="gives batch norm 1 sample per group"):
        Trainer(cfg)
    assert not cfg.run_dir.exists()


@pytest.mark.parametrize("native", [False, True])
def test_bf16_autocast_on_a_cpu_without_bf16_instructions_warns(
    tiny_config, monkeypatch, capsys, native
):
    """It ran, emulated and slower than float32, without a word."""
    import contrastlab.train as train

    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: native)
    Trainer(tiny_config("train.amp=true"))
    err = capsys.readouterr().err
    assert ("train.amp=true on a CPU without bf16 instructions" in err) == (not native)
    if not native:  # presets set train.amp=true (moco_v2_cifar_cpu): leaving it out keeps it
        assert "set train.amp=false on this machine" in err


def test_a_flat_folder_trains_on_every_image_and_says_the_monitor_is_off(
    tiny_config, tmp_path, capsys
):
    """Without class folders nothing can use a held-out part (10% of the images were held
    back), the kNN monitor was off without a word, and the last save was logged twice."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "flat"
    folder.mkdir()
    for i in range(48):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    cfg = tiny_config("dataset=imagefolder", f"data.path={folder}", "optim.epochs=1")
    result = Trainer(cfg).fit()
    assert "the training images carry no class labels" in capsys.readouterr().err
    assert result.steps == 3  # every image: 3 batches of 16 from 48 (2 from the 43 kept before)
    events = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["path"].rsplit("/", 1)[-1] for e in events if e["event"] == "checkpoint"] == [
        "last.pt"
    ]
    assert not read_checkpoint(result.last_checkpoint).get("monitor_pending")


@pytest.mark.parametrize(
    "views, workers, line, event",
    [
        (
            "batched",
            1,
            "views: batched on cpu, images decoded lazily by 1 worker;",
            {"views": "batched", "images": "lazy", "workers": 1, "views_compiled": False},
        ),
        (
            "per_image",
            0,
            "views: per_image on cpu, images decoded lazily in the main process;",
            {"views": "per_image", "images": "lazy", "workers": 0},
        ),
    ],
)
def test_the_start_line_and_event_say_which_views_path_ran(
    tiny_config, tmp_path, capsys, views, workers, line, event
):
    """Both paths printed only the final line, and the start event named neither."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(32):  # larger than 96 px: decoded from the files as batches are drawn
        folder = tmp_path / "big" / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        image = rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)
        Image.fromarray(image).save(folder / f"{i}.png")
    cfg = tiny_config(
        "dataset=imagefolder",
        f"data.path={tmp_path / 'big'}",
        "data.image_size=16",
        f"data.views={views}",
        f"data.num_workers={workers}",
        "optim.epochs=1",
        "train.max_steps_per_epoch=1",
        "train.knn_every=0",
        "train.progress=false",
        f"name={views}",
    )
    Trainer(cfg).fit()
    out = capsys.readouterr().out
    start = f"training {views}: epoch 1 of 1 (1 step each) on cpu, 1 process, batch 16 per step;"
    assert f"{start} {line} a line per epoch" in out, out
    events = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    start = next(e for e in events if e["event"] == "start")
    assert event.items() <= start.items(), start


def test_images_held_in_memory_are_named_so(tiny_config, capsys):
    cfg = tiny_config("optim.epochs=1", "train.max_steps_per_epoch=1", "train.knn_every=0")
    Trainer(cfg).fit()
    assert "views: batched on cpu, images held in memory;" in capsys.readouterr().out
    events = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    start = next(e for e in events if e["event"] == "start")
    assert start["images"] == "in_memory" and start["workers"] == 0


def test_train_validates_a_config_built_in_python(tmp_path):
    from contrastlab.config import Config
    from contrastlab.train import train

    cfg = Config(out_dir=str(tmp_path / "runs"), name="py")
    cfg.moco.queue_size = -5
    with pytest.raises(UserError, match=r"moco.queue_size must be an integer in \[1, 4194304\]"):
        train(cfg)
    assert not (tmp_path / "runs").exists()  # refused before anything was made


def test_every_training_step_runs_in_training_mode(tiny_config, monkeypatch):
    """A method's forward in eval mode changes nothing (no momentum update, no enqueue): the
    trainer must switch back to training mode after the kNN monitor, which evaluates in eval
    mode, or the following epochs would not train the key encoder and the queue."""
    from contrastlab.methods.moco import MoCo

    modes = []
    original = MoCo.forward

    def recording(self, views, epoch=0):
        modes.append(self.training)
        return original(self, views, epoch)

    monkeypatch.setattr(MoCo, "forward", recording)
    result = Trainer(tiny_config("optim.epochs=3", "train.knn_every=1", "name=modes")).fit()
    assert len(modes) == result.steps and all(modes)
    state = read_checkpoint(result.last_checkpoint)["model"]
    assert int(state["queue_ptr"]) == result.steps * 16 % 40  # every step enqueued its keys


def test_a_resume_warns_about_the_train_settings_that_change_what_is_trained(tiny_config, capsys):
    """Only the train.* settings of monitoring, checkpoints and display go unwarned (every
    train.* key did, train.max_steps_per_epoch and train.amp included)."""
    Trainer(tiny_config("optim.epochs=1", "train.knn_every=0", "name=t")).fit()
    capsys.readouterr()
    again = tiny_config(
        "optim.epochs=2",
        "name=t",
        "train.max_steps_per_epoch=2",
        "train.amp=false",
        "train.channels_last=false",
        "train.knn_every=1",
        "train.knn_k=3",
        "train.log_every=1",
        "train.checkpoint_minutes=5",
        "train.keep_freed_memory=false",
        "train.resume=auto",
    )
    Trainer(again).fit()
    warning = [x for x in capsys.readouterr().err.splitlines() if "changed settings" in x]
    assert len(warning) == 1
    for key in ("train.max_steps_per_epoch", "train.amp", "train.channels_last"):
        assert key in warning[0]
    for key in ("knn_", "log_every", "checkpoint_minutes", "keep_freed_memory"):
        assert key not in warning[0]
    # and config.yaml says that its values of these were not the earlier part's
    assert "train.max_steps_per_epoch" in (again.run_dir / "config.yaml").read_text()


def test_feature_transformation_lambdas_are_logged_per_epoch(tiny_config, capsys, monkeypatch):
    """The λ drawn each step (FTOutput.log_values, which the docs point to) reached neither
    metrics.jsonl nor TensorBoard; and the start line said neither how many processes trained
    nor that ft.start_epoch=1 means the second of the epochs it prints."""
    from torch.utils.tensorboard import SummaryWriter

    from contrastlab.methods.moco import MoCo

    drawn, tags = [], []
    forward, add_scalar = MoCo.forward, SummaryWriter.add_scalar

    def recording(self, views, epoch=0):
        out = forward(self, views, epoch)
        drawn.append((epoch, {k: v.item() for k, v in out.ft.items()}))
        return out

    monkeypatch.setattr(MoCo, "forward", recording)
    monkeypatch.setattr(
        SummaryWriter,
        "add_scalar",
        lambda w, tag, *a, **k: tags.append(tag) or add_scalar(w, tag, *a, **k),
    )
    ft = ["ft.pos=extrapolate", "ft.neg=interpolate", "ft.start_epoch=1"]
    cfg = tiny_config(*ft, "optim.epochs=2", "train.max_steps_per_epoch=3", "train.knn_every=0")
    Trainer(cfg).fit()
    out = capsys.readouterr().out
    assert "on cpu, 1 process, batch 16 per step;" in out
    assert "Feature Transformation from epoch 2 (ft.start_epoch=1 counts from 0);" in out
    events = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [e for e in events if e["event"] == "ft"]
    assert [e["epoch"] for e in logged] == [2]  # off in the first epoch: nothing to log
    assert all(not d for e, d in drawn if e == 0) and len(drawn) == 6
    second = [d for e, d in drawn if e == 1]
    for side, (low, high) in (("lam_pos", (1, 2)), ("lam_neg", (0, 1))):
        mean = sum(d[f"ft/{side}"] for d in second) / len(second)
        assert logged[0][side] == pytest.approx(mean) and low <= logged[0][side] <= high
    assert {"ft/lam_pos", "ft/lam_neg"} <= set(tags)
    # Feature Transformation off: no λ, no ft event, and the start line says nothing of it
    capsys.readouterr()
    off = tiny_config(
        "optim.epochs=1", "train.max_steps_per_epoch=1", "train.knn_every=0", "name=off"
    )
    Trainer(off).fit()
    assert "Feature Transformation" not in capsys.readouterr().out
    assert '"event": "ft"' not in (off.run_dir / "metrics.jsonl").read_text()


# ----------------------------------------------------------------------------------------------
# No host synchronisation inside an epoch
# ----------------------------------------------------------------------------------------------

_ATEN = torch.ops.aten
# Ops that read a device tensor's values on the host (on CUDA the host waits for the device):
# .item() / float() / bool(), data-dependent output sizes, value comparisons.
_HOST_READS = {
    _ATEN._local_scalar_dense.default,
    _ATEN.nonzero.default,
    _ATEN.masked_select.default,
    _ATEN.is_nonzero.default,
    _ATEN.equal.default,
    _ATEN._unique2.default,
    _ATEN.unique_dim.default,
    _ATEN.unique_consecutive.default,
    _ATEN.repeat_interleave.Tensor,
}


class _HostReads(TorchDispatchMode):
    """Records every op that reads values back to the host, and each optimizer step."""

    def __init__(self):
        super().__init__()
        self.events: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        boolean_index = func in (_ATEN.index.Tensor, _ATEN.index_put_.default) and any(
            isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in args[1]
        )
        if func in _HOST_READS or boolean_index:
            self.events.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    "settings",
    [
        ["augment.blur=true", "moco.symmetric=true"],
        ["ft.pos=extrapolate", "ft.neg=interpolate", "ft.granularity=sample"],
        [
            "method=looc",
            "looc.augmentations=[color,rotation,texture]",
            "looc.plus_plus=true",
            "train.knn_space=z0",
        ],
    ],
    ids=["moco_v2-blur-symmetric", "ft", "looc++"],
)
def test_training_steps_never_read_values_back_to_the_host(tiny_config, settings):
    """On CUDA a read of a device value (``.item()``, ``nonzero``, a boolean mask) makes the host
    wait for the device at every step. The steps of an epoch (batched views, the model, loss,
    score recording, optimizer) read nothing back: only the epoch's end does (the logged mean
    loss, the epoch's loss, FT's mean λ). Checked on the CPU by recording the ops dispatched."""
    trainer = Trainer(tiny_config("train.log_every=1000", *settings))
    recorder = _HostReads()
    step = trainer.optimizer.step

    def marked_step(*args, **kwargs):
        out = step(*args, **kwargs)
        recorder.events.append("optimizer step")
        return out

    trainer.optimizer.step = marked_step
    with recorder:
        trainer.train_epoch(0)
    *steps, end = "|".join(recorder.events).split("optimizer step")
    assert len(steps) == trainer.steps_per_epoch
    assert all(s.strip("|") == "" for s in steps), steps
    assert end.strip("|")  # the epoch's end reads its mean loss: the recorder sees host reads


def test_train_threads_sets_the_cpu_threads_and_the_start_event_records_them(tiny_config):
    """On a CPU shared with other processes, torch's threads (one per core) wait for each other
    at every op: train.threads=1 runs the same training several times faster there
    (docs/benchmarks.md, threads). Without it, torch's own number stays."""
    before = torch.get_num_threads()
    seen = []
    try:
        cfg = tiny_config("optim.epochs=1", "train.knn_every=0", "train.threads=1", "name=one")
        trainer = Trainer(cfg)
        original = trainer.train_epoch

        def epoch(e):
            seen.append(torch.get_num_threads())
            return original(e)

        trainer.train_epoch = epoch
        trainer.fit()
    finally:
        torch.set_num_threads(before)
    assert seen == [1]
    events = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").open()]
    (start,) = [e for e in events if e["event"] == "start"]
    assert start["threads"] == 1
    cfg = tiny_config("optim.epochs=1", "train.knn_every=0", "name=default")
    Trainer(cfg).fit()
    assert torch.get_num_threads() == before
    events = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").open()]
    assert [e["threads"] for e in events if e["event"] == "start"] == [before]


@pytest.mark.parametrize(
    "capability, expected",
    [("AVX512", True), ("AVX512_BF16", True), ("AVX2", False), ("DEFAULT", False)],
)
def test_channels_last_by_default_only_on_cpus_with_avx512(
    tiny_config, monkeypatch, capsys, capability, expected
):
    """On an AVX2-only CPU oneDNN's channels-last convolution backward hung or crashed the tiny
    model's step (docs/benchmarks.md): there train.channels_last=null trains in NCHW, and an
    explicit true is warned about."""
    from contrastlab.train import default_channels_last

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert default_channels_last(torch.device("cpu")) is expected
    assert default_channels_last(torch.device("cuda")) is True
    cfg = tiny_config("optim.epochs=1", "train.knn_every=0", "train.max_steps_per_epoch=1")
    trainer = Trainer(cfg)
    assert trainer.channels_last is expected
    conv = trainer.method.encoder_q.backbone.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) is expected
    assert "train.channels_last=true on a CPU without AVX-512" not in capsys.readouterr().err
    trainer.lock.release()
    Trainer(tiny_config("train.channels_last=true", "name=explicit")).lock.release()
    warned = "train.channels_last=true on a CPU without AVX-512" in capsys.readouterr().err
    assert warned is not expected
