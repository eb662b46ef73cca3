"""The run directory is the user's data: locked while a run writes it, checked before any work.

* ``check_writable`` creates the run directory and ``checkpoints/`` and writes a probe file in
  each, so that permission problems, a read-only filesystem or ``out_dir`` being a file are one
  line before the data and model are built (not a traceback after an epoch).
* ``RunLock`` is a lock file holding the owner's pid and host; a second ``train`` on the same
  directory refuses, and a lock left by a dead process on this host is taken over with a warning.
* ``clear_run`` (``train.overwrite=true``) deletes only the files contrastlab writes.
* ``choose_checkpoint`` picks what ``train.resume=auto`` continues from: the newest readable of
  ``last.pt`` and ``best.pt``, with a one-line warning when ``last.pt`` is damaged or missing.
* ``repair_metrics`` checks ``metrics.jsonl`` before a run appends to it.
* ``cut_metrics`` (a resume) and ``clear_earlier_attempt`` (a fresh start without checkpoint)
  keep a run's records those of this one run: no step recorded twice, no two runs mixed.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path

import yaml

from contrastlab.atomic import append_text, write_text
from contrastlab.checkpoint import TEMP_MARK, read_checkpoint, remove_stale_temps
from contrastlab.errors import UserError, warn

LOCK_NAME = ".contrastlab.lock"
CHECKPOINT_NAMES = ("last.pt", "best.pt")
# metrics.jsonl events that tell the run's history (what ran, on what, what was said, where it
# stopped and resumed), not its curves: kept when a resume cuts the records made after its
# checkpoint (``cut_metrics``)
HISTORY_EVENTS = ("start", "resume", "warning", "stopped", "diverged")
# What contrastlab writes in a run directory (glob patterns, relative to it): all that
# ``train.overwrite=true`` may delete.
OWN_FILES = (
    "config.yaml",
    "metrics.jsonl",
    *(f"checkpoints/{name}" for name in CHECKPOINT_NAMES),
    "checkpoints/epoch-*.pt",  # train.keep_every
    "scores/meta.json",
    "scores/hist.npz",
    "scores/queries-epoch*.npz",
    "scores/intervals-epoch*.npz",
    "tensorboard/events.out.tfevents.*",
)


def check_writable(run_dir: Path) -> None:
    """Create ``run_dir/checkpoints`` and write a probe file in both; one-line error otherwise."""
    for folder in (run_dir, run_dir / "checkpoints"):
        probe = folder / f".probe{TEMP_MARK}{os.getpid()}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with open(probe, "wb") as f:
                f.write(b"ok")
        except (FileExistsError, NotADirectoryError):
            blocker = next((p for p in [folder, *folder.parents] if p.is_file()), folder)
            raise UserError(
                f"cannot use run directory {run_dir}: {blocker} is a file, not a folder; "
                "choose another out_dir or name"
            ) from None
        except OSError as e:
            raise UserError(
                f"cannot write to {folder}: {e.strerror or e}; choose another out_dir or name, "
                "or fix its permissions"
            ) from None
        finally:
            try:
                probe.unlink(missing_ok=True)
            except OSError:
                pass


def check_replaceable(run_dir: Path) -> None:
    """The files that a run goes on to replace or append to must allow it, checked before any
    work: an immutable (``chattr +i``) ``last.pt`` used to fail only when the first epoch ended,
    naming the temporary file. Checkpoints are replaced by a rename, so a file whose times cannot
    be set (kept unchanged) is refused; ``metrics.jsonl`` and ``config.yaml`` are written in place,
    so they must open for appending (nothing is written)."""
    checkpoints = [run_dir / "checkpoints" / name for name in CHECKPOINT_NAMES]
    for path in [*checkpoints, run_dir / "metrics.jsonl", run_dir / "config.yaml"]:
        if not path.is_file():
            continue
        try:
            if path in checkpoints:
                st = path.stat()
                os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
            else:
                with open(path, "ab"):
                    pass
        except OSError as e:
            raise UserError(
                f"cannot replace {path}: {e.strerror or e}; lift its protection (chattr -i, "
                "chmod, chown) or choose another name"
            ) from None


class RunLock:
    """An exclusive lock file ``run_dir/.contrastlab.lock`` with the holder's pid and host."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.held = False

    def acquire(self) -> None:
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "job": os.environ.get("SLURM_JOB_ID"),
            "since": time.time(),
        }
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if not self._stale(holder):
                    raise UserError(
                        f"run directory {self.path.parent} is in use by process "
                        f"{holder.get('pid')} on host {holder.get('host')} (lock file "
                        f"{self.path}); wait for it, use another name=..., or delete the lock "
                        "file if that process is gone"
                    ) from None
                warn(
                    f"removing the stale lock {self.path} of process {holder.get('pid')} on "
                    f"{holder.get('host')}, which no longer runs"
                )
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return
        raise UserError(f"could not take the lock {self.path}; another process took it first")

    def _holder(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    @staticmethod
    def _stale(holder: dict) -> bool:
        """True when the holder is known to be gone: a dead pid on this host, or an empty file."""
        if not holder:
            return True  # a crash between creating and writing the lock
        job = os.environ.get("SLURM_JOB_ID")
        if job and holder.get("job") == job and holder.get("pid") != os.getpid():
            return True  # an earlier run of this (requeued) SLURM job, which has ended
        if holder.get("host") != socket.gethostname():
            return False  # another machine: its processes cannot be checked from here
        try:
            os.kill(int(holder.get("pid", -1)), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError, TypeError, OverflowError):
            return False
        return False

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def remove_stale_files(run_dir: Path) -> None:
    """Temporary files that interrupted writes left behind (checkpoints, scores, results)."""
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "scores", run_dir / "eval"):
        remove_stale_temps(folder)
        if folder.is_dir():
            for p in folder.glob("*.tmp"):  # older naming of the score and result files
                p.unlink(missing_ok=True)


