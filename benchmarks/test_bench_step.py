"""pytest-benchmark suite of one training step: plain vs the exact floor vs naive double pass vs reference
vs TwoRound (VGG-11 and ResNet-18 at batch 32 on 2 threads, LeNet-5 at batch 128 and 32 on 1 thread, on the CPU;
batch 128 on CUDA), grouped by configuration; docs/speed.md, "pytest --benchmark".

    pytest --benchmark benchmarks/test_bench_step.py --benchmark-json=steps.json
"""

import pytest
import torch

from anl_fused.benchmarks.step import METHODS, make_step, model_and_batch, sync, where
from anl_fused.experiments.models import get_spec

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# (model, batch, input size, CPU threads)
CONFIGS = (
    [("vgg11", 128, 32, None), ("resnet18", 128, 32, None)]
    if DEVICE.type == "cuda"
    else [("vgg11", 32, 32, 2), ("resnet18", 32, 32, 2), ("lenet5", 128, 28, 1), ("lenet5", 32, 28, 1)]
)


@pytest.fixture(scope="module", params=CONFIGS, ids=lambda c: f"{c[0]}-b{c[1]}")
def setup(request):
    name, batch, size, threads = request.param
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    yield name, batch, model_and_batch(name, batch, size, DEVICE)
    torch.set_num_threads(before)


@pytest.mark.parametrize("method", [m for m in METHODS if DEVICE.type == "cpu" or m != "reference"])
def test_step(benchmark, setup, method):
    name, batch, (model, x, y) = setup
    benchmark.group = f"{name} batch {batch} {DEVICE.type} {torch.get_num_threads()} threads"
    benchmark.extra_info.update(where(DEVICE))  # the CPU (or GPU), the torch threads, the ANL ops' backend
    step = make_step(method, model, x, y, after=get_spec(name).anl_after)
    step()  # warm-up
    benchmark.pedantic(lambda: (step(), sync(DEVICE)), rounds=5 if DEVICE.type == "cpu" else 20, warmup_rounds=1)
