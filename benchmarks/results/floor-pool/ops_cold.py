"""The three ANL ops at LeNet-5's two ANL layers, C++ backend, 1 thread, with their inputs hot in cache (run back to
back) and cold (a 64 MB buffer written between calls, as a training step's other work evicts them), one process,
interleaved rounds. Usage: ANL_FUSED_BACKEND=cpp python ops_cold.py BATCH"""

import statistics
import sys
import time

import torch

from anl_fused import ops

torch.set_num_threads(1)
B = int(sys.argv[1])
layers = [(B, 6, 28, 28), (B, 16, 10, 10)]
hs = [torch.randn(s) for s in layers]
gs = [torch.randn(s) for s in layers]
z = [torch.randn(B) for _ in layers]
evict = torch.empty(16 * 2**20)  # 64 MB


def ops_once():
    t = time.perf_counter()
    for h, g, zz in zip(hs, gs, z):
        s = ops.std(h)
        scale, _ = ops.noise_scale(g, zz, s, 0.03)
        ops.add_noise(h, g, scale)
    return time.perf_counter() - t


for _ in range(20):
    ops_once()
hot, cold = [], []
for _ in range(31):
    hot.append(statistics.median(ops_once() for _ in range(10)) * 1e3)
    samples = []
    for _ in range(10):
        evict.fill_(1.0)
        samples.append(ops_once())
    cold.append(statistics.median(samples) * 1e3)
n = sum(h.numel() for h in hs)
print(
    f"LeNet-5 b{B}, {ops.cpp_status()}, {n} elements a step: hot {statistics.median(hot):.3f} ms, "
    f"cold {statistics.median(cold):.3f} ms (medians of 31 rounds of 10); cold - hot "
    f"{statistics.median(c - h for c, h in zip(cold, hot)):.3f} ms"
)
