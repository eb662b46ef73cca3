"""Positive and negative pair scores: per-step statistics, their recording and loading.

The file layout is specified in docs/scores-format.md.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from contrastlab.atomic import write_atomic, write_text
from contrastlab.errors import UserError, as_path


@dataclass
class ScoreStats:
    """Scores of one batch of queries in one embedding space at one stage ("raw" or "effective").

    ``pos[i]`` is query i's score with its positive; ``neg_mean[i]`` and ``neg_var[i]`` are the mean
    and (population) variance of its scores with all of its negatives. The histograms count every
    positive and every negative score of the batch in ``bins`` equal bins over ``[low, high]``;
    scores outside the range are counted in the end bins. ``pos_exp[i]`` = exp(pos[i] / T) and
    ``neg_exp[i]`` = mean over the negatives of exp(score / T), the terms of InfoNCE's numerator and
    denominator that the Feature Transformation reference code keeps; NaN when no temperature was
    given.
    """

    pos: Tensor  # [B]
    neg_mean: Tensor  # [B]
    neg_var: Tensor  # [B]
    pos_hist: Tensor  # [bins], float32 counts
    neg_hist: Tensor  # [bins]
    pos_exp: Tensor | None = None  # [B]; None is read as NaN
    neg_exp: Tensor | None = None  # [B]


# The accelerator branch below (histc, one fused norm) also runs on the CPU when this is True; the
# tests set it so that both branches are checked against the same references on any machine.
FORCE_DEVICE_PATH = False


def _cpu_path(x: Tensor) -> bool:
    """Whether ``x`` takes the CPU branch (bin indices + bincount, row blocks)."""
    return x.device.type == "cpu" and not FORCE_DEVICE_PATH


@torch.no_grad()
def score_stats(
    pos: Tensor,
    neg: Tensor,
    bins: int = 200,
    low: float = -1.0,
    high: float = 1.0,
    temperature: float | None = None,
) -> ScoreStats:
    """Summarize scores (not logits: no temperature) of B queries: ``pos`` [B], ``neg`` [B, N].

    With ``temperature`` T, also exp(pos / T) and the mean of exp(neg / T) per query. Everything
    is computed and returned in float32 with autocast off, so that a bf16 step cannot round the
    statistics (pass float32 scores: bf16 ones are already rounded). Runs on the scores' device
    without a host synchronization on accelerators, so it can be called every step.
    """
    with autocast_off(pos.device):
        pos = pos.detach().float()
        neg = neg.detach().float()
        neg_mean = neg.mean(dim=1)
        # The variance takes two passes (the mean, then the squared deviations from it) rather
        # than torch.var_mean: as accurate when all scores are nearly equal (a collapsed space,
        # variance ~1e-7) and about half the cost on CPU, where var_mean's Welford loop is slow.
        if _cpu_path(neg):
            sq_deviations, neg_hist, neg_exp = _deviations_and_histogram_cpu(
                neg, neg_mean, bins, low, high, temperature
            )
        else:
            sq_deviations = torch.linalg.vector_norm(neg - neg_mean[:, None], dim=1).square_()
            neg_hist = histogram(neg, bins, low, high)
            neg_exp = None if temperature is None else neg.div(temperature).exp_().mean(dim=1)
        nan = torch.full_like(pos, float("nan"))
        return ScoreStats(
            pos=pos,
            neg_mean=neg_mean,
            neg_var=sq_deviations / max(neg.shape[1], 1),
            pos_hist=histogram(pos, bins, low, high),
            neg_hist=neg_hist,
            pos_exp=nan if temperature is None else pos.div(temperature).exp(),
            neg_exp=nan if neg_exp is None else neg_exp,
        )


def autocast_off(device: torch.device):
    """A context with autocast disabled on ``device`` (no-op where autocast does not exist)."""
    kind = device.type
    if torch.amp.is_autocast_available(kind):
        return torch.autocast(kind, enabled=False)
    return contextlib.nullcontext()


def histogram(x: Tensor, bins: int, low: float, high: float) -> Tensor:
    """Counts of ``x`` in ``bins`` equal bins over [low, high], values outside in the end bins.

    A value goes to bin ``floor((x - low) * bins / (high - low))``, ``high`` itself to the last
    bin, as in ``torch.histc``; the counts are float32.
    """
    if _cpu_path(x):
        return _count_bins(_bin_index(x.reshape(-1), bins, low, high), bins)
    # On accelerators histc runs without a host synchronization (bincount would need one).
    return torch.histc(x.clamp(low, high), bins=bins, min=low, max=high)


# On the CPU ``torch.histc`` is slow (~3 ns per score on two threads): the bin index as a small
# integer (vectorized passes) and ``bincount`` over it take less than half of that, 53 -> 21 ms for
# the 256 x 65536 negative scores of one step. And the passes over those scores (64 MiB) go block
# by block of ~1M scores (4 MiB), so that each pass after the first finds its block in the cache:
# 26 -> 22 ms for all the statistics (benchmarks/score_recording.py).
_CPU_BLOCK_SCORES = 1 << 20


def _bin_index(x: Tensor, bins: int, low: float, high: float) -> Tensor:
    """Bin of each value as a float in [0, bins] (``high`` gives ``bins``; see _count_bins)."""
    return x.sub(low).mul_(bins / (high - low)).clamp_(0, bins)


def _index_dtype(bins: int) -> torch.dtype:
    return torch.uint8 if bins < 255 else torch.int32  # holds 0 .. bins; bytes count fastest


def _count_bins(index: Tensor, bins: int) -> Tensor:
    """Histogram from bin indices in [0, bins] (float: truncated, i.e. floored, as non-negative)."""
    if index.is_floating_point():
        index = index.to(_index_dtype(bins))
    counts = torch.bincount(index.reshape(-1), minlength=bins + 1)
    counts[bins - 1] += counts[bins]  # x == high belongs to the last bin
    return counts[:bins].to(torch.float32)


def _deviations_and_histogram_cpu(
    neg: Tensor, neg_mean: Tensor, bins: int, low: float, high: float, temperature=None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Per-row sums of squared deviations from ``neg_mean``, the histogram of ``neg``, and (with a
    temperature) the per-row mean of exp(neg / T)."""
    rows, cols = neg.shape
    dev_norm = torch.empty(rows, dtype=neg.dtype)
    exp_mean = None if temperature is None else torch.empty(rows, dtype=neg.dtype)
    index = torch.empty(rows, cols, dtype=_index_dtype(bins))
    block = max(1, _CPU_BLOCK_SCORES // max(cols, 1))
    for r in range(0, rows, block):
        scores = neg[r : r + block]
        torch.linalg.vector_norm(
            scores - neg_mean[r : r + block, None], dim=1, out=dev_norm[r : r + block]
        )
        if exp_mean is not None:
            torch.mean(scores.div(temperature).exp_(), dim=1, out=exp_mean[r : r + block])
        index[r : r + block] = _bin_index(scores, bins, low, high)  # the copy truncates
    return dev_norm.square_(), _count_bins(index, bins), exp_mean


# ----------------------------------------------------------------------------------------------
# Recording (layout: docs/scores-format.md)
# ----------------------------------------------------------------------------------------------

FORMAT = "contrastlab-scores-v2"
# Formats this module reads: v1 lacks pos_exp / neg_exp, which read back as NaN.
READABLE_FORMATS = ("contrastlab-scores-v1", FORMAT)
STAGES = ("raw", "effective")
KINDS = ("pos", "neg")
QUANTITIES = ("pos", "neg_mean", "neg_var", "pos_exp", "neg_exp")
QUANTILES = (0.1, 0.5, 0.9)
QUERY_DTYPE = np.float32
# Buffered per-query rows (on the device) before they are moved to the host inside an interval.
_MAX_BUFFERED_ROWS = 1 << 20


def _dist():
    """(rank, world size) when torch.distributed runs, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _same_stats(a: ScoreStats, b: ScoreStats) -> bool:
    """True when two stats hold the very same tensors (FT off: effective *is* raw)."""
    if a is b:
        return True
    return all(
        x is y or (x.data_ptr() == y.data_ptr() and x.shape == y.shape and x.stride() == y.stride())
        for x, y in ((a.pos, b.pos), (a.neg_mean, b.neg_mean), (a.neg_var, b.neg_var))
    )


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write durably (temporary file, fsync, rename), so that a crash never leaves half a file."""
    write_atomic(path, lambda f: np.savez(f, **arrays))


def _save_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=1) + "\n")


