"""``anl-fused train``: the command line (``configure`` adds the arguments, ``run`` trains).

The settings options have no argparse defaults (``argparse.SUPPRESS``): only the options given reach the namespace, so
that ``--resume`` takes every other setting from the run's ``config.json`` and a new run from
:class:`~.config.TrainConfig`'s defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import textwrap
import warnings

import torch
import torch.distributed as dist

from .. import checkpoint as ckpt
from .. import data as data_mod
from .. import launch
from ..cli_types import nonneg_int, positive_int
from .config import PRESETS, RESUME_RULE, TrainConfig, add_options, auto_eps_of, config_from_dict, preset_values
from .loop import fit
from .rundir import RunDirError, local_config, stored_config

__all__ = ["configure", "run"]

_DEFAULTS = TrainConfig()
_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}

_ABOUT_OUT = (
    "A run directory holds one run. Without --resume, an --out that already holds a run is refused (nothing in it "
    "changes): --resume continues it, --overwrite deletes it and starts over. Another anl-fused train writing the "
    "same --out is refused too (OUT/train.lock names it)."
)
_ABOUT_RESUME = (
    f'{RESUME_RULE}. Allowed changes are recorded in config.json ("resume_changes") and the checkpoint; any other '
    "change is refused (start a new run)."
)
EPILOG = "\n\n".join(textwrap.fill(t, 100, break_on_hyphens=False) for t in (_ABOUT_OUT, _ABOUT_RESUME))


PRESET_HELP = (
    "a whole protocol; options given explicitly override it. paper: sec. 4.2.1, lr 0.1, momentum "
    "0.9, weight decay 5e-4, the rate halved after 5 epochs without a new best validation loss, each "
    "rate kept >= 5 epochs, floor 1e-3; noise variants 100 epochs with ANL then 100 with ANL off at "
    "lr 1e-3, plain and dropout 200 epochs on the schedule; augmentation is the dataset's (random "
    "crop + flip on CIFAR, as in the paper; none on Fashion-MNIST and digits); the batch size stays "
    "--batch-size's (the paper does not give it)"
)


def _run_dir(g) -> None:
    g.add_argument("--out", required=True, help="run directory (config.json, metrics.jsonl, checkpoint.pt)")
    once = g.add_mutually_exclusive_group()
    once.add_argument("--resume", action="store_true", help="continue the run in OUT from its checkpoint (see below)")
    once.add_argument("--overwrite", action="store_true", help="delete the run in OUT and start over")
    every = "also checkpoint every K optimizer steps (always at epoch ends)"
    g.add_argument("--checkpoint-every", type=nonneg_int, default=0, metavar="K", help=every)
    stop = "stop with a checkpoint after K optimizer steps in total (simulates an interruption)"
    g.add_argument("--stop-after-steps", type=positive_int, default=None, metavar="K", help=stop)
    g.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")


GROUPS = {
    "run": "the run (fixed once it started)",
    "protocol": "protocol (sec. 4.2.1)",
    "where": "where and how fast it runs",
}


def configure(parser: argparse.ArgumentParser) -> None:
    """The settings' options come from :class:`TrainConfig`'s schema (:func:`.config.add_options`)."""
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    groups = {k: parser.add_argument_group(title) for k, title in GROUPS.items()}
    groups["run"].add_argument("--preset", choices=tuple(PRESETS), default=None, help=PRESET_HELP)
    add_options(groups)
    threads = "torch intra-op threads (default: torch's choice; 1 is fastest for tiny models)"
    groups["where"].add_argument("--threads", type=positive_int, default=None, help=threads)
    _run_dir(parser.add_argument_group("run directory"))


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
    return dataclasses.replace(base, **{k: v for k, v in vars(args).items() if k in _FIELDS})


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
        rule = "(a rule fitted to the paper's Table 2; see anl_fused.auto_eps)"
        print(f"eps=auto: {n / 1e6:.3g}M trainable parameters -> eps={eps:g} {rule}", flush=True)
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
    numbers = {k: last.get(k) for k in ("test_err", "test_acc", "val_loss", "time_per_step_s")}
    line = {"out": args.out, "epochs": result["epoch"], "global_step": result["global_step"], **numbers}
    print(json.dumps({**line, "stopped": result["stopped"]}))


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    started = False  # the process group, under torchrun
    try:
        started = launch.init_from_env(_device_hint(args))
        code = _train(args, started)
    except (ckpt.CheckpointError, data_mod.DatasetNotFoundError, RunDirError, ValueError, KeyError) as e:
        print(f"anl-fused train: error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        code = 2
    except OSError as e:  # a read-only or full disk
        print(f"anl-fused train: error: {e}", file=sys.stderr)
        code = 1
    finally:
        if started:
            dist.destroy_process_group()
    if started:
        launch.exit_process(code)
    return code


def _train(args: argparse.Namespace, started: bool) -> int:
    rank, world = (dist.get_rank(), dist.get_world_size()) if started else (0, 1)
    cfg = _auto_eps(_config(args, world), rank)
    with warnings.catch_warnings():  # the rule's warning was printed above as one line
        warnings.filterwarnings("ignore", message=AUTO_EPS_WARNING)
        how = {k: getattr(args, k) for k in ("resume", "overwrite", "checkpoint_every", "stop_after_steps")}
        result = fit(cfg, args.out, progress=not args.no_progress, **how)
    if started:
        dist.barrier()  # nobody leaves while rank 0 still receives the last checkpoint's states
    if result["stopped"] == "interrupt":
        return 130
    if rank == 0:
        _summary(args, result)
    return 0
