"""The command line: one clear error line and a non-zero exit for bad input, no traceback."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import torch

from contrastlab.cli import main
from contrastlab.errors import InterruptedTwice, StopRequested, UserError, plural


@pytest.mark.parametrize(
    "args,expected",
    [
        (["train", "--config", "moco_v3"], "unknown preset 'moco_v3'"),
        (["train", "--config", "moco_v2_cifar", "optim.lrr=0.1"], "unknown config key 'optim.lrr'"),
        (["train", "--config", "moco_v2_cifar", "method=simclr"], "valid values: moco, looc"),
        (["train", "--config", "moco_v2_cifar", "optim.lr=fast"], "optim.lr must be a number"),
        (
            ["train", "--config", "moco_v2_cifar", "moco.momentum=1.5"],
            "moco.momentum must be a number in [0, 1]",
        ),
        (
            ["train", "--config", "moco_v2_cifar", "dataset=imagenet"],
            "valid values: synthetic, cifar10",
        ),
        (["train", "--config", "missing.yaml"], "config file missing.yaml does not exist"),
        (
            ["train", "--config", "moco_v2_cifar", "dataset=imagefolder", "data.path=/no/such/dir"],
            "/no/such/dir",
        ),
        (["train", "--config", "moco_v2_cifar", "lr"], "must look like key=value"),
        (
            ["train", "--config", "demo", "train.resume=auto", "train.overwrite=true"],
            "train.resume=auto and train.overwrite=true contradict each other",
        ),
        (
            ["train", "--config", "demo", "looc.augmentations=[colour]", "method=looc"],
            "got ['colour']: looc.augmentations[0] is 'colour' (did you mean 'color'?)",
        ),
        (
            ["train", "--config", "demo", "--out-dir", "a", "out_dir=b"],
            "--out-dir a and out_dir=b both name the folder",
        ),
        (
            ["train", "--config", "demo", "train.resume=maybe"],
            "train.resume=maybe: no such checkpoint; give the path of a .pt file, or "
            "train.resume=auto",
        ),
    ],
)
def test_bad_input_is_one_error_line(args, expected, capsys, tmp_path):
    code = main([*args, f"out_dir={tmp_path}"] if args[-1] != "lr" else args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert expected in err


def test_warnings_before_an_error_are_single_lines_too(tmp_path):
    """With data.skip_bad_images=true on a folder whose images are all unreadable: one
    ``warning:`` line (how many were skipped) and one ``error:`` line, no file names or source
    lines of Python's warning format."""
    folder = tmp_path / "corrupt" / "a"
    folder.mkdir(parents=True)
    for i in range(3):
        (folder / f"{i}.png").write_bytes(b"\x89PNG broken" * i)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "contrastlab",
            "train",
            "--config",
            "demo",
            "dataset=imagefolder",
            f"data.path={tmp_path / 'corrupt'}",
            "data.skip_bad_images=true",
            f"out_dir={tmp_path / 'runs'}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2
    assert [line.split(":")[0] for line in lines] == ["warning", "error"], proc.stderr


def test_error_from_the_installed_command_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "contrastlab",
            "train",
            "--config",
            "moco_v2_cifar",
            "ft.pos=extrapolat",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "did you mean 'extrapolate'" in proc.stderr


