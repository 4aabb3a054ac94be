"""The dtype rules every backend shares (imported by ``anl_fused.ops`` and by ``anl_fused.kernels``).

Kept free of other anl_fused imports so that the Triton kernels depend on torch, triton and this
module only.
"""

import torch

__all__ = ["FLOAT_DTYPES", "acc_dtype"]

#: Activation / gradient dtypes the ops accept.
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the reductions: float64 for float64 input, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32
