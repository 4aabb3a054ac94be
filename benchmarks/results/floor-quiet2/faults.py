"""Minor page faults per step of plain, the exact floor and TwoRound on LeNet-5 (``python faults.py BATCH``)."""

import resource
import sys

import torch
import torch.nn.functional as F

import anl_fused
from anl_fused.benchmarks import step as sm
from anl_fused.experiments.models import build, get_spec

torch.set_num_threads(1)
torch.manual_seed(0)
B = int(sys.argv[1])
spec = get_spec("lenet5")
model = build("lenet5", in_channels=1)
anl = anl_fused.insert_anl(build("lenet5", in_channels=1), spec.eps, after=spec.anl_after)
x, y = torch.randn(B, 1, 28, 28), torch.randint(0, 10, (B,))
engine = anl_fused.TwoRound(anl, torch.Generator().manual_seed(0))


def closure():
    return F.cross_entropy(anl(x), y)


runs = {
    "plain": lambda: F.cross_entropy(model(x), y).backward(),
    "floor": lambda: sm.floor_step(anl, closure),
    "tworound": lambda: engine.step(closure),
}
for name in ["plain", "floor", "tworound", "floor", "tworound"]:
    run = runs[name]
    for _ in range(20):
        run()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(100):
        run()
    f1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    print(f"{name:9s} minor faults/step {(f1 - f0) / 100:8.1f}")
