"""How many DataLoader worker processes to start: at most the CPUs this process may use.

More workers than CPUs only compete with the main process for them, and torch says so with a
multi-line ``UserWarning`` per DataLoader. Every DataLoader of the package takes its number from
:func:`usable_workers`, which caps it and says so once in one line of its own.
"""

from __future__ import annotations

import os

_said: set[tuple[int, int]] = set()


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity, as torch's check counts them)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def usable_workers(wanted: int) -> int:
    """``wanted`` worker processes, capped at :func:`available_cpus`, with one warning line the
    first time a number is capped."""
    cpus = available_cpus()
    if wanted <= cpus:
        return wanted
    if (wanted, cpus) not in _said:
        from contrastlab.errors import warn

        _said.add((wanted, cpus))
        warn(
            f"{wanted} DataLoader workers asked for (data.num_workers or --workers), and this "
            f"process may use {cpus} CPU{'s' if cpus != 1 else ''}: starting {cpus}; ask for at "
            f"most {cpus} to silence this",
            per_process=True,
        )
    return cpus
