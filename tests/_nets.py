"""Small models and comparison helpers shared by the core tests."""

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn


def small_vgg(inplace: bool = True, dropout: bool = True, in_channels: int = 3) -> nn.Sequential:
    """A VGG-style CNN: conv-BN-ReLU blocks, pooling, dropout before the classifier."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=inplace),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(inplace=inplace),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(inplace=inplace),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.5 if dropout else 0.0),
        nn.Linear(64, 10),
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


# Two float32 computations of one training step that differ only in rounding (the engine's float32
# ``h + scale * g`` against the oracle's float64 eta rounded once, another CPU's kernels, another reduction
# order) do not agree to a few ulps of each gradient. They usually agree to ~2e-6 of the gradient's norm,
# but an activation within rounding distance of a kink (ReLU at 0, a max-pool near-tie) can fall on the
# other side in one of them; with ~1e6 activations per step that happens in some steps on some CPUs, and
# then the gradient of every tensor upstream of that element moves by up to ~1/sqrt(elements of the layer).
# Measured (fast vs oracle, ResNet-18 at 64x64, batch 8, 16 seeds x 3 CPU settings: native AVX-512,
# ATEN_CPU_CAPABILITY=avx2 + ONEDNN_MAX_CPU_ISA=AVX2, ATEN_CPU_CAPABILITY=default; the small VGG, 30 seeds x
# 9 variants x the same 3 settings): typically 2e-6 (small VGG: all <= 3e-5); 5 of the 48 ResNet runs had such
# a flip, worst 6.7e-3 per tensor as compared below (1.2e-2 of a small BatchNorm bias's own gradient norm),
# 4.8e-3 of the whole gradient.
# Comparing against a float64 run does not help: float32 itself strays up to 18% from float64 on that
# model (flips everywhere, amplified by BatchNorms over 32 values in the last stage).
# So float32 steps are compared per parameter tensor in norm, relative to the tensor's gradient norm or 1%
# of the whole gradient's norm, whichever is larger: F32_STEP_RTOL is 7x the worst flip measured and 14-35x
# below the change ANL's noise makes to these gradients (median over tensors 0.7x their norm for the small
# VGG, 1.7x for ResNet-18;
# tests/test_reference.py::test_f32_tolerance_is_far_below_the_noise_effect), so a missing or wrong noise,
# another noise draw or a missed dropout replay fails it. Exact semantics are checked in float64 (1e-10).
F32_STEP_RTOL = 5e-2
# BatchNorm running statistics come from round 2's forward: measured <= 3.2e-6 of one step's change on the
# same runs. Relative to the step's change, so a second update in round 1 (a ~100% change) fails it.
F32_BUFFER_RTOL = 1e-3


def _rel_err(x: torch.Tensor, y: torch.Tensor, scale: float) -> float:
    return ((x.double() - y.double()).norm() / scale).item() if scale > 0 else float((x != y).any())


def assert_f32_grads_close(a: nn.Module, b: nn.Module, rtol: float = F32_STEP_RTOL) -> None:
    """``a``'s parameter gradients equal ``b``'s in float32: per tensor, ``||ga - gb|| <= rtol * ||gb||``.

    A tensor whose gradient is below 1% of the whole gradient's norm (a BatchNorm bias; a conv bias before
    BatchNorm, zero but for rounding) is compared at that scale instead. See ``F32_STEP_RTOL`` for why."""
    total = flat_grads(b).double().norm().item()
    assert total > 0, "reference gradients are all zero: the comparison would prove nothing"
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert (p.grad is None) == (q.grad is None), f"{name}: gradient present in one model only"
        if q.grad is None:
            continue
        err = _rel_err(p.grad, q.grad, max(q.grad.double().norm().item(), 1e-2 * total))
        assert err <= rtol, f"{name}: gradients differ by {err:.3g} of their norm (allowed {rtol:.3g})"


def assert_f32_buffers_close(
    a: nn.Module, b: nn.Module, before: dict[str, torch.Tensor], rtol: float = F32_BUFFER_RTOL
) -> None:
    """``a``'s buffers equal ``b``'s in float32, per buffer within ``rtol`` of how far ``b``'s moved from
    ``before`` (name -> tensor); integer buffers (``num_batches_tracked``) exactly."""
    for (name, x), y in zip(a.named_buffers(), b.buffers()):
        if not x.dtype.is_floating_point:
            assert torch.equal(x, y), f"{name}: {x.tolist()} != {y.tolist()}"
            continue
        moved = (y.double() - before[name].double()).norm().item()
        err = _rel_err(x, y, max(moved, 1e-6 * y.double().norm().item()))
        assert err <= rtol, f"{name}: buffers differ by {err:.3g} of the step's change (allowed {rtol:.3g})"


@contextlib.contextmanager
def recorded_noise() -> Iterator[list]:
    """Records the noise of every ``ops.add_noise`` call while the block runs: yields a list that gets, per call,
    ``alpha * scale[b] * g_b`` flattened per sample in float64 (``g``'s non-finite entries count as 0, as in
    ``add_noise``). The original ``ops.add_noise`` still does the work and is put back on exit."""
    from anl_fused import ops

    seen = []
    add_noise = ops.add_noise

    def spy(h, g, scale, alpha=1.0):
        seen.append(
            alpha * scale.double()[:, None] * torch.nan_to_num(g.double(), nan=0, posinf=0, neginf=0).flatten(1)
        )
        return add_noise(h, g, scale, alpha=alpha)

    ops.add_noise = spy
    try:
        yield seen
    finally:
        ops.add_noise = add_noise
