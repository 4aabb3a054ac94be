"""What a training checkpoint holds, and saving, reading and resuming from it.

A checkpoint (``checkpoint.pt``, the file format of :mod:`anl_fused.experiments.checkpoint`: atomic, weights-only) holds
the config, the model, optimizer and schedule, every process's noise generator, global RNG states and partial-epoch
meter, the position (epoch, step, global step) and the metric history. The data order and augmentation are functions of
(seed, epoch), so restoring these continues a run bitwise. Under torchrun rank 0 gathers every rank's streams and
writes; on resume rank 0 reads the file and broadcasts it (no shared file system needed).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pydantic
import torch
import torch.distributed as dist
from torch import nn
from typing_extensions import TypedDict

from ... import rng
from .. import checkpoint as ckpt
from .. import launch
from .config import IDENTITY, RESUME_RULE, TrainConfig, config_from_dict, upgrade_stored
from .metrics import EpochMeter, merged_meter_state
from .parts import Parts, make_model

__all__ = ["CHECKPOINT_NAME", "REQUIRED", "Position", "load_trained", "read", "restore", "resume_changes", "save"]

CHECKPOINT_NAME = "checkpoint.pt"
REQUIRED = ("config", "model", "optimizer", "scheduler", "generator", "rng", "meter")  # the states
REQUIRED += ("epoch", "step", "global_step", "history")  # the position


@dataclass
class Position:
    """Where a run is: ``epoch`` epochs finished, ``step`` steps into the next, ``global_step`` in total;
    and its record: ``history`` (the lines of ``metrics.jsonl``), ``changes`` (settings changed on resume)."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)


# the types of a checkpoint's position entries, checked strictly ("2" is not an epoch)
_POSITION_TYPES = {"epoch": int, "step": int, "global_step": int, "history": list[dict], "changes": list[dict]}
_POSITION = pydantic.TypeAdapter(
    pydantic.with_config(pydantic.ConfigDict(strict=True))(
        TypedDict("CheckpointPosition", _POSITION_TYPES, total=False)  # type: ignore[misc]
    )
)


def load_trained(path: str, device: torch.device | str = "cpu") -> tuple[nn.Module, TrainConfig]:
    """The model of an ``anl-fused train`` checkpoint, in eval mode, and its resolved config (a config stored by an
    older version upgraded first)."""
    state = ckpt.load(path, map_location=device, required=("config", "model", "num_classes", "in_channels"))
    cfg = config_from_dict(state["config"], f"the config in checkpoint file {path!r}").resolved()
    model = make_model(cfg, state["in_channels"], state["num_classes"]).to(device)
    model.load_state_dict(state["model"])
    return model.eval(), cfg


def _check_types(state: dict[str, Any], path: str) -> None:
    """The checkpoint's position and config have their types (else CheckpointError / StoredConfigError)."""
    try:
        _POSITION.validate_python({k: state[k] for k in _POSITION_TYPES if k in state})
    except pydantic.ValidationError as e:
        err = e.errors(include_url=False)[0]
        raise ckpt.CheckpointError(
            f"checkpoint file {path!r}: {err['loc'][0]} {err['input']!r} is not allowed ({err['msg']}); it is not "
            "a checkpoint anl-fused wrote: restore it, or start a new run"
        ) from None
    config_from_dict(state["config"], f"the config in checkpoint file {path!r}")


def read(path: str, world: int) -> dict[str, Any] | None:
    """The checkpoint to resume from (``None``: there is none). Under torchrun rank 0 reads it and
    broadcasts it, or its error, to the others: only rank 0's file system needs it."""

    def load() -> dict[str, Any] | None:
        if not os.path.exists(path):
            return None
        state = ckpt.load(path, map_location="cpu", required=REQUIRED, versions=(ckpt.VERSION,))
        _check_types(state, path)
        return state

    return launch.on_rank0(load, world)


