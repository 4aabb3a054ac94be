"""What a training run is: :class:`TrainConfig`, its validation and the fields that identify a run."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pydantic
import torch
from typing_extensions import TypedDict

from ... import distributed
from ...eps_rule import auto_eps
from ...layer import NORMS
from .. import data as data_mod
from ..cli_types import number, out_of_range
from ..models import MODELS, build, count_params, get_spec

__all__ = [
    "IDENTITY",
    "INPUT_EPS_UNITS",
    "LENGTH",
    "NOISE_VARIANTS",
    "PRESETS",
    "PROBE_DTYPES",
    "RANGES",
    "RUNTIME",
    "SCHEDULES",
    "TWO_PHASE_VARIANTS",
    "VARIANTS",
    "StoredConfigError",
    "TrainConfig",
    "arg_type",
    "auto_eps_of",
    "check_device",
    "config_from_dict",
    "input_layer_eps",
    "noise_note",
    "preset_values",
    "probe_torch_dtype",
    "upgrade_stored",
]

VARIANTS = ("plain", "dropout", "gaussian", "anl", "opposite", "input", "sam")
NOISE_VARIANTS = ("gaussian", "anl", "opposite", "input")
# trained in two phases by default (the regularizer on for `epochs`, then `finetune_epochs` without it at the floor)
TWO_PHASE_VARIANTS = (*NOISE_VARIANTS, "sam")
SCHEDULES = ("plateau", "cosine")
INPUT_EPS_UNITS = ("pixel", "normalized", None)
# round 1's dtype (TwoRound's probe_dtype): fp32 = as the model is (exact); bf16 / fp16 = under autocast
PROBE_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# the numeric fields' kinds and ranges: TrainConfig.resolved checks them, the CLI's argparse types come from here
_F32 = float(torch.finfo(torch.float32).max)  # an eps the float32 kernels can hold
RANGES: dict[str, dict[str, Any]] = {
    "eps": {"kind": float, "low": -_F32, "high": _F32},
    "input_eps": {"kind": float, "low": -_F32, "high": _F32},
    "epochs": {"kind": int, "low": 0},
    "finetune_epochs": {"kind": int, "low": 0},
    "batch_size": {"kind": int, "low": 1},
    "eval_batch_size": {"kind": int, "low": 1},
    "lr": {"kind": float, "low": 0.0, "low_open": True},
    "momentum": {"kind": float, "low": 0.0, "high": 1.0, "high_open": True},
    "weight_decay": {"kind": float, "low": 0.0},
    "lr_factor": {"kind": float, "low": 0.0, "high": 1.0, "low_open": True, "high_open": True},
    "patience": {"kind": int, "low": 1},
    "hold_epochs": {"kind": int, "low": 1},
    "sam_rho": {"kind": float, "low": 0.0, "low_open": True},
    "min_lr": {"kind": float, "low": 0.0},
    "val_size": {"kind": int, "low": 0},
    "seed": {"kind": int, "low": 0},
}

# What --resume may change (recorded in the run), by field; every other field is the run's identity.
RUNTIME = ("data_dir", "download", "device", "compile", "channels_last", "eval_batch_size")  # where / how fast
LENGTH = ("epochs", "finetune_epochs", "finetune_lr")  # the future, while the finished epochs stay as they were


# the choice fields' types (TrainConfig's annotations are the schema of a config: SCHEMA below)
Norm = Literal[NORMS]
Probe = Literal[tuple(PROBE_DTYPES)]
StdOver = Literal[distributed.STD_OVER]
Device = Annotated[str, pydantic.StringConstraints(pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")]  # auto, cpu, cuda, cuda:N


@dataclass
class TrainConfig:
    model: str = "vgg_tiny"
    dataset: str = "digits"
    data_dir: str | None = None  # None: ./data, then the system's (Fashion-MNIST); a directory: that one alone
    download: bool = False
    variant: Literal[VARIANTS] = "anl"
    eps: float | Literal["auto"] | None = None  # None: the paper's eps for the model (Table 2); "auto": auto_eps
    input_eps: float = 0.0
    input_sign: bool = False
    # with input_sign, the unit of input_eps: "pixel" (images in [0, 1]), or "normalized" (runs made before
    # the unit existed); without input_sign the eps is a fraction of std(x), unit-free (None). See input_layer_eps.
    input_eps_unit: Literal["pixel", "normalized"] | None = "pixel"
    scale_by_std: bool = True
    norm: Norm = "sample"  # the hidden layers' gradient norm: per sample (the authors' code) or "layer" (Algorithm 1)
    probe_dtype: Probe = "fp32"  # round 1 under autocast in bf16 / fp16 (an approximate noise): part of the identity
    epochs: int = 10
    finetune_epochs: int = 0
    finetune_lr: Literal["auto", "floor", "continue"] = "auto"  # auto | floor | continue
    batch_size: int = 128
    eval_batch_size: int = 500
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_factor: float = 0.5  # the schedule (sec. 4.2.1, schedule.PlateauSchedule): halve the rate
    patience: int = 5  # ... when none of the last `patience` epochs found a new best validation loss
    hold_epochs: int = 5  # ... and the rate has been used for at least `hold_epochs` epochs
    min_lr: float = 1e-3  # ... down to this floor (also the fine-tuning rate)
    # "cosine": a fixed schedule instead (the same rates for every run: lr to min_lr over the scheduled epochs)
    schedule: Literal[SCHEDULES] = "plateau"
    sam_rho: float = 0.05  # variant "sam": the neighbourhood radius of sharpness-aware minimization
    val_size: int | None = None
    seed: int = 0
    device: Device = "auto"
    compile: bool = False
    channels_last: bool = False
    drop_last: bool = True  # a tiny last batch wrecks BatchNorm statistics (897 digits / 64 = 14 r 1)
    std_over: StdOver = "local"  # under torchrun: std(h) of each process's batch, or "global" (all processes)
    sync_bn: bool = False  # under torchrun: SyncBatchNorm (GPUs only)

    @classmethod
    def from_preset(cls, name: str, **settings: Any) -> TrainConfig:
        """The config of preset ``name`` (:data:`PRESETS`, e.g. ``"paper"``) with ``settings`` on top."""
        variant = settings.get("variant", cls.variant)
        return cls(**{**preset_values(name, variant), **settings})

    def resolved(self) -> TrainConfig:
        """Check the values and fill in defaults (eps from the model's spec, opposite -> -|eps|)."""
        c = dataclasses.replace(self)
        c.model = get_spec(c.model).name
        c.dataset = data_mod.canonical_name(c.dataset)
        if c.data_dir is not None:  # stored absolute: a stored "./data" is the old default (upgrade_stored)
            c.data_dir = os.path.abspath(c.data_dir)
        if c.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {c.variant!r}")
        if c.finetune_lr not in ("auto", "floor", "continue"):
            raise ValueError(f"finetune_lr must be auto, floor or continue, got {c.finetune_lr!r}")
        if c.finetune_lr == "auto":
            c.finetune_lr = "floor" if c.variant in TWO_PHASE_VARIANTS else "continue"
        _check_numbers(c)
        if c.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {c.norm!r}")
        if c.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {c.schedule!r}")
        if c.probe_dtype not in PROBE_DTYPES:
            raise ValueError(f"probe_dtype must be one of {tuple(PROBE_DTYPES)}, got {c.probe_dtype!r}")
        if c.std_over not in distributed.STD_OVER:
            raise ValueError(f"std_over must be one of {distributed.STD_OVER}, got {c.std_over!r}")
        _resolve_noise(c)
        return c


def _check_numbers(c: TrainConfig) -> None:
    """Every numeric field in its range (:data:`RANGES`); a validation split for the schedule."""
    for k, spec in RANGES.items():
        value = getattr(c, k)
        if (value is None and k in ("eps", "val_size")) or (k == "eps" and value == "auto"):
            continue
        bounds = {b: v for b, v in spec.items() if b != "kind"}
        problem = out_of_range(value, **bounds)
        if problem is None and spec["kind"] is int and not isinstance(value, int):
            problem = f"must be an integer, got {value!r}"
        if problem:
            raise ValueError(f"{k} {problem}")
    if c.min_lr > c.lr:
        raise ValueError(f"min_lr (the schedule's floor) must be <= lr, got min_lr={c.min_lr!r}, lr={c.lr!r}")
    if c.val_size == 0:
        raise ValueError(
            "val_size=0 leaves no validation images, but the learning-rate schedule (sec. 4.2.1) "
            "halves on the validation loss: hold out at least 1 image (leave --val-size out for the "
            "dataset's default)"
        )


def check_device(device: str) -> None:
    """``auto``, ``cpu``, or a CUDA device that this machine has (else ``ValueError`` saying so); what
    training checks before it holds its directory (loading a model elsewhere does not need the device)."""
    if device == "auto":
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: this machine has no CUDA device (use --device cpu, or auto)")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def arg_type(field: str):
    """The argparse ``type=`` of a numeric field (its kind and range from :data:`RANGES`); ``eps``
    also takes ``auto``."""
    parse = number(**RANGES[field], name=field.replace("_", "-"))
    if field != "eps":
        return parse

    def eps(text: str) -> float | str:
        if text.strip().lower() == "auto":
            return "auto"
        try:
            return parse(text)
        except argparse.ArgumentTypeError as e:
            if "finite" in str(e):
                raise
            raise argparse.ArgumentTypeError(f"must be a number or 'auto', got {text!r}") from None

    return eps


def _resolve_noise(c: TrainConfig) -> None:
    """The variant's eps, input eps, input sign and input eps unit (in place)."""
    if c.input_eps_unit not in INPUT_EPS_UNITS:
        raise ValueError(f"input_eps_unit must be one of {INPUT_EPS_UNITS}, got {c.input_eps_unit!r}")
    if not (c.variant == "input" and c.input_sign):
        c.input_eps_unit = None
    elif c.input_eps_unit is None:
        c.input_eps_unit = "pixel"
    if c.variant != "sam":
        c.sam_rho = TrainConfig.sam_rho  # not a setting of this run: the default, so that it never tells runs apart
    if c.variant in ("plain", "dropout", "sam"):
        c.eps, c.input_eps, c.input_sign, c.probe_dtype = 0.0, 0.0, False, "fp32"  # no round 1
        return
    if c.eps is None:
        eps = MODELS[c.model].eps
    else:
        eps = auto_eps_of(c)[1] if c.eps == "auto" else float(c.eps)
    if not math.isfinite(eps):
        raise ValueError(f"eps must be finite, got {eps}")
    c.eps = -abs(eps) if c.variant == "opposite" else eps
    if c.variant == "input":
        if c.input_eps == 0.0:
            raise ValueError("variant 'input' needs --input-eps (the input layer's eps, Table 3)")
    else:
        c.input_eps, c.input_sign = 0.0, False


def auto_eps_of(cfg: TrainConfig) -> tuple[int, float]:
    """``(trainable parameters, eps="auto")`` of the config's model for its dataset (counted on the
    meta device: no memory, no initialization)."""
    info = data_mod.DATASETS[data_mod.canonical_name(cfg.dataset)]
    with torch.device("meta"):
        model = build(
            cfg.model, num_classes=info.num_classes, in_channels=info.in_channels, dropout=cfg.variant == "dropout"
        )
    n = count_params(model)
    return n, auto_eps(n)


IDENTITY = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in RUNTIME + LENGTH)

