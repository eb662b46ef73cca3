"""stdout and stderr that outlive their reader: ``contrastlab train ... | head -1``, a ``tee``
or ``less`` that ends, a terminal that closes.

While a command runs, ``sys.stdout`` and ``sys.stderr`` are ``Outliving`` streams: the first write
or flush that finds the reader gone (``BrokenPipeError``, EPIPE) points the file descriptor at
``os.devnull`` and the command carries on with the rest of that stream discarded: a training
finishes and writes its checkpoints, an evaluation its files, and the exit status is the one the
command would have had. Python ignores SIGPIPE, so a closed pipe shows only as that error.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Callable, Iterator


class Outliving:
    """A text stream that forwards to ``stream`` until its reader goes away, then discards.

    ``on_gone`` runs once, when the reader is first found gone (``None``: silently)."""

    def __init__(self, stream, on_gone: Callable[[], None] | None = None):
        self._stream = stream
        self.on_gone = on_gone
        self.gone = False

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._reader_gone()
            return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._reader_gone()

    def __getattr__(self, name: str):  # fileno, isatty, encoding, buffer, ...
        return getattr(self._stream, name)

    def _reader_gone(self) -> None:
        try:  # what follows, and what the buffer still holds, goes to os.devnull
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self._stream.fileno())
            finally:
                os.close(devnull)
            self._stream.flush()
        except (OSError, ValueError, io.UnsupportedOperation):
            pass  # a stream without a descriptor: its writes keep failing, and are discarded
        if not self.gone:
            self.gone = True
            if self.on_gone is not None:
                self.on_gone()


@contextlib.contextmanager
def outliving_output() -> Iterator[tuple[Outliving, Outliving]]:
    """``sys.stdout`` and ``sys.stderr`` as ``Outliving`` streams within this block (yielded:
    ``(stdout, stderr)``); flushed, and the streams before put back, when it ends."""
    saved = sys.stdout, sys.stderr
    out, err = Outliving(sys.stdout), Outliving(sys.stderr)
    sys.stdout, sys.stderr = out, err
    try:
        yield out, err
    finally:
        out.flush()  # what is left in the buffer, while a closed pipe is still taken care of
        err.flush()
        if sys.stdout is out:
            sys.stdout = saved[0]
        if sys.stderr is err:
            sys.stderr = saved[1]
