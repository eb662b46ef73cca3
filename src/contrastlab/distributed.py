"""Helpers for training under ``torchrun``: process group, gathering, and shuffle BN.

Every helper also works in a single process (no process group), so that the methods have one code
path for one CPU, one GPU and many GPUs.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(device_kind: str) -> torch.device:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Returns this process's device: ``cuda:LOCAL_RANK`` on GPUs (nccl), the CPU otherwise (gloo).
    """
    use_cuda = device_kind == "cuda" or (device_kind == "auto" and torch.cuda.is_available())
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return torch.device("cuda" if use_cuda else "cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not is_distributed():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=30))
    return torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


# What gloo and NCCL say when the other end of a collective is gone (a process killed, crashed).
_PEER_GONE = (
    "Connection reset by peer",
    "Connection closed by peer",
    "Broken pipe",
    "Socket closed",
    "remote process exited",
    "NCCL communicator was aborted",
)


def lost_a_peer(error: BaseException) -> str | None:
    """What in ``error`` (from a collective) says that another process of the job has ended
    (e.g. "Connection reset by peer"), or None when it says nothing of the kind."""
    text = str(error)
    said = next((marker for marker in _PEER_GONE if marker in text), None)
    if said is None and isinstance(error, getattr(dist, "DistError", ())):
        said = text.strip().splitlines()[0][:120] if text.strip() else type(error).__name__
    return said


@torch.no_grad()
def gather_cat(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every process along dim 0, in rank order (no gradient)."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def mean_over_processes(x: Tensor) -> Tensor:
    """The mean of a tensor over every process (the tensor itself in a single process)."""
    if not is_distributed():
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / world_size()


@torch.no_grad()
def shuffle_batch(x: Tensor) -> tuple[Tensor, Tensor]:
    """Shuffle a batch before the key encoder; returns ``(shuffled local batch, undo index)``.

    Under DDP the whole global batch is permuted and each process encodes a slice of it (MoCo's
    shuffle BN): a process's BN statistics then come from keys whose queries live elsewhere. In a
    single process the local batch is permuted, which matters with split BN.
    """
    if not is_distributed():
        perm = torch.randperm(x.shape[0], device=x.device)
        return x[perm], torch.argsort(perm)
    everything = gather_cat(x)
    perm = torch.randperm(everything.shape[0], device=x.device)
    dist.broadcast(perm, src=0)  # every process must use rank 0's permutation
    undo = torch.argsort(perm)
    local = perm.view(world_size(), -1)[rank()]
    return everything[local], undo


@torch.no_grad()
def unshuffle_batch(x: Tensor, undo: Tensor) -> Tensor:
    """Invert ``shuffle_batch`` on the key encoder's output (local rows back in local order)."""
    if not is_distributed():
        return x[undo]
    everything = gather_cat(x)
    local = undo.view(world_size(), -1)[rank()]
    return everything[local]


def warn_where(met: bool, message: str) -> None:
    """Warn once about a condition that each process checks for itself (its CPU, its device):
    rank 0 prints ``message``, after the ranks that meet it where not all of them do
    (``warning: rank 1: ...``, ``warning: ranks 1, 3: ...``). A collective under ``torchrun``:
    every process must call it."""
    from contrastlab.errors import warn

    if not is_distributed():
        if met:
            warn(message)
        return
    flags = [None] * world_size()
    dist.all_gather_object(flags, bool(met))
    ranks = [r for r, flag in enumerate(flags) if flag]
    if ranks and len(ranks) < len(flags):
        message = f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}: {message}"
    if ranks:
        warn(message)  # by rank 0


def raise_together(fn) -> None:
    """Run ``fn()`` on every process; if it raises a ``UserError`` on any, raise on all.

    Checks that only the main process makes (the run directory) would otherwise leave the other
    processes waiting in their first collective until the timeout. The error that every process
    raises is the first process's (``every_process``: rank 0 alone prints it), after its rank
    where another process than rank 0 met it alone (``rank 1: ...``).
    """
    from contrastlab.errors import UserError

    error = None
    try:
        fn()
    except UserError as e:
        error = e
    if is_distributed():
        messages = [None] * world_size()
        dist.all_gather_object(messages, None if error is None else str(error))
        first = next((r for r, m in enumerate(messages) if m), None)
        if first is not None:
            said = messages[first]
            if first != 0 and any(m != said for m in messages):  # not met by rank 0: named
                said = f"rank {first}: {said}"
            if error is None or str(error) == messages[first] != said:
                error = UserError(said)
            error.every_process = str(error) == said  # rank 0 prints it (where it has it)
    if error is not None:
        raise error
