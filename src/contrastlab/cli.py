"""The ``contrastlab`` command: train, demo, eval, scores, report, export, presets, config."""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import os
import sys
import warnings
from pathlib import Path

from contrastlab.atomic import no_space_error
from contrastlab.errors import (
    EXIT_STOPPED,
    DiskFull,
    InterruptedTwice,
    PeerStopped,
    StopRequested,
    TrainingInterrupted,
    UserError,
    met_by_every_process,
    on_this_process,
    one_line,
    plural,
    process_rank,
    settings_as_flags,
    signal_text,
    warning_line,
)


class _OneConfig(argparse.Action):
    """``--config`` given once: a second, other file is refused, not silently put in the first's
    place (argparse keeps the last), which would drop every setting of the first."""

    def __call__(self, parser, namespace, value, option_string=None):
        from contrastlab.config import config_source

        first = getattr(namespace, self.dest)
        if first is None or config_source(first)[1] == config_source(value)[1]:
            setattr(namespace, self.dest, value)  # the same file, however spelt, is one
            return
        files = [v for v in (value, first) if config_source(v)[0]]
        if files:  # a base: line goes in a file of the user's own, not in a built-in preset
            other = first if files[0] == value else value
            hint = (
                "make one YAML file start from the other with a base: line (e.g. "
                f"'base: {other}' in {files[0]}) and give that one alone"
            )
        else:
            hint = (
                f"both are built-in presets: give one --config, or write a YAML file with "
                f"'base: {first}' and the keys of {value} that differ, and give that file alone"
            )
        parser.error(
            f"--config is given twice ({first}, then {value}) and only one is read; {hint}"
        )


def _config_arguments(p, preset: bool = True) -> None:
    """``--config PRESET_OR_YAML`` (unless ``preset=False``) and the ``key=value`` overrides."""
    if preset:
        p.add_argument(
            "-c",
            "--config",
            action=_OneConfig,
            dest="config",
            default=None,
            metavar="PRESET_OR_YAML",
            help="a preset name (see `contrastlab presets`) or a YAML file",
        )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="settings that replace the preset's, e.g. optim.lr=0.1 (all keys: docs/config.md)",
    )


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="pretrain an encoder",
        description="Pretrain an encoder. Settings come from a preset or YAML file, "
        "then from key=value overrides (e.g. optim.lr=0.1 dataset=cifar10).",
    )
    _out_dir_argument(p)
    _config_arguments(p)
    p.set_defaults(func=_cmd_train)


def _out_dir_argument(p) -> None:
    """``--out-dir DIR`` of ``train``, and of ``config``, which shows what train would use."""
    p.add_argument(
        "--out-dir",
        default=None,
        metavar="DIR",
        help="where the run directory goes (the same as out_dir=DIR; default: runs)",
    )


def _out_dir_as_override(args) -> None:
    """``--out-dir DIR`` as the override ``out_dir=DIR``; both at once are refused."""
    if args.out_dir is not None:  # as `demo --out-dir`; out_dir= as well would be ambiguous
        given = [o for o in args.overrides if o.split("=", 1)[0].strip() == "out_dir"]
        if given:
            raise UserError(
                f"--out-dir {args.out_dir} and {given[0]} both name the folder; keep one"
            )
        args.overrides = [f"out_dir={args.out_dir}", *args.overrides]


def _cmd_train(args) -> int:
    from contrastlab.config import load_config, warn_repeated_keys
    from contrastlab.train import train

    with met_by_every_process():  # the same command line on every process of torchrun
        _out_dir_as_override(args)
        warn_repeated_keys(args.overrides)
        cfg = load_config(args.config, args.overrides, warn_unused=True)
    args.run_dir = cfg.run_dir  # what a stop or a full disk leaves there is said from it
    result = train(cfg)
    if result.is_main:
        print(_train_summary(result, cfg.optim.epochs, cfg.train.knn_space))
        print(f"run directory: {_run_dir_text(result.run_dir, cfg.run_dir)}")
    return 0


