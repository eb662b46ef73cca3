"""Durable checkpoints and the run directory: damage, full disks, locks, names, old files."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from contrastlab.checkpoint import load_model, read_checkpoint, save_checkpoint
from contrastlab.cli import main
from contrastlab.errors import TrainingDiverged, UserError
from contrastlab.train import Trainer

# the monitor decides best.pt; a step schedule, so that resuming with a larger optim.epochs
# changes no trained step's learning rate and is not warned about (a cosine one is)
STEP = ("optim.schedule=step", "optim.milestones=[1]")
ONE = ["optim.epochs=1", "train.knn_every=1", *STEP]


@pytest.fixture
def trained(tiny_config):
    """A finished one-epoch run: (its config overrides, its result)."""
    result = Trainer(tiny_config(*ONE, "name=done")).fit()
    return result


def _no_temps(folder) -> bool:
    return not [p for p in folder.rglob("*") if ".tmp" in p.name or p.name.startswith(".probe")]


# -- reading checkpoints ---------------------------------------------------------------------------


def test_a_flipped_byte_in_a_checkpoint_is_reported(trained):
    path = trained.last_checkpoint
    queue = read_checkpoint(path)["model"]["queue"]
    data = bytearray(path.read_bytes())
    at = bytes(data).find(queue.numpy().tobytes()[:64])
    assert at > 0
    data[at + 3] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"last.pt is damaged: its contents do not match"):
        read_checkpoint(path)


def test_pickled_objects_are_refused_without_weights_only_advice(tmp_path, capsys):
    import argparse

    path = tmp_path / "evil.pt"
    torch.save({"format": "contrastlab-checkpoint-v1", "x": argparse.Namespace(a=1)}, path)
    code = main(["export", str(path), "--out", str(tmp_path / "b.pt")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "holds pickled Python objects" in err and "weights_only" not in err


@pytest.mark.parametrize("content", [b"not a checkpoint\n", b"\x00\x01binary junk" * 10])
def test_a_file_that_is_no_torch_file_is_not_called_pickled_objects(tmp_path, capsys, content):
    path = tmp_path / "notes.pt"
    path.write_bytes(content)
    code = main(["eval", "knn", str(path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "is not a PyTorch checkpoint" in err or "cannot read checkpoint" in err
    assert "pickled" not in err


def _damaged_files(tmp_path):
    """One file (or folder) of each kind that torch.load cannot read, and the phrase it gets."""
    good = tmp_path / "good.pt"
    torch.save({"model": {"w": torch.randn(64, 64)}}, good)
    data = good.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "cut_end.pt").write_bytes(data[:-40])
    (tmp_path / "empty.pt").write_bytes(b"")
    with zipfile.ZipFile(tmp_path / "archive.pt", "w") as z:
        z.writestr("notes.txt", "a zip archive, but not one torch.save wrote")
    (tmp_path / "folder.pt").mkdir()
    return {
        "cut.pt": "is cut short",
        "cut_end.pt": "is cut short",
        "empty.pt": "is empty (0 bytes)",
        "archive.pt": "is not a PyTorch checkpoint",
        "folder.pt": "is a folder, not a checkpoint file",
    }


@pytest.mark.parametrize("command", ["eval", "convert"])
def test_each_kind_of_unreadable_file_gets_its_own_one_line_error(tmp_path, capsys, command):
    for name, phrase in _damaged_files(tmp_path).items():
        path = tmp_path / name
        if command == "eval":
            argv = ["eval", "knn", str(path)]
        else:
            argv = ["convert", str(path), "--from", "auto", "--out", str(tmp_path / "out.pt")]
        code = main(argv)
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, (name, err)
        assert phrase in err, (name, err)
        assert "miniz" not in err and "hasRecord" not in err and len(err) < 300, (name, err)
        assert not (tmp_path / "out.pt").exists()


def test_another_projects_state_dict_gets_the_convert_command(tmp_path, capsys):
    import torchvision

    path = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    code = main(["eval", "knn", str(path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    # the layout it recognized, not --from auto: the user learns what the file is
    assert "layout of a torchvision checkpoint" in err
    assert f"contrastlab convert {path} --from torchvision --out r18-contrastlab.pt" in err


def test_a_plain_tensor_is_not_sent_to_convert_which_cannot_read_it(tmp_path, capsys):
    path = tmp_path / "tensor.pt"
    torch.save(torch.ones(3), path)
    assert main(["eval", "knn", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a contrastlab checkpoint" in err
    assert "contrastlab convert tensor.pt" not in err and f"convert {path}" not in err


@pytest.mark.parametrize("missing", ["config", "model"])
def test_a_tagged_checkpoint_without_config_or_model_is_one_line(trained, tmp_path, missing):
    state = torch.load(trained.last_checkpoint, weights_only=True)
    del state[missing]
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    with pytest.raises(
        UserError, match=f"tagged as a contrastlab checkpoint but has no '{missing}"
    ):
        load_model(path)


def test_does_not_fit_names_the_keys_and_shapes(trained):
    from contrastlab.checkpoint import load_model_state
    from contrastlab.config import config_from_dict
    from contrastlab.methods import build_method

    state = read_checkpoint(trained.last_checkpoint)
    data = state["config"]
    data["model"]["dim"] = 16
    model = build_method(config_from_dict(data))
    with pytest.raises(UserError) as info:
        load_model_state(model, state, trained.last_checkpoint)
    text = str(info.value)
    assert "does not fit this model" in text and "queue" in text and "[40, 8]" in text
    assert "[40, 16]" in text and len(text.splitlines()) == 1


def test_non_finite_weights_are_refused_on_save_and_load(trained, tmp_path):
    state = torch.load(trained.last_checkpoint, weights_only=True)
    key = next(k for k in state["model"] if k.endswith("running_var"))
    state["model"][key][0] = float("inf")
    with pytest.raises(TrainingDiverged, match=key.replace(".", r"\.")):
        save_checkpoint(tmp_path / "x.pt", state)
    assert not (tmp_path / "x.pt").exists() and _no_temps(tmp_path)
    torch.save({k: v for k, v in state.items() if k != "checksum"}, tmp_path / "y.pt")
    with pytest.raises(UserError, match="NaN or infinite"):
        load_model(tmp_path / "y.pt")


def test_a_diverged_buffer_is_not_saved_as_the_last_good_checkpoint(tiny_config, monkeypatch):
    from contrastlab.methods.moco import MoCo

    cfg = tiny_config("optim.epochs=2", "train.checkpoint_every=1", "train.knn_every=0", "name=inf")
    original = MoCo.forward

    def forward(self, views, epoch=0):
        out = original(self, views, epoch)
        if epoch == 1:
            for m in self.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_var.fill_(float("inf"))  # the loss stays finite
        return out

    monkeypatch.setattr(MoCo, "forward", forward)
    with pytest.raises(TrainingDiverged, match="intact"):
        Trainer(cfg).fit()
    assert read_checkpoint(cfg.run_dir / "checkpoints" / "last.pt")["epoch"] == 1


# -- writing checkpoints ---------------------------------------------------------------------------


def test_best_is_written_before_last_and_temps_are_removed(tiny_config, monkeypatch):
    cfg = tiny_config(*ONE, "name=order")
    real = os.replace
    renames = []

    def replace(src, dst):
        renames.append(Path(dst).name)
        if renames.count("last.pt") == 2:  # the save after the monitor, killed between renames
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg).fit()
    monkeypatch.undo()
    # last.pt before the monitor (nothing lost if it fails), then best.pt before last.pt
    assert [n for n in renames if n.endswith(".pt")] == ["last.pt", "best.pt", "last.pt"]
    ckpt = cfg.run_dir / "checkpoints"
    assert read_checkpoint(ckpt / "best.pt")["best_metric"] is not None
    assert _no_temps(cfg.run_dir)
    result = Trainer(tiny_config(*ONE, "name=order", "train.resume=auto")).fit()
    assert result.epochs == 1 and result.best_checkpoint.is_file()


def test_stale_temp_files_are_removed_at_start(tiny_config):
    cfg = tiny_config(*ONE, "name=stale")
    ckpt = cfg.run_dir / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / ".last.pt.tmp-99999").write_bytes(b"x" * 1000)
    (cfg.run_dir / "scores").mkdir()
    (cfg.run_dir / "scores" / "hist.npz.tmp").write_bytes(b"x")
    Trainer(cfg).fit()
    assert _no_temps(cfg.run_dir)


def test_a_full_disk_is_one_line_and_keeps_the_checkpoint(trained, monkeypatch, capsys):
    before = trained.last_checkpoint.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    code = main(
        [
            "train",
            "--config",
            "moco_v2_cifar",
            *_tiny(trained),
            "optim.epochs=2",
            "train.resume=auto",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "no space left on device" in err and "intact" in err
    assert trained.last_checkpoint.read_bytes() == before
    assert _no_temps(trained.run_dir)


def test_a_full_disk_inside_torch_save_is_one_line_and_keeps_the_checkpoint(
    trained, monkeypatch, capsys
):
    from helpers import temporary_files, torch_save_on_a_full_disk

    before = trained.last_checkpoint.read_bytes()
    torch_save_on_a_full_disk(monkeypatch)  # RuntimeError("unexpected pos") from the ENOSPC
    code = main(
        ["train", "--config", "moco_v2_cifar", *_tiny(trained), "optim.epochs=2"]
        + ["train.resume=auto"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "no space left on device" in err and "train.resume=auto" in err
    assert trained.last_checkpoint.read_bytes() == before
    assert temporary_files(trained.run_dir) == []


def test_save_checkpoint_on_a_full_disk_raises_disk_full(trained, monkeypatch):
    from helpers import full_disk, temporary_files

    from contrastlab.errors import DiskFull

    state = torch.load(trained.last_checkpoint, weights_only=True)
    before = trained.last_checkpoint.read_bytes()
    full_disk(monkeypatch, room=4096)
    with pytest.raises(DiskFull, match="the previous last.pt is intact"):
        save_checkpoint(trained.last_checkpoint, state)
    assert trained.last_checkpoint.read_bytes() == before
    assert temporary_files(trained.run_dir) == []


def _tiny(result) -> list[str]:
    from helpers import TINY, overriding

    return [
        *overriding(TINY, "train.knn_every=0", *STEP),
        f"out_dir={result.run_dir.parent}",
        "name=done",
    ]


def test_a_damaged_last_checkpoint_falls_back_to_best(tiny_config, capsys):
    run = Trainer(tiny_config(*ONE, "name=fb")).fit()
    data = run.last_checkpoint.read_bytes()
    os.unlink(run.last_checkpoint)  # best.pt is a hard link to the same file: keep it intact
    run.last_checkpoint.write_bytes(data[: len(data) // 2])
    cfg = tiny_config("optim.epochs=2", "train.knn_every=0", "name=fb", *STEP, "train.resume=auto")
    result = Trainer(cfg).fit()
    err = capsys.readouterr().err.strip().splitlines()
    assert len([x for x in err if x.startswith("warning:")]) == 1
    assert "resuming from" in err[-1] and result.epochs == 2


# -- the run directory -----------------------------------------------------------------------------


def test_a_second_process_on_the_same_run_directory_is_refused(tiny_config):
    cfg = tiny_config(*ONE, "name=locked")
    cfg.run_dir.mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (cfg.run_dir / ".contrastlab.lock").write_text(
            f'{{"pid": {sleeper.pid}, "host": "{socket.gethostname()}"}}'
        )
        with pytest.raises(UserError, match=f"in use by process {sleeper.pid}"):
            Trainer(cfg)
    finally:
        sleeper.kill()
        sleeper.wait()
    # the holder is gone: its lock is stale and taken over
    Trainer(cfg).fit()
    assert not (cfg.run_dir / ".contrastlab.lock").exists()


@pytest.mark.parametrize("name", ["..", ".", "/abs", "../../x", "a/../../b", ""])
def test_names_stay_inside_out_dir(tiny_config, name):
    # an empty name= "has no value; give a relative folder name inside out_dir ..."
    with pytest.raises(UserError, match="name(=| must be).* a relative folder name inside out_dir"):
        tiny_config(f"name={name}")


def test_overwrite_deletes_only_what_contrastlab_wrote(trained, tiny_config):
    run = trained.run_dir
    mine = [run / "notes.txt", run / "scores" / "mine.csv", run / "tensorboard" / "keep.txt"]
    for p in mine:
        p.write_text("user data")
    Trainer(tiny_config(*ONE, "name=done", "train.overwrite=true", "scores.record=false")).fit()
    assert all(p.read_text() == "user data" for p in mine)
    assert not list((run / "scores").glob("*.npz"))  # the old run's score files are gone


def test_overwrite_keeps_files_with_a_runs_names_that_contrastlab_did_not_write(
    trained, tiny_config, capsys
):
    run = trained.run_dir
    export = run / "checkpoints" / "epoch-0001.pt"  # a torchvision state dict, not a checkpoint
    torch.save({"conv1.weight": torch.zeros(2, 3, 3, 3)}, export)
    events = run / "tensorboard" / "events.out.tfevents.mine"  # not SummaryWriter's naming
    events.write_bytes(b"another program's events")
    before = {p: p.read_bytes() for p in (export, events)}
    Trainer(tiny_config(*ONE, "name=done", "train.overwrite=true")).fit()
    assert {p: p.read_bytes() for p in (export, events)} == before
    err = capsys.readouterr().err
    assert f"kept {export}: contrastlab did not write it" in err and str(events) in err


@pytest.mark.parametrize("how", [[], ["train.overwrite=true"], ["train.resume=auto"]])
def test_a_folder_of_the_users_with_a_runs_file_names_is_refused(tiny_config, tmp_path, how):
    folder = tmp_path / "runs" / "mine"
    (folder / "scores").mkdir(parents=True)
    files = {
        folder / "config.yaml": "lr: 0.1\n",
        folder / "metrics.jsonl": '{"mine": 1}\n',
        folder / "scores" / "meta.json": "{}",
        folder / "notes.txt": "notes",
    }
    for path, text in files.items():
        path.write_text(text)
    with pytest.raises(UserError, match="is not a contrastlab run directory .* config.yaml"):
        Trainer(tiny_config(*ONE, "name=mine", *how)).fit()
    assert {p: p.read_text() for p in files} == files
    assert sorted(p.name for p in folder.rglob("*")) == sorted(
        ["config.yaml", "metrics.jsonl", "scores", "meta.json", "notes.txt"]
    )


def test_best_without_last_is_not_silently_overwritten(trained, tiny_config):
    best = trained.run_dir / "checkpoints" / "best.pt"
    trained.last_checkpoint.unlink()
    with pytest.raises(UserError, match=rf"best.pt.*train.resume={best}"):
        Trainer(tiny_config(*ONE, "name=done"))


def test_damaged_appended_files_give_one_warning_and_resume(tiny_config, capsys):
    common = ["train.checkpoint_every=1", "train.knn_every=1", "name=dmg", *STEP]
    run = Trainer(tiny_config("optim.epochs=1", *common)).fit().run_dir
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"event": "train", "st')  # cut short by a crash
    (run / "scores" / "hist.npz").write_bytes(b"PK\x03\x04 broken")
    capsys.readouterr()
    Trainer(tiny_config("optim.epochs=2", *common, "train.resume=auto")).fit()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(x.startswith("warning:") for x in err), err
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert sum(1 for x in lines if x.startswith('{"event": "train", "st')) == 1
    from contrastlab.scores import load_histograms

    hists = load_histograms(run)
    assert list(hists.epoch) == [1, 2] and np.all(hists.counts.sum(axis=-1) > 0)


@pytest.mark.parametrize("blocker", ["out_dir", "checkpoints"])
def test_an_unwritable_run_directory_stops_before_any_work(
    tiny_config, tmp_path, monkeypatch, blocker
):
    import contrastlab.train as train_module

    def no_data(*args, **kwargs):
        raise AssertionError("the data set was built before the run directory was checked")

    monkeypatch.setattr(train_module, "build_dataset", no_data)
    if blocker == "out_dir":
        (tmp_path / "file").write_text("x")
        cfg = tiny_config(*ONE, f"out_dir={tmp_path / 'file'}")
    else:
        cfg = tiny_config(*ONE, "name=ro")
        cfg.run_dir.mkdir(parents=True)
        (cfg.run_dir / "checkpoints").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        Trainer(cfg)


@pytest.mark.parametrize(
    "overrides",
    [
        ["method=looc", "moco.symmetric=true"],  # refused when the method is built
        ["dataset=imagefolder", "data.path=/nonexistent/images"],  # refused when data is built
    ],
)
def test_a_run_refused_before_training_leaves_no_folders(tmp_path, capsys, overrides):
    from helpers import TINY, overriding

    out = tmp_path / "deep" / "runs"
    # an image-folder run without the synthetic set's sizes, which would be warned about
    base = [t for t in TINY if "imagefolder" not in str(overrides) or "synthetic_" not in t]
    argv = ["train", "--config", "moco_v2_cifar", *overriding(base, *overrides)]
    argv += [f"out_dir={out}", "name=x"]
    assert main(argv) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "deep").exists()


def test_a_checkpoint_that_cannot_be_replaced_is_refused_before_training(
    trained, tiny_config, monkeypatch
):
    """An immutable last.pt used to fail after an epoch of training, naming the temporary file."""
    last = trained.last_checkpoint
    before = last.read_bytes()
    real_utime = os.utime

    def immutable(path, *args, **kwargs):
        if Path(path) == last:
            raise PermissionError(errno.EPERM, "Operation not permitted", str(path))
        return real_utime(path, *args, **kwargs)

    monkeypatch.setattr(os, "utime", immutable)
    built = []
    monkeypatch.setattr(Trainer, "train_epoch", lambda self, epoch: built.append(epoch))
    cfg = tiny_config("optim.epochs=2", "train.knn_every=1", "name=done", "train.resume=auto")
    with pytest.raises(UserError, match=rf"cannot replace {last}: Operation not permitted"):
        Trainer(cfg).fit()
    assert not built and last.read_bytes() == before


def test_a_missing_data_folder_is_said_before_a_run_directory_clash(tiny_config, tmp_path):
    """A typo in data.path was reported only after the clash with the earlier run was fixed."""
    Trainer(tiny_config("optim.epochs=1", "name=r")).fit()
    cfg = tiny_config(
        "optim.epochs=1", "name=r", "dataset=imagefolder", f"data.path={tmp_path / 'nope'}"
    )
    with pytest.raises(UserError, match="data.path .*nope does not exist"):
        Trainer(cfg)
