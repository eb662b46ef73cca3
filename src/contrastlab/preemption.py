"""Stopping and resuming inside an epoch: signals, time-based checkpoints, random states.

* ``StopSignals`` turns SIGTERM, SIGUSR1 (what SLURM sends before a time limit with
  ``--signal=USR1@120``) and Ctrl-C into a flag; the trainer finishes its step, writes a checkpoint
  and stops (``TrainingInterrupted``, exit status ``EXIT_STOPPED``). A second Ctrl-C aborts at once.
* ``StopPolicy`` decides after each step whether to checkpoint now (a signal, or
  ``train.checkpoint_minutes`` of wall time since the last checkpoint). Under ``torchrun`` every
  process takes part in one small all-reduce per step over a CPU (gloo) group, so all of them
  stop at, and save, the same step.
* ``capture_rng`` / ``restore_rng`` hold every random state a step consumes: Python's, NumPy's,
  torch's (CPU and this process's GPU) and each ``torch.Generator`` the trainer owns.
* ``ResumableOrder`` wraps the epoch's sampler: it draws the epoch's order exactly as without it
  and can skip the indices of batches already trained, without loading them, restoring the random
  states just before the first batch of the resumed epoch is produced.
"""

from __future__ import annotations

import itertools
import random
import signal
import threading
import time
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from contrastlab import distributed
from contrastlab.errors import EXIT_STOPPED, InterruptedTwice  # noqa: F401 - re-exported

STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGUSR1", "SIGINT") if hasattr(signal, name)
)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """``worker_init_fn`` of the training's DataLoaders: workers ignore the stop signals.

    ``timeout``, Ctrl-C and SLURM signal the whole process group, workers included; a worker
    killed by SIGTERM makes torch raise "DataLoader worker ... is killed by signal" in the main
    process at whatever line it is running, even as it writes its checkpoint. Ignoring the
    signals leaves the stop to the main process, which shuts its workers down as usual.
    """
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class StopSignals:
    """Context manager: while active, the stop signals set ``received`` instead of killing.

    A second SIGINT raises ``InterruptedTwice``, a ``KeyboardInterrupt`` (the user insists).
    Handlers are only installed from the main thread (Python's rule); elsewhere the context does
    nothing.
    """

    def __init__(self):
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.received == "SIGINT":
            raise InterruptedTwice
        self.received = signal.Signals(signum).name

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class StopPolicy:
    """After each step: checkpoint now? and stop after it? Agreed by every process."""

    def __init__(self, signals: StopSignals, minutes: float):
        self.signals = signals
        self.seconds = minutes * 60.0
        self.last_save = time.monotonic()
        self._group = None
        if distributed.is_distributed():
            # a CPU group, so that the per-step flag never waits for the accelerator's stream
            self._group = torch.distributed.new_group(backend="gloo")

    def saved(self) -> None:
        self.last_save = time.monotonic()

    def poll(self) -> tuple[bool, bool]:
        """(checkpoint now, then stop); the same answer on every process."""
        stop = self.signals.received is not None
        due = (
            distributed.is_main()
            and self.seconds > 0
            and time.monotonic() - self.last_save >= self.seconds
        )
        if self._group is not None:
            flags = torch.tensor([int(stop), int(due)])
            torch.distributed.all_reduce(
                flags, op=torch.distributed.ReduceOp.MAX, group=self._group
            )
            stop, due = bool(flags[0]), bool(flags[1])
        return stop or due, stop

    def gather(self, obj) -> list:
        """``obj`` of every process, in rank order (``[obj]`` in a single process)."""
        if self._group is None:
            return [obj]
        out = [None] * distributed.world_size()
        torch.distributed.all_gather_object(out, obj, group=self._group)
        return out


def capture_rng(generators: dict[str, torch.Generator], device: torch.device) -> dict:
    """Every random state of this process, as tensors and plain values (``weights_only``-safe)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(mt), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), cached],
        "torch": torch.get_rng_state(),
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict, generators: dict[str, torch.Generator], device: torch.device) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    for name, g in generators.items():
        if name in state["generators"]:
            g.set_state(state["generators"][name])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class ResumableOrder(Sampler):
    """The indices of ``inner`` (drawn as ``inner`` draws them), optionally from an offset on.

    ``resume_at(n, before_first)`` applies to the next pass only: the first ``n`` indices are
    skipped without being loaded, and ``before_first()`` runs just before the first remaining one
    is handed out (after the epoch's order has been drawn from its generator).
    """

    def __init__(self, inner: Sampler):
        self.inner = inner
        self._skip = 0
        self._before_first: Callable[[], None] | None = None

    def resume_at(self, skip: int, before_first: Callable[[], None] | None) -> None:
        self._skip, self._before_first = skip, before_first

    def __iter__(self) -> Iterator[int]:
        skip, hook = self._skip, self._before_first
        self._skip, self._before_first = 0, None
        it = iter(self.inner)
        if skip:
            it = itertools.islice(it, skip, None)
        first = next(it, None)  # draws the order (randperm) before the states are restored
        if hook is not None:
            hook()
        if first is None:
            return
        yield first
        yield from it

    def __len__(self) -> int:
        return len(self.inner)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)
