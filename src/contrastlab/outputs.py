"""Where a command writes its output: checked before any work, never over the user's other files.

Every command that takes ``--out`` (eval, export, convert, report, scores, analyze) calls
``check_output`` first. A file output may replace an existing file only when that file is a
previous output of the same kind (an eval result, a report, a converted checkpoint, an exported
backbone, an analysis), recognized
by its contents; anything else (a training checkpoint, a run's ``config.yaml`` or
``metrics.jsonl``, a user's own file) is refused unless ``--overwrite`` is given, and an input of
the command is never overwritten at all.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from contrastlab.errors import UserError


def is_eval_result(path: Path) -> bool:
    """A JSON result written by ``contrastlab eval`` (a dict with ``protocol`` and ``setup``)."""
    try:
        if path.stat().st_size > 50_000_000:
            return False
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "protocol" in data and "setup" in data


def is_converted_checkpoint(path: Path) -> bool:
    """A checkpoint written by ``contrastlab convert`` (it records what it was converted from)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - anything unreadable is not ours
        return False
    return isinstance(state, dict) and isinstance(state.get("converted"), dict)


_BACKBONE_PREFIXES = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")


def is_export(path: Path) -> bool:
    """A backbone written by ``contrastlab export``: a safetensors file with contrastlab's
    metadata, a Detectron2 pickle signed by contrastlab, or a torch file holding exactly a
    ResNet backbone's tensors (torchvision's names, no ``fc``)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return False
    if path.suffix == ".safetensors":
        try:
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                return (f.metadata() or {}).get("format") == "contrastlab-backbone"
        except Exception:  # noqa: BLE001 - anything unreadable is not ours
            return False
    if head.startswith(b"\x80"):  # a plain pickle: Detectron2's format, whose signature
        # ("__author__": "contrastlab") is written last; read as bytes, never unpickled
        try:
            with open(path, "rb") as f:
                f.seek(max(0, path.stat().st_size - 256))
                tail = f.read()
        except OSError:
            return False
        return b"__author__" in tail and b"contrastlab" in tail
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001
        return False
    return (
        isinstance(state, dict)
        and bool(state)
        and all(isinstance(v, torch.Tensor) for v in state.values())
        and all(str(k).startswith(_BACKBONE_PREFIXES) for k in state)
    )


REPORT_MARK = "<title>contrastlab report: "  # in the head of every report (viz/report.py)


def is_report(path: Path) -> bool:
    """An HTML page written by ``contrastlab report`` (it carries ``REPORT_MARK``)."""
    try:
        with open(path, "rb") as f:
            return REPORT_MARK.encode() in f.read(4096)
    except OSError:
        return False


def check_output(
    path: str | os.PathLike,
    *,
    folder: bool = False,
    inputs: Iterable[str | os.PathLike] = (),
    replaceable: Callable[[Path], bool] | None = None,
    what: str = "the output",
    overwrite: bool = False,
    flag: str = "--out",
    instead: str | None = None,
) -> None:
    """Refuse, in one line and before any work, an output ``path`` that cannot or must not be
    written; otherwise return with nothing created.

    Refused: ``path`` is one of ``inputs`` (the files the command reads); a parent of ``path`` is
    a file; ``path`` is a folder where a file is expected (or a file where a folder is); an
    existing file that ``replaceable`` does not recognize as a previous output of this command,
    unless ``overwrite`` (``instead`` replaces the advice to choose another ``flag``); a folder that cannot be written (a probe file is written and removed,
    with any folders this check had to create).
    """
    path = Path(path)
    target = path.resolve()
    for given in inputs:
        if Path(given).resolve() == target:
            raise UserError(
                f"{flag} {path} is the file this command reads; writing it would destroy it: "
                f"choose another {flag}"
            )
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise UserError(f"cannot write {path}: {parent} is a file, not a folder")
    if folder and path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file; give a folder for {what}")
    if not folder and path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file name for {what}")
    if not folder and path.exists() and not overwrite:
        if replaceable is None or not replaceable(path):
            raise UserError(
                f"{path} already exists and is not {what} of an earlier run of this command; "
                f"{instead or f'choose another {flag}'}, or add --overwrite to replace it"
            )
    _probe_writable(path if folder else path.parent)


def _probe_writable(folder: Path) -> None:
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    probe = folder / f".probe.tmp-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
    except OSError as e:
        raise UserError(f"cannot write to {folder}: {e.strerror or e}") from None
    finally:
        try:
            probe.unlink(missing_ok=True)
            for made in created:  # deepest first
                made.rmdir()
        except OSError:
            pass


def remove_earlier(folder: Path, stale: Iterable[Path], what: str) -> list[Path]:
    """Remove ``stale``: the files in ``folder`` that an earlier run of this command wrote (each
    recognized by the caller, never the user's other files) and this run did not write again,
    so that the folder shows this run's output only; then the folders this left empty. One line
    on stderr names what was removed. Returns the removed files."""
    import sys

    from contrastlab.errors import listed, plural

    folder = Path(folder)
    removed = []
    for path in sorted(set(stale)):
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as e:
            raise UserError(
                f"cannot remove {path} of an earlier {what}: {e.strerror or e}"
            ) from None
        removed.append(path)
    for parent in sorted({p for path in removed for p in path.parents}, reverse=True):
        if parent != folder and folder in parent.parents:
            try:
                parent.rmdir()  # only an empty folder
            except OSError:
                pass
    if removed:
        groups: dict[str, int] = {}  # a file, or a folder of several (encoders/A/)
        for path in removed:
            parts = path.relative_to(folder).parts
            key = "/".join(parts[:2]) + "/" if len(parts) > 2 else "/".join(parts)
            groups[key] = groups.get(key, 0) + 1
        names = [k if k[-1] != "/" else f"{k} ({plural(n, 'file')})" for k, n in groups.items()]
        print(
            f"removed {plural(len(removed), 'file')} of an earlier {what} from {folder} that "
            f"this run does not write again: {listed(names)}",
            file=sys.stderr,
            flush=True,
        )
    return removed
