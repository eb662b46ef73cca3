"""Shared helpers of the benchmarks: machine description, interleaved timing, peak memory.

The machines these run on are often shared, so every benchmark

* runs its variants in interleaved rounds (the order rotates from round to round), so that a burst
  of load from another process hits all variants alike;
* reports the median and the best time of each variant, and ratios as the median of the per-round
  ratios (paired within a round);
* records the load average before and after.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` around the measured steps; on CPU the
torch allocator keeps no peak, so each variant runs in a child process (``child_peak_memory``) that
reports the rise of its peak resident set size (VmHWM) over the resident size it had after
set-up, i.e. the memory the step itself needs on top of the model, optimizer and inputs.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NoReturn

import torch

MEMORY_TAG = "PEAK_MEMORY_JSON "


# ----------------------------------------------------------------------------------------------
# The machine
# ----------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _bf16_instructions() -> str:
    """The native bf16 instruction sets the CPU reports (what makes bf16 autocast fast)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(
                (line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []
            )
    except OSError:
        return "unknown"
    found = [name for name in ("avx512_bf16", "amx_bf16") if name in flags]
    return "+".join(found) or "none"


def _ram_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def machine_info(device: torch.device) -> dict:
    info = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "cpu_bf16": _bf16_instructions(),
        "ram_gib": round(_ram_gib() or 0.0, 1),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "device": str(device),
        "load_before": load_average(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def print_header(title: str, info: dict, settings: dict) -> None:
    print(f"== {title}")
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()), flush=True)


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------


def synchronize(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass
class Timings:
    """Per-round wall and CPU seconds per call of each variant (same rounds for all)."""

    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.wall[name])

    def best(self, name: str) -> float:
        return min(self.wall[name])

    def cpu_median(self, name: str) -> float:
        return statistics.median(self.cpu[name])

    def ratio(self, num: str, den: str) -> float:
        """Median over rounds of wall(num) / wall(den), each round's pair measured side by side."""
        return statistics.median(a / b for a, b in zip(self.wall[num], self.wall[den]))

    def difference(self, num: str, den: str) -> float:
        """Median over rounds of wall(num) - wall(den), paired within a round as ``ratio``."""
        return statistics.median(a - b for a, b in zip(self.wall[num], self.wall[den]))

    def ratios(self, num: str, den: str) -> list[float]:
        return [a / b for a, b in zip(self.wall[num], self.wall[den])]


def interleaved(
    variants: dict[str, Callable[[], None]],
    *,
    rounds: int,
    calls: int = 1,
    warmup: int = 1,
    device: torch.device | None = None,
    verbose: bool = True,
) -> Timings:
    """Time each variant ``calls`` times per round, rounds interleaved, order rotated per round.

    Each variant is first called ``warmup`` times (allocator, oneDNN primitive caches, optimizer
    state). Returns seconds per call, one entry per round.
    """
    names = list(variants)
    for name in names:
        for _ in range(warmup):
            variants[name]()
        synchronize(device)
    out = Timings({n: [] for n in names}, {n: [] for n in names})
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            synchronize(device)
            c0, t0 = cpu_seconds(), time.perf_counter()
            for _ in range(calls):
                variants[name]()
            synchronize(device)
            out.wall[name].append((time.perf_counter() - t0) / calls)
            out.cpu[name].append((cpu_seconds() - c0) / calls)
        if verbose:
            cells = "  ".join(f"{n} {out.wall[n][-1] * 1e3:8.1f} ms" for n in names)
            print(f"  round {r + 1}/{rounds}: {cells}  (load {load_average()})", flush=True)
    return out


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


# ----------------------------------------------------------------------------------------------
# Peak memory
# ----------------------------------------------------------------------------------------------


def _proc_status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss_bytes() -> int:
    """Peak resident set size of this process.

    VmHWM where there is /proc: ``ru_maxrss`` survives ``execve`` on Linux, so in a child started
    from a big parent it would report the parent's peak.
    """
    hwm = _proc_status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def report_child_memory(
    step: Callable[[], None], steps: int = 2, device: torch.device | None = None
) -> None:
    """In a child process: run ``step`` and print the peak memory as a tagged JSON line.

    Call after the model, optimizer and inputs exist. Reports the peak resident set size of the
    process and its rise over the resident size before the first step (CPU), or the peak of
    ``torch.cuda.max_memory_allocated`` above what was allocated before (CUDA).
    """
    if device is not None and device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        for _ in range(steps):
            step()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        result = {
            "kind": "cuda_max_memory_allocated",
            "peak_mib": peak / 2**20,
            "step_mib": (peak - base) / 2**20,
        }
    else:
        base = _rss_bytes()
        for _ in range(steps):
            step()
        peak = _maxrss_bytes()
        result = {
            "kind": "cpu_peak_rss",
            "peak_mib": peak / 2**20,
            "step_mib": (peak - base) / 2**20,
        }
    print(MEMORY_TAG + json.dumps(result), flush=True)


