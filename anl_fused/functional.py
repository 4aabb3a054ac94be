"""Functional twin of :class:`anl_fused.ANL2d`, and the noise-draw contract shared by every backend.

``anl2d(h, grad, eps, z=...)`` is round 2 of one layer as a pure function: given the clean
activation ``h``, the round-1 gradient ``grad = dJ/dh`` and the standard-normal draws ``z``, it returns
``h + eta`` (``eta`` carries no gradient). The engine computes exactly this, split across the two
rounds so that nothing is computed twice.

The draw contract (``draw_step``): one step draws ALL its standard-normal numbers with ONE call,
``torch.randn(n_1 + ... + n_L, generator=...)``, and layer ``l`` (the layers that ran in round 1, in
``anl_fused.anl_layers`` order) takes the next ``n_l`` of them: ``n_l = B`` (one ``z_b`` per sample) for
adversarial noise, ``n_l = numel(h)`` (reshaped to ``h``'s shape) for Gaussian noise, ``n_l = 0`` for the
sign form. The draw is float64 when any of the layers' activations is float64, float32 otherwise.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from . import ops
from .layer import check_eps, check_options

__all__ = ["NoiseTerms", "ZSpec", "anl2d", "draw_step", "noise_terms", "z_spec"]


#: ``(direction, scale, alpha)``: one layer's noise as :func:`noise_terms` gives it (``ops.add_noise``'s arguments)
NoiseTerms = tuple[Tensor, Tensor | None, float]


class ZSpec(NamedTuple):
    """What one layer draws in a step: ``shape`` (``None``: nothing) and its activations' dtype."""

    shape: torch.Size | None
    dtype: torch.dtype


def z_spec(noise: str, sign: bool, h: Tensor) -> ZSpec:
    """The draws of one layer: ``[B]`` for adversarial noise, ``h.shape`` for Gaussian, none for the sign form."""
    if sign:
        return ZSpec(None, h.dtype)
    return ZSpec(h.shape[:1] if noise == "adversarial" else h.shape, h.dtype)


def draw_step(specs: list[ZSpec], generator: torch.Generator | None, device: torch.device) -> list[Tensor | None]:
    """All standard-normal draws of one step in one ``torch.randn`` call (the RNG contract, see the
    module docstring); returns one tensor (a view of the draw) or ``None`` per spec, in order."""
    sizes = [0 if s.shape is None else s.shape.numel() for s in specs]
    total = sum(sizes)
    if total == 0:
        return [None] * len(specs)
    dtype = torch.float64 if any(s.dtype == torch.float64 for s in specs) else torch.float32
    flat = torch.randn(total, generator=generator, device=device, dtype=dtype)
    out, start = [], 0
    for spec, n in zip(specs, sizes):
        out.append(None if spec.shape is None else flat[start : start + n].view(spec.shape))
        start += n
    return out


def anl2d(
    input: Tensor,
    grad: Tensor | None,
    eps: float,
    *,
    z: Tensor | None = None,
    noise: str = "adversarial",
    scale_by_std: bool = True,
    sign: bool = False,
    norm: str = "sample",
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""``input + eta`` for one ANL layer (see :class:`anl_fused.ANL2d` for the formula).

    Args:
        input: the clean activation ``h``, shape ``(N, C, H, W)``.
        grad: ``dJ/dh`` from round 1 (same shape); unused for ``noise="gaussian"``.
        eps: noise magnitude.
        z: standard-normal draws, ``[N]`` for adversarial noise, ``input.shape`` for Gaussian noise,
            unused for ``sign=True``; drawn from ``generator`` by :func:`draw_step` when ``None``.
        norm: ``"sample"`` (each sample's gradient divided by its own ``max|g_b|``) or ``"layer"``
            (divided by the largest ``max|g_b|`` of the batch).
    """
    eps = check_eps(eps)
    check_options(noise, norm, sign)
    if input.dim() != 4:
        raise ValueError(f"anl2d expects a 4-D (N, C, H, W) input, got shape {tuple(input.shape)}")
    if eps == 0.0:
        return input
    if z is None:
        (z,) = draw_step([z_spec(noise, sign, input)], generator, input.device)
    s = ops.std(input) if (scale_by_std and not sign) else None
    if noise == "adversarial" and (grad is None or grad.shape != input.shape):
        raise ValueError(
            f"grad must have the input's shape {tuple(input.shape)}, got {None if grad is None else tuple(grad.shape)}"
        )
    direction, scale, alpha = noise_terms(noise, sign, eps, grad, z, s, layer_norm=norm == "layer")
    return ops.add_noise(input, direction, scale, alpha=alpha)


def noise_terms(
    noise: str,
    sign: bool,
    eps: float,
    grad: Tensor | None,
    z: Tensor | None,
    s: Tensor | None,
    *,
    layer_norm: bool = False,
    stats: Tensor | None = None,
) -> NoiseTerms:
    """``(direction, scale, alpha)`` with ``eta_b = alpha * scale_b * direction_b`` (``ops.add_noise``'s
    arguments; ``scale`` may be ``[B]``, one shared value, or ``None`` for 1).

    Adversarial: ``direction = g`` and ``scale_b = r_b s / ||g_b||_inf`` (``/ max_b ||g_b||_inf`` with
    ``layer_norm``) from :func:`anl_fused.ops.noise_scale`, which also counts the samples whose gradient is
    not finite or zero into ``stats`` (int64 ``[2]``) when given. Gaussian: ``direction = z``, ``scale = s``
    and ``alpha = |eps| / 4`` (no extra launch). Sign form: ``direction = sign(g)``, ``alpha = eps`` and
    ``scale_b = 1``, 0 where ``g_b`` is not finite (from the norms of ``ops.noise_scale``, which counts
    ``stats`` as above; ``z``, ``s`` and ``layer_norm`` are not used).
    """
    if noise == "gaussian":
        return z, s, abs(eps) / 4
    if sign:  # eta_b = eps * sign(g_b): only which samples are finite (norm_b < inf; NaN is not)
        _, norm = ops.noise_scale(grad, None, None, eps, stats=stats)
        return torch.sign(grad), (norm < math.inf).to(norm.dtype), eps
    scale, _ = ops.noise_scale(grad, z, s, eps, layer_norm=layer_norm, stats=stats)
    return grad, scale, 1.0
