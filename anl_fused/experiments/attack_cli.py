"""``anl-fused attack``: the paper's Table 3 for checkpoints of ``anl-fused train``. Every model attacks every model
(FGSM and IFGSM, the paper's settings unless told otherwise) on the test split; ``--out`` gets ``transfer.md``,
``transfer.json`` and ``transfer.png``. The paper's six VGG-16 models of Table 3 (input eps / hidden eps: 0/0,
0/0.05, 0.05/0.05, 0.1/0.1, 0.2/0, 0.2/0.2) on CIFAR-10::

    T="anl-fused train --preset paper --model vgg16 --dataset cifar10"
    $T --variant plain --out runs/i0-h0
    $T --variant anl --eps 0.05 --out runs/i0-h0.05
    $T --variant input --input-eps 0.05 --eps 0.05 --out runs/i0.05-h0.05
    $T --variant input --input-eps 0.1 --eps 0.1 --out runs/i0.1-h0.1
    $T --variant input --input-eps 0.2 --eps 0 --out runs/i0.2-h0
    $T --variant input --input-eps 0.2 --eps 0.2 --out runs/i0.2-h0.2
    anl-fused attack --dataset cifar10 --models i0-h0=runs/i0-h0/checkpoint.pt ... --out attack/
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from . import attacks
from . import checkpoint as ckpt
from . import data as data_mod
from .cli_types import fraction, number, positive_int
from .files import DirLock, DirLockedError, atomic_write, check_out_dir, clean_temp_files, resolve_device
from .train import load_trained

RESULT_FILES = ("transfer.md", "transfer.json", "transfer.png")


def _named(spec: str) -> tuple[str, str]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=CHECKPOINT, got {spec!r}")
    return name, path


def configure(parser: argparse.ArgumentParser) -> None:
    p, fgsm, ifgsm, pixels = parser.add_argument, attacks.PAPER_FGSM, attacks.PAPER_IFGSM, "pixel units in [0, 1]"
    models = "checkpoints of anl-fused train, in table order"
    p("--models", nargs="+", type=_named, required=True, metavar="NAME=CHECKPOINT", help=models)
    p("--dataset", default="digits", help="dataset of the test split (default digits)")
    p("--data-dir", default=None, help="dataset directory (default: ./data, then the system's)")
    p("--limit", type=positive_int, default=None, help="attack only the first N test images")
    p("--fgsm-eps", type=fraction, default=fgsm["eps"], help=f"{pixels} (default 16/255)")
    p("--ifgsm-eps", type=fraction, default=ifgsm["eps"], help=f"{pixels} (default 16/255)")
    p("--ifgsm-alpha", type=number(float, gt=0, le=1), default=ifgsm["alpha"], help=f"{pixels} (default 1/255)")
    p("--ifgsm-steps", type=positive_int, default=ifgsm["steps"], help="default 16")
    p("--batch-size", type=positive_int, default=500)
    p("--device", default="auto")
    p("--out", default="./attack_out", help=f"output directory ({', '.join(RESULT_FILES)}); checked before any work")
    p("--no-progress", action="store_true", help="no progress bar")


def _load_models(args: argparse.Namespace, device: torch.device) -> dict[str, torch.nn.Module]:
    """The checkpoints' models; ``ValueError`` for a name given twice or a model of another dataset."""
    models = {}
    for name, path in args.models:
        if name in models:
            raise ValueError(f"model name {name!r} is given twice in --models: each needs its own name")
        models[name], cfg = load_trained(path, device)
        if data_mod.canonical_name(cfg.dataset) != data_mod.canonical_name(args.dataset):
            raise ValueError(f"{path} was trained on {cfg.dataset}, not {args.dataset} (--dataset)")
    return models


def _evaluate(args: argparse.Namespace, models: dict[str, torch.nn.Module], device: torch.device) -> dict:
    from tqdm.auto import tqdm

    bundle = data_mod.load(args.dataset, args.data_dir)
    x, y = bundle.test.x[: args.limit], bundle.test.y[: args.limit]
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    e, a, k = args.ifgsm_eps, args.ifgsm_alpha, args.ifgsm_steps
    specs = {
        f"FGSM eps={args.fgsm_eps * 255:g}/255": dict(method="fgsm", eps=args.fgsm_eps),
        f"IFGSM eps={e * 255:g}/255 alpha={a * 255:g}/255 k={k}": dict(method="ifgsm", eps=e, alpha=a, steps=k),
    }
    steps = 1 + len(specs) * len(models)  # the clean accuracies, then each (attack, source)
    with tqdm(total=steps, desc="attack", file=sys.stderr, dynamic_ncols=True, disable=args.no_progress) as bar:
        advance = lambda what: (bar.set_postfix_str(what), bar.update())
        kw = dict(mean=bundle.info.mean, std=bundle.info.std, batch_size=args.batch_size, progress=advance)
        result = attacks.evaluate_transfer(models, x.to(device), y.to(device), specs, **kw)
    return {**result, "checkpoints": dict(args.models), "dataset": bundle.name}


def run(args: argparse.Namespace) -> int:
    device, out = resolve_device(args.device), args.out
    try:
        check_out_dir(out)
        lock = DirLock(out, "attack.lock").acquire()  # creates --out, proves it writable, before any work
    except (OSError, DirLockedError, ValueError) as e:
        print(f"anl-fused attack: error: cannot use --out {out!r}: {e}", file=sys.stderr)
        return 2
    try:
        clean_temp_files(out, RESULT_FILES)  # what a killed earlier run left
        result = _evaluate(args, _load_models(args, device), device)
        table = attacks.transfer_markdown(result)
        atomic_write(os.path.join(out, "transfer.md"), table + "\n")
        atomic_write(os.path.join(out, "transfer.json"), json.dumps(result, indent=2))
        attacks.plot_transfer_heatmap(result, os.path.join(out, "transfer.png"))
    except (ckpt.CheckpointError, data_mod.DatasetNotFoundError, ValueError) as e:
        print(f"anl-fused attack: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk: each file is whole or absent (atomic writes)
        print(f"anl-fused attack: error: writing the results to {out!r} failed: {e}", file=sys.stderr)
        return 1
    finally:
        lock.release()
    print(f"{table}\nwrote {os.path.join(out, 'transfer.md')}, transfer.json, transfer.png")
    return 0
