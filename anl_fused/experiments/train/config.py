"""What a training run is: :class:`TrainConfig`, its validation and the fields that identify a run."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ... import distributed
from ...layer import NORMS
from .. import data as data_mod
from ..models import MODELS, get_spec

__all__ = ["IDENTITY", "NOISE_VARIANTS", "VARIANTS", "TrainConfig", "config_from_dict"]

VARIANTS = ("plain", "dropout", "gaussian", "anl", "opposite", "input")
NOISE_VARIANTS = ("gaussian", "anl", "opposite", "input")

# config fields that must match when resuming (others, such as epochs or device, may change)
IDENTITY = ("model", "dataset", "variant", "eps", "input_eps", "input_sign", "scale_by_std", "norm", "batch_size",
            "lr", "momentum", "weight_decay", "lr_factor", "patience", "hold_epochs", "min_lr", "val_size", "seed",
            "drop_last")


@dataclass
class TrainConfig:
    model: str = "vgg_tiny"
    dataset: str = "digits"
    data_dir: str = "./data"
    download: bool = False
    variant: str = "anl"
    eps: float | None = None  # None: the paper's eps for the model (Table 2)
    input_eps: float = 0.0
    input_sign: bool = False
    scale_by_std: bool = True
    norm: str = "sample"  # ||g||_inf per sample (the authors' code) or over the whole layer (Algorithm 1)
    epochs: int = 10
    finetune_epochs: int = 0
    finetune_lr: str = "auto"  # auto | floor | continue
    batch_size: int = 128
    eval_batch_size: int = 500
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_factor: float = 0.5  # the schedule (sec. 4.2.1, schedule.PlateauSchedule): halve the rate
    patience: int = 5  # ... when none of the last `patience` epochs found a new best validation loss
    hold_epochs: int = 5  # ... and the rate has been used for at least `hold_epochs` epochs
    min_lr: float = 1e-3  # ... down to this floor (also the fine-tuning rate)
    val_size: int | None = None
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    channels_last: bool = False
    drop_last: bool = True  # a tiny last batch wrecks BatchNorm statistics (897 digits / 64 = 14 r 1)
    std_over: str = "local"  # under torchrun: std(h) of each process's batch, or "global" (all processes)
    sync_bn: bool = False  # under torchrun: SyncBatchNorm (GPUs only)

    def resolved(self) -> TrainConfig:
        """Check the values and fill in defaults (eps from the model's spec, opposite -> -|eps|)."""
        c = dataclasses.replace(self)
        c.model = get_spec(c.model).name
        c.dataset = data_mod.canonical_name(c.dataset)
        if c.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {c.variant!r}")
        if c.finetune_lr not in ("auto", "floor", "continue"):
            raise ValueError(f"finetune_lr must be auto, floor or continue, got {c.finetune_lr!r}")
        if c.finetune_lr == "auto":
            c.finetune_lr = "floor" if c.variant in NOISE_VARIANTS else "continue"
        for k in ("epochs", "finetune_epochs"):
            if getattr(c, k) < 0:
                raise ValueError(f"{k} must be >= 0, got {getattr(c, k)}")
        if c.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {c.batch_size}")
        if c.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {c.norm!r}")
        if c.std_over not in distributed.STD_OVER:
            raise ValueError(f"std_over must be one of {distributed.STD_OVER}, got {c.std_over!r}")
        _resolve_noise(c)
        return c


def _resolve_noise(c: TrainConfig) -> None:
    """The variant's eps, input eps, input sign and norm (in place)."""
    if c.variant in ("plain", "dropout", "gaussian"):
        c.norm = "sample"  # no gradient, no norm: one identity for these runs
    if c.variant in ("plain", "dropout"):
        c.eps, c.input_eps, c.input_sign = 0.0, 0.0, False
        return
    eps = MODELS[c.model].eps if c.eps is None else float(c.eps)
    if not math.isfinite(eps):
        raise ValueError(f"eps must be finite, got {eps}")
    c.eps = -abs(eps) if c.variant == "opposite" else eps
    if c.variant == "input":
        if c.input_eps == 0.0:
            raise ValueError("variant 'input' needs --input-eps (the input layer's eps, Table 3)")
    else:
        c.input_eps, c.input_sign = 0.0, False


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from a dict such as ``config.json`` (keys that are not fields are ignored)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in d.items() if k in names})
