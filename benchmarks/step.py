"""Step benchmark: plain training vs the authors'-style naive double pass vs the reference vs
``TwoRound`` vs ``TwoRound(probe_dtype=torch.bfloat16)`` (``tworound-bf16probe``: round 1 under bfloat16
autocast), measured side by side in one run and written as JSON with the machine's details.

    anl-fused bench --models vgg11 resnet18 --batch 64 --out results.json
    anl-fused bench --aot --models vgg16 --batch 128 --out benchmarks/results   # aot_report.py, no GPU

Every method runs the same model (same weights, same batch) through one training step's
forward/backward (gradients zeroed first, no optimizer update). Methods are timed in interleaved
rounds (each round times every method once, in rotating order) so that a slow spell of the machine
hits all of them alike; the median over rounds is reported, and ratios are taken between medians
of the same run (``ratios``). Each round also gives a paired ratio (two methods timed back to
back); their min / median / max over the rounds (``ratio_stats``) show how far one number can be
trusted, and a warning is printed when max / min exceeds :data:`SPREAD_WARN` (a busy machine: run
more ``--repeats``, or on an idle one). On CUDA each timed sample is ``--inner`` steps between two
synchronizations. Nothing is written unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from anl_fused import TwoRound, anl_layers, insert_anl, reference
from anl_fused.experiments.cli_types import ArgumentParser, finite_float, positive_int
from anl_fused.experiments.files import atomic_write, resolve_device
from anl_fused.experiments.models import build, names

from . import naive

METHODS = ("plain", "naive", "reference", "tworound", "tworound-bf16probe")
#: the TwoRound keywords of each engine method
ENGINES = {"tworound": {}, "tworound-bf16probe": {"probe_dtype": torch.bfloat16}}


def make_step(
    method: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 0.05, amp: torch.dtype | None = None
) -> Callable[[], torch.Tensor]:
    """A zero-argument training step of ``method`` on a copy of ``model`` (a plain model, no ANL)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    model = copy.deepcopy(model).train()
    if method != "plain":
        insert_anl(model, eps)
    device_type = x.device.type

    def closure():
        with torch.autocast(device_type, dtype=amp) if amp is not None else contextlib.nullcontext():
            return F.cross_entropy(model(x), y)

    generator = torch.Generator(device=x.device).manual_seed(0)
    if method in ENGINES:
        engine = TwoRound(model, generator, **ENGINES[method])
        run = lambda: engine.step(closure)
    else:
        run = {
            "plain": lambda: closure().backward(),
            "naive": lambda: naive.naive_step(model, closure, generator),
            "reference": lambda: reference.two_round_step(model, closure, generator),
        }[method]

    def step():
        model.zero_grad(set_to_none=True)
        return run()

    step.model = model
    step.engine = engine if method in ENGINES else None
    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_methods(
    steps: dict[str, Callable], device: torch.device, repeats: int, warmup: int = 1, inner: int = 1
) -> dict[str, list[float]]:
    """Seconds per step of each method, ``repeats`` interleaved samples each."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    _sync(device)
    names = list(steps)
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            _sync(device)
            start = time.perf_counter()
            for _ in range(inner):
                steps[name]()
            _sync(device)
            times[name].append((time.perf_counter() - start) / inner)
    return times


def machine_info(device: torch.device) -> dict:
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=os.path.dirname(__file__), check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        info["git_commit"] = None
    return info


def benchmark_model(
    name: str,
    batch: int,
    size: int,
    device: torch.device,
    methods,
    repeats: int,
    inner: int,
    amp: torch.dtype | None,
    eps: float,
) -> dict:
    torch.manual_seed(0)
    model = build(name).to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    steps = {m: make_step(m, model, x, y, eps=eps, amp=amp) for m in methods}
    times = time_methods(steps, device, repeats, inner=inner)
    median = {m: statistics.median(t) for m, t in times.items()}
    pairs = _ratio_pairs(list(median))
    ratios = {f"{a}/{b}": median[a] / median[b] for a, b in pairs}
    return {
        "model": name,
        "batch": batch,
        "size": size,
        "amp": str(amp) if amp else None,
        "eps": eps,
        "median_s": median,
        "times_s": times,
        "ratios": ratios,
        "ratio_stats": ratio_stats(times, pairs),
    }


def _ratio_pairs(methods: list[str]) -> list[tuple[str, str]]:
    pairs = [(a, "plain") for a in methods if a != "plain" and "plain" in methods]
    more = [("naive", "tworound"), ("tworound-bf16probe", "tworound")]
    return pairs + [(a, b) for a, b in more if a in methods and b in methods]


def ratio_stats(times: dict[str, list[float]], pairs: list[tuple[str, str]]) -> dict[str, dict[str, float]]:
    """Min / median / max over the rounds of each paired ratio ``a/b`` (round ``r``'s two samples),
    and ``spread`` = max / min."""
    out = {}
    for a, b in pairs:
        per_round = [ta / tb for ta, tb in zip(times[a], times[b])]
        lo, hi = min(per_round), max(per_round)
        out[f"{a}/{b}"] = {"min": lo, "median": statistics.median(per_round), "max": hi, "spread": hi / lo}
    return out


SPREAD_WARN = 1.5  # max / min of a paired ratio over the rounds beyond which a result is flagged


def spread_warnings(results: list[dict]) -> list[str]:
    """One line per ratio whose rounds disagree by more than :data:`SPREAD_WARN` (or too few rounds to tell)."""
    lines = []
    for r in results:
        for k, st in r["ratio_stats"].items():
            rounds = len(next(iter(r["times_s"].values())))
            if rounds < 3:
                lines.append(f"warning: {r['model']} {k}: {rounds} round(s) cannot show the spread; use --repeats >= 3")
                break
            if st["spread"] > SPREAD_WARN:
                lines.append(
                    f"warning: {r['model']} {k} varied from {st['min']:.2f}x to {st['max']:.2f}x over "
                    f"{rounds} rounds (median {st['median']:.2f}x): the machine was busy; do not trust one "
                    "number, repeat with more --repeats or on an idle machine"
                )
    return lines


def noise_memory(name: str, batch: int, size: int, device: torch.device) -> dict:
    """Memory that TwoRound keeps between the rounds (round 1's gradients), in float32 and with
    ``noise_dtype=torch.bfloat16``: counted from the ANL activations' shapes everywhere, and on CUDA
    also measured as the peak allocated memory of one step each way."""
    torch.manual_seed(0)
    model = insert_anl(build(name), 0.05).to(device)
    numels = []
    counter = copy.deepcopy(model)  # a training-mode forward (active layers are called) that changes no statistics
    for layer in anl_layers(counter):
        layer.register_forward_pre_hook(lambda m, args: numels.append(args[0].numel()))
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # active layers outside a step are the identity, and say so
        counter(x)
    del counter
    report = {
        "model": name,
        "batch": batch,
        "anl_layers": len(numels),
        "held_bytes": {"float32": 4 * sum(numels), "bfloat16": 2 * sum(numels)},
    }
    if device.type == "cuda":
        peaks = {}
        for label, dtype in (("float32", None), ("bfloat16", torch.bfloat16)):
            engine = TwoRound(model, torch.Generator(device).manual_seed(0), noise_dtype=dtype)
            model.zero_grad(set_to_none=True)
            engine.step(lambda: F.cross_entropy(model(x), y))  # warm-up: allocator, grads
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            engine.step(lambda: F.cross_entropy(model(x), y))
            torch.cuda.synchronize(device)
            peaks[label] = torch.cuda.max_memory_allocated(device)
        report["peak_step_bytes"] = peaks
    return report


def format_table(results: list[dict]) -> str:
    """Median step times and the two ratios: ratio of the medians, then [min, max] of the rounds' paired ratios."""
    ratios = ("tworound/plain", "naive/tworound", "tworound-bf16probe/plain")
    lines = [
        "| model | batch | amp | "
        + " | ".join(f"{m} (ms)" for m in METHODS)
        + " | TwoRound/plain [min, max] | naive/TwoRound [min, max] | bf16-probe/plain [min, max] |",
        "|---|---|---|" + "---|" * (len(METHODS) + len(ratios)),
    ]
    for r in results:
        med = r["median_s"]
        cells = [f"{med[m] * 1e3:.1f}" if m in med else "-" for m in METHODS]
        for k in ratios:
            st = r.get("ratio_stats", {}).get(k)
            v = r["ratios"].get(k)
            cells.append("-" if v is None else f"{v:.2f}x" + (f" [{st['min']:.2f}, {st['max']:.2f}]" if st else ""))
        lines.append(f"| {r['model']} | {r['batch']} | {r['amp'] or 'fp32'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models",
        nargs="+",
        default=["vgg11", "resnet18"],
        choices=names(),
        metavar="MODEL",
        help="zoo names (anl-fused models; default vgg11 resnet18)",
    )
    parser.add_argument("--batch", type=positive_int, default=64, help="batch size (default 64)")
    parser.add_argument("--size", type=positive_int, default=32, help="input height and width")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS),
        choices=METHODS,
        help="default: all; tworound-bf16probe is TwoRound(probe_dtype=torch.bfloat16)",
    )
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=7,
        help="interleaved rounds: timed samples per method; their paired ratios give min / median / max (default 7)",
    )
    parser.add_argument(
        "--inner", type=positive_int, default=None, help="steps per timed sample (default 1 on CPU, 10 on CUDA)"
    )
    parser.add_argument("--eps", type=finite_float, default=0.05)
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="autocast dtype")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--kernels", action="store_true", help="also run the per-kernel bandwidth benchmark (CUDA)")
    parser.add_argument(
        "--out", default=None, help="JSON file to write (default: none, the table is printed); with --aot a directory"
    )
    parser.add_argument(
        "--aot",
        action="store_true",
        help="instead of timing: the AOT report of the ANL kernels for sm_80 / sm_90 (benchmarks/"
        "aot_report.py; no GPU needed) of each --models at --batch and --size, printed as "
        "markdown, or written to --out DIR (aot-report.json / .md; DIR/MODEL/ for several "
        "models); the timing options are not used",
    )
    parser.add_argument(
        "--aot-dtypes",
        nargs="+",
        default=["fp32", "bf16", "fp16"],
        choices=["fp32", "bf16", "fp16"],
        metavar="DTYPE",
        help="with --aot: the model dtypes to record (default fp32 bf16 fp16)",
    )


