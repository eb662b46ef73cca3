"""What a long evaluation step says while it runs: a first line naming the work, and, where no
progress bar is shown (``--no-progress``, or stderr not a terminal, where tqdm turns itself
off), a line on stderr every ``INTERVAL`` seconds with how far it is and an estimate of the rest.
"""

from __future__ import annotations

import sys
import time

INTERVAL = 30.0  # seconds between progress lines
_last_line = [0.0]  # shared by nested steps (features inside a corruption sweep): one line at most


def say(text: str) -> None:
    """One line on stderr."""
    print(text, file=sys.stderr, flush=True)


def bar_shown(progress: bool) -> bool:
    """Whether tqdm draws a bar (``disable=None``: only on a terminal)."""
    return bool(progress) and sys.stderr.isatty()


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Heartbeat:
    """``update(done, where)`` after each unit of ``total``; prints ``<what>: <where>, 1 min 30 s
    elapsed, about 8 min 12 s left`` at most every ``INTERVAL`` seconds, and only where no bar
    shows the same."""

    def __init__(self, what: str, total: int, progress: bool = True):
        self.what, self.total = what, max(int(total), 1)
        self.active = not bar_shown(progress)
        self.start = time.monotonic()

    def update(self, done: int, where: str, left: float | None = None, rough: str = "") -> None:
        """``left``: the caller's own estimate of the seconds left (default: the elapsed time
        spread evenly over the units done); ``rough``: why that estimate may be far off, said in
        brackets after it."""
        if not self.active or done <= 0:
            return
        now = time.monotonic()
        if now - max(self.start, _last_line[0]) < INTERVAL:
            return
        _last_line[0] = now
        elapsed = now - self.start
        if left is None:
            left = elapsed * max(self.total - done, 0) / done
        note = f" ({rough})" if rough else ""
        say(f"{self.what}: {where}, {duration(elapsed)} elapsed, about {duration(left)} left{note}")
