"""TwoRound against the floor with its ops real, stubbed (the engine alone), or writing add_noise's output into
the gradient's buffer (a copy standing in for an in-place kernel): ``python engine_parts.py BATCH``."""

import statistics
import sys

import torch
import torch.nn.functional as F

import anl_fused
from anl_fused import engine as E
from anl_fused import ops
from anl_fused.benchmarks import step as sm
from anl_fused.experiments.models import build, get_spec

torch.set_num_threads(1)
torch.manual_seed(0)
B = int(sys.argv[1])
spec = get_spec("lenet5")
anl = anl_fused.insert_anl(build("lenet5", in_channels=1), spec.eps, after=spec.anl_after)
x, y = torch.randn(B, 1, 28, 28), torch.randint(0, 10, (B,))


def closure():
    return F.cross_entropy(anl(x), y)


class _Into(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, g):
        ctx.mark_dirty(g)
        return g

    @staticmethod
    def backward(ctx, grad_out):
        return grad_out, None


def add_into(h, g, scale, alpha=1.0):
    return _Into.apply(h, g.copy_(ops._cpp().add_noise(h, g, scale, float(alpha))))


one = torch.tensor(1.0)
stubbed = dict(std=lambda h: one, noise_scale=lambda g, *a, **k: (None, None), add_noise=lambda h, *a, **k: h)
into = dict(std=ops.std, noise_scale=ops.noise_scale, add_noise=add_into)


def with_ops(table):
    engine = anl_fused.TwoRound(anl, torch.Generator().manual_seed(0))
    namespace = type("Ops", (), {k: staticmethod(v) for k, v in table.items()}) if table else ops

    def step():
        E.ops = namespace
        try:
            return engine.step(closure)
        finally:
            E.ops = ops

    return step


runs = {
    "floor": lambda: sm.floor_step(anl, closure),
    "tworound": with_ops(None),
    "stubbed": with_ops(stubbed),
    "copy-into-g": with_ops(into),
}
times = sm.time_methods(runs, torch.device("cpu"), 21, warmup=5, inner=20)
for name, t in times.items():
    ratio = statistics.median(a / b for a, b in zip(t, times["floor"]))
    print(f"{name:12s} {statistics.median(t) * 1e3:7.3f} ms  /floor {ratio:.4f}")