def _run_dir_text(holding: Path, named: Path) -> str:
    """The run directory that holds the results; when that is not the one the config names (a
    finished checkpoint of another run, nothing trained), says that the named one was not written."""
    if os.path.abspath(holding) == os.path.abspath(named):
        return str(holding)
    return f"{holding} (the checkpoint's run; nothing was written to {named})"


def _train_summary(result, epochs_wanted: int, space: str) -> str:
    """The one line that ``contrastlab train`` ends with; says when a run was resumed and in
    which feature space the kNN monitor measured."""
    where = space if result.knn_queries is None else f"{space}, {result.knn_queries:,} test images"
    knn = f", kNN top-1 {result.knn_top1:.2f}% ({where})" if result.knn_top1 is not None else ""
    if result.resumed_from is not None and result.epochs == result.start_epoch:
        more = "more than" if result.epochs > epochs_wanted else "all of"
        return (
            f"nothing to train: {result.resumed_from} already holds "
            f"{plural(result.epochs, 'epoch')} ({more} optim.epochs={epochs_wanted}){knn}; to "
            "train longer, resume with a larger optim.epochs"
        )
    if result.resumed_from is not None:
        done = result.epochs - result.start_epoch
        if result.start_in_epoch:  # the rest of the epoch it continued inside, then whole ones
            more = f"the rest of epoch {result.start_epoch + 1}"
            more += f" and {done - 1} more" if done > 1 else ""
        else:
            more = f"{done} more"
        return (
            f"resumed from {result.resumed_from} at step {result.start_step:,} (in epoch "
            f"{result.start_epoch + 1}); trained to epoch {result.epochs} ({more}, "
            f"{plural(result.steps - result.start_step, 'step')}) in {result.seconds:.0f} s: "
            f"final loss {result.final_loss:.4f}{knn}"
        )
    return (
        f"trained {plural(result.epochs, 'epoch')} ({plural(result.steps, 'step')}) in "
        f"{result.seconds:.0f} s: final loss {result.final_loss:.4f}{knn}"
    )


def _add_config(sub) -> None:
    p = sub.add_parser(
        "config",
        help="print the resolved configuration of a preset + overrides",
        description="Print the configuration that `contrastlab train` would use with the same "
        "--config, --out-dir and key=value overrides, as YAML, with every default filled in.",
    )
    _out_dir_argument(p)
    _config_arguments(p)
    p.set_defaults(func=_cmd_config, prints_only=True)


def _cmd_config(args) -> int:
    import yaml

    from contrastlab.config import (
        config_to_dict,
        effective_defaults,
        load_config,
        warn_repeated_keys,
    )
    from contrastlab.errors import warn

    _out_dir_as_override(args)
    warn_repeated_keys(args.overrides)
    cfg = load_config(args.config, args.overrides, warn_unused=True, need_data_path=False)
    if cfg.data.name == "imagefolder" and not cfg.data.path:
        warn("data.path is not set: training with this config needs data.path=DIR")
    # keys whose null means "decided from the rest" get what they come to as a comment
    notes, section = effective_defaults(cfg), ""
    for line in yaml.safe_dump(config_to_dict(cfg), sort_keys=False).splitlines():
        if not line.startswith(" "):
            section = line.split(":", 1)[0]
        key = f"{section}.{line.strip().split(':', 1)[0]}"
        print(f"{line}  # {notes[key]}" if line.startswith(" ") and key in notes else line)
    return 0


def _add_presets(sub) -> None:
    p = sub.add_parser("presets", help="list the built-in presets")
    p.set_defaults(func=_cmd_presets, prints_only=True)


def _cmd_presets(args) -> int:
    from importlib import resources

    from contrastlab.config import preset_names

    for name in preset_names():
        text = (resources.files("contrastlab") / "configs" / f"{name}.yaml").read_text()
        print(f"{name:24s} {_first_sentence(text)}")
    return 0


