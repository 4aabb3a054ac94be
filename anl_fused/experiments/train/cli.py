"""``anl-fused train``: the command line (``configure`` adds the arguments, ``run`` trains)."""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.distributed as dist

from ... import distributed
from ...layer import NORMS
from .. import checkpoint as ckpt
from .. import data as data_mod
from .. import launch
from ..models import MODELS
from .config import VARIANTS, TrainConfig, config_from_dict
from .loop import fit

__all__ = ["config_from_args", "configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    p = parser
    p.add_argument("--model", default="vgg_tiny", help=f"zoo model ({', '.join(MODELS)}); default vgg_tiny")
    p.add_argument("--dataset", default="digits", help=f"{', '.join(data_mod.DATASETS)} (default digits, offline)")
    p.add_argument("--data-dir", default="./data", help="where the torchvision dataset files are (default ./data)")
    p.add_argument("--download", action="store_true", help="let torchvision download missing datasets")
    p.add_argument("--val-size", type=int, default=None, help="training images held out for validation")
    p.add_argument("--variant", default="anl", choices=VARIANTS, help="what to train (default anl)")
    p.add_argument("--eps", type=float, default=None, help="ANL eps (default: the paper's eps for the model)")
    p.add_argument("--input-eps", type=float, default=0.0, help="input ANL eps (variant input)")
    p.add_argument("--input-sign", action="store_true", help="input noise eps*sign(g) (Eq. 8, variant input)")
    p.add_argument("--no-scale-by-std", dest="scale_by_std", action="store_false", help="paper Eq. 4 instead of 5")
    p.add_argument("--norm", default="sample", choices=NORMS,
                   help="||g||_inf per sample (default, the authors' code) or over the whole layer (Algorithm 1)")
    p.add_argument("--epochs", type=int, default=10, help="epochs with ANL on (phase 1)")
    p.add_argument("--finetune-epochs", type=int, default=0, help="epochs with ANL off after phase 1 (phase 2)")
    p.add_argument("--finetune-lr", default="auto", choices=("auto", "floor", "continue"),
                   help="phase 2 learning rate: floor (min lr) or continue the schedule; auto: floor for noise "
                        "variants, continue for plain/dropout")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--eval-batch-size", type=int, default=500)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--lr-factor", type=float, default=0.5,
                   help="multiply the learning rate by this on a validation plateau (0.5, sec. 4.2.1)")
    p.add_argument("--patience", type=int, default=5,
                   help="a plateau: this many epochs without a new best validation loss (5)")
    p.add_argument("--hold-epochs", type=int, default=5, help="each learning rate stays at least this many epochs (5)")
    p.add_argument("--min-lr", type=float, default=1e-3, help="learning-rate floor and fine-tuning rate (1e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    p.add_argument("--keep-last-batch", dest="drop_last", action="store_false",
                   help="also train on the last, smaller batch of each epoch (dropped by default: a tiny "
                        "batch wrecks BatchNorm statistics)")
    p.add_argument("--std-over", default="local", choices=distributed.STD_OVER,
                   help="under torchrun: std(h) of the noise over each process's batch (local) or the global "
                        "batch (global, one all-reduce a step)")
    p.add_argument("--sync-bn", action="store_true", help="under torchrun: SyncBatchNorm (GPUs only)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's choice; 1 is fastest for tiny models)")
    p.add_argument("--out", required=True, help="output directory (config.json, metrics.jsonl, checkpoint.pt)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if it exists")
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="K",
                   help="also checkpoint every K optimizer steps (always at epoch ends)")
    p.add_argument("--stop-after-steps", type=int, default=None, metavar="K",
                   help="stop with a checkpoint after K optimizer steps in total (simulates an interruption)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return config_from_dict(vars(args))


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    started = False  # the process group, under torchrun
    try:
        started = launch.init_from_env(args.device)
        rank = dist.get_rank() if started else 0
        cfg = config_from_args(args)
        result = fit(cfg, args.out, resume=args.resume, checkpoint_every=args.checkpoint_every,
                     stop_after_steps=args.stop_after_steps, progress=not args.no_progress)
        if started:
            dist.barrier()  # nobody leaves while rank 0 still receives the last checkpoint's states
    except (ckpt.CheckpointError, data_mod.DatasetNotFoundError, ValueError, KeyError) as e:
        print(f"anl-fused train: error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        return 2
    finally:
        if started:
            dist.destroy_process_group()
    if result["stopped"] == "interrupt":
        return 130
    hist = result["history"]
    if hist and rank == 0:
        last = hist[-1]
        print(json.dumps({"out": args.out, "epochs": last["epoch"], "test_err": last["test_err"],
                          "test_acc": last["test_acc"], "val_loss": last["val_loss"],
                          "time_per_step_s": last["time_per_step_s"], "stopped": result["stopped"]}))
    return 0
