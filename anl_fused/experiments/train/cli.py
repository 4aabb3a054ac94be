"""``anl-fused train``: the command line (``configure`` adds the arguments, ``run`` trains).

The settings options have no argparse defaults (``argparse.SUPPRESS``): only the options given
reach the namespace, so that ``--resume`` takes every other setting from the run's ``config.json``
and a new run from :class:`~.config.TrainConfig`'s defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import warnings

import torch
import torch.distributed as dist

from ... import distributed
from ...layer import NORMS
from .. import checkpoint as ckpt
from .. import data as data_mod
from .. import launch
from ..cli_types import nonneg_int, positive_int
from ..models import MODELS
from .config import (
    PRESETS,
    PROBE_DTYPES,
    SCHEDULES,
    VARIANTS,
    TrainConfig,
    arg_type,
    auto_eps_of,
    config_from_dict,
    preset_values,
)
from .loop import fit
from .rundir import RunDirError, local_config, stored_config

__all__ = ["config_from_args", "configure", "run"]

_DEFAULTS = TrainConfig()
_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}

EPILOG = """\
A run directory holds one run. Without --resume, an --out that already holds a run is refused
(nothing in it changes): --resume continues it, --overwrite deletes it and starts over. Another
anl-fused train writing the same --out is refused too (OUT/train.lock names it).

