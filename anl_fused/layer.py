"""``ANL2d``: the Adversarial Noise Layer (You et al., Eq. 1-5), a drop-in module.

At inference (``eval()``), when disabled, or with ``eps == 0`` the layer is the identity and does no
work. In training, the noise needs the gradient of the current batch, so the layer only acts inside
a two-round step (``anl_fused.TwoRound`` or ``anl_fused.reference``), which attaches a *round* to
it for the length of one forward: round 1 measures ``std(h)`` and exposes ``h`` for its gradient,
round 2 returns ``h + eta``. Outside such a step a training-mode layer is the identity and warns once.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import threading
import warnings
from collections.abc import Iterable, Iterator
from typing import Protocol

import torch
from torch import Tensor, nn

__all__ = ["MAX_EPS", "NOISE_KINDS", "NORMS", "ANL2d", "Round", "attached", "check_eps", "check_options", "step_scope"]

NOISE_KINDS = ("adversarial", "gaussian")
NORMS = ("sample", "layer")


class Round(Protocol):
    """What a two-round step attaches to a layer for one forward (see :func:`attached`)."""

    def forward(self, layer: ANL2d, h: Tensor) -> Tensor: ...


@contextlib.contextmanager
def attached(layers: Iterable[ANL2d], round_: Round) -> Iterator[Round]:
    """For the duration of the ``with`` block, every layer of ``layers`` hands its input to
    ``round_.forward(layer, h)`` (in training mode, when active) instead of returning it.

    This is how a two-round step (``anl_fused.TwoRound``, ``anl_fused.reference``) drives the layers."""
    layers = list(layers)
    busy = [layer for layer in layers if layer._round is not None]
    if busy:
        raise RuntimeError(
            f"{busy[0]!r} is already in a two-round step: a step cannot run inside another step "
            "on the same layers (e.g. a second engine's step() called in the closure)"
        )
    for layer in layers:
        layer._round = round_
    try:
        yield round_
    finally:
        for layer in layers:
            layer._round = None


_thread = threading.local()


@contextlib.contextmanager
def step_scope(name: str) -> Iterator[None]:
    """Marks this thread as inside a two-round step (``name``, e.g. ``"TwoRound.step"``) for the ``with``
    block, and refuses to start one inside another: the inner step's backward would consume the outer
    round's graph or write ``.grad`` in the outer round 1, the outer noise would be lost and BatchNorm
    statistics would move twice. This holds for any two steps, also on disjoint sets of layers."""
    outer = getattr(_thread, "step", None)
    if outer is not None:
        raise RuntimeError(
            f"{name}() called inside {outer}(): a two-round step cannot run inside another (e.g. a "
            "second engine's step() called in the closure); run the steps one after the other"
        )
    _thread.step = name
    try:
        yield
    finally:
        _thread.step = None


#: the largest ``|eps|`` a layer accepts (:func:`check_eps`)
MAX_EPS = 1e3


def check_eps(eps, name: str = "eps") -> float:
    """``eps`` as a float; rejects bools, non-numbers, non-finite values and ``|eps| > MAX_EPS`` with a
    message naming it. The noise is up to ``|eps| * std(h)``: at ``|eps| = 1`` it is as large as the
    activations' spread, so a larger bound only drowns the signal (and ``1e300`` overflows the step)."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {eps!r} ({type(eps).__name__})")
    eps = float(eps)
    if not math.isfinite(eps):
        raise ValueError(f"{name} must be finite, got {eps!r}")
    if abs(eps) > MAX_EPS:
        raise ValueError(
            f"{name}={eps!r} is out of range: |{name}| must be at most {MAX_EPS:g}, because the noise is up to "
            f"|{name}| * std(h) (|{name}| = 1 already matches the activations' spread; the paper uses 0.01-0.1)"
        )
    return eps