# The sections of every config.yaml that a run writes (``config.save_config``).
_RUN_CONFIG_SECTIONS = {"method", "data", "model", "optim", "train"}
# torch's SummaryWriter names its files events.out.tfevents.<time>.<host>.<pid>.<counter>
_EVENT_FILE = re.compile(r"events\.out\.tfevents\.\d{10,}\..+\.\d+\.\d+")


def own_files(run_dir: Path) -> list[Path]:
    """The files in ``run_dir`` with the names that a run writes (``OWN_FILES``)."""
    found = []
    for pattern in OWN_FILES:
        found += [p for p in sorted(run_dir.glob(pattern)) if p.is_file() or p.is_symlink()]
    return found


def _written_by_contrastlab(path: Path) -> bool:
    """Whether a file with one of ``OWN_FILES``' names is what contrastlab writes there."""
    name = path.name
    if name == "config.yaml":
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return False
        return isinstance(data, dict) and _RUN_CONFIG_SECTIONS <= data.keys()
    if path.suffix == ".pt":
        try:
            read_checkpoint(path, verify=False)
        except UserError:
            return False
        return True
    if name.startswith("events.out.tfevents."):
        return bool(_EVENT_FILE.fullmatch(name))
    return True  # metrics.jsonl and the score files are checked when they are read


def is_run_directory(run_dir: Path) -> bool:
    """Whether ``run_dir`` is a contrastlab run: its ``config.yaml`` or one of its checkpoints
    is one that contrastlab wrote."""
    marks = [run_dir / "config.yaml", *existing_checkpoints(run_dir)]
    return any(p.is_file() and _written_by_contrastlab(p) for p in marks)


def refuse_foreign(run_dir: Path) -> None:
    """A folder that holds files with the names a run writes but is not a contrastlab run is
    the user's: refused whatever ``train.overwrite`` and ``train.resume`` say, before anything
    in it is written or deleted."""
    found = own_files(run_dir)
    if not found or is_run_directory(run_dir):
        return
    names = [str(p.relative_to(run_dir)) for p in found]
    listed = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    raise UserError(
        f"{run_dir} is not a contrastlab run directory (it has no config.yaml or checkpoint "
        f"written by contrastlab) but holds {listed}, which a run would overwrite; choose "
        "another out_dir or name"
    )


def clear_run(run_dir: Path) -> list[Path]:
    """Delete what contrastlab wrote in ``run_dir`` (and folders left empty); returns the files.

    Files with the names a run writes but another content (a torchvision export saved as
    ``checkpoints/epoch-0001.pt``, an event file of another program) are kept, with a warning.
    """
    return _delete_written(run_dir, OWN_FILES)


def _delete_written(run_dir: Path, patterns) -> list[Path]:
    """Delete the files of ``patterns`` (of ``OWN_FILES``) that contrastlab wrote, and the
    folders ``scores/`` and ``tensorboard/`` left empty; a warning names each file kept."""
    removed = []
    for pattern in patterns:
        for p in sorted(run_dir.glob(pattern)):
            if not (p.is_file() or p.is_symlink()):
                continue
            if not _written_by_contrastlab(p):
                warn(f"kept {p}: contrastlab did not write it")
                continue
            p.unlink()
            removed.append(p)
    for sub in ("scores", "tensorboard"):
        try:
            (run_dir / sub).rmdir()  # only when empty: the user's own files stay
        except OSError:
            pass
    return removed


# Files of a run's records (``OWN_FILES`` less its checkpoints): what a fresh start removes when
# an earlier attempt of the run left them without a checkpoint.
RECORD_FILES = tuple(p for p in OWN_FILES if not p.startswith("checkpoints/"))


