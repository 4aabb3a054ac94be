"""``anl-fused attack``: the paper's Table 3 / Figure 5 for checkpoints of ``anl-fused train``.

    anl-fused attack --models plain=runs/plain/checkpoint.pt anl=runs/anl/checkpoint.pt --dataset digits --out attack/

Every model attacks every model (FGSM and IFGSM, the paper's settings unless told otherwise) on the test split;
writes ``transfer.md``, ``transfer.json`` and ``transfer.png`` under ``--out``. The paper's six VGG-16 models of
Table 3 (input eps / hidden eps: 0/0, 0/0.05, 0.05/0.05, 0.1/0.1, 0.2/0, 0.2/0.2) on CIFAR-10::

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
from torch import nn

from . import attacks
from . import checkpoint as ckpt
from . import data as data_mod
from .cli_types import fraction, number, positive_int
from .files import DirLock, DirLockedError, atomic_write, check_out_dir, clean_temp_files, resolve_device
from .train import load_trained


def _pixels(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def _named(spec: str) -> tuple[str, str]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=CHECKPOINT, got {spec!r}")
    return name, path


def configure(parser: argparse.ArgumentParser) -> None:
    p, paper = parser.add_argument, attacks.PAPER_IFGSM
    models = "checkpoints of anl-fused train, in table order"
    p("--models", nargs="+", type=_named, required=True, metavar="NAME=CHECKPOINT", help=models)
    p("--dataset", default="digits", help="dataset of the test split (default digits)")
    p("--data-dir", default=None, help="dataset directory (default: ./data, then the system's)")
    p("--limit", type=positive_int, default=None, help="attack only the first N test images")
    pixels = "pixel units, images in [0, 1] (default 16/255)"
    p("--fgsm-eps", type=fraction, default=attacks.PAPER_FGSM["eps"], help=pixels)
    p("--ifgsm-eps", type=fraction, default=paper["eps"], help=pixels)
    p("--ifgsm-alpha", type=number(float, gt=0, le=1), default=paper["alpha"], help="pixel units (default 1/255)")
    p("--ifgsm-steps", type=positive_int, default=paper["steps"], help="default 16")
    p("--batch-size", type=positive_int, default=500)
    p("--device", default="auto")
    out = "output directory (transfer.md, transfer.json, transfer.png); checked before any work"
    p("--out", default="./attack_out", help=out)
    p("--no-progress", action="store_true", help="no progress bar")


class _Refused(Exception):
    """A bad input: printed as one line, exit code 2."""


def _load_models(args: argparse.Namespace, device: torch.device) -> dict[str, nn.Module]:
    names = [n for n, _ in args.models]
    if len(set(names)) != len(names):
        raise _Refused(f"model names must be unique, got {names}")
    models = {}
    for name, path in args.models:
        model, cfg = load_trained(path, device)
        if data_mod.canonical_name(cfg.dataset) != data_mod.canonical_name(args.dataset):
            raise _Refused(f"{path} was trained on {cfg.dataset}, not {args.dataset} (--dataset)")
        models[name] = model
    return models


def _evaluate(args: argparse.Namespace, models: dict[str, nn.Module], device: torch.device) -> dict:
    from tqdm.auto import tqdm

    bundle = data_mod.load(args.dataset, args.data_dir)
    x, y = _pixels(bundle.test.x), bundle.test.y
    if args.limit is not None:
        x, y = x[: args.limit], y[: args.limit]
    ifgsm = dict(method="ifgsm", eps=args.ifgsm_eps, alpha=args.ifgsm_alpha, steps=args.ifgsm_steps)
    specs = {
        f"FGSM eps={args.fgsm_eps * 255:g}/255": {"method": "fgsm", "eps": args.fgsm_eps},
        f"IFGSM eps={args.ifgsm_eps * 255:g}/255 alpha={args.ifgsm_alpha * 255:g}/255 k={args.ifgsm_steps}": ifgsm,
    }
    total, quiet = 1 + len(specs) * len(models), args.no_progress
    with tqdm(total=total, desc="attack", file=sys.stderr, dynamic_ncols=True, disable=quiet) as bar:

        def advance(what: str) -> None:
            bar.set_postfix_str(what)
            bar.update(1)

        kw = dict(mean=bundle.info.mean, std=bundle.info.std, batch_size=args.batch_size, progress=advance)
        result = attacks.evaluate_transfer(models, x.to(device), y.to(device), specs, **kw)
    result["checkpoints"] = dict(args.models)
    result["dataset"] = bundle.name
    return result


RESULT_FILES = ("transfer.md", "transfer.json", "transfer.png")


def _write(out: str, result: dict) -> str:
    table = attacks.transfer_markdown(result)
    for fname, text in (("transfer.md", table + "\n"), ("transfer.json", json.dumps(result, indent=2))):
        atomic_write(os.path.join(out, fname), text)
    attacks.plot_transfer_heatmap(result, os.path.join(out, "transfer.png"))
    return table


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    try:
        check_out_dir(args.out)
        lock = DirLock(args.out, "attack.lock").acquire()  # creates --out, proves it writable, before any work
    except (OSError, DirLockedError, ValueError) as e:
        print(f"anl-fused attack: error: cannot use --out {args.out!r}: {e}", file=sys.stderr)
        return 2
    try:
        clean_temp_files(args.out, RESULT_FILES)  # what a killed earlier run left
        result = _evaluate(args, _load_models(args, device), device)
        table = _write(args.out, result)
    except (_Refused, ckpt.CheckpointError, data_mod.DatasetNotFoundError, ValueError) as e:
        print(f"anl-fused attack: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk: each file is whole or absent (atomic writes)
        print(f"anl-fused attack: error: writing the results to {args.out!r} failed: {e}", file=sys.stderr)
        return 1
    finally:
        lock.release()
    print(table)
    print(f"wrote {os.path.join(args.out, 'transfer.md')}, transfer.json, transfer.png")
    return 0
