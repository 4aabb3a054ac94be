"""The three per-layer operations of a two-round step, and the choice of backend.

Every fast path of the engine is built from these three functions; ``anl_fused.reference`` does not
use them (it is the independent oracle).

``std(h) -> s``
    Round 1, forward. ``s = std(h)`` over all elements with correction 1 (0 when ``h`` has at most
    one element), accumulated in float32 (float64 for float64 input), a 0-d tensor without gradient.

``noise_scale(g, z, s, eps, *, layer_norm=False, stats=None) -> (scale, norm)``
    Round 1, after the backward. ``norm_b = max_i |g_b,i|`` and
    ``scale_b = r_b * s / norm_b`` with ``r_b = clamp(eps/2 + |eps|/4 * z_b, min(0, eps), max(0, eps))``;
    ``z=None`` means ``r_b = eps`` (the sign form, Eq. 8), ``s=None`` means ``s = 1`` (Eq. 4).
    ``scale_b = 0`` where ``norm_b`` is 0 or not finite. ``layer_norm=True`` divides by one norm for
    the whole layer instead, ``n = max_b norm_b`` over the samples with a finite norm (Algorithm 1's
    reading): ``scale_b = r_b * s / n``, 0 where ``norm_b`` is not finite or ``n == 0``. Both results are
    float32 (float64 for float64 ``g``), shape ``[B]``. ``stats`` (int64 ``[2]``), when given, is
    incremented in place by the number of samples whose norm is not finite and whose norm is 0.

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


def noise_scale(g: Tensor, z: Tensor | None, s: Tensor | None, eps: float, *, layer_norm: bool = False,
                stats: Tensor | None = None) -> tuple[Tensor, Tensor]:
    if backend_for(g) == "triton":
        scale, norm = _triton().noise_scale(g, z, s, eps)
        if layer_norm:  # TODO(kernels): in the kernel; here from the per-sample scale (r_b s = scale_b norm_b)
            scale = _per_layer(scale * norm, norm)
        if stats is not None:
            _count(norm, stats)
        return scale, norm
    acc = acc_dtype(g.dtype)
    g = g.detach()
    dims = tuple(range(1, g.dim()))  # max|g| as max(max g, -min g): two fast reductions (NaN propagates);
    norm = (torch.maximum(g.amax(dims), g.amin(dims).neg()) if dims else g.abs()).to(acc)  # vector_norm(inf) is ~10x slower on CPU
    if z is None:
        r = torch.full_like(norm, eps)
    else:
        r = (eps / 2 + abs(eps) / 4 * z.to(acc)).clamp(min(0.0, eps), max(0.0, eps))
    if s is not None:
        r = r * s.to(acc)
    if stats is not None:
        _count(norm, stats)
    if layer_norm:
        return _per_layer(r, norm), norm
    valid = torch.isfinite(norm) & (norm > 0)
    return torch.where(valid, r / norm, torch.zeros_like(r)), norm


def _per_layer(rs: Tensor, norm: Tensor) -> Tensor:
    """``rs_b / n`` with ``n`` the largest finite ``norm_b``; 0 for samples whose norm is not finite
    (and for all when ``n`` is 0)."""
    finite = torch.isfinite(norm)
    n = torch.where(finite, norm, torch.zeros_like(norm)).amax() if norm.numel() else norm.new_zeros(())
    valid = finite & (n > 0)
    return torch.where(valid, rs / torch.where(n > 0, n, torch.ones_like(n)), torch.zeros_like(rs))


def _count(norm: Tensor, stats: Tensor) -> None:
    """``stats += [samples with a non-finite norm, samples with a zero norm]`` (in place, on the device)."""
    stats += torch.stack([(~torch.isfinite(norm)).sum(), (norm == 0).sum()]).to(stats.dtype)


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
