"""The study's throughput check (before its long runs): the fastest exact way to train LeNet-5 on
Fashion-MNIST on this CPU.

    python -m anl_fused.benchmarks.study_throughput --out benchmarks/results/study/throughput.json

Times the training loop's own step (``train.loop``: the run's optimizer, engine and batches, data
held as tensors) for each variant and setting, solo and two processes at once (one thread each),
and the evaluation of the validation + test splits at several batch sizes. Every number is a median
over ``--steps`` steps after ``--warmup``; settings are compared within this one run only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

SETTINGS = [  # (name, variant, threads, channels_last, compile)
    ("plain", "plain", 1, False, False),
    ("anl", "anl", 1, False, False),
    ("sam", "sam", 1, False, False),
    ("gaussian", "gaussian", 1, False, False),
    ("plain-2threads", "plain", 2, False, False),
    ("anl-2threads", "anl", 2, False, False),
    ("plain-channels_last", "plain", 1, True, False),
    ("anl-channels_last", "anl", 1, True, False),
    ("plain-compile", "plain", 1, False, True),
    ("anl-compile", "anl", 1, False, True),
]
EVAL_BATCHES = (500, 1000, 2500, 5000)


def _parts(variant: str, channels_last: bool, compile: bool, eval_batch: int = 500):
    from anl_fused.experiments.train.config import TrainConfig
    from anl_fused.experiments.train.parts import build_parts

    cfg = TrainConfig(
        model="lenet5",
        dataset="fashion-mnist",
        variant=variant,
        eps=0.03,
        norm="layer",
        channels_last=channels_last,
        compile=compile,
        eval_batch_size=eval_batch,
        device="cpu",
    ).resolved()
    return build_parts(cfg)


def time_steps(variant: str, threads: int, channels_last: bool, compile: bool, steps: int, warmup: int) -> dict:
    """Median wall time of one training step of the loop (ms), and steps per second."""
    from anl_fused.experiments.train.loop import _Loop

    torch.set_num_threads(threads)
    parts = _parts(variant, channels_last, compile)
    loop = _Loop.bare(parts)
    loop._start_epoch()
    times = []
    for i, (x, y) in enumerate(parts.train_batches.epoch(0)):
        if i >= warmup + steps:
            break
        t0 = time.perf_counter()
        loop._step(x, y, in_anl_phase=True)
        times.append(time.perf_counter() - t0)
    ms = statistics.median(times[warmup:]) * 1e3
    return {"ms_per_step": ms, "steps_per_s": 1e3 / ms, "steps_per_epoch": len(parts.train_batches)}


def time_eval(eval_batch: int, threads: int = 1) -> dict:
    from anl_fused.experiments.train.metrics import evaluate

    torch.set_num_threads(threads)
    parts = _parts("plain", False, False, eval_batch)
    evaluate(parts.eval_model, parts.val_batches)  # warm-up
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        evaluate(parts.eval_model, parts.val_batches)
        evaluate(parts.eval_model, parts.test_batches)
        times.append(time.perf_counter() - t0)
    return {"eval_batch": eval_batch, "val_plus_test_s": statistics.median(times)}


def _child(name: str, steps: int, warmup: int) -> dict:
    """One setting in a fresh process (``--one``), as JSON on stdout."""
    cmd = [sys.executable, "-m", "anl_fused.benchmarks.study_throughput", "--one", name]
    cmd += ["--steps", str(steps), "--warmup", str(warmup)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


def _collect(procs) -> list[dict]:
    out = []
    for p in procs:
        text, _ = p.communicate()
        out.append(json.loads(text.strip().splitlines()[-1]) if p.returncode == 0 else {"error": p.returncode})
    return out


def run(steps: int, warmup: int) -> dict:
    from anl_fused.experiments.machine import machine_info

    result = {"machine": machine_info(), "steps": steps, "warmup": warmup, "solo": {}}
    for name, *_ in SETTINGS:
        result["solo"][name] = _collect([_child(name, steps, warmup)])[0]
        print(name, result["solo"][name], file=sys.stderr)
    result["two_at_once"] = {}
    for name in ("plain", "anl", "sam"):
        both = _collect([_child(name, steps, warmup), _child(name, steps, warmup)])
        result["two_at_once"][name] = both
        print("2x", name, both, file=sys.stderr)
    result["eval"] = [time_eval(b) for b in EVAL_BATCHES]
    print(result["eval"], file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--out", default=None)
    p.add_argument("--one", choices=[s[0] for s in SETTINGS], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        _, variant, threads, cl, comp = next(s for s in SETTINGS if s[0] == args.one)
        try:
            res = time_steps(variant, threads, cl, comp, args.steps, args.warmup)
        except Exception as e:  # a setting that does not run here (e.g. torch.compile) is recorded, not fatal
            res = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        print(json.dumps({"setting": args.one, "threads": threads, **res}))
        return 0
    result = run(args.steps, args.warmup)
    text = json.dumps(result, indent=1)
    if args.out:
        from anl_fused.experiments.files import atomic_write

        atomic_write(args.out, text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
