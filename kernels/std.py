"""``std(h) -> s``: round 1 forward of an ANL layer, one read of ``h``, one kernel launch.

Math. With ``N = numel(h)`` and ``h`` read as its flat storage, program ``k`` of ``P`` owns the
chunk ``C_k = [k*T*BLOCK, (k+1)*T*BLOCK)`` (``T`` tiles of ``BLOCK`` elements; ``T > 1`` only for
huge tensors, so that ``P`` stays at most ``MAX_PARTS``). Everything is accumulated in float32
(float64 for float64 data) on the data shifted by ``K = h[0]``, so that the sums are of the order of
the std rather than of the mean (M2 and the std do not depend on the shift)::

    x_i = h_i - K
    tile t:   c_t = |tile|,  mu_t = sum x_i / c_t,  M2_t = sum (x_i - mu_t)^2     (two passes in registers)
    chunk k:  Chan et al.'s merge of its tiles in order, giving (mu_k, M2_k) with n_k = |C_k|

Every program stores its ``(mu_k, M2_k)`` and then takes a ticket from a device-wide counter
(``atomic_add(counter, 1)``, acquire-release, GPU scope). The program that draws ticket ``P - 1`` is
the last one: all partials are visible to it, it combines them in index order (written as two
passes over the partials, so nothing cancels)::

    mu = sum_k n_k mu_k / N,   M2 = sum_k M2_k + sum_k n_k (mu_k - mu)^2,
    s  = sqrt(M2 / (N - 1))    (s = 0 when N <= 1; correctly rounded division and square root)

and resets the counter to 0 for the next launch. That is ``torch.std`` (correction 1) without the
loss of precision of a plain sum / sum of squares when ``|mean| >> std``. The combination order does
not depend on which program finishes last, so ``s`` is bitwise reproducible run to run. ``s`` stays
on the device (no host sync) and has no gradient.

Workspace: the counter is one int32 of the device's persistent workspace (``_layout.counter``),
zeroed once when the device is first used, left at 0 by every launch: no memset per call. Calls
that share it must not run concurrently (one stream per device at a time); see ``_layout``.
"""

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from ._layout import FLOAT_DTYPES, acc_dtype, cdiv, check_float, dense, fresh_counter, workspace
from ._math import div_rn, sqrt_rn

BLOCK = 4096  # elements per tile of the main pass (a quarter of it for tensors under 1024 blocks)
PART_BLOCK = 1024  # partials per iteration of the last program's combine
MAX_PARTS = 2048  # programs (partials) at most; larger tensors give each program several tiles
COUNTER_SLOT = 0  # this op's int32 slot in the device workspace


def _config(n: int) -> tuple[int, int, int, int]:
    """``(BLOCK, tiles per program, programs, num_warps)`` for ``n`` elements under the module's
    constants as they are now (tests shrink them)."""
    return _config_for(n, BLOCK, MAX_PARTS)


