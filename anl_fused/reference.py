"""The oracle: a literal, slow transcription of the paper's Algorithm 1 (full double pass).

It imports nothing from the fast path (``engine``, ``ops``, ``functional``): only the layer (its
configuration, and :func:`anl_fused.layer.attached`, the seam every two-round step drives the layers
through) and :func:`anl_fused.anl_layers` (the layer order of the RNG contract). Everything else, the
noise-draw contract included, is written out here again on purpose, so that a bug in the fast path
cannot hide in the oracle too. Round 1 adds a zero leaf tensor to every ANL layer's output
(the authors' way of reading ``dJ/dh`` that survives later in-place ops) and runs a full backward
that also computes every parameter's gradient, which is thrown away; every buffer of the model is
saved before round 1 and written back after it; the noise is computed sample by sample with
Python scalars, exactly as Eq. 2 and Eq. 5 read. Slow on purpose; use it in tests only.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .insert import anl_layers
from .layer import ANL2d, attached, step_scope

__all__ = ["eta", "std", "two_round_step"]


class _ZeroLeaf:
    """Round 1: ``h + leaf`` with a zero leaf per layer. A layer that runs again once the closure has
    returned (``in_backward``) is being recomputed by non-reentrant activation checkpointing during the
    backward: it adds the same leaf again (so the gradient reaches it) and is remembered."""

    def __init__(self):
        self.records: dict[ANL2d, tuple[Tensor, Tensor]] = {}
        self.in_backward = False
        self.recomputed = False

    def forward(self, layer: ANL2d, h: Tensor) -> Tensor:
        if self.in_backward:
            self.recomputed = True
            return h + self.records[layer][1]
        assert layer not in self.records, "an ANL layer ran twice in one forward"
        leaf = torch.zeros_like(h, requires_grad=True)
        self.records[layer] = (h.detach().clone(), leaf)
        return h + leaf


class _AddEta:
    """Round 2 of a literal double pass: ``h + eta`` with ``eta`` given per layer (the same ``eta`` again
    when checkpointing recomputes the layer during the backward, ``in_backward``)."""

    def __init__(self, etas: dict[ANL2d, Tensor]):
        self.etas = etas
        self.seen: set[ANL2d] = set()
        self.in_backward = False

    def forward(self, layer: ANL2d, h: Tensor) -> Tensor:
        if not self.in_backward:
            assert layer not in self.seen, "an ANL layer ran twice in one forward"
            self.seen.add(layer)
        return h + self.etas[layer]


def _loss(closure: Callable[[], Tensor]) -> Tensor:
    loss = closure()
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        raise TypeError(f"closure must return a scalar (0-d) loss tensor, got {loss!r}")
    return loss


def _draw(layers: list[ANL2d], hs: list[Tensor], generator: torch.Generator) -> list[Tensor | None]:
    """The RNG contract: one ``torch.randn`` call per step for all reached layers (in ``anl_layers``
    order), of ``B`` numbers per adversarial layer, ``numel(h)`` per Gaussian layer (in ``h``'s shape),
    none for the sign form; float64 if any activation is float64, else float32."""
    sizes = [
        0 if layer.sign else (h.shape[0] if layer.noise == "adversarial" else h.numel()) for layer, h in zip(layers, hs)
    ]
    if sum(sizes) == 0:
        return [None] * len(layers)
    dtype = torch.float64 if any(h.dtype == torch.float64 for h in hs) else torch.float32
    flat = torch.randn(sum(sizes), generator=generator, device=generator.device, dtype=dtype)
    out = []
    for layer, h, n in zip(layers, hs, sizes):
        z, flat = flat[:n], flat[n:]
        out.append(None if layer.sign else z.reshape(h.shape[:1] if layer.noise == "adversarial" else h.shape))
    return out


def std(h: Tensor) -> float:
    """Eq. 5's ``s(h)``: standard deviation of all elements, correction 1, in float64; 0 for one element."""
    values = h.detach().double().flatten()
    if values.numel() == 1:
        return 0.0
    mean = values.sum() / values.numel()
    return math.sqrt(float(((values - mean) ** 2).sum()) / (values.numel() - 1))


def eta(
    h: Tensor,
    g: Tensor | None,
    z: Tensor | None,
    eps: float,
    *,
    noise: str = "adversarial",
    scale_by_std: bool = True,
    sign: bool = False,
    norm: str = "sample",
) -> Tensor:
    """One layer's noise, Eq. 2 and 5 (Eq. 4 without ``s``, Eq. 8 for the sign form), sample by sample with
    Python floats; float64, on the CPU. ``g``: round 1's gradient (unused for Gaussian noise); ``z``: the
    layer's draws (``[B]``, or ``h``'s shape for Gaussian noise, ``None`` for the sign form)."""
    s = std(h) if scale_by_std else 1.0
    if noise == "gaussian":
        return s * abs(eps) / 4 * z.detach().double().cpu()
    finite = [bool(torch.isfinite(g[b]).all()) for b in range(h.shape[0])]
    norms = [float(g[b].double().abs().max()) if finite[b] else math.nan for b in range(h.shape[0])]
    layer_norm = max([n for n, ok in zip(norms, finite) if ok], default=0.0)  # Algorithm 1: one norm per layer
    out = torch.zeros(h.shape, dtype=torch.float64)
    for b in range(h.shape[0]):
        gb = g[b].detach().double().cpu()
        if not finite[b]:
            continue  # non-finite gradient: no noise for this sample
        if sign:
            out[b] = eps * torch.sign(gb)
            continue
        n = layer_norm if norm == "layer" else norms[b]
        if n == 0.0:
            continue
        r = min(max(eps / 2 + abs(eps) / 4 * float(z[b]), min(0.0, eps)), max(0.0, eps))
        out[b] = r * s * gb / n
    return out


def _eta(layer: ANL2d, h: Tensor, g: Tensor, z: Tensor | None) -> Tensor:
    e = eta(h, g, z, layer.eps, noise=layer.noise, scale_by_std=layer.scale_by_std, sign=layer.sign, norm=layer.norm)
    return e.to(device=h.device, dtype=h.dtype)


def two_round_step(
    model: nn.Module, closure: Callable[[], Tensor], generator: torch.Generator, backward: bool = True
) -> Tensor:
    """One training step of Algorithm 1 on ``model``; returns round 2's loss (backpropagated unless
    ``backward=False``). Same contract as :meth:`anl_fused.TwoRound.step`."""
    with step_scope("reference.two_round_step"):
        return _two_round_step(model, closure, generator, backward)


def _two_round_step(
    model: nn.Module, closure: Callable[[], Tensor], generator: torch.Generator, backward: bool
) -> Tensor:
    layers = [layer for layer in anl_layers(model) if layer.active]
    if not layers:
        loss = _loss(closure)
        if backward:
            loss.backward()
        return loss

    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None

    # Round 1: eta = 0, full forward and backward (checkpointed layers recomputed with their leaves).
    with attached(layers, _ZeroLeaf()) as probe:
        loss = _loss(closure)
        probe.in_backward = True
        reached = [layer for layer in layers if layer in probe.records]
        leaves = [probe.records[layer][1] for layer in reached]
        params = [p for p in model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, leaves + params, allow_unused=True)[: len(leaves)]
    if probe.recomputed and not backward:
        raise RuntimeError(
            "activation checkpointing needs reference.two_round_step(..., backward=True): round 2's backward "
            "recomputes checkpointed layers, which must get the same noise again"
        )

    # Undo round 1's side effects on the model's state.
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
    torch.set_rng_state(cpu_rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state_all(cuda_rng)

    # The noise, layer by layer in anl_layers order, sample by sample.
    hs = [probe.records[layer][0] for layer in reached]
    etas = {
        layer: _eta(layer, h, torch.zeros_like(h) if g is None else g, z)
        for layer, h, g, z in zip(reached, hs, grads, _draw(reached, hs, generator))
    }

    # Round 2: the loss with noise, which trains the model (checkpointed layers recomputed with their eta).
    with attached(layers, _AddEta(etas)) as perturb:
        loss = _loss(closure)
        perturb.in_backward = True
        if backward:
            loss.backward()
    return loss
