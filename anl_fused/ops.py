"""The three per-layer operations of a two-round step, and the choice of backend.

Every fast path of the engine is built from :func:`std` (round 1, forward), :func:`noise_scale`
(round 1, after the backward) and :func:`add_noise` (round 2, forward); each function's docstring
gives its shapes, dtypes and math. ``anl_fused.reference`` does not use them (it is the independent
oracle).

Backends (:func:`backend_for`, :func:`backend`): CUDA tensors use the Triton kernels of
``anl_fused.kernels``; CPU tensors use the C++ kernels of ``anl_fused.kernels.cpu`` (built with ninja on
first use and cached; where they cannot be built, one warning and the torch ops); under
``torch.compile`` CPU tensors use the torch ops (Inductor fuses them). ``ANL_FUSED_BACKEND=
triton|cpp|torch`` forces one (``triton`` on CPU tensors needs ``TRITON_INTERPRET=1`` set before
``triton`` is imported; ``cpp`` raises if the C++ kernels cannot be built). Every backend computes the
same math.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from ._dtypes import acc_dtype

__all__ = ["acc_dtype", "add_noise", "backend", "backend_for", "cpp_status", "noise_scale", "std"]

_BACKENDS = ("torch", "triton", "cpp")


def backend_for(t: Tensor) -> str:
    """The backend that runs an op on ``t``: ``"triton"`` for CUDA tensors; for CPU tensors ``"cpp"``
    (the C++ kernels, built on first use) where they could be built, else ``"torch"``, and ``"torch"``
    under ``torch.compile``. ``ANL_FUSED_BACKEND=triton|cpp|torch`` forces one (``cpp`` raises if the
    C++ kernels cannot be built; under ``torch.compile`` it gives the torch ops)."""
    forced = os.environ.get("ANL_FUSED_BACKEND", "").strip().lower()
    if forced:
        if forced not in _BACKENDS:
            raise ValueError(f"ANL_FUSED_BACKEND must be one of {_BACKENDS}, got {forced!r}")
        if forced != "cpp":
            return forced
    elif t.is_cuda:
        return "triton"
    elif t.device.type != "cpu":
        return "torch"
    if torch.compiler.is_compiling():
        return "torch"
    if _cpp() is None:
        if forced:
            raise RuntimeError(f"ANL_FUSED_BACKEND=cpp, but {_CPP[1]}; unset it for the torch ops")
        return "torch"
    return "cpp"


def backend(device: str | torch.device = "cpu") -> str:
    """The backend the eager ops run on ``device``: ``"triton"``, ``"cpp"`` or ``"torch"`` (building the
    C++ kernels first if needed). :func:`cpp_status` says why a CPU runs ``"torch"``."""
    return backend_for(torch.empty(0, device=device))


def cpp_status() -> str:
    """Whether the C++ CPU kernels run, and why not: ``"C++ CPU kernels (AVX2)"`` or
    ``"torch ops (the C++ CPU kernels could not be built: <reason>)"`` (loading them if needed)."""
    _cpp()
    return _CPP[1]


_KERNELS = None
_CPP: list = []  # [module or None, status] once the C++ kernels were loaded (or failed to)


def _cpp():
    """The C++ extension module, or None where it cannot be built (loaded once per process)."""
    if not _CPP:
        try:
            from anl_fused.kernels import cpu  # imported lazily: it imports triton for the op schemas
        except ImportError as exc:
            why = "need triton for the op schemas" if (exc.name or "").startswith("triton") else "cannot be imported"
            _CPP.extend([None, f"torch ops (the C++ CPU kernels {why}: {exc})"])
        else:
            _CPP.extend([cpu.load(), cpu.status()])
    return _CPP[0]


def _triton():
    global _KERNELS
    if _KERNELS is None:
        from anl_fused import kernels  # imported lazily: triton is optional off Linux

        _KERNELS = kernels
    return _KERNELS


def std(h: Tensor) -> Tensor:
    """Round 1, forward: ``s = std(h)``, the standard deviation over all elements of ``h``.

    Args:
        h: an activation of any shape (``[B, C, H, W]`` in a CNN) and float dtype; not differentiated.

    Returns a 0-d tensor without gradient: ``s = sqrt(sum_i (h_i - mean(h))^2 / (n - 1))`` with
    correction 1 over all ``n`` elements (0 when ``h`` has at most one element), accumulated in
    float32 (float64 for float64 ``h``) and returned in that dtype.

    Backend: the Triton kernel ``anl_fused.kernels.std`` for a CUDA tensor, the C++ kernel (or torch
    ops) for a CPU tensor (:func:`backend_for`; ``ANL_FUSED_BACKEND`` forces one).
    """
    backend = backend_for(h)
    if backend == "cpp":
        return _CPP[0].std(h.detach())
    if backend == "triton":
        return _triton().std(h)
    return _torch_std(h)


def noise_scale(
    g: Tensor, z: Tensor | None, s: Tensor | None, eps: float, *, layer_norm: bool = False, stats: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Round 1, after the backward: the per-sample factor of the noise, ``(scale, norm)``.

    Args:
        g: round 1's gradient at the layer, shape ``[B, ...]`` (batch first), any float dtype.
        z: ``[B]`` standard normal draws, or None for ``r_b = eps`` (the sign form, Eq. 8).
        s: the 0-d :func:`std` of the layer's input, or None for ``s = 1`` (Eq. 4).
        eps: the layer's eps (negative: opposite noise).
        layer_norm: one norm per layer (Algorithm 1's reading) instead of one per sample.
        stats: None, or an int64 tensor of shape ``[2]`` incremented in place: ``stats[0] +=`` the
            number of samples whose ``norm_b`` is not finite, ``stats[1] +=`` the number whose
            ``norm_b == 0`` (no extra launch on the Triton backend).

    Math: ``norm_b = max_i |g_b,i|`` (NaN if ``g_b`` holds a NaN) and
    ``r_b = clamp(eps/2 + |eps|/4 * z_b, min(0, eps), max(0, eps))``.

    - ``layer_norm=False`` (per sample, the authors' code): ``scale_b = r_b * s / norm_b``, and
      ``scale_b = 0`` where ``norm_b`` is 0 or not finite.
    - ``layer_norm=True``: ``n = max{norm_b : norm_b finite}`` (0 if no sample has a finite norm),
      ``scale_b = r_b * s / n``, and ``scale_b = 0`` where ``norm_b`` is not finite or ``n == 0``.

    ``scale_b`` is clamped to +-(largest finite value of its dtype), so a subnormal norm gives a huge
    but finite scale (``scale_b * g_b,i`` stays finite: ``|g_b,i| <= norm_b``).

    Returns ``(scale, norm)``, both of shape ``[B]``, float32 (float64 for float64 ``g``), without
    gradient; ``norm`` always holds the per-sample norms.

    Backend: the Triton kernel ``anl_fused.kernels.noise_scale`` for a CUDA tensor, the C++ kernel (or
    torch ops) for a CPU tensor (:func:`backend_for`; ``ANL_FUSED_BACKEND`` forces one).
    """
    backend = backend_for(g)
    if backend == "cpp":
        z, s = (None if z is None else z.detach()), (None if s is None else s.detach())
        return _CPP[0].noise_scale(g.detach(), z, s, float(eps), bool(layer_norm), stats)
    if backend == "triton":
        return _triton().noise_scale(g, z, s, eps, layer_norm=layer_norm, stats=stats)
    return _torch_noise_scale(g, z, s, eps, layer_norm, stats)