def _first_sentence(yaml_text: str) -> str:
    """The first sentence of a preset's leading comment, which may span several lines."""
    lines = []
    for line in yaml_text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    text = " ".join(lines)
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="MoCo v2 on the built-in synthetic dataset, about a minute and a half on two CPU cores",
    )
    p.add_argument("--out-dir", default="runs", help="where the run directory goes (default: runs)")
    _config_arguments(p, preset=False)
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args) -> int:
    from contrastlab.demo import run_demo

    run_demo(args.out_dir, args.overrides)
    return 0


def _add_convert(sub) -> None:
    from contrastlab.convert import FORMATS

    p = sub.add_parser(
        "convert",
        help="convert a published encoder (MoCo, FT, lightly, solo-learn, torchvision)",
        description="Read another project's checkpoint (weights_only=True) and write a "
        "contrastlab checkpoint with its backbone and, where it has one, its projection head; "
        "see docs/analysis.md.",
    )
    p.add_argument("src", metavar="SRC", help="the checkpoint file to convert")
    p.add_argument(
        "--from",
        dest="fmt",
        choices=("auto", *FORMATS),
        default="auto",
        help="source layout (default: auto, recognized from the keys)",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="the contrastlab checkpoint (.pt)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument(
        "--no-head", action="store_true", help="keep the backbone only, drop the projection head"
    )
    p.add_argument(
        "--dataset",
        default=None,
        help="the dataset the encoder was trained on, for its normalization statistics "
        "(default: imagefolder at 224 px = ImageNet's; cifar10 at 32 px for a CIFAR stem)",
    )
    p.add_argument("--image-size", type=int, default=None, help="its training crop size")
    p.set_defaults(func=_cmd_convert)


def _cmd_convert(args) -> int:
    from contrastlab.convert import convert_checkpoint
    from contrastlab.outputs import check_output, is_converted_checkpoint

    check_output(
        args.out,
        inputs=[args.src],
        replaceable=is_converted_checkpoint,
        what="a converted checkpoint",
        overwrite=args.overwrite,
    )
    path, info = convert_checkpoint(
        args.src, args.fmt, args.out, not args.no_head, args.dataset, args.image_size
    )
    m = info["model"]
    head = f"{m['head']} head to {m['dim']}-d" if info["head"] else "no projection head"
    stem = ", CIFAR stem" if m["cifar_stem"] else ""
    state = ", ".join(
        f"{key} {'unknown' if info[key] is None else info[key]}" for key in ("epoch", "step")
    )
    print(
        f"converted {info['format']} checkpoint: {m['backbone']} (width {m['width']:g}{stem}), "
        f"{head}; {state}"
    )
    print(f"written to {path}")
    return 0