def run_aot(args: argparse.Namespace) -> int:
    """``--aot``: :mod:`.aot_report` for each of ``--models`` (its recording, compilation and files)."""
    from . import aot_report

    for name in args.models:
        argv = [
            "--model",
            name,
            "--batch",
            str(args.batch),
            "--size",
            str(args.size),
            "--step-batch",
            str(min(4, args.batch)),
            "--dtypes",
            *args.aot_dtypes,
        ]
        print(f"AOT report of {name} batch {args.batch} ({' '.join(args.aot_dtypes)}) ...", flush=True)
        try:
            report = aot_report.make_report(aot_report.parse_args(argv))
        except RuntimeError as e:  # a recording subprocess failed: its last line says why
            last = [line for line in str(e).splitlines() if line.strip()]
            print(
                f"anl-fused bench: error: AOT report of {name}: {last[0]} {last[-1] if len(last) > 1 else ''}",
                file=sys.stderr,
            )
            return 1
        if args.out:
            out = args.out if len(args.models) == 1 else os.path.join(args.out, name)
            json_path, md_path = aot_report.write_report(report, out)
            print(f"wrote {json_path} and {md_path}")
        else:
            print(aot_report.markdown(report))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.aot:
        return run_aot(args)
    device = resolve_device(args.device)
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    inner = args.inner or (10 if device.type == "cuda" else 1)
    methods = list(dict.fromkeys(["plain", *args.methods]))
    results = []
    for name in args.models:
        print(f"benchmarking {name} batch {args.batch} on {device} ...", flush=True)
        results.append(
            benchmark_model(name, args.batch, args.size, device, methods, args.repeats, inner, amp, args.eps)
        )
    report = {
        "machine": machine_info(device),
        "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "steps": results,
    }
    report["noise_memory"] = [noise_memory(name, args.batch, args.size, device) for name in args.models]
    if args.kernels:
        from .kernels import kernel_benchmarks

        report["kernels"] = kernel_benchmarks(device)
    print(format_table(results))
    for line in spread_warnings(results):
        print(line, file=sys.stderr)
    if args.out:
        atomic_write(args.out, json.dumps(report, indent=2))
        print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="anl-fused bench", description=__doc__.split("\n\n")[0])
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