def child_peak_memory(argv: list[str], timeout: float = 600) -> dict | None:
    """Run ``python argv...`` (a benchmark in its child mode) and read its memory report."""
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith(MEMORY_TAG):
            return json.loads(line[len(MEMORY_TAG) :])
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    why = lines[-1] if lines else "no message"  # the exception's own line comes last
    print(
        f"warning: the peak memory of {Path(argv[0]).name} {' '.join(argv[1:])} was not "
        f"measured: its child process failed (exit {proc.returncode}): {why}",
        file=sys.stderr,
        flush=True,
    )
    return None


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def add_allocator_flag(ap) -> None:
    ap.add_argument(
        "--default-malloc",
        action="store_true",
        help="CPU: leave glibc's malloc as it is (by default the benchmark configures it as the "
        "trainer does, train.keep_freed_memory=true; it applies to every variant in the process)",
    )


def configure_allocator(args, device: torch.device) -> str:
    """As the trainer on the CPU: malloc keeps freed memory. Returns a label for the header."""
    from contrastlab.allocator import keep_freed_memory

    if device.type != "cpu" or args.default_malloc:
        return "default"
    return "keeps freed memory" if keep_freed_memory() else "default (mallopt unavailable)"


# ----------------------------------------------------------------------------------------------
# Options: checked ranges, one-line errors
# ----------------------------------------------------------------------------------------------


def fail(message: str) -> NoReturn:
    """Print ``error: <message>`` as one line on stderr and exit with status 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line, ``error: <script>: <what>; see <script> --help``,
    with exit status 2 (as the ``contrastlab`` command line); ``--help`` still prints the usage.
    Flags are not abbreviated."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        fail(f"{self.prog}: {message}; see {self.prog} --help")


def integer(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high] (no upper bound without ``high``)."""
    where = f"in [{low}, {high}]" if high is not None else f">= {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer {where}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be an integer {where}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def positive_number(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


POSITIVE = integer(1)
NON_NEGATIVE = integer(0)


def parse_args(ap: argparse.ArgumentParser, quick: dict | None = None) -> argparse.Namespace:
    """Parse the command line; with ``--quick``, ``quick`` gives the defaults of the options the
    command line does not set (an option given explicitly keeps its value)."""
    args = ap.parse_args()
    if quick and getattr(args, "quick", False):
        ap.set_defaults(**quick)
        args = ap.parse_args()
    return args


def add_device(ap: argparse.ArgumentParser, default: str = "cpu") -> None:
    ap.add_argument("--device", default=default, choices=["cpu", "cuda"], help="where to run")


def device_of(name: str) -> torch.device:
    """The ``--device``; ``cuda`` without a CUDA device is refused in one line."""
    if name == "cuda" and not torch.cuda.is_available():
        fail(
            "--device cuda: no CUDA device here (torch.cuda.is_available() is false); "
            "run with --device cpu"
        )
    return torch.device(name)


def require_lightly(alternative: str | None = "--no-lightly") -> None:
    """Refuse in one line, before any work, when lightly is not installed."""
    try:
        import lightly  # noqa: F401
    except ImportError:
        also = f", or {alternative}" if alternative else ""
        fail(
            "lightly is not installed: .venv/bin/python -m pip install -c constraints.txt "
            f"lightly{also}"
        )


def trainer_format(cfg, device: torch.device) -> tuple[bool, bool]:
    """``(amp, channels_last)`` as the trainer runs ``cfg`` on ``device``: bf16 autocast by
    ``train.amp`` (unset: CUDA only), channels_last by ``train.channels_last`` (unset:
    ``default_channels_last``: CUDA and CPUs with AVX-512)."""
    from contrastlab.train import default_channels_last

    amp = cfg.train.amp if cfg.train.amp is not None else device.type == "cuda"
    channels_last = cfg.train.channels_last
    if channels_last is None:
        channels_last = default_channels_last(device)
    return amp, channels_last


