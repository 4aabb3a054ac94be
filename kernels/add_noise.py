"""``add_noise(h, g, scale) -> out``: round 2 forward of an ANL layer in one pass.

Math. ``h`` and ``g`` have ``B`` samples of ``M = numel / B`` elements; sample ``b`` is the storage
range ``[b*M, (b+1)*M)`` of both (same batch-outermost layout: contiguous or channels_last). Program
``(b, c)`` handles chunk ``c`` of sample ``b``, so ``scale_b`` is one scalar load per program::

    out_b,i = h_b,i + scale_b * g'_b,i,     g'_b,i = g_b,i if g_b,i is finite else 0

computed in float32 (float64 for float64 ``h``) and stored in ``h``'s dtype. Zeroing the
non-finite entries of ``g`` (as ``torch.nan_to_num`` does in the torch backend) makes
``eta_b = 0`` wherever ``scale_b == 0`` even if ``g_b`` holds inf/NaN. ``g`` may be stored in
another float dtype than ``h`` (e.g. bfloat16 to halve its memory).

Autograd: ``d out / d h = I`` (grad_out passes through unchanged); ``g`` and ``scale`` are
constants (no gradient).
"""

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from ._layout import acc_dtype, check_float, dense, like_layout, sample_block

MAX_BLOCK = 2048  # elements of one sample per program
NUM_WARPS = 4


@triton.jit
def _add_noise_kernel(h_ptr, g_ptr, scale_ptr, out_ptr, M, chunks, BLOCK: tl.constexpr):
    """out[b*M + j] = h[b*M + j] + scale[b] * finite_or_zero(g[b*M + j]) for j in chunk c."""
    pid = tl.program_id(0)
    b = pid // chunks
    c = pid - b * chunks
    col = c.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = col < M
    offs = b.to(tl.int64) * M + col
    acc_ty = scale_ptr.dtype.element_ty
    sc = tl.load(scale_ptr + b)
    x = tl.load(h_ptr + offs, mask=mask, other=0.0).to(acc_ty)
    gv = tl.load(g_ptr + offs, mask=mask, other=0.0).to(acc_ty)
    gv = tl.where(tl.abs(gv) < float("inf"), gv, 0.0)  # NaN and +-inf -> 0
    tl.store(out_ptr + offs, (x + sc * gv).to(out_ptr.dtype.element_ty), mask=mask)


@triton_op("anl_fused::add_noise", mutates_args=())
def add_noise_op(h: Tensor, g: Tensor, scale: Tensor) -> Tensor:
    """The ``anl_fused::add_noise`` operator (see the module docstring)."""
    check_float(h, "h")
    check_float(g, "g")
    check_float(scale, "scale")
    if h.dim() < 1:
        raise ValueError("h must have a batch dimension (dim >= 1)")
    if g.shape != h.shape:
        raise ValueError(f"g must have h's shape {tuple(h.shape)}, got {tuple(g.shape)}")
    B = h.shape[0]
    if scale.numel() != B:
        raise ValueError(f"scale must hold one value per sample ({B}), got shape {tuple(scale.shape)}")
    h, fmt = dense(h)
    g = like_layout(g, fmt)
    scale = scale.reshape(B).to(acc_dtype(h.dtype)).contiguous()
    out = torch.empty_like(h)
    M = h.numel() // B if B > 0 else 0
    if M == 0:
        return out
    block = sample_block(M, MAX_BLOCK)
    chunks = triton.cdiv(M, block)
    wrap_triton(_add_noise_kernel)[(B * chunks,)](h, g, scale, out, M, chunks, BLOCK=block, num_warps=NUM_WARPS)
    return out


def _setup_context(ctx, inputs, output):
    pass


def _backward(ctx, grad_out):
    return grad_out, None, None


add_noise_op.register_autograd(_backward, setup_context=_setup_context)


def add_noise(h: Tensor, g: Tensor, scale: Tensor) -> Tensor:
    """``out = h + scale[b] * g`` (non-finite ``g`` entries count as 0), in ``h``'s dtype and memory
    format; the gradient reaches ``h`` unchanged, never ``g`` or ``scale``."""
    return torch.ops.anl_fused.add_noise(h, g.detach(), scale.detach())