def _to_torch(tables: list[dict[str, np.ndarray]]) -> list[dict[str, Tensor]]:
    return [{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in t.items()} for t in tables]


def _to_numpy(tables: list[dict[str, Tensor]]) -> list[dict[str, np.ndarray]]:
    return [{k: v.numpy() for k, v in t.items()} for t in tables]


def queue_filled_step(queue_size: int, batch_size: int, symmetric: bool = False) -> int:
    """The step (counted from 1, as the record's ``step``) at whose end a MoCo or LooC queue of
    ``queue_size`` K holds only keys of training images.

    The queue starts as K random unit vectors, and every step replaces the oldest entries with
    the keys of all processes' batches (B = ``batch_size``, the global ``optim.batch_size``; 2B
    with a symmetric loss), so ceil(K / B) steps fill it. The negatives of those first steps
    include random vectors: their neg scores say nothing about the encoder yet.
    """
    keys = int(batch_size) * (2 if symmetric else 1)
    return -(-int(queue_size) // max(keys, 1))


class ScoreRecorder:
    """Buffers the per-step score statistics on the device and writes them to ``run_dir/scores``.

    ``update`` is called every step and only queues device work (a stack and two adds per
    space/stage), so the host never waits for the device there. Every ``log_every`` updates (an
    *interval*) the buffered per-query rows are gathered from all processes and copied to the host
    in one go, and the interval's histograms are summed across processes. ``end_epoch`` writes the
    epoch's files. Every rank must call every method (they run collectives); only rank 0 writes.

    ``queue_filled_step`` (``queue_filled_step()``; None where the negatives are no queue) is
    written to ``meta.json``; a resumed run keeps the value its first part wrote.
    """

    def __init__(
        self,
        run_dir: Path,
        cfg,
        log_every: int,
        tb_writer=None,
        queue_filled_step: int | None = None,
    ):
        self.enabled = bool(cfg.record)
        self.dir = Path(run_dir) / "scores"
        self.bins, self.low, self.high = int(cfg.bins), float(cfg.low), float(cfg.high)
        self.log_every = max(1, int(log_every))
        self.tb = tb_writer
        self.rank, self.world = _dist()
        self.spaces: list[str] = []
        self._keys: list[tuple[int, int]] = []  # (space code, stage code) in order of first sight
        self._device: torch.device | None = None
        self._flush_every: int | None = None  # steps between host copies inside an interval
        self._hist_dtype = torch.float64
        self._new_epoch()
        self._new_interval()
        # Epoch histograms of this run, {epoch: array [spaces, stages, kinds, bins]}; rank 0 only.
        self._epoch_hists: dict[int, np.ndarray] = {}
        self._epochs_written: list[int] = []
        # {epoch: processes that trained it}: a resumed run may run on another number of them
        self._epoch_worlds: dict[int, int | None] = {}
        self.queue_filled_step = queue_filled_step
        if self.enabled and self.rank == 0:
            self._resume()

    # -- state -----------------------------------------------------------------------------------

    def _new_interval(self) -> None:
        self._segments: list[tuple[int, int, int, int]] = []  # (space, stage, step, rows) on device
        self._buffer: list[Tensor] = []  # [3, rows] per segment
        self._buffered_rows = 0
        self._unflushed = 0
        self._host_parts: list[dict[str, np.ndarray]] = []  # gathered rows of this interval
        self._interval_hist: dict[tuple[int, int], Tensor] = {}  # key -> [2, bins] on device
        self._same: dict[tuple[int, int], bool] = {}  # key -> effective was raw at every step
        self._first_step: int | None = None
        self._last_step: int | None = None
        self._updates = 0

    def _new_epoch(self) -> None:
        self._epoch: int | None = None
        self._query_parts: list[dict[str, np.ndarray]] = []
        self._interval_rows: list[dict[str, np.ndarray]] = []

    def _resume(self) -> None:
        """Keep the epochs that an earlier (interrupted) run of this directory already wrote.

        A damaged ``meta.json`` or ``hist.npz`` (a crash, a full disk) gives one warning line;
        the epochs are then taken from the per-epoch interval files, which hold every histogram.
        """
        from contrastlab.errors import warn

        meta_path = self.dir / "meta.json"
        if not meta_path.is_file():
            return
        try:
            meta = json.loads(meta_path.read_text())
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            warn(f"{meta_path} is damaged ({e}); the epochs are rebuilt from the interval files")
            meta = self._meta_from_files()
        if (
            meta.get("format") not in READABLE_FORMATS
            or meta.get("bins") != self.bins
            or meta.get("low") != self.low
            or meta.get("high") != self.high
        ):
            return
        self.spaces = list(meta.get("spaces", []))
        self._epochs_written = [int(e) for e in meta.get("epochs", [])]
        if isinstance(meta.get("queue_filled_step"), int):
            # the queue (a checkpoint buffer) was filled in the first part, at its batch size
            self.queue_filled_step = meta["queue_filled_step"]
        worlds = meta.get("world_sizes")
        if isinstance(worlds, list) and len(worlds) == len(self._epochs_written):
            self._epoch_worlds = dict(zip(self._epochs_written, worlds))
        # an older record kept only the last part's world_size: the earlier epochs' is unknown
        hist_path = self.dir / "hist.npz"
        try:
            with np.load(hist_path, allow_pickle=False) as f:
                for e, counts in zip(f["epoch"], f["counts"]):
                    self._epoch_hists[int(e)] = counts
            missing = set(self._epochs_written) - set(self._epoch_hists)
            if missing:
                raise ValueError(f"no histograms of epochs {sorted(missing)}")
        except Exception as e:  # noqa: BLE001 - any damage is repaired the same way
            if hist_path.exists() or self._epochs_written:
                warn(f"{hist_path} is damaged ({_first_line(e)}); rebuilt from the interval files")
            self._epoch_hists = {}
            for epoch in list(self._epochs_written):
                counts = self._counts_from_intervals(epoch)
                if counts is None:
                    warn(f"the scores of epoch {epoch} are damaged and left out")
                    self._epochs_written.remove(epoch)
                else:
                    self._epoch_hists[epoch] = counts

    def _meta_from_files(self) -> dict:
        files = self.dir.glob("intervals-epoch*.npz")
        epochs = sorted(int(p.stem[len("intervals-epoch") :]) for p in files)
        return {
            "format": FORMAT,
            "bins": self.bins,
            "low": self.low,
            "high": self.high,
            "spaces": [],
            "epochs": epochs,
        }

    def _counts_from_intervals(self, epoch: int) -> np.ndarray | None:
        try:
            with np.load(self.dir / f"intervals-epoch{epoch:04d}.npz", allow_pickle=False) as f:
                space, stage = f["space"], f["stage"]
                pos, neg = f["pos_hist"], f["neg_hist"]
        except Exception:  # noqa: BLE001
            return None
        spaces = max(len(self.spaces), int(space.max()) + 1 if space.size else 0)
        counts = np.zeros((spaces, len(STAGES), len(KINDS), self.bins))
        for i in range(len(space)):
            counts[space[i], stage[i], 0] += pos[i]
            counts[space[i], stage[i], 1] += neg[i]
        return counts

    # -- the state inside an epoch (checkpoints taken mid-epoch) ---------------------------------

    def state_dict(self) -> dict | None:
        """The partial epoch, for a checkpoint inside it (tensors and plain values).

        Every rank must call it (buffered rows are gathered to rank 0, interval histograms summed
        there); it returns the state on rank 0 and ``None`` elsewhere.
        """
        if not self.enabled:
            return None
        self._flush_queries()
        keys = sorted(self._interval_hist)
        if keys:
            hist = torch.stack([self._interval_hist[k] for k in keys])
            if self.world > 1:
                torch.distributed.reduce(hist, dst=0)
                if self.rank != 0:
                    hist.zero_()  # rank 0 holds the sum; later steps add to it on every rank
            for k, h in zip(keys, hist):
                self._interval_hist[k] = h.clone()
        if self.rank != 0:
            return None
        return {
            "epoch": self._epoch,
            "spaces": list(self.spaces),
            "keys": [list(k) for k in self._keys],
            "same": [[k[0], k[1], bool(v)] for k, v in self._same.items()],
            "flush_every": self._flush_every,
            "first_step": self._first_step,
            "last_step": self._last_step,
            "updates": self._updates,
            "hist": [[k[0], k[1], self._interval_hist[k].cpu()] for k in keys],
            "host_parts": _to_torch(self._host_parts),
            "query_parts": _to_torch(self._query_parts),
            "interval_rows": _to_torch(self._interval_rows),
        }

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        """Continue the partial epoch of ``state`` (from ``state_dict`` on rank 0).

        Every rank takes the counters (so that all flush and close intervals at the same steps);
        the rows and histograms go to rank 0, the other ranks start from zero histograms.
        """
        if not self.enabled or not state:
            return
        self._device = torch.device(device)
        if self._device.type == "mps":
            self._hist_dtype = torch.float32
        self.spaces = list(state["spaces"])
        self._keys = [tuple(k) for k in state["keys"]]
        self._same = {(a, b): bool(v) for a, b, v in state["same"]}
        self._epoch = state["epoch"]
        self._flush_every = state["flush_every"]
        self._first_step, self._last_step = state["first_step"], state["last_step"]
        self._updates = int(state["updates"])
        for space, stage, hist in state["hist"]:
            hist = hist.to(self._device, self._hist_dtype)
            self._interval_hist[(space, stage)] = hist if self.rank == 0 else torch.zeros_like(hist)
        if self.rank == 0:
            self._host_parts = _to_numpy(state["host_parts"])
            self._query_parts = _to_numpy(state["query_parts"])
            self._interval_rows = _to_numpy(state["interval_rows"])

    def _key(self, space: str, stage: str) -> tuple[int, int]:
        if stage not in STAGES:
            raise ValueError(f"unknown score stage {stage!r}; expected one of {STAGES}")
        if space not in self.spaces:
            self.spaces.append(space)
        key = (self.spaces.index(space), STAGES.index(stage))
        if key not in self._keys:
            self._keys.append(key)
        return key

    # -- the trainer's calls ---------------------------------------------------------------------

    def update(self, step: int, epoch: int, stats: dict[tuple[str, str], ScoreStats]) -> None:
        """Queue one step's statistics; no host synchronization except every ``log_every`` calls."""
        if not self.enabled or not stats:
            return
        if self._epoch is not None and epoch != self._epoch:
            self.end_epoch(self._epoch)  # the trainer skipped end_epoch: do not mix epochs
        self._epoch = epoch
        if self._first_step is None:
            self._first_step = step
        self._last_step = step
        for (space, stage), st in sorted(stats.items(), key=lambda kv: STAGES.index(kv[0][1])):
            key = self._key(space, stage)
            if st.pos_hist.numel() != self.bins:
                raise ValueError(
                    f"scores for {space}/{stage} have {st.pos_hist.numel()} histogram "
                    f"bins but scores.bins is {self.bins}"
                )
            if self._device is None:
                self._device = st.pos.device
                if self._device.type == "mps":
                    self._hist_dtype = torch.float32  # no float64 there
            raw = stats.get((space, "raw")) if stage == "effective" else None
            same = raw is not None and _same_stats(st, raw)
            self._same[key] = self._same.get(key, True) and same
            if not same:  # an effective stage identical to raw is not stored twice
                self._buffer.append(torch.stack(_quantities(st)).to(torch.float32))
                self._segments.append((key[0], key[1], step, st.pos.numel()))
                self._buffered_rows += st.pos.numel()
            hist = self._interval_hist.get(key)
            if hist is None:
                hist = self._interval_hist[key] = torch.zeros(
                    2, self.bins, dtype=self._hist_dtype, device=self._device
                )
            hist[0].add_(st.pos_hist)
            hist[1].add_(st.neg_hist)
        self._updates += 1
        self._unflushed += 1
        if self._flush_every is None:
            # Decided from the first step, which is alike on every rank, so that all ranks flush
            # (a collective) at the same steps even when a last batch is short.
            self._flush_every = max(1, _MAX_BUFFERED_ROWS // max(1, self._buffered_rows))
        if self._updates >= self.log_every:
            self._close_interval()
        elif self._unflushed >= self._flush_every:
            self._flush_queries()

    def end_epoch(self, epoch: int) -> None:
        """Close the last interval and write the epoch's files (rank 0)."""
        if not self.enabled:
            return
        self._close_interval()
        if self._epoch is None:
            self._epoch = epoch
        if self.rank == 0 and (self._query_parts or self._interval_rows):
            self._write_epoch(self._epoch)
        self._new_epoch()

    def close(self) -> None:
        """Write what is left (a partial epoch) and flush TensorBoard."""
        if not self.enabled:
            return
        if self._epoch is not None:
            self.end_epoch(self._epoch)
        if self.tb is not None and self.rank == 0:
            self.tb.flush()

    # -- intervals -------------------------------------------------------------------------------

    def _flush_queries(self) -> None:
        """Gather the buffered per-query rows from all processes and copy them to the host."""
        if not self._buffer and self.world == 1:
            self._unflushed = 0
            return
        dev = self._device or torch.device("cpu")
        data = (
            torch.cat(self._buffer, dim=1)
            if self._buffer
            else torch.zeros(len(QUANTITIES), 0, device=dev)
        )
        seg = torch.tensor(self._segments, dtype=torch.int64).reshape(-1, 4).to(dev)
        ranks = None
        if self.world > 1:
            data, seg, ranks = _gather_rows(data, seg, self.world)
        self._buffer, self._segments, self._buffered_rows, self._unflushed = [], [], 0, 0
        if self.rank != 0:
            return
        data = data.cpu().numpy()
        seg = seg.cpu().numpy()
        rows = seg[:, 3]
        part = {
            "step": np.repeat(seg[:, 2], rows).astype(np.int64),
            "rank": (
                np.zeros(rows.sum(), np.int16)
                if ranks is None
                else np.repeat(ranks.cpu().numpy(), rows).astype(np.int16)
            ),
            "space": np.repeat(seg[:, 0], rows).astype(np.int16),
            "stage": np.repeat(seg[:, 1], rows).astype(np.int8),
        }
        for i, name in enumerate(QUANTITIES):
            part[name] = data[i].astype(QUERY_DTYPE, copy=False)
        self._host_parts.append(part)

    def _close_interval(self) -> None:
        if self._updates == 0:
            return
        self._flush_queries()
        keys = sorted(self._interval_hist)
        hist = torch.stack([self._interval_hist[k] for k in keys])  # [keys, 2, bins]
        if self.world > 1:
            torch.distributed.all_reduce(hist)
        if self.rank == 0:
            self._summarize_interval(keys, hist.cpu().numpy().astype(np.float64))
        self._new_interval()

    def _summarize_interval(self, keys, hist: np.ndarray) -> None:
        parts = self._host_parts
        rows = {n: np.concatenate([p[n] for p in parts]) for n in parts[0]} if parts else None
        if rows is not None:
            rows["epoch"] = np.full(rows["step"].shape, self._epoch, np.int32)
            self._query_parts.append(rows)
        table: dict[str, list] = {c: [] for c in INTERVAL_COLUMNS}
        for space, stage in keys:
            same = stage == 1 and self._same.get((space, stage), False)
            src_stage = 0 if same else stage
            if rows is not None:
                mask = (rows["space"] == space) & (rows["stage"] == src_stage)
            n = int(mask.sum()) if rows is not None else 0
            table["epoch"].append(self._epoch)
            table["first_step"].append(self._first_step)
            table["last_step"].append(self._last_step)
            table["space"].append(space)
            table["stage"].append(stage)
            table["n"].append(n)
            table["same_as_raw"].append(same)
            for q in QUANTITIES:
                values = rows[q][mask].astype(np.float64) if n else np.full(1, np.nan)
                table[f"{q}_mean"].append(values.mean())
                for p, v in zip(QUANTILES, np.quantile(values, QUANTILES)):
                    table[f"{q}_q{round(p * 100):02d}"].append(v)
            if self.tb is not None and n:
                tag = f"scores/{self.spaces[space]}/{STAGES[stage]}"
                if not same:
                    for q in QUANTITIES:
                        if np.isnan(table[f"{q}_mean"][-1]):
                            continue  # no temperature given: nothing to draw
                        self.tb.add_scalar(
                            f"{tag}/{q}_mean", table[f"{q}_mean"][-1], self._last_step
                        )
        arrays = {c: np.asarray(v, dtype=INTERVAL_COLUMNS[c]) for c, v in table.items()}
        arrays["pos_hist"] = hist[:, 0]
        arrays["neg_hist"] = hist[:, 1]
        self._interval_rows.append(arrays)

    # -- files -----------------------------------------------------------------------------------

    def _write_epoch(self, epoch: int) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tag = f"epoch{epoch:04d}"
        queries = _concat(self._query_parts, QUERY_COLUMNS)
        intervals = _concat(self._interval_rows, INTERVAL_COLUMNS)
        if not self._interval_rows:
            intervals["pos_hist"] = intervals["neg_hist"] = np.zeros((0, self.bins))
        _save_npz(self.dir / f"queries-{tag}.npz", queries)
        _save_npz(self.dir / f"intervals-{tag}.npz", intervals)

        counts = np.zeros((len(self.spaces), len(STAGES), len(KINDS), self.bins))
        for i in range(len(intervals["space"])):
            s, g = intervals["space"][i], intervals["stage"][i]
            counts[s, g, 0] += intervals["pos_hist"][i]
            counts[s, g, 1] += intervals["neg_hist"][i]
        # A resumed run re-trains from an earlier epoch: what was written after it is abandoned.
        for later in [e for e in self._epoch_hists if e > epoch]:
            del self._epoch_hists[later]
        for later in [e for e in self._epochs_written if e > epoch]:
            for prefix in ("queries", "intervals"):
                (self.dir / f"{prefix}-epoch{later:04d}.npz").unlink(missing_ok=True)
        self._epochs_written = sorted({e for e in self._epochs_written if e <= epoch} | {epoch})
        self._epoch_worlds[epoch] = self.world
        self._epoch_hists[epoch] = counts
        epochs = sorted(self._epoch_hists)
        stacked = np.zeros((len(epochs), len(self.spaces), len(STAGES), len(KINDS), self.bins))
        for i, e in enumerate(epochs):
            c = self._epoch_hists[e]
            stacked[i, : c.shape[0]] = c  # spaces first seen later are zero in earlier epochs
        _save_npz(
            self.dir / "hist.npz",
            {
                "epoch": np.asarray(epochs, np.int32),
                "counts": stacked,
                "edges": np.linspace(self.low, self.high, self.bins + 1),
            },
        )
        _save_json(
            self.dir / "meta.json",
            {
                "format": FORMAT,
                "bins": self.bins,
                "low": self.low,
                "high": self.high,
                "spaces": self.spaces,
                "stages": list(STAGES),
                "kinds": list(KINDS),
                "query_dtype": np.dtype(QUERY_DTYPE).name,
                "quantiles": list(QUANTILES),
                "log_every": self.log_every,
                "world_size": self.world,  # of the part that wrote this file last
                "epochs": self._epochs_written,
                # the processes behind each of ``epochs`` (null: not recorded, an older record)
                "world_sizes": [self._epoch_worlds.get(e) for e in self._epochs_written],
                # the step after which every negative is a real key (null: not a queue)
                "queue_filled_step": self.queue_filled_step,
            },
        )
        if self.tb is not None:
            self._tb_histograms(epoch, counts)

    def _tb_histograms(self, epoch: int, counts: np.ndarray) -> None:
        edges = np.linspace(self.low, self.high, self.bins + 1)
        centers = (edges[:-1] + edges[1:]) / 2
        for s, space in enumerate(self.spaces):
            for g, stage in enumerate(STAGES):
                for k, kind in enumerate(KINDS):
                    c = counts[s, g, k]
                    nz = np.flatnonzero(c)
                    if nz.size == 0:
                        continue
                    lo, hi = nz[0], nz[-1] + 1
                    self.tb.add_histogram_raw(
                        f"scores/{space}/{stage}/{kind}",
                        min=float(edges[lo]),
                        max=float(edges[hi]),
                        num=float(c.sum()),
                        sum=float((c * centers).sum()),
                        sum_squares=float((c * centers**2).sum()),
                        bucket_limits=edges[lo + 1 : hi + 1].tolist(),
                        bucket_counts=c[lo:hi].tolist(),
                        global_step=epoch,
                    )


QUERY_COLUMNS = {
    "step": np.int64,
    "epoch": np.int32,
    "rank": np.int16,
    "space": np.int16,
    "stage": np.int8,
    "pos": QUERY_DTYPE,
    "neg_mean": QUERY_DTYPE,
    "neg_var": QUERY_DTYPE,
    "pos_exp": QUERY_DTYPE,  # since v2; NaN when read from a v1 record
    "neg_exp": QUERY_DTYPE,
}
INTERVAL_COLUMNS = {
    "epoch": np.int32,
    "first_step": np.int64,
    "last_step": np.int64,
    "space": np.int16,
    "stage": np.int8,
    "n": np.int64,
    "same_as_raw": np.bool_,
    **{
        f"{q}_{s}": np.float64
        for q in QUANTITIES
        for s in ["mean"] + [f"q{round(p * 100):02d}" for p in QUANTILES]
    },
}


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _concat(parts: list[dict[str, np.ndarray]], columns: dict) -> dict[str, np.ndarray]:
    """Columns of all parts end to end; a column a part lacks (an older format: the exp(score/T)
    statistics) is NaN in its rows."""
    out = {}
    for name, dtype in columns.items():
        arrays = [p[name] if name in p else _missing(p, dtype) for p in parts]
        out[name] = (
            np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.zeros(0, dtype)
        )
    for name in ("pos_hist", "neg_hist"):
        if parts and name in parts[0]:
            out[name] = np.concatenate([p[name] for p in parts])
    return out


def _missing(part: dict[str, np.ndarray], dtype) -> np.ndarray:
    rows = len(next(v for k, v in part.items() if k not in ("pos_hist", "neg_hist")))
    return np.full(rows, np.nan, dtype)


def _quantities(st: ScoreStats) -> list[Tensor]:
    """The per-query vectors of ``st`` in the order of QUANTITIES (absent exp statistics: NaN)."""
    out = [st.pos, st.neg_mean, st.neg_var]
    for extra in (st.pos_exp, st.neg_exp):
        out.append(torch.full_like(st.pos, float("nan")) if extra is None else extra)
    return out


def _gather_rows(data: Tensor, seg: Tensor, world: int) -> tuple[Tensor, Tensor, Tensor]:
    """All-gather rows whose number differs between processes (a short last batch): pad, trim.

    Returns the rows and segments of all ranks, and the rank of each segment.
    """
    dist = torch.distributed
    sizes = torch.tensor([data.shape[1], seg.shape[0]], dtype=torch.int64, device=data.device)
    all_sizes = [torch.zeros_like(sizes) for _ in range(world)]
    dist.all_gather(all_sizes, sizes)
    all_sizes = torch.stack(all_sizes).cpu().tolist()
    max_rows = max(s[0] for s in all_sizes)
    max_seg = max(s[1] for s in all_sizes)
    pad_data = torch.zeros(data.shape[0], max_rows, dtype=data.dtype, device=data.device)
    pad_data[:, : data.shape[1]] = data
    pad_seg = torch.zeros(max_seg, 4, dtype=seg.dtype, device=seg.device)
    pad_seg[: seg.shape[0]] = seg
    datas = [torch.empty_like(pad_data) for _ in range(world)]
    segs = [torch.empty_like(pad_seg) for _ in range(world)]
    dist.all_gather(datas, pad_data)
    dist.all_gather(segs, pad_seg)
    data = torch.cat([d[:, :n] for d, (n, _) in zip(datas, all_sizes)], dim=1)
    seg = torch.cat([s[:m] for s, (_, m) in zip(segs, all_sizes)])
    ranks = torch.cat(
        [torch.full((m,), r, dtype=torch.int64) for r, (_, m) in enumerate(all_sizes)]
    )
    return data, seg, ranks


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


class ScoreSelectionError(UserError, KeyError):
    """A space, stage or epoch that the record does not hold; the message names those it does.

    A ``KeyError`` (as the space's always was) and a ``UserError`` (one line on the command line).
    """

    def __str__(self) -> str:  # KeyError's own puts the message in quotes
        return str(self.args[0]) if self.args else ""


def _codes(meta: dict, space: str, stage: str) -> tuple[int, int]:
    """The indices of ``space`` in ``meta["spaces"]`` and of ``stage`` in STAGES."""
    if not isinstance(space, str) or space not in meta["spaces"]:
        raise ScoreSelectionError(f"no scores for space {space!r}; recorded: {meta['spaces']}")
    if not isinstance(stage, str) or stage not in STAGES:
        raise ScoreSelectionError(f"no stage {stage!r}; the stages are {list(STAGES)}")
    return meta["spaces"].index(space), STAGES.index(stage)


@dataclass
class ScoreRecord:
    """The recorded scores of one run: flat numpy columns, each table's columns of equal length.

    ``queries`` has one row per query, space, stage and step (with pandas, which contrastlab does
    not depend on, ``pandas.DataFrame(record.queries)`` makes it a table); ``intervals`` has one
    row per log interval, space and stage, with means and quantiles (the interval histograms are
    in ``load_histograms(...).interval_counts``).
    """

    meta: dict
    queries: dict[str, np.ndarray]
    intervals: dict[str, np.ndarray]

    @property
    def spaces(self) -> list[str]:
        return list(self.meta["spaces"])

    def _codes(self, space: str, stage: str) -> tuple[int, int]:
        return _codes(self.meta, space, stage)

    def query(self, space: str, stage: str = "raw") -> dict[str, np.ndarray]:
        """Rows of one space and stage, ordered by step; for steps where the effective scores were
        the raw ones (nothing stored), ``stage="effective"`` returns the raw rows."""
        s, g = self._codes(space, stage)
        q = self.queries
        mask = (q["space"] == s) & (q["stage"] == g)
        if g == 1:
            raw = (q["space"] == s) & (q["stage"] == 0)
            mask |= raw & ~np.isin(q["step"], np.unique(q["step"][mask]))
        idx = np.flatnonzero(mask)
        idx = idx[np.argsort(q["step"][idx], kind="stable")]
        return {name: col[idx] for name, col in q.items()}

    def interval(self, space: str, stage: str = "raw") -> dict[str, np.ndarray]:
        """Interval summaries of one space and stage, ordered by step."""
        s, g = self._codes(space, stage)
        t = self.intervals
        idx = np.flatnonzero((t["space"] == s) & (t["stage"] == g))
        idx = idx[np.argsort(t["last_step"][idx], kind="stable")]
        return {name: col[idx] for name, col in t.items()}


@dataclass
class ScoreHistograms:
    """Histograms of all pos and neg scores: per epoch, and per log interval.

    ``counts[e, space, stage, kind]`` are the counts of epoch ``epoch[e]``, ``kind`` 0 = pos and
    1 = neg, over ``edges``; ``interval_counts[r]`` ([kind, bins]) belongs to row r of ``intervals``.
    """

    meta: dict
    edges: np.ndarray
    epoch: np.ndarray
    counts: np.ndarray
    intervals: dict[str, np.ndarray]
    interval_counts: np.ndarray

    def epoch_counts(self, space: str, stage: str = "raw") -> np.ndarray:
        """``counts`` of one space and stage: ``[epochs, kind (pos, neg), bins]``."""
        s, g = _codes(self.meta, space, stage)
        return self.counts[:, s, g]


def _scores_dir(run_dir: Path) -> tuple[Path, dict]:
    """The scores folder of ``run_dir`` (or ``run_dir`` itself when it is one) and its meta."""
    from contrastlab.runstate import file_as_run_dir

    run_dir = as_path(run_dir, "run_dir")
    if message := file_as_run_dir(run_dir):
        raise UserError(message)
    if not run_dir.exists():
        raise UserError(f"run directory {run_dir} does not exist")
    folder = run_dir / "scores"
    if not (folder / "meta.json").is_file() and (run_dir / "meta.json").is_file():
        folder = run_dir  # the scores folder itself
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        from contrastlab.runstate import run_dir_reason

        # a scores folder without its meta.json: the reason is its run's
        run = run_dir.parent if run_dir.name == "scores" else run_dir
        raise UserError(f"{run_dir} has no recorded scores: {run_dir_reason(run)}")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as e:
        raise UserError(f"{meta_path} is not valid JSON: {e}") from None
    if meta.get("format") not in READABLE_FORMATS:
        raise UserError(
            f"{meta_path} has format {meta.get('format')!r}; this version reads "
            f"{', '.join(READABLE_FORMATS)} (update contrastlab to read newer records)"
        )
    return folder, meta


def _load_tables(
    folder: Path, prefix: str, epochs, columns: dict, extra=()
) -> dict[str, np.ndarray]:
    parts = []
    for e in epochs:
        path = folder / f"{prefix}-epoch{int(e):04d}.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as f:
                parts.append({n: f[n] for n in (*columns, *extra) if n in f.files})
    out = _concat(parts, columns)
    for name in extra:
        if name not in out:
            out[name] = np.zeros((0, 0))
    return out


def load_scores(
    run_dir: Path | str, epochs: list[int] | None = None, queries: bool = True
) -> ScoreRecord:
    """Read ``run_dir/scores`` (all epochs, or only ``epochs``) into flat numpy columns.

    ``queries=False`` reads only the small interval table (the per-query table of a long run can
    take gigabytes); ``record.queries`` then has its columns, empty.
    """
    folder, meta = _scores_dir(run_dir)
    chosen = meta["epochs"] if epochs is None else _chosen_epochs(run_dir, meta, epochs)
    queries = _load_tables(folder, "queries", chosen if queries else [], QUERY_COLUMNS)
    intervals = _load_tables(folder, "intervals", chosen, INTERVAL_COLUMNS)
    return ScoreRecord(meta=meta, queries=queries, intervals=intervals)


def _chosen_epochs(run_dir, meta: dict, epochs) -> list[int]:
    """The recorded epochs among ``epochs`` (one epoch or several), in recorded order; an epoch
    that was not recorded is the user's error, which names those that were."""
    if isinstance(epochs, (int, np.integer)):
        epochs = [epochs]
    try:
        given = list(epochs) if not isinstance(epochs, (str, bytes)) else None
    except TypeError:
        given = None
    if given is None or not all(
        isinstance(e, (int, np.integer)) and not isinstance(e, bool) for e in given
    ):
        raise UserError(f"epochs must be a list of epoch numbers, got {epochs!r}")
    wanted = [int(e) for e in given]
    missing = sorted(set(wanted) - set(meta["epochs"]))
    if missing:
        raise ScoreSelectionError(
            f"{run_dir} has no scores of epoch{'s' if len(missing) > 1 else ''} "
            f"{', '.join(map(str, missing))}; recorded epochs: {meta['epochs']}"
        )
    return [e for e in meta["epochs"] if e in set(wanted)]


def load_histograms(run_dir: Path | str) -> ScoreHistograms:
    """Read the per-epoch and per-interval histograms of ``run_dir/scores``."""
    folder, meta = _scores_dir(run_dir)
    bins = meta["bins"]
    with np.load(folder / "hist.npz", allow_pickle=False) as f:
        edges, epoch, counts = f["edges"], f["epoch"], f["counts"]
    table = _load_tables(
        folder, "intervals", meta["epochs"], INTERVAL_COLUMNS, ("pos_hist", "neg_hist")
    )
    pos, neg = table.pop("pos_hist"), table.pop("neg_hist")
    keep = ("epoch", "first_step", "last_step", "space", "stage", "same_as_raw")
    if pos.size == 0:
        pos = neg = np.zeros((0, bins))
    return ScoreHistograms(
        meta=meta,
        edges=edges,
        epoch=epoch,
        counts=counts,
        intervals={k: table[k] for k in keep},
        interval_counts=np.stack([pos, neg], axis=1),
    )