--resume takes every setting from the run's config.json; options given with it change the run,
which is allowed only where it cannot rewrite what was trained: the length (--epochs,
--finetune-epochs, --finetune-lr, while the epochs already trained keep their phase) and where and
how fast it runs (--device, --compile, --channels-last, --eval-batch-size, --data-dir, --download).
Allowed changes are recorded in config.json ("resume_changes") and the checkpoint; any other change
is refused (start a new run).
"""


def _opt(group, flag: str, help: str, **kw) -> None:
    """A setting of :class:`TrainConfig`: in the namespace only when given; its default in the help."""
    dest = kw.pop("dest", flag[2:].replace("-", "_"))
    default = getattr(_DEFAULTS, dest)
    if kw.get("action") not in ("store_true", "store_false") and default is not None and "default" not in help:
        help = f"{help} (default {default})"
    group.add_argument(flag, dest=dest, default=argparse.SUPPRESS, help=help, **kw)


PRESET_HELP = (
    "a whole protocol; options given explicitly override it. paper: sec. 4.2.1, lr 0.1, momentum "
    "0.9, weight decay 5e-4, the rate halved after 5 epochs without a new best validation loss, each "
    "rate kept >= 5 epochs, floor 1e-3; noise variants 100 epochs with ANL then 100 with ANL off at "
    "lr 1e-3, plain and dropout 200 epochs on the schedule; augmentation is the dataset's (random "
    "crop + flip on CIFAR, as in the paper; none on Fashion-MNIST and digits); the batch size stays "
    "--batch-size's (the paper does not give it)"
)


def _what(g) -> None:
    g.add_argument("--preset", choices=tuple(PRESETS), default=None, help=PRESET_HELP)
    _opt(g, "--model", f"zoo model: {', '.join(MODELS)}")
    _opt(g, "--dataset", f"{', '.join(data_mod.DATASETS)} (default digits, offline)")
    _opt(g, "--variant", "what to train", choices=VARIANTS)
    _opt(
        g,
        "--eps",
        "ANL eps of the hidden layers, or 'auto': a rule fitted to the paper's Table 2 from the "
        "model's trainable parameters (anl_fused.auto_eps). Default: the model's eps, listed by `anl-fused "
        "models` (the paper's Table 2; LeNet-5: Table 1), e.g. vgg_tiny 0.02, lenet5 0.03, vgg16 0.05; note that "
        "`anl-fused demo` uses 0.1 for vgg_tiny instead, the best of its digits sweep",
        type=arg_type("eps"),
    )
    _opt(
        g,
        "--input-eps",
        "input ANL eps (variant input, Table 3): a fraction of std(x) as for the hidden "
        "layers (Eq. 5; normalizing the input changes nothing for one-channel data); with --input-sign in pixel "
        "units of [0, 1] images (16/255 is FGSM's delta=16), divided by the mean of the dataset's per-channel "
        "normalization std for the normalized input (exact for one channel; within 4.4%% per channel on CIFAR)",
        type=arg_type("input_eps"),
    )
    _opt(
        g,
        "--input-sign",
        "input noise eps*sign(g) (Eq. 8, variant input; --input-eps in pixel units)",
        action="store_true",
    )
    _opt(g, "--no-scale-by-std", "paper Eq. 4 instead of 5", dest="scale_by_std", action="store_false")
    _opt(
        g,
        "--norm",
        "the hidden layers' gradient norm: sample (each sample's max|g|, the authors' code) or "
        "layer (one max|g| for the whole layer, Algorithm 1's reading)",
        choices=NORMS,
    )
    _opt(
        g,
        "--probe-dtype",
        "round 1 (the probe that measures the noise's gradient) in fp32 as the model, or under "
        "bf16 / fp16 autocast: cheaper where the hardware has fast low-precision math, and an approximation of "
        "the fp32 noise (see docs/semantics.md); changes the noise, so part of the run's identity",
        choices=tuple(PROBE_DTYPES),
    )
    _opt(
        g,
        "--val-size",
        "training images held out for validation, >= 1: the schedule watches their loss "
        "(default: the dataset's, 5000; digits has a fixed 300)",
        type=arg_type("val_size"),
    )
    _opt(g, "--seed", "same seed: same initial weights and data order for every variant", type=arg_type("seed"))
    _opt(
        g,
        "--keep-last-batch",
        "also train on the last, smaller batch of each epoch (dropped by default: a "
        "tiny batch wrecks BatchNorm statistics)",
        dest="drop_last",
        action="store_false",
    )
    _opt(
        g,
        "--std-over",
        "under torchrun: std(h) of the noise over each process's batch (local) or the global "
        "batch (global, one all-reduce a step)",
        choices=distributed.STD_OVER,
    )
    _opt(g, "--sync-bn", "under torchrun: SyncBatchNorm (GPUs only)", action="store_true")


def _protocol(g) -> None:
    _opt(g, "--epochs", "phase 1: epochs with the variant's noise on", type=arg_type("epochs"))
    _opt(g, "--finetune-epochs", "phase 2: epochs with ANL off after phase 1", type=arg_type("finetune_epochs"))
    _opt(
        g,
        "--finetune-lr",
        "phase 2 learning rate: floor (--min-lr) or continue the schedule; auto: floor for "
        "noise variants and sam, continue for plain/dropout",
        choices=("auto", "floor", "continue"),
    )
    _opt(g, "--batch-size", "the global batch under torchrun", type=arg_type("batch_size"))
    _opt(g, "--lr", "initial learning rate", type=arg_type("lr"))
    _opt(g, "--momentum", "SGD momentum", type=arg_type("momentum"))
    _opt(g, "--weight-decay", "SGD weight decay", type=arg_type("weight_decay"))
    _opt(g, "--lr-factor", "multiply the learning rate by this on a validation plateau", type=arg_type("lr_factor"))
    _opt(g, "--patience", "a plateau: this many epochs without a new best validation loss", type=arg_type("patience"))
    _opt(g, "--hold-epochs", "each learning rate stays at least this many epochs", type=arg_type("hold_epochs"))
    _opt(g, "--min-lr", "learning-rate floor and the fine-tuning rate", type=arg_type("min_lr"))
    _opt(
        g,
        "--schedule",
        "plateau: sec. 4.2.1 (halve on a validation plateau); cosine: a fixed schedule, the same rates "
        "for every run (lr to --min-lr over the scheduled epochs)",
        choices=SCHEDULES,
    )
    _opt(g, "--sam-rho", "variant sam: SAM's neighbourhood radius rho", type=arg_type("sam_rho"))


def _where(g) -> None:
    _opt(g, "--data-dir", "where the torchvision dataset files are")
    _opt(g, "--download", "let torchvision download missing datasets", action="store_true")
    _opt(g, "--device", "auto (cuda if available), cpu, cuda, cuda:1, ...")
    _opt(g, "--compile", "torch.compile the model", action="store_true")
    _opt(g, "--channels-last", "channels_last memory format", action="store_true")
    _opt(g, "--eval-batch-size", "batch size of evaluation", type=arg_type("eval_batch_size"))
    g.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch intra-op threads (default: torch's choice; 1 is fastest for tiny models)",
    )


def _run_dir(g) -> None:
    g.add_argument("--out", required=True, help="run directory (config.json, metrics.jsonl, checkpoint.pt)")
    once = g.add_mutually_exclusive_group()
    once.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in OUT from its checkpoint, with its settings (see below)",
    )
    once.add_argument("--overwrite", action="store_true", help="delete the run in OUT and start over")
    g.add_argument(
        "--checkpoint-every",
        type=nonneg_int,
        default=0,
        metavar="K",
        help="also checkpoint every K optimizer steps (always at epoch ends)",
    )
    g.add_argument(
        "--stop-after-steps",
        type=positive_int,
        default=None,
        metavar="K",
        help="stop with a checkpoint after K optimizer steps in total (simulates an interruption)",
    )
    g.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    _what(parser.add_argument_group("the run (fixed once it started)"))
    _protocol(parser.add_argument_group("protocol (sec. 4.2.1)"))
    _where(parser.add_argument_group("where and how fast it runs"))
    _run_dir(parser.add_argument_group("run directory"))


def config_from_args(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """``base`` (default: the defaults) with the settings given on the command line."""
    given = {k: v for k, v in vars(args).items() if k in _FIELDS}
    return dataclasses.replace(base or TrainConfig(), **given)


def _config(args: argparse.Namespace, world: int) -> TrainConfig:
    """The run's settings: with ``--resume`` the run's own (if OUT holds one), else the defaults; then
    ``--preset``'s, then the options given."""
    stored = stored_config(args.out, world) if args.resume else None
    if args.resume and stored is None:
        raise RunDirError(
            f"--resume: {args.out!r} holds no run to resume (no readable config.json, no checkpoint.pt); "
            "check the path, or start the run without --resume"
        )
    base = config_from_dict(stored) if stored else TrainConfig()
    if args.preset:
        variant = getattr(args, "variant", base.variant)
        base = dataclasses.replace(base, **preset_values(args.preset, variant))
    return config_from_args(args, base)


