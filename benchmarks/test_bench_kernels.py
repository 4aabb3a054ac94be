"""Kernel bandwidth benchmarks (CUDA only): fused Triton kernels vs the unfused torch sequences at
the ANL activation shapes of VGG-16 / ResNet-18 (32x32 inputs, batch 128), fp32 and bf16.

The measuring code is ``benchmarks/kernels.py`` (``anl_fused.benchmarks.kernels``, also used by
``anl-fused bench --kernels``); this file holds the pytest-benchmark suite::

    pytest --benchmark benchmarks/test_bench_kernels.py          # on a machine with CUDA
    python -m anl_fused.benchmarks.kernels                       # the GB/s table
"""

import pytest
import torch

from anl_fused.benchmarks.kernels import (
    BATCH,
    DTYPES,
    MODEL_SHAPES,
    format_rows,
    kernel_benchmarks,
    op_cases,
    torch_backend,
)

__all__ = ["kernel_benchmarks"]

_SHAPES = sorted({(BATCH, *chw) for shapes in MODEL_SHAPES.values() for chw, _ in shapes})
_OPS = ["std", "noise_scale", "add_noise"]


def _case(shape, dtype, op):
    for name, nbytes, fused, unfused in op_cases(shape, DTYPES[dtype], "cuda"):
        if name == op:
            return nbytes, fused, unfused
    raise KeyError(op)


def _run(benchmark, fn, nbytes):
    def timed():
        fn()
        torch.cuda.synchronize()

    timed()  # compile / warm up outside the measurement
    benchmark.extra_info["bytes"] = nbytes
    benchmark(timed)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("op", _OPS)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", _SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl", ["fused", "torch"])
def test_kernel_bandwidth(benchmark, impl, shape, dtype, op):
    nbytes, fused, unfused = _case(shape, dtype, op)
    benchmark.group = f"{op}-{dtype}-{'x'.join(map(str, shape))}"
    if impl == "fused":
        _run(benchmark, fused, nbytes)
    else:
        with torch_backend():
            _run(benchmark, unfused, nbytes)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_kernel_benchmarks_table():
    rows = kernel_benchmarks("cuda")
    assert len(rows) == sum(len(s) for s in MODEL_SHAPES.values()) * len(DTYPES) * len(_OPS)
    assert all(r["gbps_fused"] > 0 and r["gbps_torch"] > 0 for r in rows)
    print(format_rows(rows))


if __name__ == "__main__":
    rows = kernel_benchmarks()
    print(format_rows(rows) if rows else "no CUDA device: nothing measured")
