"""pytest-benchmark suite of one training step: plain vs naive double pass vs reference vs TwoRound.

    pytest --benchmark benchmarks/test_bench_step.py --benchmark-json=steps.json

Grouped by model so pytest-benchmark prints the methods of one model side by side. (The runner
``benchmarks/run.py`` / ``anl-fused bench`` interleaves the methods and reports ratios; prefer it for
numbers you quote.)
"""

import pytest
import torch

from anl_fused.benchmarks.step import METHODS, make_step
from anl_fused.experiments.models import build

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BATCH = 128 if DEVICE == "cuda" else 32


@pytest.fixture(scope="module", params=["vgg11", "resnet18"])
def setup(request):
    torch.manual_seed(0)
    model = build(request.param).to(DEVICE)
    x = torch.randn(BATCH, 3, 32, 32, device=DEVICE)
    y = torch.randint(0, 10, (BATCH,), device=DEVICE)
    return request.param, model, x, y


@pytest.mark.parametrize("method", [m for m in METHODS if DEVICE == "cpu" or m != "reference"])
def test_step(benchmark, setup, method):
    name, model, x, y = setup
    benchmark.group = f"{name} batch {BATCH} {DEVICE}"
    step = make_step(method, model, x, y)
    step()  # warm-up
    if DEVICE == "cuda":

        def run():
            step()
            torch.cuda.synchronize()
    else:
        run = step
    benchmark.pedantic(run, rounds=5 if DEVICE == "cpu" else 20, warmup_rounds=1)
