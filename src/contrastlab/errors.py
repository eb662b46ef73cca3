"""Errors that are the user's to fix, reported as one line without a traceback."""

import contextlib
import contextvars


class UserError(Exception):
    """A problem with the user's input: a path, a config value, a dataset, a checkpoint.

    The message must say what is wrong and what to do about it, on one line. The command-line
    interface prints it as ``error: <message>`` and exits with status 2.

    ``every_process``: under ``torchrun``, True for an error that every process meets alike (a
    config value, a path, a check before training), which rank 0 alone prints; False or None
    for one that a process may meet alone, which that process prints.
    """

    every_process: bool | None = None


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""

    every_process = True  # the loss is the mean over the processes


class DiskFull(UserError):
    """No space left while writing a file; what was written before is intact.

    The message says which file and what was kept; the command line adds what to do next, which
    depends on the command (resume a training, or run the command again).
    """


@contextlib.contextmanager
def met_by_every_process():
    """Within this block, a ``UserError`` whose ``every_process`` is undecided is one that every
    process of a ``torchrun`` job meets alike (reading the same config, paths and checks)."""
    try:
        yield
    except UserError as e:
        if e.every_process is None:
            e.every_process = True
        raise


# EX_TEMPFAIL: stopped on request (a checkpoint was written, or no training step was running);
# run again to resume. Here, not in preemption (which imports torch), so that the command line
# can report a Ctrl-C that lands while torch is still being imported.
EXIT_STOPPED = 75


def signal_text(name: str) -> str:
    """A stop signal as every stop line names it: ``Ctrl-C (SIGINT)`` (a terminal's Ctrl-C, or
    ``kill -INT``), ``SIGTERM``, ``SIGUSR1``."""
    return "Ctrl-C (SIGINT)" if name == "SIGINT" else name


class TrainingInterrupted(Exception):
    """Training stopped on request (SIGTERM, SIGUSR1, Ctrl-C) after writing a checkpoint.

    Not a ``UserError``: nothing is wrong. The command line prints the message (one line: where
    the checkpoint is and how to resume) and exits with ``EXIT_STOPPED``.
    ``is_main`` is False on the other processes under torchrun, which stay silent.
    ``signal_name``: the signal received (``SIGTERM``, ...), None where another process got it.
    """

    def __init__(self, message: str, is_main: bool = True, signal_name: str | None = None):
        super().__init__(message)
        self.is_main = is_main
        self.signal_name = signal_name


class StopRequested(KeyboardInterrupt):
    """SIGTERM or SIGUSR1 outside the training loop (while setting up, evaluating, plotting).

    Raised where the program is, as Ctrl-C raises ``KeyboardInterrupt``; a subclass of it, so
    that no ``except Exception`` on the way swallows it and code that cleans up after Ctrl-C
    (DataLoader workers among it) does the same here. Inside the training loop the stop signals
    only set a flag (``preemption.StopSignals``).
    """

    def __init__(self, signum: int):
        import signal

        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        super().__init__(self.signal_name)


class InterruptedTwice(KeyboardInterrupt):
    """A second Ctrl-C while training stops after the first one (writing its checkpoint)."""


class PeerStopped(Exception):
    """Another process of a ``torchrun`` job ended (killed, crashed) and this one lost it.

    The message says so in one line; the command line exits with status 1.
    """


# How the running command takes a config setting: `train` and `config` as key=value overrides
# (the default), commands that take only flags (eval, analyze) as their flag, or not at all.
_FLAGS: contextvars.ContextVar = contextvars.ContextVar("contrastlab_flags", default=None)


@contextlib.contextmanager
def settings_as_flags(flags: dict[str, str | None]):
    """Within this block, ``setting`` spells the config keys of ``flags`` as their flag (None:
    the command has none) and any other key as missing: for commands that take only flags."""
    token = _FLAGS.set(dict(flags))
    try:
        yield
    finally:
        _FLAGS.reset(token)


def setting(key: str, value: str | None = None) -> str | None:
    """``key`` (set to ``value``) as the running command takes it, for error messages:
    ``data.skip_bad_images=true`` for train and config, ``--skip-bad-images`` for eval and
    analyze; None where the command has no way to set it (the message then leaves it out)."""
    flags = _FLAGS.get()
    if flags is None:
        return key if value is None else f"{key}={value}"
    flag = flags.get(key)
    if flag is None or value is None or value == "true":
        return flag
    return f"{flag} {value}"


