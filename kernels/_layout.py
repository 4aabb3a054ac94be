"""Shared checks for the Triton ops: supported dtypes, accumulation dtype, memory layouts.

The kernels see a tensor as its flat storage. That is exact for any dense layout when the op is
elementwise or a full reduction (``std``). For per-sample work (``noise_scale``,
``add_noise``) sample ``b`` must also be the contiguous storage range ``[b*M, (b+1)*M)`` with
``M = numel / B``: the batch dimension must be the outermost one in memory. ``torch.contiguous_format``,
``torch.channels_last`` (4-d) and ``torch.channels_last_3d`` (5-d) all qualify; any other strides are
made contiguous. Everything here looks at metadata only (no host sync).
"""

import functools
import struct

import torch
from torch import Tensor

from anl_fused._dtypes import FLOAT_DTYPES, acc_dtype  # noqa: F401  (the rules of every backend; acc_dtype for the ops)


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
    return _split(x, name) if isinstance(x, float) else (x, 0.0)


@functools.lru_cache(maxsize=1024)  # a handful of eps values per run
def _split(x: float, name: str) -> tuple[float, float]:
    if not abs(x) < 3.0e38:
        raise ValueError(f"{name} must be finite and representable in float32, got {x!r}")
    hi = struct.unpack("f", struct.pack("f", x))[0]
    return hi, float(x - hi)


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for ints (``triton.cdiv`` costs microseconds per call on the host)."""
    return -(-a // b)


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
# counter is 0 before and after every launch and needs no memset per call. Each device has one
# ``Workspace``: a small int32 tensor of such counters, zeroed once when it is created, and one
# buffer per accumulation dtype for the partials (read back by the same launch, so it can be reused
# by the next one: no allocation per call). Nothing in it is ever freed or replaced, so a CUDA graph
# that captured these ops stays valid; create it before capture (the warm-up call Triton's
# compilation needs anyway does; one created during capture also works, its zero fill becomes part
# of the graph). Assumption: launches that share a device's workspace do not run concurrently,
# i.e. these ops run on one stream per device at a time (as a training step does).
# ``torch.compile`` traces the functional ``triton_op`` instead: a fresh zeroed counter and fresh
# partials per call.

WORKSPACE_SLOTS = 8
_SLOT_STRIDE = 4  # int32s between slots: every counter 16-byte aligned, in its own 16 bytes
PARTIALS_CAPACITY = 16384  # elements of the reusable partials buffer (larger needs: allocated per call)


class Workspace:
    """The persistent per-device state of the single-launch reductions (see above)."""

    __slots__ = ("counters", "device", "partials_by_dtype")

    def __init__(self, device: torch.device):
        self.device = device
        ws = torch.zeros(WORKSPACE_SLOTS * _SLOT_STRIDE, dtype=torch.int32, device=device)
        self.counters = [ws[i * _SLOT_STRIDE : i * _SLOT_STRIDE + 1] for i in range(WORKSPACE_SLOTS)]
        self.partials_by_dtype: dict = {}

    def partials(self, dtype: torch.dtype, n: int) -> Tensor:
        """A buffer of at least ``n`` elements of ``dtype`` whose contents the caller's launch
        overwrites before it reads them."""
        if n > PARTIALS_CAPACITY:
            return torch.empty(n, dtype=dtype, device=self.device)
        buf = self.partials_by_dtype.get(dtype)
        if buf is None:
            buf = self.partials_by_dtype[dtype] = torch.empty(PARTIALS_CAPACITY, dtype=dtype, device=self.device)
        return buf


_WORKSPACE: dict = {}


def workspace(device: torch.device) -> Workspace:
    """``device``'s workspace, created on first use."""
    ws = _WORKSPACE.get(device)
    if ws is None:
        ws = _WORKSPACE[device] = Workspace(device)
    return ws


def counter(device: torch.device, slot: int) -> Tensor:
    """Slot ``slot`` (a 1-element int32 view) of ``device``'s persistent counters."""
    return workspace(device).counters[slot]


def fresh_counter(device: torch.device) -> Tensor:
    """A new zeroed counter (the functional path traced by ``torch.compile``)."""
    return torch.zeros(1, dtype=torch.int32, device=device)


def reset_workspace() -> None:
    """Forget every device's workspace (recreated, zeroed, on next use): for tests, and for recovery
    after a launch that was aborted midway. Not while a CUDA graph that used it can still replay."""
    _WORKSPACE.clear()
