"""The learning-rate schedule of the paper's section 4.2.1, as a small scheduler with exact resume."""

from __future__ import annotations

import math
from typing import Any

import torch

from .config import TrainConfig

__all__ = ["CosineSchedule", "PlateauSchedule", "make_schedule"]


class _Schedule:
    """What both schedules share: the fine-tuning phase's floor and the state of an exact resume (``STATE``: the
    attributes it is made of, each restored with its type; the rates themselves live in the optimizer's state)."""

    STATE: tuple[str, ...] = ()

    def to_floor(self) -> None:
        """Every group's rate to ``min_lr`` (the fine-tuning phase of sec. 4.2.1)."""
        for g in self.optimizer.param_groups:
            g["lr"] = self.min_lr

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.STATE}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = [k for k in self.STATE if k not in state]
        if missing:
            raise KeyError(
                f"not a {type(self).__name__} state (lacks {missing}): the run was made with another schedule "
                "(ReduceLROnPlateau states do not load)"
            )
        for k in self.STATE:
            value = getattr(self, k)
            setattr(self, k, [float(v) for v in state[k]] if isinstance(value, list) else type(value)(state[k]))


class PlateauSchedule(_Schedule):
    """Halve the learning rate when the validation loss stops finding new bests (paper, sec. 4.2.1: "divided by 2 until
    the most recent 5 epoch validation loss reach lower value than the best ever see. Each learning rate stays at least
    5 epoch and the minimum of learning rate is 0.001").

    :meth:`step`, once per epoch: a loss strictly below every earlier one is a new best (a non-finite one never is);
    when none of the last ``patience`` epochs was one and the rate has been used ``hold`` epochs, each group's rate is
    multiplied by ``factor``, not below ``min_lr``. The best is never reset: under a lasting plateau the rate halves
    every ``hold`` epochs (6, 11, 16, ...; ``ReduceLROnPlateau(patience=5)`` would at 7, 13, 19, ... and with a 1e-4
    threshold)."""

    STATE = ("factor", "patience", "hold", "min_lr", "best", "epochs_since_best", "epochs_at_rate", "epochs")

    def __init__(self, optimizer: torch.optim.Optimizer, *, factor=0.5, patience=5, hold=5, min_lr=1e-3):
        if not 0.0 < factor < 1.0:
            raise ValueError(f"factor must be in (0, 1), got {factor!r}")
        if patience < 1 or hold < 1:
            raise ValueError(f"patience and hold must be >= 1 epoch, got patience={patience!r}, hold={hold!r}")
        if not (math.isfinite(min_lr) and min_lr >= 0.0):
            raise ValueError(f"min_lr must be a finite number >= 0, got {min_lr!r}")
        self.optimizer = optimizer
        self.factor, self.patience, self.hold, self.min_lr = float(factor), int(patience), int(hold), float(min_lr)
        self.best = math.inf
        self.epochs_since_best = 0  # epochs after the last new best
        self.epochs_at_rate = 0  # epochs the current rate has been used for
        self.epochs = 0  # epochs seen

    def step(self, val_loss: float) -> bool:
        """Account for one epoch's validation loss; returns whether the rate was lowered."""
        self.epochs += 1
        self.epochs_at_rate += 1
        if val_loss < self.best:  # False for nan
            self.best, self.epochs_since_best = float(val_loss), 0
        else:
            self.epochs_since_best += 1
        if self.epochs_since_best < self.patience or self.epochs_at_rate < self.hold:
            return False
        lowered = False
        for g in self.optimizer.param_groups:
            if g["lr"] > self.min_lr:
                g["lr"] = max(g["lr"] * self.factor, self.min_lr)
                lowered = True
        if lowered:
            self.epochs_at_rate = 0
        return lowered


class CosineSchedule(_Schedule):
    """A fixed schedule: the rate of epoch ``e`` (from 0) is
    ``min_lr + (lr - min_lr) * (1 + cos(pi * e / horizon)) / 2`` for ``e < horizon``, then ``min_lr``.

    The same rates for every run of a length, whatever its validation loss: it removes the learning-rate
    path as a difference between runs (the plateau schedule reacts to each run's loss). :meth:`step`
    takes the epoch's validation loss only to share :class:`PlateauSchedule`'s interface."""

    STATE = ("horizon", "min_lr", "base_lrs", "epochs")

    def __init__(self, optimizer: torch.optim.Optimizer, *, horizon: int, min_lr: float = 1e-3):
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1 epoch, got {horizon!r}")
        self.optimizer, self.horizon, self.min_lr = optimizer, int(horizon), float(min_lr)
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.epochs = 0

    def rate(self, base: float, epoch: int) -> float:
        if epoch >= self.horizon:
            return self.min_lr
        return self.min_lr + (base - self.min_lr) * (1.0 + math.cos(math.pi * epoch / self.horizon)) / 2.0

    def step(self, val_loss: float | None = None) -> bool:
        """One epoch is over: the next epoch's rates; returns whether they changed."""
        self.epochs += 1
        changed = False
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            new = self.rate(base, self.epochs)
            changed |= new != g["lr"]
            g["lr"] = new
        return changed


def make_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> PlateauSchedule | CosineSchedule:
    """The run's schedule: :class:`PlateauSchedule` (factor, patience, hold and floor from ``cfg``) or, with
    ``schedule="cosine"``, :class:`CosineSchedule` over the epochs that follow a schedule (``epochs``; all of
    them when the fine-tuning continues the schedule). ``cfg`` resolved."""
    if cfg.schedule == "cosine":
        horizon = cfg.epochs + (cfg.finetune_epochs if cfg.finetune_lr == "continue" else 0)
        return CosineSchedule(optimizer, horizon=max(horizon, 1), min_lr=cfg.min_lr)
    kw = dict(factor=cfg.lr_factor, patience=cfg.patience, hold=cfg.hold_epochs, min_lr=cfg.min_lr)
    return PlateauSchedule(optimizer, **kw)