def clear_earlier_attempt(run_dir: Path) -> list[Path]:
    """A fresh start in a run directory without checkpoints: delete the records that an earlier
    attempt left (killed, or Ctrl-C twice, before its first checkpoint), as
    ``train.overwrite=true`` does, so that metrics.jsonl, tensorboard/ and scores/ hold this run
    alone; one warning line names them. Nothing is touched where any checkpoint is left (a kept
    ``epoch-NNNN.pt``, whose records they are)."""
    if any((run_dir / "checkpoints").glob("*.pt")):
        return []
    removed = _delete_written(run_dir, RECORD_FILES)
    records = sorted({str(p.relative_to(run_dir)).split("/")[0] for p in removed} - {"config.yaml"})
    if records:
        listed = ", ".join(r if "." in r else f"{r}/" for r in records)
        warn(
            f"{run_dir} held the records ({listed}) of an earlier start of this run that wrote no "
            "checkpoint; they are deleted, as train.overwrite=true would, so that they hold this "
            "run alone"
        )
    return removed


def cut_metrics(path: Path, step: int, epoch: int) -> int:
    """On resume from the checkpoint at ``step`` (``epoch`` complete): delete the records that
    ``metrics.jsonl`` holds from after it (steps a killed run trained past its last checkpoint,
    which the resumed run trains again), rewriting the file whole. The events that tell the run's
    history (``HISTORY_EVENTS``) are kept, as are damaged lines. The cut is after the last
    ``checkpoint`` event of that checkpoint, or, where there is none (a checkpoint of another run,
    a damaged line), after the step. Returns the number of records deleted."""
    if not path.is_file():
        return 0
    lines = path.read_text(errors="replace").splitlines()
    events = []
    for text in lines:
        try:
            event = json.loads(text)
        except ValueError:
            event = None
        events.append(event if isinstance(event, dict) else None)
    saved = [
        i
        for i, e in enumerate(events)
        if e is not None
        and e.get("event") == "checkpoint"
        and e.get("step") == step
        and e.get("epoch") == epoch
    ]

    def after(i: int, event: dict | None) -> bool:
        if event is None or event.get("event") in HISTORY_EVENTS:
            return False
        if saved:
            return i > saved[-1]
        event_step = event.get("step")
        return isinstance(event_step, (int, float)) and event_step > step

    kept = [text for i, (text, e) in enumerate(zip(lines, events)) if not after(i, e)]
    if len(kept) == len(lines):
        return 0
    write_text(path, "".join(f"{text}\n" for text in kept))
    return len(lines) - len(kept)


def existing_checkpoints(run_dir: Path) -> list[Path]:
    folder = run_dir / "checkpoints"
    return [folder / n for n in CHECKPOINT_NAMES if (folder / n).is_file()]


def refuse_existing(run_dir: Path) -> None:
    """Without resume or overwrite, any checkpoint in the run directory stops the run."""
    found = existing_checkpoints(run_dir)
    if not found:
        return
    names = ", ".join(p.name for p in found)
    if (run_dir / "checkpoints" / "last.pt") in found:
        how = "train.resume=auto to continue it"
    else:
        how = f"train.resume={found[0]} to continue from it"
    raise UserError(
        f"run directory {run_dir} already holds checkpoints ({names}); pass {how}, name=NEW for "
        "a new run, or train.overwrite=true to start it afresh"
    )


def choose_checkpoint(run_dir: Path, announce: bool = True) -> tuple[Path, dict] | None:
    """``train.resume=auto``: the newest readable checkpoint (last.pt preferred), or None.

    A damaged or missing ``last.pt`` next to a readable ``best.pt`` gives one warning line and
    resumes from ``best.pt``; when none is readable, one error line names every problem.
    """
    found = existing_checkpoints(run_dir)
    if not found:
        return None
    readable, problems = [], []
    for path in found:
        try:
            state = read_checkpoint(path)
        except UserError as e:
            problems.append(str(e))
            continue
        readable.append((int(state.get("epoch") or 0), int(state.get("step") or 0), path, state))
    if not readable:
        raise UserError(f"no checkpoint of {run_dir} can be resumed: {' | '.join(problems)}")
    last = run_dir / "checkpoints" / "last.pt"
    readable.sort(key=lambda r: (r[0], r[1], r[2] == last))
    epoch, step, path, state = readable[-1]
    if path != last and announce:
        if last not in found:
            why = f"{last} is missing"
        elif problems:
            why = problems[0]
        else:
            why = f"{last} is older than {path.name} (a save was interrupted between the two)"
        warn(f"{why}; resuming from {path} (epoch {epoch}, step {step}), the newest readable one")
    return path, state


def repair_metrics(path: Path) -> None:
    """Warn (one line) about damaged lines in ``metrics.jsonl`` and end it with a newline.

    The damaged lines are kept (readers skip them); a line cut short by a crash would otherwise
    swallow the next record appended to it.
    """
    if not path.is_file():
        return
    data = path.read_bytes()
    bad = []
    for number, line in enumerate(data.splitlines(), 1):
        try:
            ok = isinstance(json.loads(line), dict) if line.strip() else True
        except ValueError:
            ok = False
        if not ok:
            bad.append(number)
    if data and not data.endswith(b"\n"):
        append_text(path, "\n")
    if bad:
        warn(
            f"{path} has {len(bad)} damaged line(s) (first: line {bad[0]}), e.g. from a crash "
            "mid-write; they are kept and skipped when the file is read"
        )