def check_options(noise: str, norm: str, sign: bool) -> None:
    """Raises ``ValueError`` for an unknown ``noise`` or ``norm``, and for the sign form with Gaussian noise
    (the options of :class:`ANL2d` and :func:`anl_fused.anl2d`)."""
    if noise not in NOISE_KINDS:
        raise ValueError(f"noise must be one of {NOISE_KINDS}, got {noise!r}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if sign and noise != "adversarial":
        raise ValueError(f"sign=True needs noise='adversarial', got noise={noise!r}")


class ANL2d(nn.Module):
    r"""Adversarial Noise Layer for ``(N, C, H, W)`` activations.

    In round 2 of a two-round step it returns :math:`\hat h = h + \eta` with, per sample ``b``,

    .. math::
        \eta_b = r_b \, s(h) \, \frac{g_b}{\|g_b\|_\infty}, \qquad
        r_b = \mathrm{clip}_{[\min(0,\epsilon), \max(0,\epsilon)]}\big(\epsilon/2 + |\epsilon|/4 \, z_b\big),
        \quad z_b \sim \mathcal N(0, 1)

    where ``g = dJ/dh`` comes from round 1 and ``s(h)`` is the standard deviation of ``h``.

    Args:
        eps: noise magnitude :math:`\epsilon`. Negative values give the paper's "opposite" noise;
            0 makes the layer the identity.
        noise: ``"adversarial"`` (above) or ``"gaussian"``:
            :math:`\eta = s(h)\,|\epsilon|/4\,z` with elementwise :math:`z \sim \mathcal N(0, I)`.
        scale_by_std: multiply by :math:`s(h)` (Eq. 5); ``False`` gives Eq. 4.
        sign: :math:`\eta = \epsilon\,\mathrm{sign}(g)` (Eq. 8, adversarial training on the input).
        norm: ``"sample"``: :math:`\|g_b\|_\infty` per sample (the authors' code: every sample's noise
            reaches :math:`r_b s`); ``"layer"``: one norm :math:`\max_b \|g_b\|_\infty` for the whole layer
            (Algorithm 1's reading: samples with smaller gradients get proportionally smaller noise).

    Shape: input and output ``(N, C, H, W)``.
    """

    def __init__(
        self,
        eps: float,
        *,
        noise: str = "adversarial",
        scale_by_std: bool = True,
        sign: bool = False,
        norm: str = "sample",
    ):
        super().__init__()
        check_options(noise, norm, sign)
        self.eps = eps
        self.noise = noise
        self.scale_by_std = bool(scale_by_std)
        self.sign = bool(sign)
        self.norm = norm
        self.enabled = True
        self._round: Round | None = None
        self._warned = False

    @property
    def eps(self) -> float:
        return self._eps

    @eps.setter
    def eps(self, value) -> None:
        self._eps = check_eps(value)

    @property
    def active(self) -> bool:
        """Whether the layer adds noise in a two-round step: training, enabled and ``eps != 0``."""
        return self.training and self.enabled and self._eps != 0.0

    @property
    def needs_grad(self) -> bool:
        """Whether the noise needs round 1's gradient (all but Gaussian noise)."""
        return self.noise == "adversarial"

    def forward(self, input: Tensor) -> Tensor:
        if not self.active:  # the identity: any input (an unbatched (C, H, W) image in eval mode included)
            return input
        if input.dim() != 4:
            raise ValueError(f"ANL2d expects a 4-D (N, C, H, W) input, got shape {tuple(input.shape)}")
        if self._round is None:
            if not self._warned and not torch.compiler.is_compiling():  # Dynamo cannot trace warn()
                self._warned = True
                warnings.warn(
                    "ANL2d in training mode outside a two-round step is the identity; "
                    "train with anl_fused.TwoRound(model).step(closure) to add the noise",
                    stacklevel=2,
                )
            return input
        return self._round.forward(self, input)

    def extra_repr(self) -> str:
        parts = [f"eps={self._eps}"]
        if self.noise != "adversarial":
            parts.append(f"noise={self.noise!r}")
        if not self.scale_by_std:
            parts.append("scale_by_std=False")
        if self.sign:
            parts.append("sign=True")
        if self.norm != "sample":
            parts.append(f"norm={self.norm!r}")
        if not self.enabled:
            parts.append("enabled=False")
        return ", ".join(parts)