def add_noise(h: Tensor, g: Tensor, scale: Tensor | None, *, alpha: float = 1.0) -> Tensor:
    """Round 2, forward: ``out = h + alpha * scale[b] * g'``, the noisy activation.

    Args:
        h: the activation, shape ``[B, ...]`` (batch first), any float dtype.
        g: round 1's gradient, ``h``'s shape; may have another float dtype than ``h`` (``noise_dtype``).
        scale: ``B`` values (one per sample, from :func:`noise_scale`), a single value for every
            sample, or None (1). Gaussian noise is ``add_noise(h, z, s, alpha=|eps|/4)``.
        alpha: a constant factor.

    Math: ``g'`` is ``g`` with its non-finite entries set to 0, so ``eta_b = 0`` wherever
    ``scale_b == 0`` even if ``g_b`` holds inf/NaN. Computed in float32 (float64 for float64 ``h``),
    rounded once to ``h``'s dtype (on both backends: a float16 ``h`` never sees a float16 scale
    overflow).

    Returns a tensor of ``h``'s shape and dtype. ``d out / d h = I``; no gradient reaches ``g`` or
    ``scale``.

    Backend: the Triton kernel ``anl_fused.kernels.add_noise`` for a CUDA tensor, the C++ kernel (or
    torch ops) for a CPU tensor (:func:`backend_for`; ``ANL_FUSED_BACKEND`` forces one).
    """
    backend = backend_for(h)
    if backend == "cpp":
        scale = None if scale is None else scale.detach()
        if h.requires_grad and torch.is_grad_enabled():  # a C++ autograd node: identity to h
            return _CPP[0].add_noise_autograd(h, g.detach(), scale, float(alpha))
        return _CPP[0].add_noise(h, g.detach(), scale, float(alpha))
    if backend == "triton":
        return _triton().add_noise(h, g, scale, alpha=alpha)
    return _torch_add_noise(h, g, scale, alpha)


