"""Small ``triton.jit`` helpers shared by the kernels."""

import triton
import triton.language as tl


@triton.jit
def div_rn(a, b):
    """``a / b`` correctly rounded (float32: ``tl.math.div_rn``; float64 division already is)."""
    if a.dtype == tl.float32:
        return tl.math.div_rn(a, b)
    else:
        return a / b


@triton.jit
def sqrt_rn(a):
    """Correctly rounded square root (float32: ``tl.math.sqrt_rn``; float64's already is)."""
    if a.dtype == tl.float32:
        return tl.math.sqrt_rn(a)
    else:
        return tl.sqrt(a)


@triton.jit
def to_acc(x):
    """``x`` in its accumulation dtype: float64 stays float64, everything else becomes float32."""
    if x.dtype == tl.float64:
        return x
    else:
        return x.to(tl.float32)
