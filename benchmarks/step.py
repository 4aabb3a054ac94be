"""Step benchmark: plain training vs the authors'-style naive double pass vs the reference vs
``TwoRound``, measured side by side in one run and written as JSON with the machine's details.

    anl-fused bench --models vgg11 resnet18 --batch 64 --out results.json

Every method runs the same model (same weights, same batch) through one training step's
forward/backward (gradients zeroed first, no optimizer update). Methods are timed in interleaved
rounds (each round times every method once, in rotating order) so that a slow spell of the machine
hits all of them alike; the median over rounds is reported, and ratios are taken between medians
of the same run. On CUDA each timed sample is ``--inner`` steps between two synchronizations.
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
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from anl_fused import TwoRound, anl_layers, insert_anl, reference
from anl_fused.experiments.cli_types import ArgumentParser, finite_float, positive_int
from anl_fused.experiments.files import atomic_write, resolve_device
from anl_fused.experiments.models import build

from . import naive

METHODS = ("plain", "naive", "reference", "tworound")


def make_step(method: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 0.05,
              amp: torch.dtype | None = None) -> Callable[[], torch.Tensor]:
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
    engine = TwoRound(model, generator)
    runs = {
        "plain": lambda: closure().backward(),
        "naive": lambda: naive.naive_step(model, closure, generator),
        "reference": lambda: reference.two_round_step(model, closure, generator),
        "tworound": lambda: engine.step(closure),
    }
    run = runs[method]

    def step():
        model.zero_grad(set_to_none=True)
        return run()

    step.model = model
    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_methods(steps: dict[str, Callable], device: torch.device, repeats: int, warmup: int = 1,
                 inner: int = 1) -> dict[str, list[float]]:
    """Seconds per step of each method, ``repeats`` interleaved samples each."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    _sync(device)
    names = list(steps)
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
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
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                            cwd=os.path.dirname(__file__), check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        info["git_commit"] = None
    return info


def benchmark_model(name: str, batch: int, size: int, device: torch.device, methods, repeats: int, inner: int,
                    amp: torch.dtype | None, eps: float) -> dict:
    torch.manual_seed(0)
    model = build(name).to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    steps = {m: make_step(m, model, x, y, eps=eps, amp=amp) for m in methods}
    times = time_methods(steps, device, repeats, inner=inner)
    median = {m: statistics.median(t) for m, t in times.items()}
    ratios = {f"{a}/plain": median[a] / median["plain"] for a in median if a != "plain" and "plain" in median}
    if "naive" in median and "tworound" in median:
        ratios["naive/tworound"] = median["naive"] / median["tworound"]
    return {"model": name, "batch": batch, "size": size, "amp": str(amp) if amp else None, "eps": eps,
            "median_s": median, "times_s": times, "ratios": ratios}


def noise_memory(name: str, batch: int, size: int, device: torch.device) -> dict:
    """Memory that TwoRound keeps between the rounds (round 1's gradients), in float32 and with
    ``noise_dtype=torch.bfloat16``: counted from the ANL activations' shapes everywhere, and on CUDA
    also measured as the peak allocated memory of one step each way."""
    torch.manual_seed(0)
    model = insert_anl(build(name), 0.05).to(device).eval()  # eval: same shapes, no training-mode warning
    numels = []
    hooks = [layer.register_forward_pre_hook(lambda m, args: numels.append(args[0].numel()))
             for layer in anl_layers(model)]
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    model.train()
    report = {"model": name, "batch": batch, "anl_layers": len(numels),
              "held_bytes": {"float32": 4 * sum(numels), "bfloat16": 2 * sum(numels)}}
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
    lines = ["| model | batch | amp | " + " | ".join(f"{m} (ms)" for m in METHODS) + " | TwoRound/plain | naive/TwoRound |",
             "|---|---|---|" + "---|" * (len(METHODS) + 2)]
    for r in results:
        med = r["median_s"]
        cells = [f"{med[m] * 1e3:.1f}" if m in med else "-" for m in METHODS]
        ratios = [r["ratios"].get(k) for k in ("tworound/plain", "naive/tworound")]
        cells += [f"{v:.2f}x" if v is not None else "-" for v in ratios]
        lines.append(f"| {r['model']} | {r['batch']} | {r['amp'] or 'fp32'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", default=["vgg11", "resnet18"], help="zoo names (anl-fused models)")
    parser.add_argument("--batch", type=positive_int, default=64)
    parser.add_argument("--size", type=positive_int, default=32, help="input height and width")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--repeats", type=positive_int, default=7, help="interleaved timed samples per method")
    parser.add_argument("--inner", type=positive_int, default=None,
                        help="steps per timed sample (default 1 on CPU, 10 on CUDA)")
    parser.add_argument("--eps", type=finite_float, default=0.05)
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="autocast dtype")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--kernels", action="store_true", help="also run the per-kernel bandwidth benchmark (CUDA)")
    parser.add_argument("--out", default="benchmark.json", help="JSON file to write")


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    inner = args.inner or (10 if device.type == "cuda" else 1)
    methods = list(dict.fromkeys(["plain", *args.methods]))
    results = []
    for name in args.models:
        print(f"benchmarking {name} batch {args.batch} on {device} ...", flush=True)
        results.append(benchmark_model(name, args.batch, args.size, device, methods, args.repeats, inner, amp, args.eps))
    report = {"machine": machine_info(device), "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
              "steps": results}
    report["noise_memory"] = [noise_memory(name, args.batch, args.size, device) for name in args.models]
    if args.kernels:
        from .kernels import kernel_benchmarks

        report["kernels"] = kernel_benchmarks(device)
    table = format_table(results)
    print(table)
    atomic_write(args.out, json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="anl-fused bench", description=__doc__.split("\n\n")[0])
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
