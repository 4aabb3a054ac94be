"""pytest-benchmark suite of one training step: plain vs the exact floor vs naive double pass vs reference
vs TwoRound (VGG-11 and ResNet-18 at batch 32 on 2 threads, LeNet-5 at batch 128 and 32 on 1 thread, on the CPU;
batch 128 on CUDA), grouped by configuration; docs/speed.md, "pytest --benchmark".

    pytest --benchmark benchmarks/test_bench_step.py --benchmark-json=steps.json
"""

import pytest
import torch

from anl_fused.benchmarks.step import METHODS, _sync, backend, cpu_model, make_step, model_and_batch
from anl_fused.experiments.models import get_spec

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# (model, batch, input size, CPU threads)
CONFIGS = (
    [("vgg11", 128, 32, None), ("resnet18", 128, 32, None)]
    if DEVICE == "cuda"
    else [("vgg11", 32, 32, 2), ("resnet18", 32, 32, 2), ("lenet5", 128, 28, 1), ("lenet5", 32, 28, 1)]
)


@pytest.fixture(scope="module", params=CONFIGS, ids=lambda c: f"{c[0]}-b{c[1]}")
def setup(request):
    name, batch, size, threads = request.param
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    model, x, y = model_and_batch(name, batch, size, DEVICE)
    yield name, batch, get_spec(name), model, x, y
    torch.set_num_threads(before)


@pytest.mark.parametrize("method", [m for m in METHODS if DEVICE == "cpu" or m != "reference"])
def test_step(benchmark, setup, method):
    name, batch, spec, model, x, y = setup
    device = torch.device(DEVICE)
    benchmark.group = f"{name} batch {batch} {DEVICE} {torch.get_num_threads()} threads"
    cpu = cpu_model() if DEVICE == "cpu" else torch.cuda.get_device_name()
    benchmark.extra_info.update(cpu=cpu, threads=torch.get_num_threads(), backend=backend(device))
    step = make_step(method, model, x, y, after=spec.anl_after)
    step()  # warm-up
    benchmark.pedantic(lambda: (step(), _sync(device)), rounds=5 if DEVICE == "cpu" else 20, warmup_rounds=1)
