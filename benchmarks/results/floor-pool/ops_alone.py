"""The three ANL ops alone at LeNet-5's two ANL layers (conv1 and conv2 outputs), C++ backend, 1 thread: the time
their minimum memory traffic takes here, against the exact floor measured in the same window (bench JSONs).
Usage: ANL_FUSED_BACKEND=cpp python ops_alone.py BATCH"""

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


def step():
    for h, g, zz in zip(hs, gs, z):
        s = ops.std(h)
        scale, _ = ops.noise_scale(g, zz, s, 0.03)
        ops.add_noise(h, g, scale)


for _ in range(20):
    step()
rounds = []
for _ in range(21):
    t = time.perf_counter()
    for _ in range(20):
        step()
    rounds.append((time.perf_counter() - t) / 20 * 1e3)
n = sum(h.numel() for h in hs)
print(
    f"LeNet-5 b{B}, {ops.cpp_status()}: std + noise_scale + add_noise at both ANL layers ({n} elements, "
    f"{5 * 4 * n / 1e6:.1f} MB moved at the minimum): median {statistics.median(rounds):.3f} ms "
    f"[{min(rounds):.3f}, {max(rounds):.3f}] over 21 rounds of 20"
)
