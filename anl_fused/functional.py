"""Functional twin of :class:`anl_fused.ANL2d`, and the noise-draw contract shared by every backend.

``anl2d(h, grad, eps, z=...)`` is round 2 of one layer as a pure function: given the clean
activation ``h``, the round-1 gradient ``grad = dJ/dh`` and the standard-normal draws ``z``, it returns
``h + eta`` (``eta`` carries no gradient). The engine computes exactly this, split across the two
rounds so that nothing is computed twice.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import ops
from .layer import NOISE_KINDS, check_eps

__all__ = ["anl2d", "draw_z", "noise_terms"]


def draw_z(noise: str, sign: bool, h_shape: torch.Size, h_dtype: torch.dtype, generator: torch.Generator | None,
           device: torch.device) -> Tensor | None:
    """The standard-normal draws of one layer for one step (the RNG contract).

    Adversarial noise draws ``torch.randn(B)`` (one ``z_b`` per sample), Gaussian noise draws
    ``torch.randn(h.shape)``, the sign form draws nothing. The dtype is the accumulation dtype
    (float64 for float64 activations, float32 otherwise). Layers draw in ``anl_layers(model)`` order.
    """
    if sign:
        return None
    shape = h_shape[:1] if noise == "adversarial" else h_shape
    return torch.randn(shape, generator=generator, device=device, dtype=ops.acc_dtype(h_dtype))


def anl2d(input: Tensor, grad: Tensor | None, eps: float, *, z: Tensor | None = None, noise: str = "adversarial",
          scale_by_std: bool = True, sign: bool = False, generator: torch.Generator | None = None) -> Tensor:
    r"""``input + eta`` for one ANL layer (see :class:`anl_fused.ANL2d` for the formula).

    Args:
        input: the clean activation ``h``, shape ``(N, C, H, W)``.
        grad: ``dJ/dh`` from round 1 (same shape); unused for ``noise="gaussian"``.
        eps: noise magnitude.
        z: standard-normal draws, ``[N]`` for adversarial noise, ``input.shape`` for Gaussian noise,
            unused for ``sign=True``; drawn from ``generator`` by :func:`draw_z` when ``None``.
    """
    eps = check_eps(eps)
    if noise not in NOISE_KINDS:
        raise ValueError(f"noise must be one of {NOISE_KINDS}, got {noise!r}")
    if input.dim() != 4:
        raise ValueError(f"anl2d expects a 4-D (N, C, H, W) input, got shape {tuple(input.shape)}")
    if eps == 0.0:
        return input
    if z is None:
        z = draw_z(noise, sign, input.shape, input.dtype, generator, input.device)
    s = ops.std(input) if (scale_by_std and not sign) else None
    if noise == "adversarial" and (grad is None or grad.shape != input.shape):
        raise ValueError(f"grad must have the input's shape {tuple(input.shape)}, got "
                         f"{None if grad is None else tuple(grad.shape)}")
    direction, scale, _ = noise_terms(noise, sign, eps, grad, z, s, input.shape[0])
    return ops.add_noise(input, direction, scale)


def noise_terms(noise: str, sign: bool, eps: float, grad: Tensor | None, z: Tensor | None, s: Tensor | None,
                batch: int) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(direction, scale, norm)`` with ``eta_b = scale_b * direction_b``.

    Adversarial: ``direction = g`` and ``scale_b = r_b s / ||g_b||_inf``
    from :func:`anl_fused.ops.noise_scale`, which also returns the norms. Gaussian:
    ``direction = z`` and ``scale_b = s |eps| / 4``; no norm. Sign form: ``direction = sign(g)``, ``scale_b = eps``.
    """
    if noise == "gaussian":
        scale = torch.full((batch,), abs(eps) / 4, dtype=z.dtype, device=z.device)
        return z, (scale if s is None else scale * s.to(z.dtype)), None
    scale, norm = ops.noise_scale(grad, z, s, eps)
    if sign:  # eta_b = eps * sign(g_b), zero where g_b is zero or not finite (there scale_b is 0)
        return torch.sign(grad), (scale != 0).to(scale.dtype) * eps, norm
    return grad, scale, norm
