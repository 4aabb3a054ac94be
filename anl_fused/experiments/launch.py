"""Launching ``anl-fused train`` under ``torchrun``: process group, data sharding, small collectives.

Only the command-line training uses these; the engine's DDP support is in :mod:`anl_fused.distributed`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..distributed import is_distributed


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_from_env(device: str = "auto") -> bool:
    """Under ``torchrun`` (``WORLD_SIZE > 1``), initialize the default process group from the environment torchrun sets
    (``env://``): NCCL when the run uses CUDA (``device`` ``auto`` with a GPU, or ``cuda...``), each process on GPU
    ``LOCAL_RANK``; gloo otherwise. Returns whether it initialized the group (then the caller destroys it)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return False
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if torch.cuda.device_count() <= local_rank():
            raise RuntimeError(
                f"LOCAL_RANK {local_rank()} but only {torch.cuda.device_count()} CUDA devices: "
                "start at most one process per GPU (torchrun --nproc_per_node)"
            )
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return True


def exit_process(code: int) -> NoReturn:
    """End a torchrun process (its group destroyed): flush stdout and stderr, then ``os._exit``: torch's gloo worker
    threads outlive ``destroy_process_group`` and freeing their Python state while the interpreter finalizes aborts
    the process ("terminate called without an active exception", docs/distributed.md)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def shard_batches(order: Tensor, batch_size: int, rank: int, world: int) -> Tensor:
    """This rank's part of every batch of ``order`` (consecutive batches of ``batch_size``), concatenated: each
    global batch padded to a multiple of ``world`` with its first samples (as ``DistributedSampler`` pads) and cut
    into ``world`` contiguous parts. The ranks' batches of a step together are the single-process batch, so the
    data order does not depend on the number of processes (a resume with another number continues the epoch)."""
    if batch_size % world:
        raise ValueError(f"the global batch size {batch_size} must be a multiple of the number of processes {world}")
    parts = []
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        per = -(-len(chunk) // world)
        if per * world != len(chunk):
            chunk = chunk.repeat(world)[: per * world]
        parts.append(chunk[rank * per : (rank + 1) * per])
    return torch.cat(parts) if parts else order[:0]


def shard_block(order: Tensor, rank: int, world: int) -> Tensor:
    """Rank ``r``'s contiguous block of ``order`` (sizes differ by at most one; no padding): for
    evaluation, whose sums are all-reduced."""
    n = len(order)
    return order[rank * n // world : (rank + 1) * n // world]


def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Every buffer of ``model`` from rank ``src`` (what DDP does at the start of its next forward),
    so that evaluation sees the same BatchNorm statistics on every rank."""
    with torch.no_grad():
        for b in model.buffers():
            dist.broadcast(b, src)


def cpu_group():
    """A gloo group for small host-side agreements (``None``: the default group is gloo already)."""
    return None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")


def any_rank(flag: bool, group=None) -> bool:
    """Whether ``flag`` is true on any rank (a MAX all-reduce of one CPU integer: the host waits for
    the other processes, the GPU does not; used to stop every rank at the same step on Ctrl-C)."""
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return bool(t[0])


def on_rank0(fn: Callable[[], Any], world: int) -> Any:
    """``fn()`` run by rank 0 alone, its result (or the exception it raised) broadcast to every rank:
    for what only rank 0 may do or see (its file system, the run directory's lock). ``world == 1``: just ``fn()``."""
    if world == 1:
        return fn()
    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", fn())
        except Exception as e:  # every rank raises it
            box[0] = ("error", e)
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value
