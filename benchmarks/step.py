"""``anl-fused bench``: one training step of plain training, the exact floor (:func:`floor_step`), the authors'-style
naive double pass, the reference, ``TwoRound`` and its bf16 probe, timed side by side in interleaved rounds
(:func:`time_methods`; docs/speed.md says how to read the ratios and their spread).

    anl-fused bench --models vgg11 resnet18 --batch 32 --threads 2 --out results.json
    anl-fused bench --aot --models vgg16 --batch 128 --out benchmarks/results   # aot_report.py, no GPU needed
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.graph import get_gradient_edge

from anl_fused import TwoRound, anl_layers, insert_anl, ops, reference
from anl_fused.experiments.cli_types import finite_float, positive_int
from anl_fused.experiments.files import atomic_write, out_error
from anl_fused.experiments.machine import cpu_model, machine_info
from anl_fused.experiments.models import build, get_spec, names
from anl_fused.layer import ANL2d, attached
from anl_fused.state import frozen_batchnorm_stats

from . import naive
from .render import ratio_cell, table

METHODS = ("plain", "floor", "naive", "reference", "tworound", "tworound-bf16probe")
#: the TwoRound keywords of each engine method
ENGINES = {"tworound": {}, "tworound-bf16probe": {"probe_dtype": torch.bfloat16}}


class _FloorProbe:
    """Round 1 of the exact floor: each ANL point hands on ``h`` and exposes its gradient edge."""

    def __init__(self):
        self.edges = []

    def forward(self, layer: ANL2d, h: torch.Tensor) -> torch.Tensor:
        if not layer.needs_grad:  # Gaussian noise needs no gradient
            return h
        if h.grad_fn is not None:
            self.edges.append(get_gradient_edge(h))
            return h
        leaf = h.detach().requires_grad_()  # the model input: a leaf to differentiate against
        self.edges.append(leaf)
        return leaf


def floor_step(model: nn.Module, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The exact floor of a two-round step on ``model`` (with ANL layers), running no ANL op: round 1 =
    ``closure()`` with BatchNorm statistics frozen and each active layer that needs a gradient exposing ``h``'s
    gradient edge, then ``torch.autograd.grad(loss, edges)`` (activation gradients only); round 2 =
    ``closure().backward()`` with the layers as the identity."""
    layers = [layer for layer in anl_layers(model) if layer.active]
    need_grad = any(layer.needs_grad for layer in layers)
    with frozen_batchnorm_stats(model), attached(layers, _FloorProbe()) as probe, torch.set_grad_enabled(need_grad):
        loss = closure()
    if probe.edges:
        torch.autograd.grad(loss, probe.edges, allow_unused=True)
    with attached(layers, SimpleNamespace(forward=lambda layer, h: h)):
        loss = closure()
        loss.backward()
    return loss


