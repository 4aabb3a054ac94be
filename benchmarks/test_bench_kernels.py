"""Kernel bandwidth (CUDA only), timed with ``triton.testing.do_bench`` (``kernels.py``: pytest-benchmark's
per-call clock would time the launch and the synchronization, not the kernel)::

    pytest --benchmark benchmarks/test_bench_kernels.py -s    # on a machine with CUDA: the GB/s table
"""

import pytest
import torch

from anl_fused.benchmarks.kernels import DTYPES, MODELS, format_rows, kernel_benchmarks
from anl_fused.benchmarks.step import anl_shapes

_OPS = ["std", "noise_scale", "add_noise"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_kernel_benchmarks_table():
    """Every op at every shape and dtype, fused and unfused, timed by ``do_bench``."""
    rows = kernel_benchmarks("cuda")
    assert len(rows) == sum(len(set(anl_shapes(m, 32))) for m in MODELS) * len(DTYPES) * len(_OPS)
    assert all(r["gbps_fused"] > 0 and r["gbps_torch"] > 0 for r in rows)
    print(format_rows(rows))