def test_train_command_runs_end_to_end(tmp_path, capsys):
    from helpers import TINY

    code = main(
        [
            "train",
            "--config",
            "moco_v2_cifar",
            *TINY,
            "optim.epochs=1",
            f"out_dir={tmp_path}",
            "name=cli",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "kNN top-1" in out and "% (z, 48 test images)" in out and str(tmp_path / "cli") in out
    assert (tmp_path / "cli" / "config.yaml").is_file()


def test_config_reference_in_docs_is_current():
    from pathlib import Path

    from contrastlab.config import reference_markdown

    doc = (Path(__file__).parents[1] / "docs" / "config.md").read_text()
    assert reference_markdown() in doc, "regenerate the table in docs/config.md (see its header)"


@pytest.mark.parametrize(
    "raised, status, said",
    [
        (InterruptedTwice, 130, "interrupted again while stopping"),
        (KeyboardInterrupt, 130, "stopped by Ctrl-C (SIGINT) outside the training loop"),
        (lambda: StopRequested(signal.SIGTERM), 75, "stopped by SIGTERM outside the training loop"),
    ],
)
def test_a_stop_outside_the_training_steps_says_how_to_resume(
    raised, status, said, monkeypatch, capsys, tmp_path
):
    import contrastlab.train

    def interrupted(cfg):
        raise raised()

    (tmp_path / "x" / "checkpoints").mkdir(parents=True)  # a run with a checkpoint to resume
    (tmp_path / "x" / "checkpoints" / "last.pt").write_bytes(b"a checkpoint")
    monkeypatch.setattr(contrastlab.train, "train", interrupted)
    assert main(["train", "--config", "demo", f"out_dir={tmp_path}", "name=x"]) == status
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and said in err and "train.resume=auto" in err


# main() in a child that says "ready" and then waits inside the argument parser's set-up, where
# a real command imports torch: the signal lands there whatever the machine's speed. Ctrl-C is
# restored to Python's default: a shell starts background jobs (a CI script) with it ignored.
_WAIT_IN_SET_UP = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (not ignored)
import contrastlab.cli as cli
build = cli.build_parser
def slow_build():
    print("ready", flush=True)
    time.sleep(120)
    return build()
cli.build_parser = slow_build
status = cli.main(sys.argv[1:])
print("torch imported:", "torch" in sys.modules)  # the handler must not import it (half-loaded)
sys.exit(status)
"""


@pytest.mark.parametrize(
    "command, sig, status, said",
    [
        ("eval knn none.pt", "SIGTERM", 143, "stopped by SIGTERM"),
        ("eval knn none.pt", "SIGINT", 130, "stopped by Ctrl-C (SIGINT)"),
        ("train --config demo", "SIGTERM", 75, "stopped by SIGTERM outside the training loop"),
        (
            "train --config demo",
            "SIGINT",
            130,
            "stopped by Ctrl-C (SIGINT) outside the training loop",
        ),
    ],
)
def test_a_stop_signal_while_the_command_starts_is_one_line(command, sig, status, said):
    """SIGTERM used to end the command without a word, Ctrl-C with a traceback of the imports;
    a training stopped that early still gets the status that requeues it (75)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _WAIT_IN_SET_UP, *command.split()],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()[-2000:]
    proc.send_signal(getattr(signal, sig))
    out, err = proc.communicate(timeout=120)
    assert out.strip() == "torch imported: False", out
    lines = err.strip().splitlines()
    assert proc.returncode == status and len(lines) == 1 and lines[0].startswith(said), err


def test_a_resumed_run_says_so_and_a_finished_one_trains_nothing(tmp_path, capsys, monkeypatch):
    from helpers import TINY

    base = ["train", "--config", "moco_v2_cifar", *TINY, f"out_dir={tmp_path}", "name=r"]
    base += ["train.knn_every=0"]
    assert main([*base, "optim.epochs=1"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("training r: epoch 1 of 1 (")  # the start line, then the summary
    assert first.splitlines()[-2].startswith("trained 1 epoch (") and "resumed from" not in first

    assert main([*base, "optim.epochs=2", "train.resume=auto"]) == 0
    out = capsys.readouterr().out.splitlines()[-2]
    last = tmp_path / "r" / "checkpoints" / "last.pt"
    assert out.startswith(f"resumed from {last} at step ") and "(in epoch 2);" in out
    assert "trained to epoch 2 (1 more," in out and "final loss nan" not in out

    import contrastlab.train

    def no_data(*args, **kwargs):
        raise AssertionError("a finished run built its data")

    monkeypatch.setattr(contrastlab.train, "build_dataset", no_data)
    assert main([*base, "optim.epochs=2", "train.resume=auto"]) == 0
    out = capsys.readouterr().out.splitlines()[-2]
    assert out.startswith(f"nothing to train: {last} already holds 2 epochs (all of optim")
    assert "larger optim.epochs" in out
    assert main([*base, "optim.epochs=1", "train.resume=auto"]) == 0
    assert "2 epochs (more than optim.epochs=1)" in capsys.readouterr().out

    # a finished checkpoint of another model is refused, not reported as nothing to train,
    # and the new run's folder is not left behind
    other = [*base[:-3], "model.width=0.125", "optim.epochs=2", f"out_dir={tmp_path}"]
    assert main([*other, "name=wider", f"train.resume={last}"]) == 2
    assert "comes from a different model" in capsys.readouterr().err
    assert main([*base[:-2], f"out_dir={tmp_path}", "name=copy", f"train.resume={last}"]) == 0
    assert not (tmp_path / "copy").exists() and not (tmp_path / "wider").exists()
    # the printed run directory is the one holding the results, not the folder never created
    said = capsys.readouterr().out.splitlines()[-1]
    assert said == (
        f"run directory: {tmp_path / 'r'} (the checkpoint's run; nothing was written to "
        f"{tmp_path / 'copy'})"
    )


def _resnet18_source(tmp_path):
    import torchvision

    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def test_a_full_disk_outside_training_says_to_run_the_command_again(tmp_path, capsys, monkeypatch):
    import errno
    import os

    source = _resnet18_source(tmp_path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    code = main(["convert", str(source), "--out", str(tmp_path / "c.pt")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "no space left on device" in err and "run the command again" in err
    assert "train.resume" not in err and not (tmp_path / "c.pt").exists()


def test_a_refused_file_operation_is_one_line_naming_the_path(tmp_path, capsys, monkeypatch):
    import errno

    source = _resnet18_source(tmp_path)
    target = tmp_path / "c.pt"

    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(target))

    import contrastlab.checkpoint

    monkeypatch.setattr(contrastlab.checkpoint, "durable_write", refused)
    code = main(["convert", str(source), "--out", str(target)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert (
        err == f"error: cannot use {target}: Permission denied; check the path and its permissions"
    )


def test_overrides_may_come_before_and_after_the_config(capsys):
    assert main(["config", "optim.epochs=3", "-c", "demo", "name=mixed", "optim.lr=0.1"]) == 0
    out = capsys.readouterr().out
    assert "name: mixed" in out and "epochs: 3" in out and "lr: 0.1" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["export", "x.pt", "--format", "nosuch", "--out", "y.pt"],
        ["eval", "linear", "x.pt", "--fast", "--C", "abc"],
        ["train", "-c", "demo", "--bogus"],
        ["eval", "all", "x.pt", "--bogus"],
        ["nosuch"],
    ],
)
def test_argument_errors_are_one_line(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: contrastlab") and "--help" in err
    if "--bogus" in argv:  # the subcommand's help, not the top level's
        sub = " ".join(a for a in argv[:2] if a in ("train", "eval", "all"))
        assert err.endswith(f"see contrastlab {sub} --help"), err


def test_presets_print_whole_first_sentences(capsys):
    assert main(["presets"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["loocpp_color"].endswith("also what the kNN monitor reads).")
    assert lines["demo"].endswith("on two CPU cores.")


def test_a_lost_torchrun_process_is_one_line_and_status_1(monkeypatch, capsys):
    """gloo's "Connection reset by peer" when another process is killed used to be a traceback."""
    import contrastlab.train
    from contrastlab import distributed

    class Broken:
        def __init__(self, cfg):
            pass

        def fit(self):
            raise RuntimeError(
                "[../gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:29500: "
                "Connection reset by peer"
            )

    monkeypatch.setattr(contrastlab.train, "Trainer", Broken)
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    monkeypatch.setattr(distributed, "shutdown", lambda: None)
    assert main(["train", "--config", "demo"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    # what it says to do: test_a_stop_says_a_checkpoint_to_resume_only_where_one_was_written
    assert "lost another process of this torchrun job" in err and "torchrun command again" in err

    # any other error is left as it is
    class Failing(Broken):
        def fit(self):
            raise RuntimeError("a bug")

    monkeypatch.setattr(contrastlab.train, "Trainer", Failing)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["train", "--config", "demo"])


def test_running_out_of_memory_is_one_line(monkeypatch, capsys):
    import contrastlab.train

    def too_big(cfg):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 549755813888 bytes. Error code 12 (Cannot allocate "
            "memory)"
        )

    monkeypatch.setattr(contrastlab.train, "train", too_big)
    assert main(["train", "--config", "demo"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "out of memory (tried to allocate 512.0 GiB)" in err and "optim.batch_size" in err


class _BrokenImages(torch.utils.data.Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, i):
        if i == 5:
            raise UserError("image 5 is damaged; fix or delete it")
        return torch.zeros(3)


def test_an_error_raised_in_a_data_loading_worker_is_one_line(monkeypatch, capsys):
    """torch re-raises it with the worker's traceback in the message: that was printed whole."""
    import contrastlab.cli as cli

    def load_all(args):
        for _ in torch.utils.data.DataLoader(_BrokenImages(), batch_size=4, num_workers=1):
            pass
        return 0

    monkeypatch.setattr(cli, "_cmd_presets", load_all)
    assert main(["presets"]) == 2
    assert capsys.readouterr().err == "error: image 5 is damaged; fix or delete it\n"


def test_config_takes_the_out_dir_option_of_train(capsys, tmp_path):
    """`config --config demo --out-dir DIR` was refused (unrecognized arguments), though the
    command shows what `train` would use with the same options."""
    import yaml

    assert main(["config", "--config", "demo", "--out-dir", str(tmp_path / "o1")]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["out_dir"] == str(tmp_path / "o1")
    assert main(["config", "--config", "demo", "--out-dir", "a", "out_dir=b"]) == 2
    assert "--out-dir a and out_dir=b both name the folder" in capsys.readouterr().err


def test_config_shows_a_folder_preset_and_what_its_null_keys_come_to(capsys):
    """`config --config moco_v2` was refused for want of data.path; `blur: null` did not say
    that the blur is on at 224 px."""
    assert main(["config", "--config", "moco_v2"]) == 0
    out, err = capsys.readouterr()
    assert "blur: null  # = true: moco_v2 blurs only above 64 px" in out
    assert "hue: null  # = 0.1: the recipe's hue jitter" in out
    assert "grayscale_p: null  # = 0.2: the recipe's grayscale probability" in out
    assert (
        err.strip()
        == "warning: data.path is not set: training with this config needs data.path=DIR"
    )
    import yaml

    assert yaml.safe_load(out)["augment"]["blur"] is None  # still YAML that config files accept
    assert main(["config", "--config", "moco_v2_cifar", "augment.blur=true"]) == 0
    assert "blur: true\n" in capsys.readouterr().out
    assert main(["config", "--config", "moco_v2", "augment.recipe=none", "data.path=x"]) == 0
    assert (
        "blur: null  # = false: augment.recipe=none takes the whole image"
        in capsys.readouterr().out
    )


def test_train_takes_out_dir_as_demo_does(tmp_path, capsys):
    """`train --out-dir` was an unrecognized argument (demo takes it, train wanted out_dir=)."""
    from helpers import TINY

    argv = ["train", "--config", "moco_v2_cifar", "--out-dir", str(tmp_path / "x"), *TINY]
    assert main([*argv, "optim.epochs=1", "train.progress=false", "name=r"]) == 0
    assert (tmp_path / "x" / "r" / "checkpoints" / "last.pt").is_file()


def test_progress_bars_stay_off_a_file(tmp_path):
    """Written to a file, the bars' carriage returns piled up and the summary line began behind
    the last one (`contrastlab demo > log 2>&1`)."""
    from helpers import TINY, overriding

    argv = ["train", "--config", "moco_v2_cifar", *overriding(TINY, "train.progress=true")]
    proc = subprocess.run(
        [sys.executable, "-m", "contrastlab", *argv, f"out_dir={tmp_path}", "optim.epochs=1"],
        capture_output=True,  # bytes: text mode would turn the carriage returns into newlines
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert b"\r" not in proc.stderr + proc.stdout and b"epoch 1/1" not in proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(b"training ")  # the start line says there is no bar
    assert b"; a line per epoch, every step's metrics in " in lines[0]
    assert lines[1].startswith(b"epoch 1 of 1: loss ") and b"kNN top-1 " in lines[1]
    assert lines[2].startswith(b"trained 1 epoch")


@pytest.mark.parametrize(
    "argv,said",
    [
        (["train", "--outdir", "X"], "--outdir (did you mean '--out-dir'?)"),
        (["train", "-c", "demo", "--outdir=X"], "--outdir=X (did you mean '--out-dir'?)"),
        (["eval", "knn", "--spce", "z", "CKPT"], "--spce CKPT (did you mean '--space'?)"),
        (["demo", "--outdir", "x"], "--outdir (did you mean '--out-dir'?)"),
        (["config", "--confg", "demo"], "--confg (did you mean '--config'?)"),
        (["presets", "--hepl"], "--hepl (did you mean '--help'?)"),
        (["eval", "fewshot", "c", "--epsiodes", "3"], "--epsiodes 3 (did you mean '--episodes'?)"),
        (["eval", "all", "c", "--protcols", "knn"], "--protcols knn (did you mean '--protocols'?)"),
        (["analyze", "c", "--negatvies", "3"], "--negatvies 3 (did you mean '--negatives'?)"),
        (["scores", "r", "--lables", "a"], "--lables a (did you mean '--labels'?)"),
        (["report", "r", "--analisys", "d"], "--analisys d (did you mean '--analysis'?)"),
        (["export", "c", "--out", "o", "--fromat", "x"], "--fromat x (did you mean '--format'?)"),
        (["convert", "c", "--out", "o", "--form", "x"], "--form x (did you mean '--from'?)"),
        # the guess goes after the flag's value, not between the two ("--kk (did you mean ...) 3")
        (["eval", "knn", "c", "--kk", "3"], "arguments: --kk 3 (did you mean '--k'?); see"),
        (
            ["eval", "knn", "c", "--kk", "3", "--spce", "z"],
            "--kk 3 (did you mean '--k'?) --spce z (",
        ),
        # nothing close: no guess ("--bogus" and "--out" share only their dashes)
        (["eval", "knn", "c", "--bogus"], "unrecognized arguments: --bogus; see"),
    ],
)
def test_a_mistyped_flag_gets_the_closest_flag_of_its_command(argv, said, capsys):
    """It said only "unrecognized arguments: --outdir", where a mistyped config key or value
    gets a did-you-mean."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1
    assert said in err, err
    command = " ".join(argv[:2]) if argv[0] == "eval" else argv[0]
    assert err.startswith(f"error: contrastlab {command}: unrecognized arguments: ")
    assert err.endswith(f"; see contrastlab {command} --help")


def _leaf_parsers():
    """The parser of every command that runs (``contrastlab eval knn``'s, not ``eval``'s)."""
    import argparse

    from contrastlab.cli import build_parser

    def leaves(parser):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield parser
        for action in subs:
            for sub in action.choices.values():
                yield from leaves(sub)

    return list(leaves(build_parser()))


def test_every_commands_flags_are_suggested_from_that_command():
    """Each flag of each (sub)command, mistyped (two letters swapped), is matched to itself."""
    from contrastlab.cli import _unknown

    checked = set()
    for parser in _leaf_parsers():
        for flag in (f for a in parser._actions for f in a.option_strings):
            name = flag[2:]
            if flag.startswith("--") and len(name) >= 4:
                typo = f"--{name[0]}{name[2]}{name[1]}{name[3:]}"
                assert _unknown([typo], parser) == f"{typo} (did you mean '{flag}'?)", parser.prog
                checked.add(parser.prog)
    assert {"contrastlab train", "contrastlab eval knn", "contrastlab scores"} <= checked
    assert len(checked) >= 15


def test_every_commands_options_and_arguments_have_help():
    """``eval factors --help`` listed ``--factors FACTORS`` with no word on what it takes;
    ``eval transfer``'s few-shot options, ``eval corruption --severities`` and ``export``'s
    checkpoint, ``--format`` and ``--out`` were as bare."""
    import argparse

    bare = [
        (parser.prog, action.option_strings or action.dest)
        for parser in _leaf_parsers()
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction) and not action.help
    ]
    assert bare == []


def test_no_command_takes_an_abbreviated_flag():
    """A prefix of a flag is refused with a suggestion, never taken for the flag: ``train --out X``
    used to run with ``--out-dir X``, while ``--out`` is the output file elsewhere."""
    checked = 0
    for parser in _leaf_parsers():
        assert parser.allow_abbrev is False, parser.prog
        flags = [f for a in parser._actions for f in a.option_strings if f.startswith("--")]
        for flag in flags:
            prefix = flag[:-1]
            if len(prefix) > 3 and not any(f.startswith(prefix) and f != flag for f in flags):
                action = parser._parse_optional(prefix)[0]  # what argparse would take it for
                assert action is None, (parser.prog, prefix)
                checked += 1
    assert checked > 30


@pytest.mark.parametrize("command", [["train"], ["demo"]])
def test_out_is_not_taken_for_out_dir(command, tmp_path, capsys):
    from contrastlab.cli import main

    with pytest.raises(SystemExit) as stop:
        # optim.epochs=-1: where --out were taken for --out-dir, the run stops at the config check
        main([*command, "--out", str(tmp_path / "x"), "optim.epochs=-1"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --out" in err and "did you mean '--out-dir'?" in err
    assert not (tmp_path / "x").exists()


def test_under_torchrun_an_error_one_process_meets_is_printed_by_it(monkeypatch, capsys):
    """Rank 1 prints an error that it may meet alone (here an OSError, or a UserError of the
    training); one that every process meets (the config's) is left to rank 0, unless rank 0
    does not end the job within the grace time (it would then be said nowhere)."""
    import errno

    import contrastlab.cli as cli
    import contrastlab.train

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(cli, "_RANK_0_GRACE_S", 0.2)
    said = {}

    class Failing:
        def __init__(self, cfg):
            pass

        def fit(self):
            raise said["error"]

    monkeypatch.setattr(contrastlab.train, "Trainer", Failing)
    monkeypatch.setattr(contrastlab.train.distributed, "shutdown", lambda: None)
    for error, status in [
        (PermissionError(errno.EACCES, "Permission denied", "/data/x.png"), 2),
        (UserError("an image of this process's share is unreadable"), 2),
    ]:
        said["error"] = error
        assert main(["train", "--config", "demo"]) == status
        assert capsys.readouterr().err.startswith("error: rank 1: ")  # which process met it

    # every process meets this one: rank 0 says it, and torchrun then stops rank 1 (SIGTERM),
    # which ends its wait silently; without that, rank 1 says it after the wait
    alike = ["train", "--config", "demo", "optim.batch_size=127"]
    assert main(alike) == 2
    assert "must be divisible by model.bn_splits" in capsys.readouterr().err

    def sigterm_comes(seconds):
        raise StopRequested(signal.SIGTERM)

    monkeypatch.setattr("time.sleep", sigterm_comes)
    assert main(alike) == 2
    assert capsys.readouterr().err == ""
    with pytest.raises(SystemExit) as exited:
        main(["train", "--config", "demo", "--bogus"])
    assert exited.value.code == 2 and capsys.readouterr().err == ""


def test_under_torchrun_a_warning_is_left_to_rank_0(monkeypatch, capsys):
    """Every process of a torchrun job printed the warnings of the config and of the dataset
    they all read: each was said once per process. Rank 0 says them."""
    import contrastlab.cli as cli

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    overrides = ["method=moco", "method=looc", "ft.alpha_pos=3"]  # a repeat, an unused setting
    assert main(["config", "--config", "demo", *overrides]) == 0
    assert "warning" not in capsys.readouterr().err
    # the dataset's Python warnings (an empty class folder, skipped images) as well
    dataset = "/site-packages/contrastlab/data/datasets.py"
    assert cli._one_line_warning("1 class folder(s)", UserWarning, dataset, 1) == ""
    monkeypatch.setenv("RANK", "0")
    assert cli._one_line_warning("1 class folder(s)", UserWarning, dataset, 1) == (
        "warning: 1 class folder(s)\n"
    )
    assert main(["config", "--config", "demo", *overrides]) == 0
    warned = capsys.readouterr().err
    assert "warning: method is given twice" in warned and "warning: ft.alpha_pos" in warned

    # a stop: torchrun passes the signal to every process, and rank 0 alone says it
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("contrastlab.config.load_config", ctrl_c)
    for rank, said in (("1", ""), ("0", "stopped by Ctrl-C (SIGINT)\n")):
        monkeypatch.setenv("RANK", rank)
        assert main(["config", "--config", "demo"]) == 130
        assert capsys.readouterr().err == said


@pytest.mark.parametrize("command", ["train", "config"])
def test_help_shows_the_short_config_flag_the_docs_use(command, capsys):
    """docs/looc.md runs ``contrastlab train -c PRESET``; the help named only ``--config`` in
    its usage and ``--config PRESET_OR_YAML, -c PRESET_OR_YAML`` below it."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert "-c, --config PRESET_OR_YAML" in text and "[-c PRESET_OR_YAML]" in text


def test_the_demo_takes_as_long_everywhere_as_the_readme_measured(capsys):
    """presets said the demo takes "a few minutes", README "about a minute and a half" (measured)."""
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert "`make demo` takes about a minute and a half on a two-core CPU" in readme
    assert main(["presets"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "about a minute and a half on two CPU cores" in lines["demo"]
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "about a minute and a half on two CPU cores" in text and "a few minutes" not in text


def test_a_count_of_one_takes_the_singular():
    assert [plural(n, "class") for n in (0, 1, 2)] == ["0 classes", "1 class", "2 classes"]
    assert (plural(1, "image"), plural(1200, "image")) == ("1 image", "1,200 images")
    assert (plural(1, "epoch"), plural(2, "epoch")) == ("1 epoch", "2 epochs")


@pytest.mark.parametrize("has_checkpoint", [False, True])
@pytest.mark.parametrize("stop", ["Ctrl-C twice", "a lost process", "a full disk"])
def test_a_stop_says_a_checkpoint_to_resume_only_where_one_was_written(
    stop, has_checkpoint, monkeypatch, capsys, tmp_path
):
    """A second Ctrl-C, a lost torchrun process and a full disk before the run's first
    checkpoint named the newest checkpoint and train.resume=auto, with checkpoints/ empty."""
    import errno

    import contrastlab.train
    from contrastlab import distributed

    if has_checkpoint:
        (tmp_path / "x" / "checkpoints").mkdir(parents=True)
        (tmp_path / "x" / "checkpoints" / "last.pt").write_bytes(b"a checkpoint")

    class Stopping:
        def __init__(self, cfg):
            pass

        def fit(self):
            if stop == "Ctrl-C twice":
                raise InterruptedTwice
            if stop == "a full disk":
                raise OSError(errno.ENOSPC, "No space left on device")
            raise RuntimeError("[../gloo/transport/tcp/pair.cc:545] Connection reset by peer")

    monkeypatch.setattr(contrastlab.train, "Trainer", Stopping)
    if stop == "a lost process":
        monkeypatch.setattr(distributed, "is_distributed", lambda: True)
        monkeypatch.setattr(distributed, "rank", lambda: 0)
        monkeypatch.setattr(distributed, "shutdown", lambda: None)
    status = main(["train", "--config", "demo", f"out_dir={tmp_path}", "name=x"])
    assert status == {"Ctrl-C twice": 130, "a lost process": 1, "a full disk": 2}[stop]
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    if has_checkpoint:
        assert "train.resume=auto" in err and "intact" in err or "newest complete" in err
    else:
        assert "train.resume=auto" not in err and "intact" not in err, err
        assert "checkpoint" in err and ("no checkpoint" in err or "any checkpoint" in err)
