"""Every file contrastlab writes goes through here: atomically, and a full disk is one line.

``write_atomic(path, write)`` lets ``write(file)`` fill a temporary file in ``path``'s own folder
(``.<name>.tmp-<pid>``), flushes and ``fsync``-s it, renames it over ``path`` and ``fsync``-s
the folder, so that a reader (or a crash, or a power cut) sees the previous file or the new one,
never half of one. On any error the temporary file is removed and the previous ``path`` is left
as it was; an error that comes from a full disk (``ENOSPC``, ``EDQUOT``, ``EFBIG``), also when a
library wrapped it in its own exception (``torch.save`` raises a ``RuntimeError`` from the
``OSError``), becomes one ``DiskFull`` line. ``append_text`` does the same for a line appended
to a log (an append cannot be atomic: on an error the file is cut back to its previous size).
``build_folder`` does it for a whole folder (an extracted archive): filled under another name,
renamed into place once complete.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

from contrastlab.errors import DiskFull

TEMP_MARK = ".tmp-"  # temporary files are ".<name>.tmp-<pid>" next to their target
NO_SPACE = frozenset(
    code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EFBIG) if code
)


def no_space_error(exc: BaseException | None) -> OSError | None:
    """The ``OSError`` with a no-space errno in ``exc`` or its chain (``__cause__``,
    ``__context__``), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def temp_path(path: Path) -> Path:
    """The temporary file that ``path`` is written through (same folder, so rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms without directory handles (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot sync a directory; the rename is still atomic
    finally:
        os.close(fd)


def _disk_full(path: Path, what: str = "") -> DiskFull:
    kept = f"the previous {path.name} is intact" if path.exists() else "it was not written"
    return DiskFull(f"no space left on device while writing {what or path}; {kept}")


def write_atomic(
    path: str | os.PathLike, write: Callable[[IO[bytes]], object], also: Iterable[Path] = ()
) -> Path:
    """Write ``path`` (and identical copies ``also``, renamed into place first) atomically.

    ``write(file)`` fills the temporary file, opened ``"wb"``; each of ``also`` gets a hard link
    (a copy where links are not supported) renamed into place, then ``path`` is renamed into
    place. Any error removes the temporary files and leaves the previous files intact; a full
    disk raises ``DiskFull``, whatever exception the writer wrapped it in. Returns ``path``.
    """
    path = Path(path)
    tmp = temp_path(path)
    temps = [tmp]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        for other in also:
            other = Path(other)
            other_tmp = temp_path(other)
            temps.append(other_tmp)
            other_tmp.unlink(missing_ok=True)
            try:
                os.link(tmp, other_tmp)
            except OSError:
                shutil.copyfile(tmp, other_tmp)
                with open(other_tmp, "rb+") as f:
                    os.fsync(f.fileno())
            os.replace(other_tmp, other)
            fsync_dir(other.parent)  # ``other`` is on disk before ``path`` is replaced
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except Exception as e:
        if no_space_error(e) is not None:
            raise _disk_full(path) from None
        raise
    finally:
        for t in temps:
            try:
                t.unlink(missing_ok=True)
            except OSError:
                pass
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return write_atomic(path, lambda f: f.write(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))


FIGURE_MARK = "contrastlab"  # the Software text chunk of the PNGs that save_figure writes


def save_figure(fig, path: str | os.PathLike, **kwargs) -> Path:
    """``fig.savefig`` through ``write_atomic``; a PNG is marked as written by contrastlab
    (``is_contrastlab_figure``), so that a later run may replace it and nothing else."""
    path = Path(path)
    fmt = kwargs.pop("format", None) or path.suffix.lstrip(".").lower() or "png"
    if fmt == "png":
        kwargs.setdefault("metadata", {"Software": FIGURE_MARK})
    return write_atomic(path, lambda f: fig.savefig(f, format=fmt, **kwargs))


def is_contrastlab_figure(path: Path) -> bool:
    """A PNG written by ``save_figure`` (its ``Software`` text chunk is ``contrastlab``)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.startswith(b"\x89PNG") and b"tEXtSoftware\x00" + FIGURE_MARK.encode() in head


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append ``text`` to ``path``; on any error the file is cut back to its previous size (no
    half line is left), and a full disk raises ``DiskFull``."""
    path = Path(path)
    data = text.encode("utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            start = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            except BaseException:
                try:
                    os.ftruncate(fd, start)
                except OSError:
                    pass
                raise
        finally:
            os.close(fd)
    except Exception as e:
        if no_space_error(e) is not None:
            raise DiskFull(
                f"no space left on device while appending to {path}; the lines written before "
                "are intact"
            ) from None
        raise


def partial_folder(folder: str | os.PathLike) -> Path:
    """The temporary sibling that ``build_folder`` fills for ``folder``: ``.<name>.partial``."""
    folder = Path(folder)
    return folder.with_name(f".{folder.name}.partial")


@contextlib.contextmanager
def new_folders(folder: str | os.PathLike) -> Iterator[Path]:
    """Around work that fills ``folder``: the folders of its path that do not exist yet (``folder``
    itself among them) are removed again, deepest first, when the block ends with an error or a
    stop (Ctrl-C) and left them empty. A folder that existed before, or holds anything, is kept."""
    folder = Path(folder)
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        yield folder
    except BaseException:
        for path in missing:  # deepest first
            try:
                path.rmdir()  # only an empty folder
            except OSError:
                break
        raise


@contextlib.contextmanager
def build_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Make ``folder`` whole or not at all: yields a temporary sibling to fill
    (``partial_folder``), renamed to ``folder`` when the block ends without an error.

    So ``folder`` exists only once complete, and a later run can take its existence as proof:
    an interruption (Ctrl-C, a full disk, a killed process) leaves at most the temporary folder,
    which is removed on an error and, when a killed process could not, by the next
    ``build_folder`` of the same folder. ``folder`` must not exist (or be an empty folder); a
    full disk raises ``DiskFull``. One build of a folder at a time: a second would remove the
    first one's temporary folder.
    """
    folder = Path(folder)
    temp = partial_folder(folder)
    if temp.is_symlink() or temp.is_file():
        temp.unlink()
    elif temp.exists():
        shutil.rmtree(temp)  # left by an earlier build that was stopped before it could clean up
    try:
        temp.mkdir(parents=True)
        yield temp
        os.replace(temp, folder)
        fsync_dir(folder.parent)
    except BaseException as e:
        shutil.rmtree(temp, ignore_errors=True)
        if isinstance(e, Exception) and no_space_error(e) is not None:
            raise DiskFull(
                f"no space left on device while making {folder}; nothing of it was kept"
            ) from None
        raise
