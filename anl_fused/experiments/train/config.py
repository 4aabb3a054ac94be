"""What a training run is: :class:`TrainConfig`, its one typed schema and the fields that identify a run.

Each field's annotation is its type (a ``Literal``'s choices, ``None`` allowed or not), its bounds (``Gt`` / ``Ge`` /
``Lt`` / ``Le``) and, in an :class:`Arg`, its ``anl-fused train`` option (help, group). From it come the command line's
options (:func:`add_options`: a ``Literal`` gives choices, a bool a flag, a number its parser), the checks of
:meth:`TrainConfig.resolved` and the strict pydantic check of a stored ``config.json`` (``"no"`` is not a bool)::

    lr: Annotated[float, Gt(0), Arg("initial learning rate", "protocol")] = 0.1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pydantic
import torch
from annotated_types import Ge, Gt, Le, Lt
from typing_extensions import TypedDict

from ... import distributed
from ...eps_rule import auto_eps
from ...layer import NORMS
from .. import data as data_mod
from ..cli_types import parser
from ..models import MODELS, build, count_params, get_spec

VARIANTS = ("plain", "dropout", "gaussian", "anl", "opposite", "input", "sam")
NOISE_VARIANTS = ("gaussian", "anl", "opposite", "input")
# trained in two phases by default (the regularizer on for `epochs`, then `finetune_epochs` without it at the floor)
TWO_PHASE_VARIANTS = (*NOISE_VARIANTS, "sam")
SCHEDULES = ("plateau", "cosine")
# round 1's dtype (TwoRound's probe_dtype): fp32 = as the model is (exact); bf16 / fp16 = under autocast
PROBE_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# What --resume may change (recorded in the run), by field; every other field is the run's identity.
RUNTIME = ("data_dir", "download", "device", "compile", "channels_last", "eval_batch_size")  # where / how fast
LENGTH = ("epochs", "finetune_epochs", "finetune_lr")  # the future, while the finished epochs stay as they were
_flags = lambda fields: ", ".join("--" + f.replace("_", "-") for f in fields)
RESUME_RULE = (
    "--resume continues a run with its own settings (config.json); it may change only the length while the finished "
    f"epochs stay as they were ({_flags(LENGTH)}) and where and how fast it runs ({_flags(RUNTIME)})"
)


@dataclass(frozen=True)
class Arg:
    """A field's ``anl-fused train`` option: its ``help``, its argument ``group`` and, for a bool that defaults
    to ``True``, the ``flag`` that turns it off (one that defaults to ``False`` is ``--field-name``, turning it on)."""

    help: str
    group: str = "run"
    flag: str | None = None


Norm = Literal[NORMS]
Probe = Literal[tuple(PROBE_DTYPES)]
StdOver = Literal[distributed.STD_OVER]
Device = Annotated[str, pydantic.StringConstraints(pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")]  # auto, cpu, cuda, cuda:N
_F32 = float(torch.finfo(torch.float32).max)
Eps = Annotated[float, Ge(-_F32), Le(_F32)]  # an eps the float32 kernels can hold
_EPS_HELP = (
    "ANL eps of the hidden layers, or 'auto': a rule fitted to the paper's Table 2 from the model's trainable "
    "parameters (anl_fused.auto_eps). Default: the model's eps, listed by `anl-fused models` (the paper's Table 2; "
    "LeNet-5: Table 1), e.g. vgg_tiny 0.02, lenet5 0.03, vgg16 0.05; note that `anl-fused demo` uses its own eps for "
    "vgg_tiny, chosen on its validation split (docs/demo.md)"
)
_INPUT_EPS_HELP = (
    "input ANL eps (variant input, Table 3): a fraction of std(x) as for the hidden layers (Eq. 5; normalizing the "
    "input changes nothing for one-channel data); with --input-sign in pixel units of [0, 1] images (16/255 is "
    "FGSM's delta=16), divided by the mean of the dataset's per-channel normalization std for the normalized input "
    "(exact for one channel; within 4.4%% per channel on CIFAR)"
)


@dataclass
class TrainConfig:
    """A training run's settings; each field's annotation is its schema (the module's docstring)."""

    model: Annotated[str, Arg(f"zoo model: {', '.join(MODELS)}")] = "vgg_tiny"
    dataset: Annotated[str, Arg(f"{', '.join(data_mod.DATASETS)} (default digits, offline)")] = "digits"
    # None: ./data, then the system's (Fashion-MNIST); a directory: that one alone
    data_dir: Annotated[str | None, Arg("where the torchvision dataset files are", "where")] = None
    download: Annotated[bool, Arg("let torchvision download missing datasets", "where")] = False
    variant: Annotated[Literal[VARIANTS], Arg("what to train")] = "anl"
    # None: the paper's eps for the model (Table 2); "auto": auto_eps
    eps: Annotated[Eps | Literal["auto"] | None, Arg(_EPS_HELP)] = None
    input_eps: Annotated[Eps, Arg(_INPUT_EPS_HELP)] = 0.0
    input_sign: Annotated[bool, Arg("input noise eps*sign(g) (Eq. 8, variant input; --input-eps in pixel units)")] = (
        False
    )
    # with input_sign, the unit of input_eps: "pixel" (images in [0, 1]), or "normalized" (runs made before
    # the unit existed); without input_sign the eps is a fraction of std(x), unit-free (None). See input_layer_eps.
    input_eps_unit: Literal["pixel", "normalized"] | None = "pixel"
    scale_by_std: Annotated[bool, Arg("paper Eq. 4 instead of 5", flag="--no-scale-by-std")] = True
    norm: Annotated[
        Norm,
        Arg(
            "the hidden layers' gradient norm: sample (each sample's max|g|, the authors' code) or layer (one max|g| "
            "for the whole layer, Algorithm 1's reading)"
        ),
    ] = "sample"
    probe_dtype: Annotated[
        Probe,
        Arg(
            "round 1 (the probe that measures the noise's gradient) in fp32 as the model, or under bf16 / fp16 "
            "autocast: cheaper where the hardware has fast low-precision math, and an approximation of the fp32 "
            "noise (see docs/semantics.md); changes the noise, so part of the run's identity"
        ),
    ] = "fp32"
    epochs: Annotated[int, Ge(0), Arg("phase 1: epochs with the variant's noise on", "protocol")] = 10
    finetune_epochs: Annotated[int, Ge(0), Arg("phase 2: epochs with ANL off after phase 1", "protocol")] = 0
    finetune_lr: Annotated[
        Literal["auto", "floor", "continue"],
        Arg(
            "phase 2 learning rate: floor (--min-lr) or continue the schedule; auto: floor for noise variants and "
            "sam, continue for plain/dropout",
            "protocol",
        ),
    ] = "auto"
    batch_size: Annotated[int, Ge(1), Arg("the global batch under torchrun", "protocol")] = 128
    eval_batch_size: Annotated[int, Ge(1), Arg("batch size of evaluation", "where")] = 500
    lr: Annotated[float, Gt(0), Arg("initial learning rate", "protocol")] = 0.1
    momentum: Annotated[float, Ge(0), Lt(1), Arg("SGD momentum", "protocol")] = 0.9
    weight_decay: Annotated[float, Ge(0), Arg("SGD weight decay", "protocol")] = 5e-4
    # the schedule (sec. 4.2.1, schedule.PlateauSchedule): halve the rate when none of the last `patience` epochs
    # found a new best validation loss and the rate has been used for `hold_epochs` epochs, down to min_lr
    lr_factor: Annotated[
        float, Gt(0), Lt(1), Arg("multiply the learning rate by this on a validation plateau", "protocol")
    ] = 0.5
    patience: Annotated[
        int, Ge(1), Arg("a plateau: this many epochs without a new best validation loss", "protocol")
    ] = 5
    hold_epochs: Annotated[int, Ge(1), Arg("each learning rate stays at least this many epochs", "protocol")] = 5
    min_lr: Annotated[float, Ge(0), Arg("learning-rate floor and the fine-tuning rate", "protocol")] = 1e-3
    schedule: Annotated[
        Literal[SCHEDULES],
        Arg(
            "plateau: sec. 4.2.1 (halve on a validation plateau); cosine: a fixed schedule, the same rates for every "
            "run (lr to --min-lr over the scheduled epochs)",
            "protocol",
        ),
    ] = "plateau"
    sam_rho: Annotated[float, Gt(0), Arg("variant sam: SAM's neighbourhood radius rho", "protocol")] = 0.05
    val_size: Annotated[
        Annotated[int, Ge(0)] | None,
        Arg(
            "training images held out for validation, >= 1: the schedule watches their loss (default: the "
            "dataset's, 5000; digits has a fixed 300)",
        ),
    ] = None
    seed: Annotated[int, Ge(0), Arg("same seed: same initial weights and data order for every variant")] = 0
    device: Annotated[Device, Arg("auto (cuda if available), cpu, cuda, cuda:1, ...", "where")] = "auto"
    compile: Annotated[bool, Arg("torch.compile the model", "where")] = False
    channels_last: Annotated[bool, Arg("channels_last memory format", "where")] = False
    # 897 digits / 64 = 14 r 1
    drop_last: Annotated[
        bool,
        Arg(
            "also train on the last, smaller batch of each epoch (dropped by default: a tiny batch wrecks "
            "BatchNorm statistics)",
            flag="--keep-last-batch",
        ),
    ] = True
    std_over: Annotated[
        StdOver,
        Arg(
            "under torchrun: std(h) of the noise over each process's batch (local) or the global batch (global, "
            "one all-reduce a step)"
        ),
    ] = "local"
    sync_bn: Annotated[bool, Arg("under torchrun: SyncBatchNorm (GPUs only)")] = False

    def resolved(self) -> TrainConfig:
        """Check the values and fill in defaults (eps from the model's spec, opposite -> -|eps|)."""
        c = dataclasses.replace(self)
        c.model = get_spec(c.model).name
        c.dataset = data_mod.canonical_name(c.dataset)
        if c.data_dir is not None:  # stored absolute: a stored "./data" is the old default (upgrade_stored)
            c.data_dir = os.path.abspath(c.data_dir)
        _check(c)
        if c.finetune_lr == "auto":
            c.finetune_lr = "floor" if c.variant in TWO_PHASE_VARIANTS else "continue"
        _resolve_noise(c)
        return c


def _check(c: TrainConfig) -> None:
    """Every field as its schema allows; the schedule's floor under the rate and a validation split for it."""
    _validated(dataclasses.asdict(c))
    if c.min_lr > c.lr:
        raise ValueError(f"min_lr (the schedule's floor) must be <= lr, got min_lr={c.min_lr!r}, lr={c.lr!r}")
    if c.val_size == 0:
        raise ValueError(
            "val_size=0 leaves no validation images, but the learning-rate schedule (sec. 4.2.1) "
            "halves on the validation loss: hold out at least 1 image (leave --val-size out for the "
            "dataset's default)"
        )


def check_device(device: str) -> None:
    """A resolved config's ``device`` (its pattern checked: auto, cpu, cuda, cuda:N) is one this machine has (else
    ``ValueError`` saying so); what training checks before it holds its directory (loading a model does not)."""
    if not device.startswith("cuda"):
        return
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: this machine has no CUDA device (use --device cpu, or auto)")
    if int(device.partition(":")[2] or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def _resolve_noise(c: TrainConfig) -> None:
    """The variant's eps, input eps, input sign and input eps unit (in place)."""
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
        n = count_params(build(cfg.model, info.num_classes, info.in_channels, dropout=cfg.variant == "dropout"))
    return n, auto_eps(n)


IDENTITY = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in RUNTIME + LENGTH)

# --preset: whole protocols, so that nobody rebuilds them from flags. Settings given explicitly win.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {  # sec. 4.2.1. Augmentation is the dataset's: crop + flip on CIFAR (as the paper), none elsewhere.
        "all": dict(lr=0.1, momentum=0.9, weight_decay=5e-4, lr_factor=0.5, patience=5, hold_epochs=5, min_lr=1e-3),
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
    """The eps of the input ANL layer, which acts on the *normalized* input (``cfg`` resolved): ``input_eps`` in
    pixel units (``input_sign``) divided by the mean of the dataset's normalization std (see ``--input-eps``), else
    as it is (a fraction of std(x), unit-free)."""
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
        big = "noise larger than the activations' own spread; such runs usually train to chance"
        notes.append(f"warning: |eps| {abs(cfg.eps):g} > 1: {big} (the paper's eps are 0.01-0.05)")
    if given.eps is None and cfg.variant in NOISE_VARIANTS:
        demo = "; `anl-fused demo` uses its own, chosen on validation (docs/demo.md)" if cfg.model == "vgg_tiny" else ""
        notes.append(f"eps {cfg.eps:g}: {cfg.model}'s default, listed by `anl-fused models` (the paper's eps){demo}")
    if cfg.variant == "input":
        unit = {
            "pixel": f"in pixel units = {input_layer_eps(cfg):.4g} on the normalized input",
            "normalized": "on the normalized input (a run made before input eps took pixel units)",
            None: "as a fraction of std(x) (Eq. 5, no unit)",
        }[cfg.input_eps_unit]
        notes.append(f"input eps {cfg.input_eps:g} {unit}")
    return "; ".join(notes) or None


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


_HINTS = typing.get_type_hints(TrainConfig, include_extras=True)
# the fields' types checked strictly ("no" is not a bool, "2" not an int; a TypedDict: pydantic checks a dataclass
# strictly only as an instance), numbers finite and in their bounds
SCHEMA = pydantic.TypeAdapter(
    pydantic.with_config(pydantic.ConfigDict(strict=True, allow_inf_nan=False))(
        TypedDict("TrainConfigFields", _HINTS, total=False)  # type: ignore[misc]
    )
)


def _validated(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` as :data:`SCHEMA` reads it; ``ValueError`` naming the first field it refuses, its value and what it
    must be."""
    try:
        return SCHEMA.validate_python(d)
    except pydantic.ValidationError as e:
        errors = e.errors(include_url=False)
        field = str(errors[0]["loc"][0])
        wants = " or ".join(dict.fromkeys(er["msg"] for er in errors if er["loc"][:1] == errors[0]["loc"][:1]))
        raise ValueError(f"{field} {json.dumps(d.get(field), default=repr)} is not allowed ({wants})") from None


def config_from_dict(d: dict[str, Any], source: str = "the config") -> TrainConfig:
    """A :class:`TrainConfig` from a dict such as ``config.json`` (upgraded: :func:`upgrade_stored`; keys that are not
    fields are ignored), its values checked as :meth:`TrainConfig.resolved` checks them; :class:`StoredConfigError`
    names ``source``, the field, the value and the fix."""
    if not isinstance(d, dict):
        raise StoredConfigError(f"{source} is not a JSON object of settings (found {type(d).__name__})")
    try:
        cfg = TrainConfig(**_validated({k: v for k, v in upgrade_stored(d).items() if k in _HINTS}))
        _check(cfg)
    except ValueError as e:
        raise StoredConfigError(f"{source}: {e}; correct the value, or start a new run with another --out") from None
    return cfg


def arg_type(field: str):
    """The argparse ``type=`` of field ``field``: its annotation read by pydantic (a number finite and within its
    bounds, ``--eps auto``)."""
    return parser(_HINTS[field])


def add_options(groups: dict[str, Any]) -> None:
    """An option for each field with an :class:`Arg`, in ``groups[arg.group]``: a bool as a flag, a ``Literal`` as
    choices, a number parsed by :func:`arg_type`. Only the options given reach the namespace (``argparse.SUPPRESS``);
    the help says the field's default."""
    defaults = TrainConfig()
    for name, hint in _HINTS.items():
        arg = next((m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Arg)), None)
        if arg is None:
            continue
        default, help, base = getattr(defaults, name), arg.help, hint.__origin__
        if base is bool:
            kw = {"action": "store_false" if default else "store_true"}
        else:
            words = typing.get_args(base) if typing.get_origin(base) is Literal else ()
            kw = {"choices": words} if words else {} if base in (str, str | None) else {"type": arg_type(name)}
            help += "" if default is None or "default" in help else f" (default {default})"
        flag = arg.flag or "--" + name.replace("_", "-")
        groups[arg.group].add_argument(flag, dest=name, default=argparse.SUPPRESS, help=help, **kw)
