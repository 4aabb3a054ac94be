"""``add_noise(h, g, scale, *, alpha=1.0) -> out``: round 2 forward of an ANL layer in one pass.

Math. ``h`` and ``g`` have ``B`` samples of ``M = numel / B`` elements; sample ``b`` is the storage
range ``[b*M, (b+1)*M)`` of both (same batch-outermost layout: contiguous or channels_last). Program
``(b, c)`` handles chunk ``c`` of sample ``b``, so the sample's factor is one scalar load per program::

    out_b,i = h_b,i + (alpha * scale_b) * g'_b,i,     g'_b,i = g_b,i if g_b,i is finite else 0

computed in float32 (float64 for float64 ``h``) and rounded once to ``h``'s dtype. ``scale`` holds
one value per sample (``[B]``, any shape with ``B`` elements) or a single value for every sample
(``numel == 1``), or is ``None`` (1); ``alpha`` is a Python float (``eps`` style: passed as a float32
pair ``hi + lo``). Gaussian noise is ``add_noise(h, z, s, alpha=|eps|/4)``: no launch besides this
one. Zeroing the non-finite entries of ``g`` (as ``torch.nan_to_num`` does in the torch backend)
makes ``eta_b = 0`` wherever ``scale_b == 0`` even if ``g_b`` holds inf/NaN. ``g`` may be stored in
another float dtype than ``h`` (e.g. bfloat16 to halve its memory).

Autograd: ``d out / d h = I`` (grad_out passes through unchanged); ``g`` and ``scale`` are
constants (no gradient).
"""

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from ._layout import FLOAT_DTYPES, cdiv, check_float, like_layout, memory_format_of, sample_block, split_f64
from ._math import to_acc

MAX_BLOCK = 2048  # elements of one sample per program
NUM_WARPS = 4


@triton.jit
def _add_noise_kernel(
    h_ptr,
    g_ptr,
    scale_ptr,
    out_ptr,
    M,
    chunks,
    alpha_hi,
    alpha_lo,
    HAS_SCALE: tl.constexpr,
    PER_SAMPLE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """out[b*M + j] = h[b*M + j] + alpha * scale[b] * finite_or_zero(g[b*M + j]) for j in chunk c."""
    pid = tl.program_id(0)
    b = pid // chunks
    c = pid - b * chunks
    col = c.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = col < M
    offs = b.to(tl.int64) * M + col
    x = to_acc(tl.load(h_ptr + offs, mask=mask, other=0.0))
    acc_ty = x.dtype
    sc = (tl.full([], 0.0, acc_ty) + alpha_hi) + alpha_lo  # exact: hi and lo are float32 values
    if HAS_SCALE:
        if PER_SAMPLE:
            sc = tl.load(scale_ptr + b).to(acc_ty) * sc
        else:
            sc = tl.load(scale_ptr).to(acc_ty) * sc
    gv = tl.load(g_ptr + offs, mask=mask, other=0.0).to(acc_ty)
    gv = tl.where(tl.abs(gv) < float("inf"), gv, 0.0)  # NaN and +-inf -> 0
    tl.store(out_ptr + offs, (x + sc * gv).to(out_ptr.dtype.element_ty), mask=mask)


@functools.lru_cache(maxsize=4096)  # one entry per sample size seen
def _blocks(M: int, max_block: int) -> tuple[int, int]:
    """``(BLOCK, chunks per sample)`` for samples of ``M`` elements."""
    block = sample_block(M, max_block)
    return block, cdiv(M, block)


def _launch(h: Tensor, g: Tensor, scale: Tensor | None, alpha: float, kernel) -> Tensor:
    """Check, allocate and launch ``kernel`` (the JITFunction, or its ``wrap_triton`` wrapper when
    traced). ``h`` and ``g`` are float tensors."""
    if h.dim() < 1:
        raise ValueError("h must have a batch dimension (dim >= 1)")
    if g.shape != h.shape:
        raise ValueError(f"g must have h's shape {tuple(h.shape)}, got {tuple(g.shape)}")
    B = h.shape[0]
    per_sample = False
    if scale is not None:
        if scale.dtype not in FLOAT_DTYPES:
            check_float(scale, "scale")
        k = scale.numel()
        if k != B and k != 1:
            raise ValueError(
                f"scale must hold one value per sample ({B}) or a single value, got shape {tuple(scale.shape)}"
            )
        per_sample = k != 1
        if per_sample and not scale.is_contiguous():
            scale = scale.reshape(B).contiguous()
    if h.is_contiguous():
        fmt = torch.contiguous_format
    else:
        fmt = memory_format_of(h)
        if fmt is None:
            h, fmt = h.contiguous(), torch.contiguous_format
    if not g.is_contiguous(memory_format=fmt):
        g = like_layout(g, fmt)
    out = torch.empty_like(h, memory_format=fmt)
    M = h.numel() // B if B > 0 else 0
    if M == 0:
        return out
    block, chunks = _blocks(M, MAX_BLOCK)  # the module constant as it is now (tests shrink it)
    a_hi, a_lo = split_f64(alpha, "alpha")
    kernel[(B * chunks,)](
        h,
        g,
        out if scale is None else scale,
        out,
        M,
        chunks,
        a_hi,
        a_lo,
        HAS_SCALE=scale is not None,
        PER_SAMPLE=per_sample,
        BLOCK=block,
        num_warps=NUM_WARPS,
    )
    return out


@triton_op("anl_fused::add_noise", mutates_args=())
def add_noise_op(h: Tensor, g: Tensor, scale: Tensor | None, alpha: float = 1.0) -> Tensor:
    """The ``anl_fused::add_noise`` operator (see the module docstring); the path ``torch.compile``
    traces."""
    check_float(h, "h")
    check_float(g, "g")
    return _launch(h, g, scale, alpha, wrap_triton(_add_noise_kernel))


def _setup_context(ctx, inputs, output):
    pass


def _backward(ctx, grad_out):
    return grad_out, None, None, None


add_noise_op.register_autograd(_backward, setup_context=_setup_context)


class _AddNoise(torch.autograd.Function):
    """Eager autograd of the direct launch: identity to ``h``, nothing to ``g`` or ``scale``."""

    @staticmethod
    def forward(ctx, h, g, scale, alpha):
        return _launch(h, g, scale, alpha, _add_noise_kernel)

    @staticmethod
    def backward(ctx, grad_out):
        return grad_out, None, None, None


def add_noise(h: Tensor, g: Tensor, scale: Tensor | None, *, alpha: float = 1.0) -> Tensor:
    """``out = h + alpha * scale[b] * g`` (non-finite ``g`` entries count as 0; ``scale`` of ``B``
    values, or one value for all samples, or None for 1), in ``h``'s dtype and memory format; the
    gradient reaches ``h`` unchanged, never ``g`` or ``scale``.

    Eager calls launch the kernel directly (cheap host path); under ``torch.compile`` this is the
    ``anl_fused::add_noise`` op."""
    if torch.compiler.is_compiling():
        return torch.ops.anl_fused.add_noise(h, g.detach(), None if scale is None else scale.detach(), float(alpha))
    if h.dtype not in FLOAT_DTYPES:
        check_float(h, "h")
    if g.dtype not in FLOAT_DTYPES:
        check_float(g, "g")
    if h.requires_grad and torch.is_grad_enabled():
        return _AddNoise.apply(h, g, scale, float(alpha))
    return _launch(h, g, scale, float(alpha), _add_noise_kernel)
