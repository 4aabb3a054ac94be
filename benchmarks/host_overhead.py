"""Host cost of one call of each ANL op in eager mode, the kernel launch itself excluded.

    python benchmarks/host_overhead.py --out benchmarks/results/host-overhead.json
    python benchmarks/host_overhead.py --src /path/to/other/checkout --label before   # another version

Runs on a CPU machine: the ops take their Triton path (``ANL_FUSED_BACKEND=triton``) on CPU tensors,
with ``JITFunction.run`` (Triton's launcher: argument binding, specialization key, driver launch)
replaced by a no-op, so what is timed is everything the op does on the host before the launch:
Python wrappers, argument checks, the torch dispatcher where it is used, allocations. A plain torch
op on a small tensor (``torch.add``) is the yardstick. On a GPU the allocations go through the CUDA
caching allocator (similar cost) and Triton's launcher adds its own, not counted here.

Each figure is the best of ``--repeats`` runs of ``--number`` calls (microseconds per call) over
``--runs`` fresh processes (the median: of the runs' medians), on small tensors so that no
allocation is large. Nothing here needs a GPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import timeit

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def measure(number: int, repeats: int, shape=(8, 16, 4, 4)) -> dict:
    """Microseconds per call (best of ``repeats``; median too) of every op entry point."""
    os.environ["ANL_FUSED_BACKEND"] = "triton"
    import torch
    from triton.runtime.jit import JITFunction

    JITFunction.run = lambda self, *args, **kwargs: None  # launch excluded

    from anl_fused import kernels, ops

    torch.set_num_threads(1)
    B = shape[0]
    h = torch.randn(shape)
    h_grad = h.clone().requires_grad_()
    g = torch.randn(shape)
    z = torch.randn(B)
    s = torch.tensor(0.7)
    scale = torch.rand(B)
    stats = torch.zeros(2, dtype=torch.int64)
    small = torch.randn(B)

    def noise_scale_stats():
        try:
            return ops.noise_scale(g, z, s, 0.1, stats=stats)
        except TypeError:  # a version without stats
            return ops.noise_scale(g, z, s, 0.1)

    cases = {
        "torch.add (small, reference)": lambda: torch.add(small, small),
        "torch.add (h, reference)": lambda: torch.add(h, g),
        "ops.std": lambda: ops.std(h),
        "ops.noise_scale": lambda: ops.noise_scale(g, z, s, 0.1),
        "ops.noise_scale (stats)": noise_scale_stats,
        "ops.add_noise": lambda: ops.add_noise(h, g, scale),
        "ops.add_noise (h requires grad)": lambda: ops.add_noise(h_grad, g, scale),
        "torch.ops.anl_fused.std (dispatcher)": lambda: torch.ops.anl_fused.std(h),
    }
    out = {}
    for name, fn in cases.items():
        for _ in range(min(number, 500)):
            fn()
        times = sorted(t / number * 1e6 for t in timeit.repeat(fn, number=number, repeat=repeats))
        out[name] = {"best_us": round(times[0], 2), "median_us": round(times[len(times) // 2], 2)}
    import triton

    return {
        "torch": torch.__version__,
        "triton": triton.__version__,
        "anl_fused": kernels.__file__,
        "shape": list(shape),
        "results": out,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--src", default=None, help="checkout whose anl_fused to measure (default: the installed one)")
    p.add_argument("--label", default="after")
    p.add_argument("--number", type=int, default=200)
    p.add_argument("--repeats", type=int, default=100)
    p.add_argument("--runs", type=int, default=3, help="fresh processes; per case the best of all of them is kept")
    p.add_argument("--out", default=None, help="JSON file to write (merged with what it already holds, by label)")
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child:
        json.dump(measure(args.number, args.repeats), sys.stdout)
        return {}
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if args.src:
        env["PYTHONPATH"] = os.path.abspath(args.src) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--_child",
        "--number",
        str(args.number),
        "--repeats",
        str(args.repeats),
    ]
    runs = []
    for _ in range(args.runs):  # the machine may be shared: keep each case's best over fresh processes
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=args.src or ROOT)
        if res.returncode != 0:
            raise RuntimeError(res.stderr[-5000:])
        runs.append(json.loads(res.stdout))
    run = runs[0]
    for name in run["results"]:
        run["results"][name] = {
            "best_us": min(r["results"][name]["best_us"] for r in runs),
            "median_us": sorted(r["results"][name]["median_us"] for r in runs)[len(runs) // 2],
        }
    run.update(
        label=args.label,
        date=dt.date.today().isoformat(),
        python=platform.python_version(),
        machine=platform.machine(),
        cpus=os.cpu_count(),
        command="python benchmarks/host_overhead.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    )
    for name, r in run["results"].items():
        print(f"{args.label:>8}  {name:40s} best {r['best_us']:7.2f} us   median {r['median_us']:7.2f} us")
    if args.out:
        data = {}
        if os.path.exists(args.out):
            with open(args.out) as f:
                data = json.load(f)
        data["note"] = " ".join(__doc__.strip().split("\n\n")[2].split())
        data.setdefault("runs", {})[args.label] = run
        from anl_fused.experiments.files import atomic_write

        atomic_write(args.out, json.dumps(data, indent=1))
    return run


if __name__ == "__main__":
    main()