def stop_status(signal_name: str) -> int:
    """The exit status after a stop signal, as the ``contrastlab`` command line outside a
    training: 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM)."""
    import signal

    return 128 + getattr(signal, signal_name, signal.SIGINT)


def raise_on_stop_signals() -> None:
    """SIGTERM (and SIGUSR1) raise ``StopRequested`` where the program is, as Ctrl-C raises
    ``KeyboardInterrupt``: the ``with`` blocks on the way clean up (temporary folders)."""
    import signal

    from contrastlab.errors import StopRequested

    def stop(signum, frame):
        raise StopRequested(signum)

    for name in ("SIGTERM", "SIGUSR1"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), stop)


def run(main: Callable[[], None], sizes: str = "the size options") -> None:
    """Run a benchmark's ``main``: a ``UserError`` of the library (a bad size for a config, a
    path) is one ``error:`` line with exit status 2, as on the ``contrastlab`` command line; a
    stop (Ctrl-C, SIGTERM) is one line, ``stopped by Ctrl-C (SIGINT)``, with exit status 128 + the
    signal's number. A benchmark that trains in a temporary folder cannot resume there: a stop
    inside its training says that the measurement must be run again. An allocation that fails
    (sizes larger than the memory) is one line that names the options to lower, ``sizes``."""
    from contrastlab.errors import (
        StopRequested,
        TrainingInterrupted,
        UserError,
        one_line,
        signal_text,
    )

    os.environ.setdefault("TQDM_DISABLE", "1")
    raise_on_stop_signals()
    prog = os.path.basename(sys.argv[0]) or "benchmark"
    try:
        main()
    except UserError as e:
        fail(one_line(e))
    except TrainingInterrupted as e:
        # "stopped by SIGTERM in epoch 1 ...; to continue, run the same command with ...": the
        # training's folder is the benchmark's own, gone or rewritten by the next run
        name = e.signal_name or "SIGINT"
        print(
            f"{prog}: stopped by {signal_text(name)} during its training; the measurement is incomplete: "
            "run the same command again",
            file=sys.stderr,
        )
        raise SystemExit(stop_status(name)) from None
    except KeyboardInterrupt as e:  # Ctrl-C, or StopRequested (SIGTERM, SIGUSR1)
        name = e.signal_name if isinstance(e, StopRequested) else "SIGINT"
        print(
            f"{prog}: stopped by {signal_text(name)}; the measurement was not finished",
            file=sys.stderr,
        )
        raise SystemExit(stop_status(name)) from None
    except MemoryError:
        fail(f"{prog}: out of memory; {_lower(sizes)}")
    except Exception as e:
        from contrastlab.cli import _failed_allocation

        wanted = _failed_allocation(e)
        if wanted is None:
            raise
        fail(f"{prog}: out of memory ({wanted}); {_lower(sizes)}")


def _lower(sizes: str) -> str:
    return f"the sizes given need more memory than this machine has: lower {sizes}"


def check_memory(need_bytes: int, options: str, sizes: str) -> None:
    """Refuse before any work, in one line, sizes whose tensors alone take more than the memory
    this machine has available (``MemAvailable``; no check where it is not known)."""
    try:
        with open("/proc/meminfo") as f:
            available = next(
                int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")
            )
    except (OSError, StopIteration):
        return
    if need_bytes > available:
        fail(
            f"{options}: needs {need_bytes / 2**30:.1f} GiB for its images alone, more than the "
            f"{available / 2**30:.1f} GiB of memory available; lower {sizes}"
        )


def open_archive(path, option: str):
    """``tarfile.open(path)``; a file that is not a (compressed) tar archive is one line."""
    import tarfile

    try:
        return tarfile.open(path)
    except tarfile.TarError:
        fail(f"{option} {path} is not a tar archive (plain or compressed); give a .tar.gz file")
    except IsADirectoryError:
        fail(f"{option} {path} is a folder, not a tar archive; give a .tar.gz file")


def check_config(options: str, build: Callable, *args):
    """``build(*args)`` (a config from the benchmark's options) before any work; its
    ``UserError`` is one line that names the benchmark's ``options`` the config came from."""
    from contrastlab.errors import UserError, one_line

    try:
        return build(*args)
    except UserError as e:
        fail(f"{options}: {one_line(e)}")