def resume_changes(saved: dict[str, Any], now: dict[str, Any], epoch: int, step: int, path: str) -> dict[str, list]:
    """The settings ``now`` changes in the run of checkpoint ``path`` (``saved``: its config), which
    stands ``step`` steps into epoch ``epoch + 1``: ``{field: [old, new]}``. Raises
    :class:`~anl_fused.experiments.checkpoint.CheckpointError` for a change that is not safe."""
    saved = upgrade_stored(saved)
    diff = {k: [saved.get(k), v] for k, v in now.items() if saved.get(k) != v}
    identity = {k: d for k, d in diff.items() if k in IDENTITY}
    if identity:
        raise ckpt.CheckpointError(
            f"checkpoint file {path!r} belongs to a different run; differing settings "
            + ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in identity.items())
            + f". {RESUME_RULE}; for other settings start a new run (another --out, or --overwrite)"
        )
    problem = _length_problem(saved, now, epoch + (1 if step else 0))
    if problem:
        raise ckpt.CheckpointError(f"cannot resume {path!r} with {problem}. {RESUME_RULE}")
    return diff


def _length_problem(saved: dict[str, Any], now: dict[str, Any], touched: int) -> str | None:
    """Why ``now``'s epochs would rewrite the ``touched`` epochs the run has (partly) trained, or ``None``."""
    old_e, new_e = saved["epochs"], now["epochs"]
    total = new_e + now["finetune_epochs"]
    where = f"the run has trained (into) {touched} epoch(s), phase 1 being epochs 1-{old_e}"
    if total < touched:
        return f"--epochs {new_e} --finetune-epochs {now['finetune_epochs']} ({total} in all): {where}"
    if old_e != new_e and min(old_e, new_e) < touched:
        return f"--epochs {new_e}: {where}; phase 1 can change only while the run is still in it"
    if saved.get("finetune_lr") != now["finetune_lr"] and touched > old_e:
        return f"--finetune-lr {now['finetune_lr']}: {where}; the fine-tuning phase has begun"
    return None


def restore(state: dict[str, Any], parts: Parts, meter: EpochMeter, path: str, log: Callable[[str], None]) -> Position:
    """Load ``state`` into ``parts`` and ``meter``; returns the run's position."""
    try:
        parts.model.load_state_dict(state["model"])
        parts.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise ckpt.CheckpointError(f"checkpoint file {path!r} does not fit this model: {e}") from e
    parts.scheduler.load_state_dict(state["scheduler"])
    rank, world = parts.rank, parts.world
    saved = state.get("ranks") or [{k: state[k] for k in ("generator", "rng", "meter")}]
    if rank < len(saved):  # a rank the checkpoint does not know keeps its fresh noise and RNG seeds
        parts.generator.set_state(saved[rank]["generator"])
        rng.restore(saved[rank]["rng"])
    if len(saved) == world:
        meter.load_state_dict(saved[rank]["meter"])
    else:
        log(
            f"the checkpoint was written by {len(saved)} process(es), now {world}: same data order, "
            "other noise draws and dropout masks from here on"
        )
        if rank == 0:  # the epoch's partial sums of all old processes; the others start at 0
            meter.load_state_dict(merged_meter_state([r["meter"] for r in saved]))
    epoch, step, global_step = (int(state[k]) for k in ("epoch", "step", "global_step"))
    return Position(epoch, step, global_step, list(state["history"]), list(state.get("changes", [])))


def save(path: str, parts: Parts, meter: EpochMeter, pos: Position, config: dict[str, Any]) -> None:
    """Write the checkpoint (a collective under torchrun: every rank's streams go to rank 0, which writes)."""
    streams = {"generator": parts.generator.get_state(), "rng": rng.capture(host_libraries=True)}
    mine = {**streams, "meter": meter.state_dict()}
    ranks = None
    if parts.world > 1:
        ranks = [None] * parts.world if parts.rank == 0 else None
        dist.gather_object(mine, ranks, dst=0)
        if parts.rank:
            return
    states = {k: getattr(parts, k).state_dict() for k in ("model", "optimizer", "scheduler")}
    sizes = {"num_classes": parts.bundle.num_classes, "in_channels": parts.bundle.in_channels}
    extra = {**dataclasses.asdict(pos), **sizes, **({"ranks": ranks} if ranks else {})}
    ckpt.save(path, {"config": config, **states, **mine, **extra})
