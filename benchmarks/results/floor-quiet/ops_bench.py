"""The three CPU ops, C++ against torch, interleaved: median ms per call over rounds (issue #20's table).

python benchmarks/results/floor-quiet/ops_bench.py [THREADS]
"""

import json
import os
import statistics
import sys
import time

import torch

from anl_fused import ops

SHAPES = {
    "lenet5 conv1 b128": (128, 6, 24, 24),
    "lenet5 conv2 b128": (128, 16, 8, 8),
    "lenet5 conv1 b32": (32, 6, 24, 24),
    "vgg11 block1 b32": (32, 64, 32, 32),
    "vgg11 block3 b32": (32, 256, 8, 8),
}


def ms_per_call(fn, n: int = 30) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e3


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    for name, shape in SHAPES.items():
        h, g, z = torch.randn(shape), torch.randn(shape), torch.randn(shape[0])
        s = ops.std(h)
        sc, _ = ops.noise_scale(g, z, s, 0.03, layer_norm=True)
        fns = {
            "std": lambda: ops.std(h),
            "noise_scale": lambda: ops.noise_scale(g, z, s, 0.03, layer_norm=True),
            "add_noise": lambda: ops.add_noise(h, g, sc),
        }
        res = {}
        for op, fn in fns.items():
            times = {"torch": [], "cpp": []}
            for _ in range(7):
                for backend in times:
                    os.environ["ANL_FUSED_BACKEND"] = backend
                    times[backend].append(ms_per_call(fn))
            res[op] = {b: round(statistics.median(v), 3) for b, v in times.items()}
            res[op]["torch/cpp"] = round(statistics.median(a / c for a, c in zip(times["torch"], times["cpp"])), 3)
        print(name, json.dumps(res))


if __name__ == "__main__":
    main()