def make_step(method: str, model: nn.Module, x, y, eps=0.05, amp=None, after="batchnorm", replay_rng=True) -> Callable:
    """A zero-argument training step of ``method`` on a copy of ``model`` (a plain model; but for ``plain`` with
    ``insert_anl(model, eps, after=after)``); ``replay_rng``: the engine methods' ``TwoRound(replay_rng=...)``.
    The step's ``model`` and ``engine`` (None but for the engine methods) are attributes of it."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    model = copy.deepcopy(model).train()
    if method != "plain":
        insert_anl(model, eps, after=after)

    def closure():
        with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
            return F.cross_entropy(model(x), y)

    generator = torch.Generator(device=x.device).manual_seed(0)
    engine = TwoRound(model, generator, replay_rng=replay_rng, **ENGINES[method]) if method in ENGINES else None
    run = {
        "plain": lambda: closure().backward(),
        "floor": lambda: floor_step(model, closure),
        "naive": lambda: naive.naive_step(model, closure, generator),
        "reference": lambda: reference.two_round_step(model, closure, generator),
    }.get(method, lambda: engine.step(closure))

    def step():
        model.zero_grad(set_to_none=True)
        return run()

    step.model, step.engine = model, engine
    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_methods(
    steps: dict[str, Callable], device: torch.device, repeats: int, warmup: int = 1, inner: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each of ``steps``, ``repeats`` samples each: ``warmup`` calls each first, then rounds
    that time every function once (``inner`` calls between two synchronizations of ``device``) in rotating order,
    so that the samples of one round pair up (:func:`ratio_stats`). The step timer of ``anl-fused bench`` and of
    ``run.py`` (pytest-benchmark times them in ``test_bench_step.py``, ``triton.testing.do_bench`` the kernels)."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    names, times = list(steps), {name: [] for name in steps}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sync(device)
            start = time.perf_counter()
            for _ in range(inner):
                steps[name]()
            sync(device)
            times[name].append((time.perf_counter() - start) / inner)
    return times


def ratio_stats(times: dict[str, list[float]], pairs: list[tuple[str, str]]) -> dict[str, dict[str, float]]:
    """Min / median / max over the rounds of each paired ratio ``a/b`` (round ``r``'s two samples),
    and ``spread`` = max / min."""
    out = {}
    for a, b in pairs:
        per_round = [ta / tb for ta, tb in zip(times[a], times[b])]
        lo, hi = min(per_round), max(per_round)
        out[f"{a}/{b}"] = {"min": lo, "median": statistics.median(per_round), "max": hi, "spread": hi / lo}
    return out


def where(device: torch.device) -> dict:
    """What every step result names: the CPU (or GPU), torch's threads and the ANL ops' backend on ``device``."""
    cpu = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return {"threads": torch.get_num_threads(), "backend": ops.backend(device), "cpu": cpu}


def model_and_batch(name: str, batch: int, size: int, device) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Zoo model ``name`` (seed 0, no ANL) on ``device``, and a random batch of ``size`` x ``size`` inputs, labels."""
    torch.manual_seed(0)
    channels = get_spec(name).in_channels
    model = build(name, in_channels=channels).to(device)
    x = torch.randn(batch, channels, size, size, device=device)
    return model, x, torch.randint(0, 10, (batch,), device=device)


#: the paired ratios a result reports, where both methods ran
PAIRS = [(m, "plain") for m in METHODS[1:]] + [("tworound", "floor"), ("naive", "tworound")]
PAIRS += [("tworound-bf16probe", "tworound")]


def benchmark_model(name, batch: int, size: int, device, methods, repeats: int, inner: int, amp, eps: float) -> dict:
    """Every one of ``methods`` timed on zoo model ``name`` (:func:`time_methods`); medians, paired ratios."""
    model, x, y = model_and_batch(name, batch, size, device)
    steps = {m: make_step(m, model, x, y, eps=eps, amp=amp, after=get_spec(name).anl_after) for m in methods}
    times = time_methods(steps, device, repeats, inner=inner)
    stats = ratio_stats(times, [(a, b) for a, b in PAIRS if a in times and b in times])
    r = dict(model=name, batch=batch, size=size, amp=str(amp) if amp else None, eps=eps, **where(device))
    r.update(median_s={m: statistics.median(t) for m, t in times.items()}, times_s=times, ratio_stats=stats)
    return r | {"ratios": {k: st["median"] for k, st in stats.items()}}  # the median of the paired ratios


SPREAD_WARN = 1.5  # max / min of a paired ratio over the rounds beyond which a result is flagged


def spread_warnings(results: list[dict]) -> list[str]:
    """One line per ratio whose rounds disagree by more than :data:`SPREAD_WARN` (or too few rounds to tell)."""
    lines = []
    for r in results:
        rounds = len(next(iter(r["times_s"].values())))
        for k, st in r["ratio_stats"].items():
            if rounds < 3:
                lines.append(f"warning: {r['model']} {k}: {rounds} round(s) cannot show the spread; use --repeats >= 3")
                break
            if st["spread"] > SPREAD_WARN:
                lines.append(
                    f"warning: {r['model']} {k} varied from {st['min']:.2f}x to {st['max']:.2f}x over {rounds} rounds "
                    f"(median {st['median']:.2f}x): the machine was busy; do not trust one number, repeat with more "
                    "--repeats or on an idle machine"
                )
    return lines


def anl_shapes(name: str, size: int) -> list[tuple[int, ...]]:
    """The input shape ``(C, H, W)`` of every ANL layer of zoo model ``name`` (ANL where its spec puts it) on
    ``size`` x ``size`` inputs, in call order (a forward hook; a training-mode forward of a throwaway model: only
    active layers are called)."""
    model, x, _ = model_and_batch(name, 2, size, "cpu")
    shapes = []
    for layer in anl_layers(insert_anl(model, 0.05, after=get_spec(name).anl_after)):
        layer.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape[1:])))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # active layers outside a step are the identity, and say so
        model(x)
    return shapes


def noise_memory(name: str, batch: int, size: int) -> dict:
    """Memory that TwoRound keeps between the rounds (round 1's gradients, one per ANL layer), in float32 and with
    ``noise_dtype=torch.bfloat16``, counted from the ANL layers' input shapes."""
    shapes = anl_shapes(name, size)
    numel = batch * sum(math.prod(shape) for shape in shapes)
    held = {"float32": 4 * numel, "bfloat16": 2 * numel}
    return {"model": name, "batch": batch, "anl_layers": len(shapes), "held_bytes": held}


#: the table's ratio columns: key in ``ratios``, header
TABLE_RATIOS = {"tworound/plain": "TwoRound/plain", "floor/plain": "floor/plain", "tworound/floor": "TwoRound/floor"}
TABLE_RATIOS.update({"naive/tworound": "naive/TwoRound", "tworound-bf16probe/plain": "bf16-probe/plain"})


