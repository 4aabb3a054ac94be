"""What a run measures: the per-epoch training meter, evaluation, and ``metrics.jsonl``.

Training metrics are accumulated on the device (:class:`EpochMeter`) and read on the host once per epoch; under torchrun
their sums are all-reduced first (:func:`all_ranks`), so every process sees the same numbers and takes the same
learning-rate decisions.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import data as data_mod
from ..files import atomic_write

METRICS_NAME = "metrics.jsonl"


@torch.no_grad()
def evaluate(model: nn.Module, batches: data_mod.Batches, all_reduce: bool = False) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over ``batches`` (eval mode, one host read); ``all_reduce``:
    over the batches of every process (each holding its part of the split)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=batches.device)
    correct = torch.zeros((), dtype=torch.int64, device=batches.device)
    n = 0
    for x, y in batches.epoch(0):
        out = model(x)
        loss_sum += F.cross_entropy(out.float(), y, reduction="sum").double()
        correct += (out.argmax(1) == y).sum()
        n += y.numel()
    model.train(was_training)
    totals = torch.stack([loss_sum, correct.double(), torch.full_like(loss_sum, n)])
    if all_reduce:
        torch.distributed.all_reduce(totals)
    loss, right, n = totals.tolist()
    return loss / max(n, 1), right / max(n, 1)


# what a checkpoint keeps of an unfinished epoch's meter
_METER_STATE = ("loss_sum", "correct", "count", "steps", "train_time", "std_names", "std_sum", "std_steps")


class EpochMeter:
    """Per-epoch training metrics, accumulated on the device (no host sync per step)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.count = 0
        self.steps = 0
        self.train_time = 0.0
        self.std_names: list[str] = []
        self.std_sum: Tensor | None = None
        self.std_steps = 0

    def update(self, loss: Tensor, out: Tensor, y: Tensor, stds: dict[str, Tensor] | None) -> None:
        self.loss_sum += loss.detach().double() * y.numel()
        self.correct += (out.detach().argmax(1) == y).sum()
        self.count += y.numel()
        self.steps += 1
        if stds:
            if self.std_sum is None:
                self.std_names = list(stds)
                self.std_sum = torch.zeros(len(stds), dtype=torch.float64, device=self.device)
            if list(stds) == self.std_names:
                self.std_sum += torch.stack([s.detach().double().reshape(()) for s in stds.values()])
                self.std_steps += 1

    def summary(self) -> dict[str, Any]:
        parts = [self.loss_sum, self.correct.double()] + ([self.std_sum] if self.std_sum is not None else [])
        flat = torch.cat([p.reshape(-1) for p in parts]).tolist()  # the one host read of the epoch
        n = max(self.count, 1)
        out = {"train_loss": flat[0] / n, "train_acc": flat[1] / n}
        if self.std_sum is not None and self.std_steps:
            out["anl_std"] = {k: v / self.std_steps for k, v in zip(self.std_names, flat[2:])}
        return out

    def state_dict(self) -> dict[str, Any]:
        state = {k: getattr(self, k) for k in _METER_STATE}
        return {
            k: v.cpu() if isinstance(v, Tensor) else list(v) if isinstance(v, list) else v for k, v in state.items()
        }

    def load_state_dict(self, s: dict[str, Any]) -> None:
        for k in _METER_STATE:
            v = s[k]
            setattr(self, k, v.to(self.device) if isinstance(v, Tensor) else list(v) if isinstance(v, list) else v)


def all_ranks(meter: EpochMeter) -> EpochMeter:
    """The meter of every process together: sums all-reduced (one collective, one host read);
    steps and time are this process's."""
    out = EpochMeter(meter.device)
    out.steps, out.train_time, out.std_names = meter.steps, meter.train_time, list(meter.std_names)
    counts = torch.tensor([meter.count, meter.std_steps], dtype=torch.float64, device=meter.device)
    head = torch.cat([meter.loss_sum.view(1), meter.correct.double().view(1), counts])
    vec = head if meter.std_sum is None else torch.cat([head, meter.std_sum])
    torch.distributed.all_reduce(vec)
    count, std_steps = vec[2:4].tolist()
    out.loss_sum, out.correct = vec[0], vec[1].round().long()
    out.count, out.std_steps = int(count), int(std_steps)
    out.std_sum = None if meter.std_sum is None else vec[4:]
    return out


def merged_meter_state(states: list[dict[str, Any]]) -> dict[str, Any]:
    """One meter state holding the sums of several processes' (resuming with another process count)."""
    out = dict(states[0])
    for k in ("loss_sum", "correct", "count", "std_steps"):
        out[k] = sum(s[k] for s in states[1:]) + states[0][k]
    if out["std_sum"] is not None:
        out["std_sum"] = sum((s["std_sum"] for s in states[1:] if s["std_sum"] is not None), states[0]["std_sum"])
    return out


def format_record(r: dict[str, Any], total_epochs: int) -> str:
    """The log line of an epoch."""
    return (
        f"epoch {r['epoch']}/{total_epochs} [{r['phase']}] train loss {r['train_loss']:.4f} "
        f"acc {r['train_acc']:.4f} | val loss {r['val_loss']:.4f} acc {r['val_acc']:.4f} | test err "
        f"{r['test_err'] * 100:.2f}% | lr {r['lr']:.4g} | {r['time_per_step_s'] * 1e3:.1f} ms/step"
    )


def read_metrics(run_dir: str) -> list[dict[str, Any]]:
    """The records of a run directory's ``metrics.jsonl``, its finished epochs (``[]`` when it does not exist). A
    half-written last line (the process or the disk failed during the append) is left out, as ``train --resume``
    drops it; any other line that is not a JSON object raises ``ValueError`` naming the file and the line."""
    path = os.path.join(run_dir, METRICS_NAME)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().split("\n")
    except FileNotFoundError:
        return []
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            if i == len(lines):  # no newline after it: the append did not finish
                break
            raise ValueError(f"{path!r} line {i} is not JSON ({e}); restore the file or delete the run") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path!r} line {i} is not a JSON object of an epoch's metrics")
        records.append(record)
    return records


class MetricsFile:
    """``metrics.jsonl`` of a run directory: one JSON object per finished epoch."""

    def __init__(self, out_dir: str):
        self.path = os.path.join(out_dir, METRICS_NAME)

    def rewrite(self, history: list[dict[str, Any]]) -> None:
        """The file holding exactly ``history`` (on resume: drops the lines past the checkpoint)."""
        atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in history))

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