AUTO_EPS_WARNING = "eps='auto'"  # how anl_fused.auto_eps's warnings begin


def _auto_eps(cfg: TrainConfig, rank: int) -> TrainConfig:
    """``--eps auto`` said before training: the eps it gives (stdout), and the rule's warning (a model
    outside its fitted range) as one line ``anl-fused train: warning: ...`` (stderr). Returns ``cfg`` as
    given: ``fit`` resolves it and records in config.json that eps came from the rule (``eps_auto``)."""
    if cfg.eps != "auto" or cfg.variant in ("plain", "dropout"):
        return cfg
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        n, _ = auto_eps_of(cfg)
        eps = cfg.resolved().eps
    if rank == 0:
        for message in dict.fromkeys(str(w.message) for w in caught):
            print(f"anl-fused train: warning: {message}", file=sys.stderr, flush=True)
        print(
            f"eps=auto: {n / 1e6:.3g}M trainable parameters -> eps={eps:g} "
            "(a rule fitted to the paper's Table 2; see anl_fused.auto_eps)",
            flush=True,
        )
    return cfg


def _device_hint(args: argparse.Namespace) -> str:
    """The device for the process group under torchrun, before the run's settings are read."""
    if hasattr(args, "device"):
        return args.device
    stored = local_config(args.out) if args.resume else None
    return (stored or {}).get("device") or _DEFAULTS.device


def _summary(args: argparse.Namespace, result: dict) -> None:
    """One JSON line: where the run stands (before its first finished epoch: no test numbers yet)."""
    last = result["history"][-1] if result["history"] else {}
    print(
        json.dumps(
            {
                "out": args.out,
                "epochs": result["epoch"],
                "global_step": result["global_step"],
                "test_err": last.get("test_err"),
                "test_acc": last.get("test_acc"),
                "val_loss": last.get("val_loss"),
                "time_per_step_s": last.get("time_per_step_s"),
                "stopped": result["stopped"],
            }
        )
    )


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    started = False  # the process group, under torchrun
    try:
        started = launch.init_from_env(_device_hint(args))
        rank, world = (dist.get_rank(), dist.get_world_size()) if started else (0, 1)
        cfg = _auto_eps(_config(args, world), rank)
        with warnings.catch_warnings():  # the rule's warning was printed above as one line
            warnings.filterwarnings("ignore", message=AUTO_EPS_WARNING)
            result = fit(
                cfg,
                args.out,
                resume=args.resume,
                overwrite=args.overwrite,
                checkpoint_every=args.checkpoint_every,
                stop_after_steps=args.stop_after_steps,
                progress=not args.no_progress,
            )
        if started:
            dist.barrier()  # nobody leaves while rank 0 still receives the last checkpoint's states
    except (ckpt.CheckpointError, data_mod.DatasetNotFoundError, RunDirError, ValueError, KeyError) as e:
        print(f"anl-fused train: error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        return 2
    except OSError as e:  # a read-only or full disk
        print(f"anl-fused train: error: {e}", file=sys.stderr)
        return 1
    finally:
        if started:
            dist.destroy_process_group()
    if result["stopped"] == "interrupt":
        return 130
    if rank == 0:
        _summary(args, result)
    return 0
