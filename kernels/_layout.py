"""Shared checks for the Triton ops: supported dtypes, accumulation dtype, memory layouts.

The kernels see a tensor as its flat storage. That is exact for any dense layout when the op is
elementwise or a full reduction (``std``). For per-sample work (``noise_scale``,
``add_noise``) sample ``b`` must also be the contiguous storage range ``[b*M, (b+1)*M)`` with
``M = numel / B``: the batch dimension must be the outermost one in memory. ``torch.contiguous_format``,
``torch.channels_last`` (4-d) and ``torch.channels_last_3d`` (5-d) all qualify; any other strides are
made contiguous. Everything here looks at metadata only (no host sync).
"""

import struct

import torch
from torch import Tensor

from anl_fused._dtypes import FLOAT_DTYPES, acc_dtype  # noqa: F401  (one rule, shared with the torch backend)


def check_float(t: Tensor, name: str) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16, bfloat16 or float64, got {t.dtype}")


def memory_format_of(t: Tensor):
    """The batch-outermost dense memory format ``t`` is in, or ``None`` if it is in none."""
    if t.is_contiguous():
        return torch.contiguous_format
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return None


def dense(t: Tensor) -> tuple[Tensor, torch.memory_format]:
    """``t`` itself if its layout is contiguous / channels_last(_3d), else a contiguous copy."""
    fmt = memory_format_of(t)
    if fmt is None:
        return t.contiguous(), torch.contiguous_format
    return t, fmt


def like_layout(t: Tensor, fmt: torch.memory_format) -> Tensor:
    """``t`` with the element order of memory format ``fmt`` (a no-op when it already has it)."""
    return t if t.is_contiguous(memory_format=fmt) else t.contiguous(memory_format=fmt)


def split_f64(x, name: str = "eps") -> tuple[float, float]:
    """Split a Python float into ``hi + lo`` with both exactly representable in float32.

    Triton passes Python floats to kernels as float32; the kernel rebuilds ``hi + lo`` in float64
    (about 48 significant bits) when it works in float64. Non-float scalars (symbolic floats under
    ``torch.compile``) are passed unsplit.
    """
    if not isinstance(x, float):
        return x, 0.0
    if not abs(x) < 3.0e38:
        raise ValueError(f"{name} must be finite and representable in float32, got {x!r}")
    hi = struct.unpack("f", struct.pack("f", x))[0]
    return hi, float(x - hi)


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def sample_block(m: int, max_block: int, min_block: int = 128) -> int:
    """Block size for per-sample kernels: a power of two, at least ``min_block``, covering small
    samples in one block and splitting larger ones into ``max_block`` pieces."""
    return max(min(min_block, max_block), min(max_block, next_pow2(m)))


# --- the persistent workspace of the single-launch reductions -------------------------------------
#
# ``std`` and ``noise_scale`` end with a "last program finishes" step: every program stores its
# partial result, then takes a ticket from an int32 counter (atomic add, acquire-release); the
# program that draws the last ticket combines the partials and stores 0 back into the counter. So a
# counter is 0 before and after every launch and needs no memset per call. Each device has one small
# int32 tensor of such counters, zeroed once on first use (warm up before CUDA-graph capture, as
# Triton's compilation requires anyway; a counter created during capture also works: its zero fill
# becomes part of the graph). Assumption: launches that share a device's counters do not run
# concurrently, i.e. these ops run on one stream per device at a time (as a training step does).
# ``torch.compile`` traces the functional ``triton_op`` instead, which takes a fresh zeroed counter.

WORKSPACE_SLOTS = 8
_WORKSPACE: dict = {}


def counter(device: torch.device, slot: int) -> Tensor:
    """Slot ``slot`` (a 1-element int32 view) of ``device``'s persistent counters."""
    ws = _WORKSPACE.get(device)
    if ws is None:
        ws = _WORKSPACE[device] = torch.zeros(WORKSPACE_SLOTS, dtype=torch.int32, device=device)
        ws._anl_slots = [ws[i:i + 1] for i in range(WORKSPACE_SLOTS)]
    return ws._anl_slots[slot]


def fresh_counter(device: torch.device) -> Tensor:
    """A new zeroed counter (the functional path traced by ``torch.compile``)."""
    return torch.zeros(1, dtype=torch.int32, device=device)


def reset_workspace() -> None:
    """Forget every device's counters (they are recreated, zeroed, on next use): for tests and for
    recovery after a launch that was aborted midway."""
    _WORKSPACE.clear()
