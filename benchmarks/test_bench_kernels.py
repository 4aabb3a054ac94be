"""Kernel bandwidth (CUDA only), timed with ``triton.testing.do_bench`` (``kernels.py``: pytest-benchmark's
per-call clock would time the launch and the synchronization, not the kernel)::

    pytest --benchmark benchmarks/test_bench_kernels.py -s    # on a machine with CUDA: the GB/s table
"""

import pytest
import torch

from anl_fused.benchmarks.kernels import DTYPES, MODEL_SHAPES, format_rows, kernel_benchmarks

_OPS = ["std", "noise_scale", "add_noise"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_kernel_benchmarks_table():
    """Every op at every shape and dtype, fused and unfused, timed by ``do_bench``."""
    rows = kernel_benchmarks("cuda")
    assert len(rows) == sum(len(s) for s in MODEL_SHAPES.values()) * len(DTYPES) * len(_OPS)
    assert all(r["gbps_fused"] > 0 and r["gbps_torch"] > 0 for r in rows)
    print(format_rows(rows))