def format_table(results: list[dict]) -> str:
    """Median step times, then each ratio as the median of the rounds' paired ratios and their [min, max];
    every row names the threads, the ANL backend and the CPU (or GPU)."""
    rows = [
        [r["model"], r["batch"], r["size"], r["amp"] or "fp32", r["threads"], r["backend"]]
        + [f"{r['median_s'][m] * 1e3:.1f}" if m in r["median_s"] else "-" for m in METHODS]
        + [ratio_cell(r, k) for k in TABLE_RATIOS]
        + [r["cpu"]]
        for r in results
    ]
    times = " | ".join(f"{m} (ms)" for m in METHODS)
    ratios = " | ".join(f"{h} [min, max]" for h in TABLE_RATIOS.values())
    return table(f"model | batch | size | amp | threads | backend | {times} | {ratios} | CPU / GPU", rows)


#: what ``--batch`` and ``--size`` accept, and why
RANGES = {"batch": (2, 65536, "BatchNorm in training needs 2 samples")}
RANGES["size"] = (8, 1024, "the zoo's models need 8x8, larger does not fit a step in memory")


def configure(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--models", nargs="+", default=["vgg11", "resnet18"], choices=names(), metavar="MODEL", help="zoo names")
    add("--batch", type=positive_int, default=64, help="batch size, {}-{} (default 64)".format(*RANGES["batch"]))
    add("--size", type=positive_int, default=32, help="input height and width, {}-{}".format(*RANGES["size"]))
    add("--threads", type=positive_int, default=None, help="torch threads (default: torch's)")
    add("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="default: all")
    add("--repeats", type=positive_int, default=7, help="interleaved rounds: timed samples per method (default 7)")
    add("--inner", type=positive_int, default=None, help="steps per timed sample (default 1 on CPU, 10 on CUDA)")
    add("--eps", type=finite_float, default=0.05)
    add("--amp", choices=["none", "bf16", "fp16"], default="none", help="autocast dtype")
    add("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda if available")
    add("--out", default=None, help="JSON file to write (default: only print the table); with --aot a directory")
    add("--aot", action="store_true", help="instead of timing: aot_report.py for each --models at --batch, --size")
    add("--aot-dtypes", nargs="+", default=["fp32", "bf16", "fp16"], choices=["fp32", "bf16", "fp16"], metavar="DTYPE")


def usage_error(args: argparse.Namespace) -> str | None:
    """The first bad option as one line naming its value and the fix, or ``None``; checked before any work."""
    for opt, (lo, hi, why) in RANGES.items():
        if not lo <= getattr(args, opt) <= hi:
            return f"--{opt} {getattr(args, opt)} is out of range: use {lo} to {hi} ({why})"
    if args.device == "cuda" and not torch.cuda.is_available():
        return "--device cuda: no CUDA device is available here (torch.cuda.is_available() is False); use --device cpu"
    return out_error(args.out, directory=args.aot) if args.out else None


def run_aot(args: argparse.Namespace) -> int:
    """``--aot``: :mod:`.aot_report` for each of ``--models``, printed as markdown, or written to ``--out DIR``
    (``DIR/MODEL/`` for several models)."""
    from . import aot_report

    for name in args.models:
        print(f"AOT report of {name} batch {args.batch} ({' '.join(args.aot_dtypes)}) ...", flush=True)
        try:
            report = aot_report.make_report(name, args.batch, args.size, args.aot_dtypes)
        except RuntimeError as e:  # the compile subprocess failed: its last line says why
            print(f"anl-fused bench: error: AOT report of {name}: {str(e).strip().splitlines()[-1]}", file=sys.stderr)
            return 1
        if args.out:
            paths = aot_report.write_report(report, args.out if len(args.models) == 1 else os.path.join(args.out, name))
            print(f"wrote {paths[0]} and {paths[1]}")
        else:
            print(aot_report.markdown(report))
    return 0


def run(args: argparse.Namespace) -> int:
    error = usage_error(args)
    if error is not None:
        print(f"anl-fused bench: error: {error}", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.aot:
        return run_aot(args)
    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    methods, results = list(dict.fromkeys(["plain", *args.methods])), []
    for name in args.models:
        print(
            f"benchmarking {name} batch {args.batch} on {device} ({torch.get_num_threads()} threads, "
            f"{ops.backend(device)} backend) ...",
            flush=True,
        )
        sizes = (
            args.batch,
            args.size,
            device,
            methods,
            args.repeats,
            args.inner or (10 if device.type == "cuda" else 1),
        )
        results.append(benchmark_model(name, *sizes, amp, args.eps))
    report = {"machine": machine_info(device), "args": {k: v for k, v in vars(args).items() if not k.startswith("_")}}
    report.update(steps=results, noise_memory=[noise_memory(name, args.batch, args.size) for name in args.models])
    print(format_table(results))
    for line in spread_warnings(results):
        print(line, file=sys.stderr)
    if args.out:
        atomic_write(args.out, json.dumps(report, indent=2))
        print(f"wrote {args.out}")
    return 0
