"""Profile of one LeNet-5 training step: TwoRound against the exact floor, as text.

    python -m anl_fused.benchmarks.profile_step --batch 32 --out benchmarks/results/profile-lenet5-b32-after.txt
    python -m anl_fused.benchmarks.profile_step --src /path/to/old/checkout --out ...-before.txt

One thread, CPU. The file holds: the machine (CPU model, threads, backend of ``anl_fused.ops``); the
median step times of plain, floor (:func:`anl_fused.benchmarks.step.floor_step`) and TwoRound over
interleaved rounds; ``torch.profiler``'s ``key_averages()`` table of ``--steps`` TwoRound steps and of as
many floor steps (self CPU time per op: the ops TwoRound adds are the difference); and ``cProfile``'s
top functions by own time over the TwoRound steps (the engine's Python bookkeeping). ``--src``
measures another checkout's ``anl_fused`` (the benchmark code is always this one's).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def profile(batch: int, steps: int, repeats: int) -> str:
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    import anl_fused
    from anl_fused.experiments.models import build, get_spec

    step_module = _load_step_module()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    spec = get_spec("lenet5")
    model = build("lenet5", in_channels=1)
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    anl = anl_fused.insert_anl(build("lenet5", in_channels=1), spec.eps, after=spec.anl_after)
    anl.load_state_dict(model.state_dict())
    engine = anl_fused.TwoRound(anl, torch.Generator().manual_seed(0))

    def closure_of(m):
        return lambda: F.cross_entropy(m(x), y)

    runs = {
        "plain": lambda: closure_of(model)().backward(),
        "floor": lambda: step_module.floor_step(anl, closure_of(anl)),
        "tworound": lambda: engine.step(closure_of(anl)),
    }
    times = step_module.time_methods(runs, torch.device("cpu"), repeats, warmup=5, inner=steps)
    med = {name: statistics.median(t) for name, t in times.items()}
    paired = statistics.median(a / b for a, b in zip(times["tworound"], times["floor"]))
    out = [
        f"LeNet-5, batch {batch}, 28x28, CPU: {step_module.cpu_model()}, {torch.get_num_threads()} thread(s), "
        f"ops backend: {step_module.backend(torch.device('cpu'))}, torch {torch.__version__}",
        f"anl_fused from {os.path.dirname(anl_fused.__file__)}",
        f"median ms/step over {repeats} rounds of {steps} steps: "
        + ", ".join(f"{k} {v * 1e3:.3f}" for k, v in med.items())
        + f"; TwoRound/floor (median of paired ratios) {paired:.3f}x; TwoRound - floor "
        f"{(med['tworound'] - med['floor']) * 1e3:.3f} ms",
        "",
    ]
    out += [_bookkeeping(runs, steps, max(repeats, 40), step_module), ""]
    for name in ("tworound", "floor"):
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                runs[name]()
        out += [
            f"== torch.profiler key_averages, {steps} {name} steps, by self CPU time ==",
            prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30),
        ]
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(steps):
        runs["tworound"]()
    pr.disable()
    buf = io.StringIO()
    pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(30)
    out += [f"== cProfile, {steps} TwoRound steps, by own time ==", buf.getvalue()]
    return "\n".join(out)


def _bookkeeping(runs: dict, steps: int, repeats: int, step_module) -> str:
    """TwoRound's cost over the floor with its three ops replaced by functions that return precomputed
    tensors (``ops.std``, ``ops.noise_scale``, ``ops.add_noise``): the engine's own bookkeeping, its one
    draw and the gradients it holds between the rounds. Best of ``repeats`` interleaved samples."""
    import torch

    from anl_fused import ops

    real = ops.std, ops.noise_scale, ops.add_noise
    s, scale = torch.tensor(1.0), None
    ops.std = lambda h: s
    ops.noise_scale = lambda g, *a, **k: (scale, scale)
    ops.add_noise = lambda h, *a, **k: h
    try:
        pair = {name: runs[name] for name in ("floor", "tworound")}
        times = step_module.time_methods(pair, torch.device("cpu"), repeats, warmup=0, inner=steps)
        best = {name: min(t) for name, t in times.items()}
    finally:
        ops.std, ops.noise_scale, ops.add_noise = real
    return (
        f"with the three ops stubbed (best of {repeats} rounds): floor {best['floor'] * 1e3:.3f} ms, TwoRound "
        f"{best['tworound'] * 1e3:.3f} ms: the engine's own cost {(best['tworound'] - best['floor']) * 1e3:.3f} ms/step"
    )


def _load_step_module():
    """This checkout's ``benchmarks/step.py`` (the floor's definition), also when ``--src`` put another checkout's
    ``anl_fused`` (which has no ``benchmarks`` package) first on the path."""
    import importlib.util

    if importlib.util.find_spec("anl_fused.benchmarks") is None:
        init = os.path.join(HERE, "__init__.py")
        spec = importlib.util.spec_from_file_location("anl_fused.benchmarks", init, submodule_search_locations=[HERE])
        sys.modules[spec.name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[spec.name])
    from anl_fused.benchmarks import step

    return step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=20, help="steps per timed sample and per profile")
    p.add_argument("--repeats", type=int, default=15, help="interleaved rounds of the timing")
    p.add_argument("--src", default=None, help="checkout whose anl_fused to profile (default: the installed one)")
    p.add_argument("--out", default=None, help="text file to write (default: print)")
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.src and not args._child:
        env = dict(os.environ, PYTHONPATH=os.path.abspath(args.src) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cmd = [sys.executable, os.path.abspath(__file__), "--_child", *(argv if argv is not None else sys.argv[1:])]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=args.src)
        if res.returncode != 0:
            print(res.stderr[-3000:], file=sys.stderr)
            return 1
        text = res.stdout
    else:
        text = profile(args.batch, args.steps, args.repeats)
        if args._child:
            print(text)
            return 0
    if args.out:
        from anl_fused.experiments.files import atomic_write

        atomic_write(args.out, text)
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
