"""The three per-layer operations of a two-round step, and the choice of backend.

Every fast path of the engine is built from these three functions; ``anl_fused.reference`` does not
use them (it is the independent oracle).

``std(h) -> s``
    Round 1, forward. ``s = std(h)`` over all elements with correction 1 (0 when ``h`` has at most
    one element), accumulated in float32 (float64 for float64 input), a 0-d tensor without gradient.

``noise_scale(g, z, s, eps) -> (scale, norm)``
    Round 1, after the backward. ``norm_b = max_i |g_b,i|`` and
    ``scale_b = r_b * s / norm_b`` with ``r_b = clamp(eps/2 + |eps|/4 * z_b, min(0, eps), max(0, eps))``;
    ``z=None`` means ``r_b = eps`` (the sign form, Eq. 8), ``s=None`` means ``s = 1`` (Eq. 4).
    ``scale_b = 0`` where ``norm_b`` is 0 or not finite. Both results are float32 (float64 for float64
    ``g``), shape ``[B]``.

``add_noise(h, g, scale) -> out``
    Round 2, forward. ``out = h + scale[b] * g'`` where ``g'`` is ``g`` with its non-finite entries
    set to 0, so ``eta_b = 0`` wherever ``scale_b == 0`` even if ``g_b`` holds inf/NaN. Math in
    float32 (float64 for float64 ``h``) on the Triton backend; ``g`` may have another float dtype than
    ``h`` (``noise_dtype``). ``d out / d h = I``; no gradient reaches ``g`` or ``scale``.

Backends: CUDA tensors use the Triton kernels of ``anl_fused.kernels``; other tensors use torch
ops. ``ANL_FUSED_BACKEND=triton|torch`` forces one (``triton`` on CPU tensors needs
``TRITON_INTERPRET=1`` set before ``triton`` is imported).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from ._dtypes import acc_dtype

__all__ = ["acc_dtype", "add_noise", "backend_for", "noise_scale", "std"]

_BACKENDS = ("torch", "triton")


def backend_for(t: Tensor) -> str:
    """``"triton"`` for CUDA tensors, ``"torch"`` otherwise, unless ``ANL_FUSED_BACKEND`` says."""
    forced = os.environ.get("ANL_FUSED_BACKEND", "").strip().lower()
    if forced:
        if forced not in _BACKENDS:
            raise ValueError(f"ANL_FUSED_BACKEND must be one of {_BACKENDS}, got {forced!r}")
        return forced
    return "triton" if t.is_cuda else "torch"


def _triton():
    from anl_fused import kernels  # imported lazily: triton is optional off Linux

    return kernels


def std(h: Tensor) -> Tensor:
    if backend_for(h) == "triton":
        return _triton().std(h)
    return _torch_std(h)


def noise_scale(g: Tensor, z: Tensor | None, s: Tensor | None, eps: float) -> tuple[Tensor, Tensor]:
    if backend_for(g) == "triton":
        return _triton().noise_scale(g, z, s, eps)
    acc = acc_dtype(g.dtype)
    g = g.detach()
    dims = tuple(range(1, g.dim()))  # max|g| as max(max g, -min g): two fast reductions (NaN propagates);
    norm = (torch.maximum(g.amax(dims), g.amin(dims).neg()) if dims else g.abs()).to(acc)  # vector_norm(inf) is ~10x slower on CPU
    if z is None:
        r = torch.full_like(norm, eps)
    else:
        r = (eps / 2 + abs(eps) / 4 * z.to(acc)).clamp(min(0.0, eps), max(0.0, eps))
    scale = r / norm if s is None else r * s.to(acc) / norm
    valid = torch.isfinite(norm) & (norm > 0)
    return torch.where(valid, scale, torch.zeros_like(scale)), norm


def add_noise(h: Tensor, g: Tensor, scale: Tensor) -> Tensor:
    if backend_for(h) == "triton":
        return _triton().add_noise(h, g, scale)
    shape = (-1,) + (1,) * (h.dim() - 1)
    g = torch.nan_to_num(g.detach(), nan=0.0, posinf=0.0, neginf=0.0)
    return torch.addcmul(h, scale.detach().view(shape).to(h.dtype), g.to(h.dtype))


def _torch_std(h: Tensor) -> Tensor:
    acc = acc_dtype(h.dtype)
    h = h.detach()
    if h.numel() <= 1:
        return torch.zeros((), dtype=acc, device=h.device)
    return h.to(acc).std()
