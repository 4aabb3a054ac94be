"""``anl-fused models``: the zoo with parameter counts next to the paper's (Table 2) and eps."""

from __future__ import annotations

import argparse
import json
import warnings

import torch

from ...eps_rule import PARAM_RANGE, auto_eps
from . import MODELS, build, count_params


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-classes", type=int, default=10, help="classifier size (default 10, CIFAR-10)")
    parser.add_argument(
        "--in-channels",
        type=int,
        default=None,
        help="input channels (default: the paper's dataset for each model: 1 for LeNet-5 on "
        "Fashion-MNIST, 3 for the CIFAR models)",
    )
    parser.add_argument("--dropout", action="store_true", help="count the Table 2 '+Dropout' variants")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    parser.add_argument("names", nargs="*", help="models to list (default: all)")


def rows(names=None, num_classes: int = 10, in_channels: int | None = None, dropout: bool = False) -> list[dict]:
    """One dict per model; ``in_channels=None``: each model's paper dataset (``ModelSpec.in_channels``)."""
    out = []
    for name in names or list(MODELS):
        spec = MODELS[name]
        channels = spec.in_channels if in_channels is None else in_channels
        with torch.device("meta"):  # shapes only: no memory, no initialization work
            n = count_params(build(name, num_classes=num_classes, in_channels=channels, dropout=dropout))
        ratio = None if spec.paper_params is None else n / spec.paper_params
        row = dict(
            model=name, params=n, in_channels=channels, paper_params=spec.paper_params, ratio=ratio, eps=spec.eps
        )
        row |= dict(auto_eps=_quiet_auto_eps(n), auto_eps_clamped=not PARAM_RANGE[0] <= n <= PARAM_RANGE[1])
        out.append(row | dict(anl_after=spec.anl_after, dropout=spec.dropout, description=spec.description))
    return out


def _quiet_auto_eps(n: int) -> float:
    with warnings.catch_warnings():  # the table marks counts outside the fitted range instead
        warnings.simplefilter("ignore")
        return auto_eps(n)


def _fmt_m(v) -> str:
    """Millions with two decimals; small models exactly (LeNet-5: 61,706)."""
    if v is None:
        return "-"
    return f"{int(v):,}" if v < 1e6 else f"{v / 1e6:.2f}M"


def run(args: argparse.Namespace) -> int:
    unknown = [n for n in args.names if n not in MODELS]
    if unknown:
        print(f"unknown model(s): {', '.join(unknown)}; known: {', '.join(MODELS)}")
        return 2
    table = rows(args.names, args.num_classes, args.in_channels, args.dropout)
    if args.json:
        for r in table:
            print(json.dumps(r))
        return 0
    print(
        f"{'model':<14} {'#params':>9} {'paper':>8} {'ratio':>6} {'eps':>5} {'auto':>7} {'in':>3}  "
        f"{'ANL after':<9}  description"
    )
    for r in table:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
        auto = f"{r['auto_eps']:.3f}{'*' if r['auto_eps_clamped'] else ' '}"
        print(
            f"{r['model']:<14} {_fmt_m(r['params']):>9} {_fmt_m(r['paper_params']):>8} {ratio:>6} "
            f"{r['eps']:>5.2f} {auto:>7} {r['in_channels']:>3}  {r['anl_after']:<9}  {r['description']}"
        )
    channels = "each model's paper dataset" if args.in_channels is None else args.in_channels
    print(
        f"(counts for num_classes={args.num_classes}, in_channels={channels}"
        f"{', dropout variant' if args.dropout else ''}; paper: Table 2, CIFAR-10; eps of LeNet-5 from Table 1;\n"
        " auto: eps='auto', a rule fitted to Table 2 (anl_fused.auto_eps); *: outside the fitted "
        f"{PARAM_RANGE[0] / 1e6:g}M-{PARAM_RANGE[1] / 1e6:g}M parameters, the nearer end's eps)"
    )
    return 0