class CompactHelpFormatter(argparse.HelpFormatter):
    """An option with a short and a long flag reads ``-c, --config PRESET_OR_YAML`` in the help,
    not ``-c PRESET_OR_YAML, --config PRESET_OR_YAML``."""

    def _format_action_invocation(self, action):
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        metavar = self._format_args(action, self._get_default_metavar_for_optional(action))
        return f"{', '.join(action.option_strings)} {metavar}"


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors as one line (``error: contrastlab train: ...``) and status 2,
    instead of the whole usage block; ``--help`` still prints the usage.

    Flags are not abbreviated (``allow_abbrev=False``, inherited by every subcommand's parser):
    argparse would take ``train --out X`` as ``--out-dir X``, while ``--out`` names the output file
    itself everywhere else; a prefix is answered like any unknown flag, with the closest one."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", CompactHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        if not _left_to_rank_0():  # the same command line on every process of torchrun
            print(f"error: {self.prog}: {message}; see {self.prog} --help", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="contrastlab",
        description="Contrastive self-supervised learning of image representations: MoCo v1/v2, "
        "Feature Transformation, LooC / LooC++.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_demo(sub)
    _add_config(sub)
    _add_presets(sub)
    _add_convert(sub)
    from contrastlab.analysis import register as register_analysis

    register_analysis(sub)
    try:
        from contrastlab.eval.commands import register as register_eval
    except ImportError:
        register_eval = None
    if register_eval is not None:
        register_eval(sub)
    try:
        from contrastlab.viz.commands import register as register_viz
    except ImportError:
        register_viz = None
    if register_viz is not None:
        register_viz(sub)
    return parser


def _command_parser(parser: argparse.ArgumentParser, args) -> argparse.ArgumentParser:
    """The parser of the (sub)command that ``args`` ran: ``contrastlab eval knn``'s, not the
    top level's, so that an unknown flag is matched against that command's own flags."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        chosen = getattr(args, subs[0].dest, None) if subs else None
        if chosen not in (subs[0].choices if subs else {}):
            return parser
        parser = subs[0].choices[chosen]


def _unknown(extra: list[str], parser: argparse.ArgumentParser) -> str:
    """The arguments argparse did not take, each mistyped flag and its values followed by the
    closest flag of ``parser`` (``--outdir runs (did you mean '--out-dir'?)``), as config keys
    are."""
    from contrastlab.config import suggest

    flags = [f for a in parser._actions for f in a.option_strings if f.startswith("--")]

    def is_flag(word: str) -> bool:
        return word.startswith("-") and word.lstrip("-")[:1].isalpha()  # not -1, not -

    groups: list[list[str]] = []  # a flag with the values after it (``--kk 3``), or one word
    for word in extra:
        if groups and is_flag(groups[-1][0]) and not is_flag(word):
            groups[-1].append(word)
        else:
            groups.append([word])
    words = []
    for group in groups:
        hint = ""
        if is_flag(group[0]):  # after the flag's value, not between the two
            hint = suggest(f"--{group[0].split('=', 1)[0].lstrip('-')}", flags, "--")
        words.append(" ".join(group) + hint)
    return " ".join(words)


def _is_override(arg: str) -> bool:
    return "=" in arg and not arg.startswith("-")


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """contrastlab's own warnings as one ``warning: ...`` line (no file, line or source), which
    under torchrun rank 0 alone prints (they are about the data every process reads alike);
    other libraries' warnings keep Python's format, which says where they come from."""
    if category is UserWarning and "contrastlab" in str(filename):
        return warning_line(str(message))
    return _python_format(message, category, filename, lineno, line)


_python_format = warnings.formatwarning


_ENVIRONMENT_ERRORS = {
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.ENAMETOOLONG,
    errno.EIO,
}


def _after_full_disk(args) -> str:
    """What to do after a full disk: files are written through temporary files and renamed."""
    if _trains(args) and not _has_checkpoint(args):
        return "no checkpoint of the run was written yet; free some space and run it again"
    if _trains(args):
        return (
            "the checkpoints written before are intact (writes go through temporary files); "
            "free some space and resume with train.resume=auto"
        )
    return "files written before are intact; free some space and run the command again"


def _has_checkpoint(args) -> bool:
    """Whether the run that ``train`` writes holds a checkpoint to resume (True where the run
    directory is not known yet: its config was not read)."""
    from contrastlab.rundir import existing_checkpoints

    run_dir = getattr(args, "run_dir", None)
    return run_dir is None or bool(existing_checkpoints(run_dir))


_LESS_MEMORY = (
    "use smaller settings (train: optim.batch_size, model.width, moco.queue_size, "
    "data.image_size; eval: --batch-size, --max-train) or a machine with more memory"
)


def _failed_allocation(e: Exception) -> str | None:
    """What a failed allocation of torch (CPU or CUDA) tried to get, or None for other errors."""
    import re

    text = str(e)
    if type(e).__name__ != "OutOfMemoryError" and "can't allocate memory" not in text:
        return None
    found = re.search(r"allocate (\d+) bytes", text)
    if found:
        return f"tried to allocate {int(found.group(1)) / 2**30:.1f} GiB"
    found = re.search(r"[Tt]ried to allocate ([\d.]+ [KMGT]iB)", text)
    return f"tried to allocate {found.group(1)}" if found else "an allocation failed"


def _report_no_space(e: OSError, args) -> int:
    where = f" ({e.filename})" if e.filename else ""
    said = on_this_process(f"no space left on device{where}; {_after_full_disk(args)}")
    print(f"error: {said}", file=sys.stderr)
    return 2


def _raise_on_stop_signals() -> None:
    """Until the trainer's ``StopSignals`` takes over: SIGTERM and SIGUSR1 raise
    ``StopRequested`` where the program is (Ctrl-C raises ``KeyboardInterrupt`` as always), so
    that a command stopped while it imports, sets up or evaluates says so in one line."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum, frame):
        raise StopRequested(signum)

    for name in ("SIGTERM", "SIGUSR1"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), stop)


def main(argv: list[str] | None = None) -> int:
    from contrastlab.streams import outliving_output

    # a reader of the output that goes away (`| head`, a `tee` or `less` that ends, a closed
    # terminal) does not stop the command: the rest of that stream is discarded (streams.py)
    with outliving_output() as (stdout, _):
        return _main(argv, stdout)


# Options and positionals that name files or folders. The shell expands a leading ``~`` only in
# a word of its own (``--out ~/x``), not after ``=`` (``--out=~/x``): both must mean the same.
PATH_ARGUMENTS = (
    "config",
    "checkpoint",
    "checkpoints",
    "src",
    "out",
    "out_dir",
    "data_path",
    "run",
    "runs",
    "analysis",
    "cache",
    "train_dir",
    "test_dir",
)


def _expand_home(args) -> None:
    """``~`` and ``~user`` at the start of every path argument, as the shell would have."""
    for name in PATH_ARGUMENTS:
        value = getattr(args, name, None)
        if isinstance(value, str):
            setattr(args, name, os.path.expanduser(value))
        elif isinstance(value, list):
            setattr(args, name, [os.path.expanduser(v) if isinstance(v, str) else v for v in value])


def _main(argv: list[str] | None, stdout) -> int:
    _raise_on_stop_signals()
    args = None
    try:
        parser = build_parser()  # imports torch: inside the try, so that Ctrl-C is one line
        args, extra = parser.parse_known_args(argv)
        if extra and hasattr(args, "overrides") and all(_is_override(e) for e in extra):
            # key=value before and after --config: argparse takes only one group of positionals
            args.overrides = [*args.overrides, *extra]
        elif extra:  # one line that points at the help of the subcommand, not the top level
            command = _command_parser(parser, args)
            if not _left_to_rank_0():
                print(
                    f"error: {command.prog}: unrecognized arguments: {_unknown(extra, command)}; "
                    f"see {command.prog} --help",
                    file=sys.stderr,
                )
            raise SystemExit(2)  # as argparse's own errors
        _expand_home(args)
        if not getattr(args, "prints_only", False):  # its work goes on: said once on stderr
            stdout.on_gone = functools.partial(_say_output_discarded, _command_parser(parser, args))
        warnings.formatwarning = _one_line_warning
        flags = getattr(args, "setting_flags", None)  # commands that take flags, not key=value
        with settings_as_flags(flags) if flags is not None else contextlib.nullcontext():
            status = int(args.func(args) or 0)
        sys.stdout.flush()  # a full disk under `> file` shows here, inside the handlers below
        return status
    except DiskFull as e:
        if not (e.every_process and _left_to_rank_0()):
            print(f"error: {_error_text(e)}; {_after_full_disk(args)}", file=sys.stderr)
        return 2
    except UserError as e:
        if not (e.every_process and _left_to_rank_0()):
            print(f"error: {_error_text(e)}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:
        if e.is_main:
            print(str(e), file=sys.stderr)
        return EXIT_STOPPED
    except PeerStopped as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if no_space_error(e) is not None:
            return _report_no_space(no_space_error(e), args)
        if e.errno not in _ENVIRONMENT_ERRORS:
            raise
        # the file system refused: a permission, a read-only disk, a path that vanished
        where = f" {e.filename}" if e.filename else ""
        said = f"cannot use{where}: {e.strerror or e}; check the path and its permissions"
        print(f"error: {on_this_process(said)}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"error: {on_this_process(f'out of memory; {_LESS_MEMORY}')}", file=sys.stderr)
        return 2
    except Exception as e:
        # a writer that is not routed through contrastlab.atomic, whose library wrapped the
        # full disk in its own exception (torch.save: a RuntimeError from the OSError)
        if no_space_error(e) is not None:
            return _report_no_space(no_space_error(e), args)
        wanted = _failed_allocation(e)
        if wanted is None:
            raise
        said = on_this_process(f"out of memory ({wanted}); {_LESS_MEMORY}")
        print(f"error: {said}", file=sys.stderr)
        return 2
    except InterruptedTwice:
        # a second Ctrl-C while the run stops after the first one: checkpoints are written to a
        # temporary file and renamed, so last.pt is whole, either the new one or the one before
        if not _has_checkpoint(args):
            _say_stop(
                "interrupted again while stopping, before the run wrote any checkpoint (its "
                "checkpoints/ folder holds none): nothing can be resumed; run the same command "
                "again to start it"
            )
            return 130
        _say_stop(
            "interrupted again while stopping; the newest complete checkpoint is in the run's "
            "checkpoints/ folder (each is written whole or not at all): resume with "
            "train.resume=auto"
        )
        return 130
    except KeyboardInterrupt as e:  # Ctrl-C, or StopRequested (SIGTERM, SIGUSR1)
        signal_name = signal_text(e.signal_name if isinstance(e, StopRequested) else "SIGINT")
        if _trains(args, argv):
            # not inside a training step (those stop at the step's end and save): start-up, set-up
            # or the summary; no file of the run was being written
            _say_stop(
                f"stopped by {signal_name} outside the training loop (no training step was "
                "running, no file of the run was being written); to start or continue the run, "
                "use the same command with train.resume=auto"
            )
            return EXIT_STOPPED if isinstance(e, StopRequested) else 130
        _say_stop(f"stopped by {signal_name}")
        return 128 + e.signum if isinstance(e, StopRequested) else 130


def _say_stop(line: str) -> None:
    """A stop's one line, which under torchrun rank 0 alone prints: torchrun passes a signal on
    to every process, and Ctrl-C in a terminal reaches them all."""
    if process_rank()[0] == 0:
        print(line, file=sys.stderr)


def _error_text(e: UserError) -> str:
    """The one line of ``e``; under torchrun, one that a process may meet alone names its rank
    (``rank 1: ...``), as it is printed by that process (rank 0 prints one met by all)."""
    return one_line(e) if e.every_process else on_this_process(one_line(e))


# How long a process of a torchrun job other than rank 0 waits for rank 0 to print an error that
# every process meets, and to end the job; then it prints the error itself.
_RANK_0_GRACE_S = 30.0


def _left_to_rank_0() -> bool:
    """Whether this process leaves an error that every process of a ``torchrun`` job meets alike
    to rank 0 to print: True on the other ranks, once rank 0 has ended the job.

    They wait for it first (torchrun then stops them: SIGTERM, which ends the wait): exiting at
    once would make torchrun stop rank 0 before it had printed the error. After
    ``_RANK_0_GRACE_S`` without that, False: the process prints the error itself."""
    import time

    if process_rank()[0] == 0:
        return False
    try:
        time.sleep(_RANK_0_GRACE_S)
    except KeyboardInterrupt:  # StopRequested: SIGTERM from torchrun (or Ctrl-C)
        return True
    return False


def _say_output_discarded(command: argparse.ArgumentParser) -> None:
    from contrastlab.errors import warn

    warn(  # this process's own stream: under torchrun, each says so for its own
        f"the reader of {command.prog}'s output went away (a closed pipe or terminal); the "
        "command carries on to its end, writes its files as usual and discards the rest of its "
        "output",
        per_process=True,
    )


def _trains(args, argv: list[str] | None = None) -> bool:
    """Whether the command is ``train``; before the arguments are parsed, from the first word."""
    if args is not None:
        return getattr(args, "func", None) is _cmd_train
    words = [w for w in (sys.argv[1:] if argv is None else argv) if not w.startswith("-")]
    return bool(words) and words[0] == "train"


if __name__ == "__main__":
    sys.exit(main())
