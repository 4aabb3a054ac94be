"""``noise_scale(g, z, s, eps, *, layer_norm=False, stats=None) -> (scale, norm)``: round 1's
per-sample noise scale, in one read of ``g`` and one kernel launch.

Math. ``g`` has ``B`` samples of ``M = numel / B`` elements, sample ``b`` being the storage range
``[b*M, (b+1)*M)`` (batch-outermost layout). Each sample is split into ``C`` chunks of ``T`` tiles of
``BLOCK`` elements (``T > 1`` only when ``B*C`` would exceed ``MAX_PARTS``); program ``(b, c)``
reduces one chunk, keeping an elementwise running max over its tiles::

    part[b, c] = max_{i in chunk c} |g_b,i|     (NaN if any element of the chunk is NaN)

``tl.max`` is not guaranteed to propagate NaN, so NaN is tracked as a separate flag. Every program
stores its partial and takes a ticket from a device-wide counter (``atomic_add``, acquire-release);
the program with the last ticket sees every partial and applies Eq. 2/5 of the paper to all ``B``
samples, in index order (so the result does not depend on which program finished last: bitwise
reproducible)::

    norm_b  = max_c part[b, c]                  (NaN if any partial is NaN; inf if g_b holds inf)
    r_b     = clamp(eps/2 + |eps|/4 * z_b, min(0, eps), max(0, eps))     (r_b = eps when z is None)
    per sample (layer_norm=False):
        scale_b = r_b * s / norm_b              (s = 1 when s is None)
        scale_b = 0  where norm_b == 0 or norm_b is not finite
    per layer (layer_norm=True, Algorithm 1's reading):
        n       = max over b with finite norm_b of norm_b     (0 if there is none)
        scale_b = r_b * s / n, and 0 where norm_b is not finite or n == 0
    scale_b is clamped to +-(largest finite value of the dtype): a subnormal norm then gives a huge
    but finite scale, never inf (inf * 0 would be NaN in round 2)
    stats[0] += #{b : norm_b not finite},   stats[1] += #{b : norm_b == 0}     (when stats is given)

and stores 0 back into the counter for the next launch. Everything is computed in float32 (float64
for float64 ``g``), the division correctly rounded; ``eps`` is passed as a float32 pair
``hi + lo`` so that the float64 path keeps its precision. No gradient (``g`` is detached).

Workspace: the counter is one int32 of the device's persistent workspace (``_layout.counter``): no
memset per call; calls sharing it must not run concurrently (one stream per device at a time).
"""

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from ._layout import (
    FLOAT_DTYPES,
    acc_dtype,
    cdiv,
    check_float,
    dense,
    fresh_counter,
    next_pow2,
    sample_block,
    split_f64,
    workspace,
)
from ._math import div_rn

MAX_BLOCK = 4096  # elements of one sample per tile of the max pass
PART_BLOCK = 1024  # partials per tile of the last program's finalize ([samples, chunks] tiles)
MAX_PARTS = 4096  # programs (partials) at most; larger inputs give each program several tiles
NUM_WARPS = 8
FINAL_SAMPLES = 64  # at most this many samples per finalize tile
COUNTER_SLOT = 1  # this op's int32 slot in the device workspace


def _config(B: int, M: int) -> tuple[int, int, int, int, int]:
    """``(BLOCK, tiles per program, chunks per sample, samples per finalize tile, chunks per
    finalize tile)`` for ``B`` samples of ``M`` elements under the module's constants as they are now
    (tests shrink them)."""
    return _config_for(B, M, MAX_BLOCK, MAX_PARTS, PART_BLOCK)


