"""The learning-rate schedule: halved on a validation-loss plateau, down to a floor."""

from __future__ import annotations

import torch

from .config import TrainConfig

__all__ = ["make_schedule"]


def make_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """``ReduceLROnPlateau`` on the validation loss with the config's factor, patience, cooldown and floor."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.patience, cooldown=cfg.cooldown, min_lr=cfg.min_lr)