def one_line(error: BaseException) -> str:
    """The message of ``error`` as one line. An error raised in a DataLoader worker comes back
    re-raised by torch as "Caught UserError in DataLoader worker process N." plus the worker's
    traceback: its own message is the traceback's last line."""
    text = str(error).strip()
    if "Original Traceback" not in text:
        return text
    last = text.splitlines()[-1]
    prefix = f"{type(error).__module__}.{type(error).__name__}: "
    return last[len(prefix) :] if last.startswith(prefix) else last


def plural(n: int, word: str, many: str | None = None) -> str:
    """A count and its noun for a message: ``1 class``, ``3 classes``, ``1,200 images``;
    ``many`` spells a plural other than word + s (or + es after s, x, sh: "class")."""
    if n == 1:
        return f"1 {word}"
    return f"{n:,} {many or word + ('es' if word.endswith(('s', 'x', 'sh')) else 's')}"


def process_rank() -> tuple[int, int]:
    """``(rank, world size)`` of this process in a ``torchrun`` job: torch.distributed's once the
    process group is joined, else those torchrun puts in the environment (``RANK``,
    ``WORLD_SIZE``), which hold from the start; ``(0, 1)`` for a process on its own.

    Reads torch.distributed only where it is already imported: this module imports no torch."""
    import os
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:  # not torchrun's: a process on its own
        return 0, 1
    return (rank, world) if world > 1 else (0, 1)  # a RANK of another tool's, alone: rank 0


def on_this_process(message: str) -> str:
    """``message`` about this process alone: ``rank 1: <message>`` in a ``torchrun`` job of more
    than one process (each may print its own), ``message`` as it is otherwise."""
    rank, world = process_rank()
    return f"rank {rank}: {message}" if world > 1 else message


def warning_line(message: str, per_process: bool = False) -> str:
    """The line ``warn`` prints (``warning: <message>``, newline included), or ``""`` where this
    process leaves it to rank 0 (``warn``)."""
    if per_process:
        return f"warning: {on_this_process(message)}\n"
    return f"warning: {message}\n" if process_rank()[0] == 0 else ""


def warn(message: str, per_process: bool = False) -> None:
    """One line of warning on stderr (``warning: <message>``).

    Under ``torchrun`` every process runs the same code, so a warning about what they share (the
    config, the run directory, the dataset) would be printed once per process: it is printed by
    rank 0 alone. ``per_process=True`` is for a condition of this process alone (its CPU, its
    device, its output stream): each process that meets it prints it, naming its rank when there
    is more than one (``warning: rank 1: <message>``).
    """
    import sys

    line = warning_line(message, per_process)
    if line:
        sys.stderr.write(line)
        sys.stderr.flush()


def as_list(value, what: str, kinds=(str,)) -> list:
    """``value`` as a list of ``kinds``: one item given alone (a string, a path) is a list of
    one, not a sequence of its characters; anything else that is not a sequence of ``kinds`` is
    the user's error, said in one line with ``what`` (``"labels"``, ``"run directories"``)."""
    if isinstance(value, kinds):
        return [value]
    try:
        items = list(value)
    except TypeError:
        items = None
    if items is None or not all(isinstance(v, kinds) for v in items):
        names = " or ".join(k.__name__ for k in kinds)
        raise UserError(f"{what} must be a {names} or a list of them, got {value!r}")
    return items


def as_path(value, what: str):
    """``value`` (a ``str`` or ``os.PathLike``) as a ``Path``; anything else, or an empty string
    (which ``Path`` would read as the current folder), is the user's error, said in one line
    with ``what`` (``"run_dir"``, ``"checkpoint path"``)."""
    import os
    from pathlib import Path

    if not isinstance(value, (str, os.PathLike)) or (isinstance(value, str) and not value.strip()):
        raise UserError(f"{what} must be a path (str or os.PathLike), got {value!r}")
    return Path(value)


def listed(names, limit: int = 5) -> str:
    """``a, b, c`` for a message; past ``limit`` names, ``a, b, c, d, e and 3 more``."""
    names = [str(n) for n in names]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
