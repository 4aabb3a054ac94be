"""TwoRound's cost over the exact floor at LeNet-5, split: the engine (the three ops stubbed) and the ops inside a step.
Floor, TwoRound and stubbed TwoRound interleaved in one process; medians of paired differences.

Usage: ANL_FUSED_BACKEND=cpp python decompose.py BATCH ROUNDS"""

import statistics
import sys

import torch
import torch.nn.functional as F

import anl_fused
from anl_fused import ops
from anl_fused.benchmarks import step as S
from anl_fused.experiments.models import build, get_spec

torch.set_num_threads(1)
torch.manual_seed(0)
B, R = int(sys.argv[1]), int(sys.argv[2])
spec = get_spec("lenet5")
x, y = torch.randn(B, 1, 28, 28), torch.randint(0, 10, (B,))
anl = anl_fused.insert_anl(build("lenet5", in_channels=1), spec.eps, after=spec.anl_after)
engine = anl_fused.TwoRound(anl, torch.Generator().manual_seed(0))
real = ops.std, ops.noise_scale, ops.add_noise
one = torch.tensor(1.0)


def closure():
    return F.cross_entropy(anl(x), y)


def stubbed():
    ops.std, ops.noise_scale, ops.add_noise = (lambda h: one), (lambda g, *a, **k: (None, None)), (lambda h, *a, **k: h)
    try:
        engine.step(closure)
    finally:
        ops.std, ops.noise_scale, ops.add_noise = real


runs = {"floor": lambda: S.floor_step(anl, closure), "tworound": lambda: engine.step(closure), "stubbed": stubbed}
t = S.time_methods(runs, torch.device("cpu"), R, warmup=5, inner=20)


def med(k):
    return statistics.median(t[k]) * 1e3


def diff(a, b):
    return statistics.median((p - q) * 1e3 for p, q in zip(t[a], t[b]))


ratio = statistics.median(a / b for a, b in zip(t["tworound"], t["floor"]))
print(
    f"b{B} {ops.cpp_status()}: floor {med('floor'):.3f} tworound {med('tworound'):.3f} stubbed {med('stubbed'):.3f} "
    f"ms; paired medians: tworound-floor {diff('tworound', 'floor'):.3f}, stubbed-floor (engine) "
    f"{diff('stubbed', 'floor'):.3f}, tworound-stubbed (ops in step) {diff('tworound', 'stubbed'):.3f} ms; "
    f"ratio {ratio:.3f}"
)