# --preset: whole protocols, so that nobody rebuilds them from flags. Settings given explicitly win.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {  # sec. 4.2.1. Augmentation is the dataset's: crop + flip on CIFAR (as the paper), none elsewhere.
        "all": {
            "lr": 0.1,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "lr_factor": 0.5,
            "patience": 5,
            "hold_epochs": 5,
            "min_lr": 1e-3,
        },
        "noise": {"epochs": 100, "finetune_epochs": 100, "finetune_lr": "floor"},  # ANL, then 100 with ANL off at 1e-3
        "baseline": {"epochs": 200, "finetune_epochs": 0, "finetune_lr": "continue"},  # plain / dropout: 200 epochs
    },
}


def preset_values(name: str, variant: str) -> dict[str, Any]:
    """The settings of preset ``name`` for ``variant`` (noise variants and baselines differ in length)."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {name!r}")
    p = PRESETS[name]
    return {**p["all"], **(p["noise"] if variant in TWO_PHASE_VARIANTS else p["baseline"])}


def input_layer_eps(cfg: TrainConfig) -> float:
    """The eps of the input ANL layer, which acts on the *normalized* input ``(x - mean_c) / std_c``
    (``cfg`` resolved).

    With ``input_sign`` (``eta = eps sign(g)``, Eq. 8, an absolute step like FGSM's) ``input_eps`` is
    in pixel units of images in [0, 1] (``16/255`` is FGSM's delta 16) and is divided by the mean of
    the dataset's per-channel normalization std: exact for one-channel data (Fashion-MNIST, digits);
    on CIFAR each channel's pixel step is ``eps * std_c / mean(std)``, within 4.4% of eps (one eps
    per layer is what the kernels take). Without ``input_sign`` (Eq. 5, ``eta = r std(x) g / |g|_inf``)
    ``input_eps`` is a fraction of the input's std, as for the hidden layers: for one-channel data
    the same noise in pixel and normalized units (normalizing scales ``std(x)`` and the step alike),
    so it is used as it is."""
    if cfg.input_eps_unit != "pixel":
        return cfg.input_eps
    std = data_mod.DATASETS[cfg.dataset].std
    return cfg.input_eps / (sum(std) / len(std))


def noise_note(given: TrainConfig, cfg: TrainConfig) -> str | None:
    """What to say about the noise's eps (``given``: as asked, ``cfg``: resolved): where a default eps
    comes from, and the input eps's unit."""
    notes = []
    if given.eps not in (None, 0, 0.0) and cfg.variant not in NOISE_VARIANTS:
        notes.append(f"variant {cfg.variant} trains without noise: eps {given.eps} is not used (stored as 0)")
    if isinstance(cfg.eps, float) and abs(cfg.eps) > 1:
        notes.append(
            f"warning: |eps| {abs(cfg.eps):g} > 1: noise larger than the activations' own spread; such runs "
            "usually train to chance (the paper's eps are 0.01-0.05)"
        )
    if given.eps is None and cfg.variant in NOISE_VARIANTS:
        notes.append(
            f"eps {cfg.eps:g}: {cfg.model}'s default, listed by `anl-fused models` (the paper's eps)"
            + ("; `anl-fused demo` uses 0.1, chosen on a digits sweep" if cfg.model == "vgg_tiny" else "")
        )
    if cfg.variant == "input":
        layer = input_layer_eps(cfg)
        notes.append(
            f"input eps {cfg.input_eps:g} "
            + (
                f"in pixel units = {layer:.4g} on the normalized input"
                if cfg.input_eps_unit == "pixel"
                else "on the normalized input (a run made before input eps took pixel units)"
                if cfg.input_eps_unit
                else "as a fraction of std(x) (Eq. 5, no unit)"
            )
        )
    return "; ".join(notes) or None


def probe_torch_dtype(cfg: TrainConfig) -> torch.dtype | None:
    """``TwoRound``'s ``probe_dtype`` of the config (``None`` for fp32)."""
    return PROBE_DTYPES[cfg.probe_dtype]


def upgrade_stored(d: dict[str, Any]) -> dict[str, Any]:
    """A stored config (``config.json``, a checkpoint's) with the fields that runs made before they
    existed implicitly had: ``norm`` ("sample"), ``probe_dtype`` ("fp32"), ``input_eps_unit`` ("normalized"
    for input-sign runs), ``schedule`` ("plateau"), ``sam_rho`` (the default, unused); ``data_dir`` "./data", the
    old default, is the default again (``None``: ./data, then the system's copy; a directory given is
    stored absolute, so it never reads as the default)."""
    d = dict(d)
    if d.get("data_dir") == data_mod.DEFAULT_DATA_DIR:
        d["data_dir"] = None
    d.setdefault("norm", "sample")
    d.setdefault("schedule", "plateau")
    d.setdefault("sam_rho", TrainConfig.sam_rho)
    d.setdefault("probe_dtype", "fp32")
    if "input_eps_unit" not in d:
        d["input_eps_unit"] = "normalized" if d.get("variant") == "input" and d.get("input_sign") else None
    return d


class StoredConfigError(ValueError):
    """A stored config (``config.json``, a checkpoint's) with a value its field's type does not allow."""


# The field types of TrainConfig (its annotations, the one place they are written), checked strictly: "no" is
# not a bool, "2" not an int. A TypedDict of the fields: pydantic validates a dataclass strictly only as an instance.
SCHEMA = pydantic.TypeAdapter(
    pydantic.with_config(pydantic.ConfigDict(strict=True))(
        TypedDict("TrainConfigFields", typing.get_type_hints(TrainConfig, include_extras=True), total=False)
    )
)


def config_from_dict(d: dict[str, Any], source: str = "the config") -> TrainConfig:
    """A :class:`TrainConfig` from a dict such as ``config.json`` (keys that are not fields are ignored),
    its values checked against the fields' types (:data:`SCHEMA`, strict; a ``device`` matches its
    pattern) and ranges (:data:`RANGES`); :class:`StoredConfigError` names
    ``source``, the field, the value and the fix."""
    if not isinstance(d, dict):
        raise StoredConfigError(f"{source} is not a JSON object of settings (found {type(d).__name__})")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    fix = "correct the value, or start a new run with another --out"
    try:
        cfg = TrainConfig(**SCHEMA.validate_python({k: v for k, v in d.items() if k in names}))
    except pydantic.ValidationError as e:
        errors = e.errors(include_url=False)
        field = str(errors[0]["loc"][0]) if errors[0]["loc"] else "?"
        wants = " or ".join(dict.fromkeys(er["msg"] for er in errors if er["loc"][:1] == errors[0]["loc"][:1]))
        value = json.dumps(d.get(field), default=repr)
        raise StoredConfigError(f"{source}: {field} {value} is not allowed ({wants}); {fix}") from None
    try:
        _check_numbers(cfg)  # each number in its range (RANGES)
    except ValueError as e:
        raise StoredConfigError(f"{source}: {e}; {fix}") from None
    return cfg