@functools.lru_cache(maxsize=4096)  # one entry per batch shape seen
def _config_for(B: int, M: int, max_block: int, max_parts: int, part_block: int) -> tuple[int, int, int, int, int]:
    block = sample_block(M, max_block)
    tiles_per_sample = max(1, cdiv(M, block))
    tiles = cdiv(B * tiles_per_sample, max_parts)
    chunks = cdiv(tiles_per_sample, tiles)
    cb = min(next_pow2(chunks), part_block)
    sb = max(1, min(part_block // cb, FINAL_SAMPLES, next_pow2(B)))
    return block, tiles, chunks, sb, cb


@triton.jit
def _sample_norms(part_ptr, rows, rmask, chunks, SB: tl.constexpr, CB: tl.constexpr):
    """norm[rows] = max over the chunks of part[rows, :] (NaN-propagating), a [SB] vector."""
    best = tl.zeros([SB, CB], dtype=part_ptr.dtype.element_ty)
    nan_seen = tl.zeros([SB, CB], dtype=tl.int32)
    base = part_ptr + rows.to(tl.int64)[:, None] * chunks
    for c0 in range(0, chunks, CB):
        cols = c0 + tl.arange(0, CB)
        m = rmask[:, None] & (cols < chunks)[None, :]
        p = tl.load(base + cols[None, :], mask=m, other=0.0, cache_modifier=".cg")
        is_nan = p != p
        nan_seen = tl.maximum(nan_seen, is_nan.to(tl.int32))
        best = tl.maximum(best, tl.where(is_nan, 0.0, p))
    norm = tl.max(best, axis=1)
    return tl.where(tl.max(nan_seen, axis=1) > 0, float("nan"), norm)


@triton.jit
def _r(z_ptr, rows, rmask, eps, HAS_Z: tl.constexpr):
    """r_b = clamp(eps/2 + |eps|/4 z_b, min(0, eps), max(0, eps)), or eps without z."""
    if HAS_Z:
        z = tl.load(z_ptr + rows, mask=rmask, other=0.0).to(eps.dtype)
        r = eps * 0.5 + tl.abs(eps) * 0.25 * z
        return tl.minimum(tl.maximum(r, tl.minimum(eps, 0.0)), tl.maximum(eps, 0.0))
    else:
        return tl.zeros(rows.shape, eps.dtype) + eps


@triton.jit
def _noise_scale_kernel(
    g_ptr,
    z_ptr,
    s_ptr,
    part_ptr,
    scale_ptr,
    norm_ptr,
    stats_ptr,
    count_ptr,
    B,
    M,
    chunks,
    tiles,
    eps_hi,
    eps_lo,
    HAS_Z: tl.constexpr,
    HAS_S: tl.constexpr,
    HAS_STATS: tl.constexpr,
    LAYER_NORM: tl.constexpr,
    MAX_SCALE: tl.constexpr,
    BLOCK: tl.constexpr,
    SB: tl.constexpr,
    CB: tl.constexpr,
):
    """part[b*chunks + c] = max |g_b| over chunk c; the last program to finish computes norm and
    scale of every sample (and the stats), then resets count_ptr[0] to 0."""
    pid = tl.program_id(0)
    acc_ty = norm_ptr.dtype.element_ty
    b = pid // chunks
    c = pid - b * chunks
    col0 = c.to(tl.int64) * tiles * BLOCK
    row = g_ptr + b.to(tl.int64) * M
    best = tl.zeros([BLOCK], dtype=acc_ty)
    nan_seen = tl.zeros([BLOCK], dtype=tl.int32)
    for t in range(0, tiles):
        col = col0 + t * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(row + col, mask=col < M, other=0.0)
        a = tl.abs(x.to(acc_ty))
        is_nan = a != a
        nan_seen = tl.maximum(nan_seen, is_nan.to(tl.int32))
        best = tl.maximum(best, tl.where(is_nan, 0.0, a))
    m = tl.max(best, axis=0)
    tl.store(part_ptr + pid, tl.where(tl.max(nan_seen, axis=0) > 0, float("nan"), m))
    tl.debug_barrier()  # every thread's stores precede the release below
    ticket = tl.atomic_add(count_ptr, 1, sem="acq_rel", scope="gpu")
    if ticket == tl.num_programs(0) - 1:
        # the last program: every partial is visible (acquire); .cg reads them from L2, not L1
        n_bad = tl.zeros([], dtype=tl.int32)
        n_zero = tl.zeros([], dtype=tl.int32)
        layer = tl.zeros([], dtype=acc_ty)
        for b0 in range(0, B, SB):  # pass 1: the norms, the stats, the layer's largest finite norm
            rows = b0 + tl.arange(0, SB)
            rmask = rows < B
            norm = _sample_norms(part_ptr, rows, rmask, chunks, SB, CB)
            tl.store(norm_ptr + rows, norm, mask=rmask)
            finite = norm < float("inf")  # False for NaN (norm >= 0)
            if HAS_STATS:
                bad = (norm != norm) | (norm == float("inf"))  # not finite (norm >= 0)
                n_bad += tl.sum((rmask & bad).to(tl.int32), axis=0)
                n_zero += tl.sum((rmask & (norm == 0.0)).to(tl.int32), axis=0)
            if LAYER_NORM:
                layer = tl.maximum(layer, tl.max(tl.where(rmask & finite, norm, 0.0), axis=0))
        tl.debug_barrier()  # this program's norm stores are visible to all of its threads
        eps = (tl.full([], 0.0, acc_ty) + eps_hi) + eps_lo  # exact: hi and lo are float32 values
        if HAS_S:
            s = tl.load(s_ptr).to(acc_ty)
        else:
            s = tl.full([], 1.0, acc_ty)
        for b0 in range(0, B, SB):  # pass 2: the scales
            rows = b0 + tl.arange(0, SB)
            rmask = rows < B
            norm = tl.load(norm_ptr + rows, mask=rmask, other=0.0)
            finite = norm < float("inf")
            if LAYER_NORM:
                divisor = tl.zeros([SB], acc_ty) + layer
            else:
                divisor = norm
            valid = finite & (divisor > 0.0)
            r = _r(z_ptr, rows, rmask, eps, HAS_Z) * s
            q = div_rn(r, tl.where(valid, divisor, 1.0))
            q = tl.minimum(tl.maximum(q, -MAX_SCALE), MAX_SCALE)
            tl.store(scale_ptr + rows, tl.where(valid, q, 0.0), mask=rmask)
        if HAS_STATS:
            tl.atomic_add(stats_ptr, n_bad.to(tl.int64), sem="relaxed")
            tl.atomic_add(stats_ptr + 1, n_zero.to(tl.int64), sem="relaxed")
        tl.store(count_ptr, 0)  # ready for the next launch (kernel boundaries order it)


_MAX = {torch.float32: torch.finfo(torch.float32).max, torch.float64: torch.finfo(torch.float64).max}


def _checked_small_args(B: int, z: Tensor | None, s: Tensor | None, stats: Tensor | None) -> Tensor | None:
    """Raises ``ValueError`` unless ``z`` has ``B`` values, ``s`` one and ``stats`` is int64 ``[2]``
    (contiguous); returns ``z`` as a contiguous ``[B]`` tensor."""
    if z is not None:
        if z.numel() != B:
            raise ValueError(f"z must hold one value per sample ({B}), got shape {tuple(z.shape)}")
        if z.dim() != 1 or not z.is_contiguous():
            z = z.reshape(B).contiguous()
    if s is not None and s.numel() != 1:
        raise ValueError(f"s must be a single value, got shape {tuple(s.shape)}")
    if stats is not None and (
        stats.dtype is not torch.int64 or stats.dim() != 1 or stats.numel() != 2 or not stats.is_contiguous()
    ):
        raise ValueError(
            f"stats must be a contiguous int64 tensor of shape [2], got {stats.dtype} {tuple(stats.shape)}"
        )
    return z


def _launch(
    g: Tensor, z: Tensor | None, s: Tensor | None, eps: float, layer_norm: bool, stats: Tensor | None, kernel, ws
) -> tuple[Tensor, Tensor]:
    """Check the small arguments, allocate, launch ``kernel`` on dense ``g``: the JITFunction with
    the device's workspace ``ws`` (eager), or its ``wrap_triton`` wrapper with ``ws=None`` (traced:
    fresh partials and a fresh zeroed counter)."""
    if g.dim() < 1:
        raise ValueError("g must have a batch dimension (dim >= 1)")
    B = g.shape[0]
    M = g.numel() // B if B > 0 else 0
    acc = acc_dtype(g.dtype)
    z = _checked_small_args(B, z, s, stats)
    eps_hi, eps_lo = split_f64(eps)
    scale = torch.empty(B, dtype=acc, device=g.device)
    norm = torch.empty(B, dtype=acc, device=g.device)
    if B == 0:
        return scale, norm
    block, tiles, chunks, sb, cb = _config(B, M)
    if ws is None:
        part, count = torch.empty(B * chunks, dtype=acc, device=g.device), fresh_counter(g.device)
    else:
        part, count = ws.partials(acc, B * chunks), ws.counters[COUNTER_SLOT]
    # an absent z / s / stats is never read: the partials stand in for its pointer
    kernel[(B * chunks,)](
        g,
        part if z is None else z,
        part if s is None else s,
        part,
        scale,
        norm,
        part if stats is None else stats,
        count,
        B,
        M,
        chunks,
        tiles,
        eps_hi,
        eps_lo,
        HAS_Z=z is not None,
        HAS_S=s is not None,
        HAS_STATS=stats is not None,
        LAYER_NORM=bool(layer_norm),
        MAX_SCALE=_MAX[acc],
        BLOCK=block,
        SB=sb,
        CB=cb,
        num_warps=NUM_WARPS,
    )
    return scale, norm


@triton_op("anl_fused::noise_scale", mutates_args=("stats",))
def noise_scale_op(
    g: Tensor, z: Tensor | None, s: Tensor | None, eps: float, layer_norm: bool = False, stats: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The ``anl_fused::noise_scale`` operator (see the module docstring); the path ``torch.compile``
    traces. Fresh partials and a fresh zeroed counter (an allocation and a fill in the graph)."""
    check_float(g, "g")
    g, _ = dense(g)
    return _launch(g, z, s, eps, layer_norm, stats, wrap_triton(_noise_scale_kernel), None)


def noise_scale(
    g: Tensor, z: Tensor | None, s: Tensor | None, eps: float, *, layer_norm: bool = False, stats: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``(scale, norm)``, both ``[B]`` float32 (float64 for float64 ``g``), without gradient:
    ``norm_b = max|g_b|`` and ``scale_b = r_b * s / norm_b`` (0 where ``norm_b`` is 0 or not
    finite; with ``layer_norm=True`` the divisor is the largest finite norm of the layer),
    ``r_b = clamp(eps/2 + |eps|/4 z_b, min(0, eps), max(0, eps))`` or ``eps`` when ``z`` is None,
    ``s = 1`` when None. ``stats`` (int64 ``[2]``), when given, is incremented in place by the number
    of samples whose norm is not finite and the number whose norm is 0.

    Eager calls launch the kernel directly (cheap host path, persistent workspace); under
    ``torch.compile`` this is the ``anl_fused::noise_scale`` op."""
    if torch.compiler.is_compiling():
        return torch.ops.anl_fused.noise_scale(
            g.detach(),
            None if z is None else z.detach(),
            None if s is None else s.detach(),
            float(eps),
            bool(layer_norm),
            stats,
        )
    if g.dtype not in FLOAT_DTYPES:
        check_float(g, "g")
    if not g.is_contiguous():
        g, _ = dense(g)
    return _launch(
        g, z, s, eps if type(eps) is float else float(eps), layer_norm, stats, _noise_scale_kernel, workspace(g.device)
    )
