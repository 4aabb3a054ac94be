"""The authors'-style naive double pass, the baseline that ``TwoRound`` is measured against.

It computes what ``TwoRound`` computes (same noise, same rules; a test checks it against the
reference) the way github youzhonghui/ANL does, with their costs: round 1 adds a zero leaf tensor
to every ANL output and runs a full ``backward()`` that computes every parameter gradient too
(set aside and put back, where the authors zero them), ``std(h)`` is read on the host with
``.item()`` (one device sync per layer per step), and every buffer is saved and restored around
round 1. The noise itself is vectorized, as theirs is.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import torch
from torch import Tensor, nn

from anl_fused import rng
from anl_fused.engine import checked_loss, training_round
from anl_fused.functional import draw_step, z_spec
from anl_fused.insert import anl_layers
from anl_fused.layer import ANL2d, attached

__all__ = ["naive_step"]


class _ZeroLeafHostStd:
    def __init__(self):
        self.records: dict[ANL2d, tuple[float, Tensor]] = {}

    def forward(self, layer: ANL2d, h: Tensor) -> Tensor:
        s = h.detach().std().item() if h.numel() > 1 else 0.0  # the authors' host-side std
        leaf = torch.zeros_like(h, requires_grad=True)
        self.records[layer] = (s, leaf)
        return h + leaf


def _eta(layer: ANL2d, s: float, g: Tensor, z: Tensor | None) -> Tensor:
    eps = layer.eps
    if layer.noise == "gaussian":
        return ((s if layer.scale_by_std else 1.0) * abs(eps) / 4 * z).to(g.dtype)
    norm = g.abs().amax(dim=tuple(range(1, g.dim())))
    valid = torch.isfinite(norm) & (norm > 0)
    g = torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
    if layer.sign:
        return (valid.to(g.dtype) * eps).view(-1, 1, 1, 1) * torch.sign(g)
    r = (eps / 2 + abs(eps) / 4 * z).clamp(min(0.0, eps), max(0.0, eps))
    if layer.norm == "layer":  # one norm for the layer: the largest finite per-sample norm
        norm = torch.where(valid, norm, 0.0).amax().expand_as(norm)
        valid = valid & (norm > 0)
    scale = torch.where(valid, r * (s if layer.scale_by_std else 1.0) / norm, 0.0)
    return scale.view(-1, 1, 1, 1).to(g.dtype) * g


def naive_step(
    model: nn.Module, closure: Callable[[], Tensor], generator: torch.Generator, backward: bool = True
) -> Tensor:
    """One step, same contract as :meth:`anl_fused.TwoRound.step`, at the authors' cost."""
    layers = [layer for layer in anl_layers(model) if layer.active]
    if not layers:
        return training_round(closure, backward)
    buffers = [b.detach().clone() for b in model.buffers()]
    rng_state = rng.capture()
    params = list(model.parameters())
    kept = [p.grad for p in params]
    for p in params:
        p.grad = None

    with attached(layers, _ZeroLeafHostStd()) as probe:
        checked_loss(closure()).backward()  # full backward: activation and parameter gradients

    for p, g in zip(params, kept):
        p.grad = g
    with torch.no_grad():
        for b, saved in zip(model.buffers(), buffers):
            b.copy_(saved)
    rng.restore(rng_state)

    reached = [layer for layer in layers if layer in probe.records]
    grads = [probe.records[layer][1].grad for layer in reached]
    grads = [torch.zeros_like(probe.records[layer][1]) if g is None else g for layer, g in zip(reached, grads)]
    specs = [z_spec(layer.noise, layer.sign, g) for layer, g in zip(reached, grads)]
    zs = draw_step(specs, generator, generator.device)
    etas = {layer: _eta(layer, probe.records[layer][0], g, z) for layer, g, z in zip(reached, grads, zs)}

    with attached(layers, SimpleNamespace(forward=lambda layer, h: h + etas.pop(layer))):  # round 2: h + eta
        return training_round(closure, backward)