def _torch_std(h: Tensor) -> Tensor:
    acc = acc_dtype(h.dtype)
    h = h.detach()
    if h.numel() <= 1:
        return torch.zeros((), dtype=acc, device=h.device)
    return h.to(acc).std()


def _torch_noise_scale(
    g: Tensor, z: Tensor | None, s: Tensor | None, eps: float, layer_norm: bool, stats: Tensor | None
) -> tuple[Tensor, Tensor]:
    acc = acc_dtype(g.dtype)
    g = g.detach()
    if stats is not None and (stats.dtype != torch.int64 or stats.shape != (2,)):
        raise ValueError(f"stats must be an int64 tensor of shape [2], got {stats.dtype} {tuple(stats.shape)}")
    if g.dim() < 1:
        raise ValueError("g must have a batch dimension (dim >= 1)")
    B = g.shape[0]
    if g.numel() == 0:  # no sample, or samples without elements (norm 0)
        norm = torch.zeros(B, dtype=acc, device=g.device)
    else:
        dims = tuple(range(1, g.dim()))
        # max|g| as max(max g, -min g): two fast reductions, NaN propagates (vector_norm(inf) is ~10x slower on CPU)
        norm = (torch.maximum(g.amax(dims), g.amin(dims).neg()) if dims else g.abs()).to(acc)
    if z is None:
        r = torch.full_like(norm, eps)
    else:
        r = (eps / 2 + abs(eps) / 4 * z.detach().reshape(B).to(acc)).clamp(min(0.0, eps), max(0.0, eps))
    rs = r if s is None else r * s.detach().reshape(()).to(acc)
    finite = torch.isfinite(norm)
    if layer_norm:
        n = torch.where(finite, norm, 0.0).amax() if B else torch.zeros((), dtype=acc, device=g.device)
        valid = finite & (n > 0)
        divisor = torch.where(n > 0, n, 1.0)
    else:
        valid = finite & (norm > 0)
        divisor = torch.where(valid, norm, 1.0)
    big = torch.finfo(acc).max  # a subnormal norm: huge but finite scale
    scale = torch.where(valid, (rs / divisor).clamp(-big, big), 0.0)
    if stats is not None:
        stats.add_(torch.stack([(~finite).sum(), (norm == 0).sum()]))
    return scale, norm


def _torch_add_noise(h: Tensor, g: Tensor, scale: Tensor | None, alpha: float) -> Tensor:
    acc = acc_dtype(h.dtype)
    if h.dim() < 1:
        raise ValueError("h must have a batch dimension (dim >= 1)")
    if g.shape != h.shape:
        raise ValueError(f"g must have h's shape {tuple(h.shape)}, got {tuple(g.shape)}")
    B = h.shape[0]
    if scale is None:
        factor = torch.full((), alpha, dtype=acc, device=h.device)
    else:
        scale = scale.detach()
        if scale.numel() not in (1, B):
            raise ValueError(
                f"scale must hold one value per sample ({B}) or a single value, got shape {tuple(scale.shape)}"
            )
        shape = (-1,) + (1,) * (h.dim() - 1) if scale.numel() == B else ()
        factor = scale.reshape(shape).to(acc)
        if alpha != 1.0:
            factor = factor * alpha
    g = torch.nan_to_num(g.detach(), nan=0.0, posinf=0.0, neginf=0.0).to(acc)
    # in the accumulation dtype, rounded once to h's dtype: a float16 scale could overflow to inf
    # (tiny max|g|), and inf * 0 is NaN
    if h.dtype == acc:
        return torch.addcmul(h, factor, g)
    return torch.addcmul(h.to(acc), factor, g).to(h.dtype)
