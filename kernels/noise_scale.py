"""``noise_scale(g, z, s, eps) -> (scale, norm)``: the per-sample noise scale of round 1.

Math. ``g`` has ``B`` samples of ``M = numel / B`` elements, sample ``b`` being the storage range
``[b*M, (b+1)*M)`` (batch-outermost layout). Each sample is split into ``C = ceil(M / BLOCK)``
chunks; program ``(b, c)`` reduces one chunk::

    part[b, c] = max_{i in chunk c} |g_b,i|     (NaN if any element of the chunk is NaN)

``tl.max`` is not guaranteed to propagate NaN, so NaN is tracked as a separate flag. A second
kernel, one program per sample, reduces the partials and applies Eq. 2/5 of the paper::

    norm_b  = max_c part[b, c]                  (NaN if any partial is NaN; inf if g_b holds inf)
    r_b     = clamp(eps/2 + |eps|/4 * z_b, min(0, eps), max(0, eps))     (r_b = eps when z is None)
    scale_b = r_b * s / norm_b                  (s = 1 when s is None)
    scale_b = 0  where norm_b == 0 or norm_b is not finite

Everything is computed in float32 (float64 for float64 ``g``); ``eps`` is passed as a float32
pair ``hi + lo`` so that the float64 path keeps its precision. No gradient (``g`` is detached).
"""

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from ._layout import acc_dtype, check_float, dense, sample_block, split_f64

MAX_BLOCK = 4096  # elements of one sample per program of the max pass
PART_BLOCK = 256  # partials per iteration of the per-sample finalize kernel
NUM_WARPS = 8


@triton.jit
def _absmax_partial_kernel(g_ptr, part_ptr, M, chunks, BLOCK: tl.constexpr):
    """part[b*chunks + c] = max |g[b*M + c*BLOCK + j]| over the chunk, NaN-propagating."""
    pid = tl.program_id(0)
    b = pid // chunks
    c = pid - b * chunks
    col = c.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = col < M
    x = tl.load(g_ptr + b.to(tl.int64) * M + col, mask=mask, other=0.0)
    a = tl.abs(x.to(part_ptr.dtype.element_ty))
    is_nan = a != a
    m = tl.max(tl.where(is_nan, 0.0, a), axis=0)
    any_nan = tl.max(is_nan.to(tl.int32), axis=0)
    tl.store(part_ptr + pid, tl.where(any_nan > 0, float("nan"), m))


@triton.jit
def _scale_finalize_kernel(
    part_ptr, z_ptr, s_ptr, scale_ptr, norm_ptr, chunks, eps_hi, eps_lo,
    HAS_Z: tl.constexpr, HAS_S: tl.constexpr, PART_BLOCK: tl.constexpr,
):
    """norm[b] = max_c part[b, c] (NaN-propagating); scale[b] = r_b * s / norm[b] or 0."""
    b = tl.program_id(0)
    acc_ty = norm_ptr.dtype.element_ty
    best = tl.zeros([PART_BLOCK], dtype=acc_ty)
    nan_seen = tl.zeros([PART_BLOCK], dtype=tl.int32)
    row = part_ptr + b.to(tl.int64) * chunks
    for start in range(0, chunks, PART_BLOCK):
        idx = start + tl.arange(0, PART_BLOCK)
        p = tl.load(row + idx, mask=idx < chunks, other=0.0)
        is_nan = p != p
        nan_seen = tl.maximum(nan_seen, is_nan.to(tl.int32))
        best = tl.maximum(best, tl.where(is_nan, 0.0, p))
    norm = tl.max(best, axis=0)
    norm = tl.where(tl.max(nan_seen, axis=0) > 0, float("nan"), norm)

    eps = (tl.full([], 0.0, acc_ty) + eps_hi) + eps_lo  # exact: hi and lo are float32 values
    if HAS_Z:
        z = tl.load(z_ptr + b).to(acc_ty)
        r = eps * 0.5 + tl.abs(eps) * 0.25 * z
        r = tl.minimum(tl.maximum(r, tl.minimum(eps, 0.0)), tl.maximum(eps, 0.0))
    else:
        r = eps
    if HAS_S:
        r = r * tl.load(s_ptr).to(acc_ty)
    valid = (norm > 0.0) & (norm < float("inf"))  # False for NaN
    safe = tl.where(valid, norm, 1.0)
    tl.store(norm_ptr + b, norm)
    tl.store(scale_ptr + b, tl.where(valid, r / safe, 0.0))


@triton_op("anl_fused::noise_scale", mutates_args=())
def noise_scale_op(g: Tensor, z: Optional[Tensor], s: Optional[Tensor], eps: float) -> Tuple[Tensor, Tensor]:
    """The ``anl_fused::noise_scale`` operator (see the module docstring)."""
    check_float(g, "g")
    if g.dim() < 1:
        raise ValueError("g must have a batch dimension (dim >= 1)")
    g, _ = dense(g)
    B = g.shape[0]
    M = g.numel() // B if B > 0 else 0
    acc = acc_dtype(g.dtype)
    scale = torch.empty(B, dtype=acc, device=g.device)
    norm = torch.empty(B, dtype=acc, device=g.device)
    if z is not None:
        if z.numel() != B:
            raise ValueError(f"z must hold one value per sample ({B}), got shape {tuple(z.shape)}")
        z = z.reshape(B).contiguous()
    if s is not None:
        if s.numel() != 1:
            raise ValueError(f"s must be a single value, got shape {tuple(s.shape)}")
        s = s.reshape(()).contiguous()
    if B == 0:
        return scale, norm
    block = sample_block(M, MAX_BLOCK)
    chunks = max(1, triton.cdiv(M, block))
    parts = torch.empty(B * chunks, dtype=acc, device=g.device)
    eps_hi, eps_lo = split_f64(eps)
    wrap_triton(_absmax_partial_kernel)[(B * chunks,)](g, parts, M, chunks, BLOCK=block, num_warps=NUM_WARPS)
    # an absent z / s is never read: the partials stand in for its pointer
    wrap_triton(_scale_finalize_kernel)[(B,)](
        parts, parts if z is None else z, parts if s is None else s, scale, norm, chunks, eps_hi, eps_lo,
        HAS_Z=z is not None, HAS_S=s is not None, PART_BLOCK=PART_BLOCK, num_warps=2,
    )
    return scale, norm


def noise_scale(g: Tensor, z: Optional[Tensor], s: Optional[Tensor], eps: float) -> Tuple[Tensor, Tensor]:
    """``(scale, norm)``, both ``[B]`` float32 (float64 for float64 ``g``), without gradient:
    ``norm_b = max|g_b|`` and ``scale_b = r_b * s / norm_b`` (0 where ``norm_b`` is 0 or not
    finite), ``r_b = clamp(eps/2 + |eps|/4 z_b, min(0, eps), max(0, eps))`` or ``eps`` when ``z``
    is None, ``s = 1`` when None."""
    return torch.ops.anl_fused.noise_scale(
        g.detach(), None if z is None else z.detach(), None if s is None else s.detach(), float(eps)
    )