@functools.lru_cache(maxsize=4096)  # one entry per tensor size seen
def _config_for(n: int, max_block: int, max_parts: int) -> tuple[int, int, int, int]:
    block = max_block if n >= 1024 * max_block else max(1, max_block // 4)
    tiles_total = max(1, cdiv(n, block))
    tiles = cdiv(tiles_total, max_parts)
    parts = cdiv(tiles_total, tiles)
    return block, tiles, parts, (8 if block >= 4096 else 4)


@triton.jit(do_not_specialize=["tiles"])
def _std_kernel(h_ptr, part_ptr, s_ptr, count_ptr, n, tiles, BLOCK: tl.constexpr, PART_BLOCK: tl.constexpr):
    """Partial (mu_k, M2_k) of chunk k into part_ptr[k], part_ptr[P + k]; the last program to
    finish combines the P partials into s_ptr[0] and resets count_ptr[0] to 0."""
    pid = tl.program_id(0)
    num_parts = tl.num_programs(0)
    acc_ty = s_ptr.dtype.element_ty
    # shift by K = h[0]: the sums stay of the order of the std, not of the mean
    shift = tl.load(h_ptr, mask=n > 0, other=0.0).to(acc_ty)
    chunk = tiles.to(tl.int64) * BLOCK
    start = pid.to(tl.int64) * chunk
    cnt = tl.zeros([], dtype=acc_ty)
    mean = tl.zeros([], dtype=acc_ty)
    m2 = tl.zeros([], dtype=acc_ty)
    for t in range(0, tiles):
        offs = start + t * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(h_ptr + offs, mask=mask, other=0.0)
        xa = tl.where(mask, x.to(acc_ty) - shift, 0.0)
        c_t = tl.sum(mask.to(acc_ty), axis=0)
        mean_t = tl.sum(xa, axis=0) / tl.maximum(c_t, 1.0)
        d = tl.where(mask, xa - mean_t, 0.0)
        m2_t = tl.sum(d * d, axis=0)
        # Chan et al.: merge (cnt, mean, m2) with the tile's (c_t, mean_t, m2_t); exact for t == 0
        tot = cnt + c_t
        w = c_t / tl.maximum(tot, 1.0)
        delta = mean_t - mean
        mean = mean + delta * w
        m2 = m2 + m2_t + delta * delta * cnt * w
        cnt = tot
    tl.store(part_ptr + pid, mean)
    tl.store(part_ptr + num_parts + pid, m2)
    tl.debug_barrier()  # every thread's stores precede the release below
    ticket = tl.atomic_add(count_ptr, 1, sem="acq_rel", scope="gpu")
    if ticket == num_parts - 1:
        # the last program: every partial is visible (acquire); .cg reads them from L2, not L1
        n_acc = n.to(acc_ty)
        total = tl.zeros([PART_BLOCK], dtype=acc_ty)
        for p0 in range(0, num_parts, PART_BLOCK):
            idx = p0 + tl.arange(0, PART_BLOCK)
            pmask = idx < num_parts
            c_k = tl.minimum(tl.maximum(n - idx.to(tl.int64) * chunk, 0), chunk).to(acc_ty)
            mu = tl.load(part_ptr + idx, mask=pmask, other=0.0, cache_modifier=".cg")
            total += tl.where(pmask, c_k * mu, 0.0)
        mu_all = tl.sum(total, axis=0) / tl.maximum(n_acc, 1.0)
        acc_m2 = tl.zeros([PART_BLOCK], dtype=acc_ty)
        for p0 in range(0, num_parts, PART_BLOCK):
            idx = p0 + tl.arange(0, PART_BLOCK)
            pmask = idx < num_parts
            c_k = tl.minimum(tl.maximum(n - idx.to(tl.int64) * chunk, 0), chunk).to(acc_ty)
            mu = tl.load(part_ptr + idx, mask=pmask, other=0.0, cache_modifier=".cg")
            part = tl.load(part_ptr + num_parts + idx, mask=pmask, other=0.0, cache_modifier=".cg")
            d = mu - mu_all
            acc_m2 += tl.where(pmask, part + c_k * d * d, 0.0)
        var = div_rn(tl.sum(acc_m2, axis=0), tl.maximum(n_acc - 1.0, 1.0))
        tl.store(s_ptr, tl.where(n > 1, sqrt_rn(var), 0.0))
        tl.store(count_ptr, 0)  # ready for the next launch (kernel boundaries order it)


def _launch(h: Tensor, kernel, ws) -> Tensor:
    """Allocate the result, launch ``kernel`` on dense ``h``: the JITFunction with the device's
    workspace ``ws`` (eager), or its ``wrap_triton`` wrapper with ``ws=None`` (traced: fresh
    partials and a fresh zeroed counter)."""
    n = h.numel()
    block, tiles, parts, warps = _config(n)
    acc = acc_dtype(h.dtype)
    s = torch.empty((), dtype=acc, device=h.device)
    if ws is None:
        part, count = torch.empty(2 * parts, dtype=acc, device=h.device), fresh_counter(h.device)
    else:
        part, count = ws.partials(acc, 2 * parts), ws.counters[COUNTER_SLOT]
    kernel[(parts,)](h, part, s, count, n, tiles, BLOCK=block, PART_BLOCK=PART_BLOCK, num_warps=warps)
    return s


@triton_op("anl_fused::std", mutates_args=())
def std_op(h: Tensor) -> Tensor:
    """The ``anl_fused::std`` operator (see the module docstring); the path ``torch.compile``
    traces. Functional: fresh partials and a fresh zeroed counter (an allocation and a fill in the
    graph)."""
    check_float(h, "h")
    h, _ = dense(h)
    return _launch(h, wrap_triton(_std_kernel), None)


def std(h: Tensor) -> Tensor:
    """``std(h)`` over all elements (correction 1, 0 when ``h`` has at most one element): a 0-d
    float32 tensor (float64 for float64 ``h``) without gradient.

    Eager calls launch the kernel directly (cheap host path, persistent workspace); under
    ``torch.compile`` this is the ``anl_fused::std`` op."""
    if torch.compiler.is_compiling():
        return torch.ops.anl_fused.std(h.detach())
    if h.dtype not in FLOAT_DTYPES:
        check_float(h, "h")
    if not h.is_contiguous():
        h, _ = dense(h)
    return _launch(h, _std_kernel, workspace(h.device))
