"""``std(h) -> s``: round 1 forward of an ANL layer, one read of ``h``.

Math. With ``N = numel(h)`` and ``h`` read as its flat storage, split into blocks ``P_k`` of
``BLOCK`` elements (the last one shorter), program ``k`` writes the block's local statistics (two passes over registers, accumulated in float32, float64 for float64
data), of the data shifted by ``K = h[0]`` so that the sums are of the order of the std rather than
of the mean (M2 and the std do not depend on the shift)::

    x_i = h_i - K,   n_k = |P_k|,   mu_k = sum_{i in P_k} x_i / n_k,   M2_k = sum_{i in P_k} (x_i - mu_k)^2

A second, single-program kernel combines them with Chan et al.'s parallel formula (written as two
passes over the partials, so nothing cancels)::

    mu = sum_k n_k mu_k / N,   M2 = sum_k M2_k + sum_k n_k (mu_k - mu)^2,
    s  = sqrt(M2 / (N - 1))    (s = 0 when N <= 1)

which is ``torch.std`` (correction 1) without the loss of precision of a plain sum / sum of
squares when ``|mean| >> std``. ``s`` stays on the device (no host sync) and has no gradient.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from ._layout import acc_dtype, check_float, dense

BLOCK = 4096  # elements per program of the partial pass (a quarter of it for tensors under 1024 blocks)
PART_BLOCK = 1024  # partials per iteration of the combine kernel


def _block(n: int) -> int:
    """Large blocks for large tensors; smaller ones so that small tensors still fill the GPU."""
    return BLOCK if n >= 1024 * BLOCK else max(1, BLOCK // 4)


@triton.jit
def _std_partial_kernel(h_ptr, mean_ptr, m2_ptr, n, BLOCK: tl.constexpr):
    """mean_ptr[k] = mu_k - K, m2_ptr[k] = M2_k (in mean_ptr's dtype), K = h[0]."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(h_ptr + offs, mask=mask, other=0.0)
    acc_ty = mean_ptr.dtype.element_ty
    # shift by K = h[0]: the sums stay of the order of the std, not of the mean
    xa = tl.where(mask, x.to(acc_ty) - tl.load(h_ptr, mask=n > 0, other=0.0).to(acc_ty), 0.0)
    cnt = tl.sum(mask.to(acc_ty), axis=0)
    mean = tl.sum(xa, axis=0) / tl.maximum(cnt, 1.0)
    d = tl.where(mask, xa - mean, 0.0)
    tl.store(mean_ptr + pid, mean)
    tl.store(m2_ptr + pid, tl.sum(d * d, axis=0))


@triton.jit(do_not_specialize=["n", "num_parts"])
def _std_combine_kernel(mean_ptr, m2_ptr, s_ptr, n, num_parts, BLOCK: tl.constexpr, PART_BLOCK: tl.constexpr):
    """s = sqrt((sum_k M2_k + sum_k n_k (mu_k - mu)^2) / (N - 1)), n_k = clamp(N - k*BLOCK, 0, BLOCK)."""
    acc_ty = s_ptr.dtype.element_ty
    n_acc = n.to(acc_ty)
    total = tl.zeros([PART_BLOCK], dtype=acc_ty)
    for start in range(0, num_parts, PART_BLOCK):
        idx = start + tl.arange(0, PART_BLOCK)
        pmask = idx < num_parts
        cnt = tl.minimum(tl.maximum(n - idx.to(tl.int64) * BLOCK, 0), BLOCK).to(acc_ty)
        mu = tl.load(mean_ptr + idx, mask=pmask, other=0.0)
        total += tl.where(pmask, cnt * mu, 0.0)
    mean = tl.sum(total, axis=0) / tl.maximum(n_acc, 1.0)
    m2 = tl.zeros([PART_BLOCK], dtype=acc_ty)
    for start in range(0, num_parts, PART_BLOCK):
        idx = start + tl.arange(0, PART_BLOCK)
        pmask = idx < num_parts
        cnt = tl.minimum(tl.maximum(n - idx.to(tl.int64) * BLOCK, 0), BLOCK).to(acc_ty)
        mu = tl.load(mean_ptr + idx, mask=pmask, other=0.0)
        part = tl.load(m2_ptr + idx, mask=pmask, other=0.0)
        d = mu - mean
        m2 += tl.where(pmask, part + cnt * d * d, 0.0)
    var = tl.sum(m2, axis=0) / tl.maximum(n_acc - 1.0, 1.0)
    tl.store(s_ptr, tl.where(n > 1, tl.sqrt(var), 0.0))


@triton_op("anl_fused::std", mutates_args=())
def std_op(h: Tensor) -> Tensor:
    """The ``anl_fused::std`` operator (see the module docstring)."""
    check_float(h, "h")
    h, _ = dense(h)
    acc = acc_dtype(h.dtype)
    n = h.numel()
    block = _block(n)
    num_parts = max(1, triton.cdiv(n, block))
    means = torch.empty(num_parts, dtype=acc, device=h.device)
    m2s = torch.empty(num_parts, dtype=acc, device=h.device)
    s = torch.empty((), dtype=acc, device=h.device)
    wrap_triton(_std_partial_kernel)[(num_parts,)](h, means, m2s, n, BLOCK=block, num_warps=8 if block >= 4096 else 4)
    wrap_triton(_std_combine_kernel)[(1,)](means, m2s, s, n, num_parts, BLOCK=block, PART_BLOCK=PART_BLOCK, num_warps=4)
    return s


def std(h: Tensor) -> Tensor:
    """``std(h)`` over all elements (correction 1, 0 when ``h`` has at most one element): a 0-d
    float32 tensor (float64 for float64 ``h``) without gradient."""
    return torch.ops.anl_fused.std(h.detach())
