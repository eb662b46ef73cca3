"""Keep freed memory in the process on the CPU, instead of handing it back to the OS every step.

glibc's malloc serves large blocks (from 128 KiB, rising with use up to 32 MiB) with ``mmap`` and
returns them to the kernel on ``free``; it also trims the top of the heap once 128 KiB or more are
free there. A training step allocates and frees the same activation tensors every time, so each
step then faults every page of them in again: 100,000 to 2,000,000 minor page faults per step for
a ResNet-18 step on 32 px images, 3-25% of the step time on a 2-core CPU, the most for the largest
batches (benchmarks/page_faults.py, docs/benchmarks.md). Serving every block from the heap and
never trimming it lets the next step reuse the same pages. The price is that the process keeps its
peak memory until it exits (5-10% more peak memory in the same benchmark).

This is what ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...`` in the environment, or a caching
allocator such as jemalloc or tcmalloc, would do; ``mallopt`` does it from inside the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1  # the largest value mallopt's int accepts: 2 GiB of free heap top


def keep_freed_memory() -> bool:
    """Configure glibc's malloc to reuse freed memory; True when it took effect.

    A no-op returning False outside Linux or without glibc (musl, macOS, Windows).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success, 0 on error
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
