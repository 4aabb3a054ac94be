"""``TwoRound`` under ``DistributedDataParallel``: helpers of the engine, and how to use them.

Pass the DDP-wrapped model to the engine and call it in the closure::

    ddp = DistributedDataParallel(model, device_ids=[local_rank])
    engine = anl_fused.TwoRound(ddp)  # std_over="global": std(h) over the global batch
    loss = engine.step(lambda: F.cross_entropy(ddp(x), y))
    optimizer.step()

What the engine does with a DDP model:

- Round 1 runs under ``ddp.no_sync()``: it starts no gradient all-reduce (it computes no parameter
  gradient anyway), does not arm the reducer (no ``prepare_for_backward``, no unused-parameter
  search) and tells a ``Join`` context that this forward has no synchronized backward. DDP's buffer
  broadcast (rank 0's BatchNorm statistics) happens where it always does, at the start of the first
  forward of the step, which is now round 1's; round 1 changes no buffer, so round 2 sees the same
  buffers as an ordinary DDP iteration would. Round 2 is an ordinary DDP forward and backward:
  its backward all-reduces (averages) the gradients, or accumulates them locally inside the
  user's ``ddp.no_sync()`` (gradient accumulation over micro-batches works as usual).
- ``SyncBatchNorm`` synchronizes its batch statistics in both rounds (round 1 must normalize like
  round 2) and, like every ``_BatchNorm``, updates its running statistics in round 2 only.
  ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` drops the forward hooks of ``insert_anl``; use
  :func:`convert_sync_batchnorm` of this module, which keeps them.
- ``std_over="global"`` computes each layer's ``s = std(h)`` over the global batch (all ranks of
  the process group): per rank ``(count, mean, M2)`` of every ANL layer go into one table, one
  ``all_reduce`` for all layers (started before round 1's backward, waited for after it; no host
  sync), combined with Chan's formula. The default ``"local"`` uses each rank's own batch.
- The noise draws ``z`` come from each rank's own generator. The default generator is seeded from
  ``torch.initial_seed()`` plus the global rank, so ranks draw differently even when every rank
  called ``torch.manual_seed(seed)``; rank 0 draws what a single process would. To choose, pass
  ``generator=torch.Generator(device).manual_seed(base_seed + rank)`` (or the same seed on every
  rank for identical draws).
- ``find_unused_parameters=True``, ``gradient_as_bucket_view=True``, ``static_graph=True``, comm hooks
  and ``Join`` (uneven inputs) work as in ordinary DDP training (as there, ``static_graph=True`` takes
  no ``no_sync()`` micro-batch in the first iteration).
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ._dtypes import acc_dtype
from .insert import fused_act_entry, restore_hooks
from .layer import ANL2d

__all__ = ["STD_OVER", "GlobalStd", "convert_sync_batchnorm", "is_distributed", "unwrap"]

STD_OVER = ("local", "global")


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` (``model`` itself otherwise): its ANL layers
    come in the same order, and have the same names, as in a single process."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def default_seed_offset() -> int:
    """The global rank when ``torch.distributed`` is initialized, 0 otherwise."""
    return dist.get_rank() if is_distributed() else 0


@contextlib.contextmanager
def probe_context(model: nn.Module):
    """Round 1's context: ``model.no_sync()`` for a DDP model, nothing otherwise.

    With ``static_graph=True`` DDP's first iteration wraps the outputs in a function whose backward
    queues the delayed all-reduce of that iteration; round 1's backward must not run it, so round 1
    runs as if it had been queued already (round 2 then does it)."""
    if not isinstance(model, DistributedDataParallel):
        yield
        return
    flag = "_static_graph_delay_allreduce_enqueued"
    pending = model.static_graph and not getattr(model, flag, True)
    if pending:
        setattr(model, flag, True)
    try:
        with model.no_sync():
            yield
    finally:
        if pending:
            setattr(model, flag, False)


def check_not_syncing() -> None:
    """Round 1 must not be a synchronizing DDP forward: that happens when ``TwoRound`` got the module
    inside DDP but the closure calls the DDP model."""
    if torch.compiler.is_compiling() or not torch.is_grad_enabled():
        return
    active = getattr(DistributedDataParallel, "_active_ddp_module", None)
    if active is not None and active.require_backward_grad_sync:
        raise RuntimeError(
            "round 1 of TwoRound ran inside a synchronizing DistributedDataParallel forward: "
            "pass the DDP model itself, TwoRound(ddp_model), not the module it wraps"
        )


def check_std_over(std_over, process_group, model: nn.Module):
    """Validates ``std_over``/``process_group``; returns the group of the global std (``None``: the
    default group, or the DDP model's group)."""
    if std_over not in STD_OVER:
        raise ValueError(f"std_over must be one of {STD_OVER}, got {std_over!r}")
    if std_over == "local":
        if process_group is not None:
            raise ValueError("process_group is only used with std_over='global'")
        return None
    if not is_distributed():
        raise RuntimeError(
            "std_over='global' needs torch.distributed initialized (init_process_group, or "
            "torchrun) before TwoRound is created; use std_over='local' in a single process"
        )
    if process_group is None and isinstance(model, DistributedDataParallel):
        process_group = model.process_group
    return process_group


def local_mean(h: Tensor) -> Tensor:
    """Mean of all elements of ``h`` (0 when empty), accumulated in float32 (float64 for float64 ``h``)."""
    return h.detach().sum(dtype=acc_dtype(h.dtype)) / max(h.numel(), 1)


class GlobalStd:
    """The all-reduce of one step's per-rank ``(count, mean, M2)`` of every active ANL layer.

    Every rank puts its statistics into its own row of a zero ``[world, layers, 3]`` float64 table
    (unreached layers: count 0); one ``all_reduce(SUM)`` fills every row on every rank, and
    :meth:`wait` combines them exactly (Chan et al.): ``mean = sum n_k m_k / N``,
    ``M2 = sum M2_k + sum n_k (m_k - mean)^2``, ``s = sqrt(M2 / (N - 1))`` (0 when ``N <= 1``).
    ``M2_k = s_k^2 (n_k - 1)`` comes from the layer's local std, so only the mean (:func:`local_mean`,
    taken in round 1's forward, before a later in-place op can rewrite ``h``) costs a pass over ``h``.
    """

    def __init__(self, layers: list[ANL2d], records: dict, means: dict, group, device: torch.device):
        self.layers = layers
        self.records = records
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        table = torch.zeros(world, len(layers), 3, dtype=torch.float64, device=device)
        with torch.no_grad():
            for i, layer in enumerate(layers):
                if layer not in records:
                    continue
                h, s = records[layer]
                n = h.numel()
                row = table[rank, i]
                row[0] = n
                row[1] = means[layer]
                row[2] = s.double().square() * max(n - 1, 0)
        self.table = table
        self.work = dist.all_reduce(table, op=dist.ReduceOp.SUM, group=group, async_op=True)

    def wait(self) -> dict[ANL2d, Tensor]:
        """``{layer: global std}`` for the layers this rank reached, in each local std's dtype."""
        self.work.wait()
        with torch.no_grad():
            n, m, m2 = self.table.unbind(-1)
            total = n.sum(0)
            mean = (n * m).sum(0) / total.clamp(min=1)
            m2 = m2.sum(0) + (n * (m - mean).square()).sum(0)
            std = torch.where(total > 1, (m2 / (total - 1).clamp(min=1)).sqrt(), torch.zeros_like(m2))
        return {
            layer: std[i].to(self.records[layer][1].dtype)
            for i, layer in enumerate(self.layers)
            if layer in self.records
        }


def convert_sync_batchnorm(model: nn.Module, process_group=None) -> nn.Module:
    """``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` that keeps the ANL layers of ``insert_anl``
    working: torch's converter copies the children of each BatchNorm (the ``anl`` layer) but not its
    forward hooks, which apply the layer. Returns the converted model (call it before wrapping in DDP).

    Norms fused with their activation (timm's ``BatchNormAct2d``) are refused: torch's converter would
    turn them into plain ``SyncBatchNorm`` and silently drop the activation; timm's converter keeps it."""
    fused = sorted(
        {
            type(m).__name__
            for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and fused_act_entry(m) is not None
            and not isinstance(m, nn.SyncBatchNorm)
        }
    )
    if fused:
        raise ValueError(
            f"model has norms fused with their activation ({', '.join(fused)}), which torch's "
            "SyncBatchNorm converter would drop: use timm.layers.convert_sync_batchnorm(model), "
            "then anl_fused.insert.restore_hooks(model)"
        )
    return restore_hooks(nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group))
