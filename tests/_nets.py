"""Small models and comparison helpers shared by the core tests."""

import copy

import torch
from torch import nn


def small_vgg(inplace: bool = True, dropout: bool = True, in_channels: int = 3) -> nn.Sequential:
    """A VGG-style CNN: conv-BN-ReLU blocks, pooling, dropout before the classifier."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=inplace), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=inplace),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=inplace),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(0.5 if dropout else 0.0), nn.Linear(64, 10),
    )


def twins(model: nn.Module, n: int = 2) -> list[nn.Module]:
    return [model] + [copy.deepcopy(model) for _ in range(n - 1)]


def flat_grads(model: nn.Module) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in model.parameters()])


def assert_grads_close(a: nn.Module, b: nn.Module, rtol: float) -> None:
    """Every parameter gradient of ``a`` equals ``b``'s within ``rtol`` of the largest gradient
    (conv biases followed by BatchNorm have gradients near zero, so a per-tensor relative error
    would compare rounding noise)."""
    gb = flat_grads(b)
    assert gb.abs().max() > 0, "reference gradients are all zero: the comparison would prove nothing"
    scale = gb.abs().max().item()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=rtol, atol=rtol * scale, msg=lambda m: f"{name}: {m}")


def assert_buffers_equal(a: nn.Module, b: nn.Module, rtol: float) -> None:
    for (name, x), y in zip(a.named_buffers(), b.buffers()):
        torch.testing.assert_close(x, y, rtol=rtol, atol=rtol, msg=lambda m: f"{name}: {m}")
