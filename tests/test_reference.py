"""TwoRound equals the reference oracle (parameter gradients, BN buffers, loss) for every variant."""

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision

import anl_fused
from anl_fused import reference

from ._nets import (
    F32_STEP_RTOL,
    assert_buffers_equal,
    assert_f32_buffers_close,
    assert_f32_grads_close,
    assert_grads_close,
    flat_grads,
    small_vgg,
    twins,
)

VARIANTS = {
    "adversarial": dict(eps=0.5),
    "gaussian": dict(eps=0.5, noise="gaussian"),
    "eq4_no_std": dict(eps=0.5, scale_by_std=False),
    "opposite": dict(eps=-0.5),
    "input": dict(eps=0.5, input_eps=0.2),
    "input_sign": dict(eps=0.5, input_eps=0.05, input_sign=True),
    "input_only": dict(eps=0.0, input_eps=0.2),
    "layer_norm": dict(eps=0.5, norm="layer"),
    "layer_norm_opposite_input": dict(eps=-0.5, norm="layer", input_eps=0.2),
}
RTOL = {torch.float64: 1e-10}  # float32: the norm-wise comparisons of tests/_nets.py (F32_STEP_RTOL)
# Round 2's loss is a forward value: a kink flip in round 1 moves one element of one eta, not the loss.
F32_LOSS_RTOL = 1e-5


def run_both(model, x, y, steps=1, seed=0):
    """The same steps with TwoRound and with the reference, from the same state and seeds."""
    before = {name: b.clone() for name, b in model.named_buffers()}
    fast, ref = twins(model)
    engine = anl_fused.TwoRound(fast, torch.Generator().manual_seed(seed))
    ref_gen = torch.Generator().manual_seed(seed)
    losses = []
    for i in range(steps):
        torch.manual_seed(100 + i)
        lf = engine.step(lambda: F.cross_entropy(fast(x), y))
        torch.manual_seed(100 + i)
        lr = reference.two_round_step(ref, lambda: F.cross_entropy(ref(x), y), ref_gen)
        losses.append((lf.detach(), lr.detach()))
    return fast, ref, losses, before


def check(fast, ref, losses, before, dtype):
    """``fast`` took the same steps as ``ref`` (float64: to 1e-10 elementwise; float32: to rounding, in
    norm, see tests/_nets.py); ``before`` holds the buffers before the steps."""
    if dtype == torch.float64:
        for lf, lr in losses:
            torch.testing.assert_close(lf, lr, rtol=RTOL[dtype], atol=0)
        assert_grads_close(fast, ref, RTOL[dtype])
        assert_buffers_equal(fast, ref, RTOL[dtype])
        return
    for lf, lr in losses:
        torch.testing.assert_close(lf, lr, rtol=F32_LOSS_RTOL, atol=0)
    assert_f32_grads_close(fast, ref)
    assert_f32_buffers_close(fast, ref, before)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_small_vgg_with_dropout(variant, dtype):
    torch.manual_seed(0)
    model = anl_fused.insert_anl(small_vgg().to(dtype), **VARIANTS[variant])
    x, y = torch.randn(6, 3, 8, 8, dtype=dtype), torch.randint(0, 10, (6,))
    check(*run_both(model, x, y, steps=2), dtype)


def test_noise_changes_the_gradients():
    """Guard against a vacuous oracle: with noise on, the gradients differ from plain training."""
    torch.manual_seed(0)
    model = anl_fused.insert_anl(small_vgg(dropout=False).double(), eps=0.5)
    x, y = torch.randn(6, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (6,))
    fast, plain = twins(model)
    anl_fused.TwoRound(fast).step(lambda: F.cross_entropy(fast(x), y))
    anl_fused.set_anl_enabled(plain, False)
    F.cross_entropy(plain(x), y).backward()
    with pytest.raises(AssertionError):
        assert_grads_close(fast, plain, 1e-6)


@pytest.mark.parametrize("model_name", ["small_vgg", "resnet18"])
def test_f32_tolerance_is_far_below_the_noise_effect(model_name):
    """Guard for the float32 comparisons: the noise moves these gradients by far more than F32_STEP_RTOL
    (>= 10x, per tensor, for most tensors), and another noise draw (generator seed 1 against 0) fails the
    comparison. A float32 test with a tolerance that no noise bug could exceed would prove nothing."""
    torch.manual_seed(0)
    if model_name == "resnet18":
        model = anl_fused.insert_anl(torchvision.models.resnet18(num_classes=10), eps=0.3)
        x, y = torch.randn(8, 3, 64, 64), torch.randint(0, 10, (8,))
    else:
        model = anl_fused.insert_anl(small_vgg(), eps=0.5)
        x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 10, (6,))
    ref, plain, other = twins(model, 3)
    for m, seed in ((ref, 0), (other, 1)):
        torch.manual_seed(100)
        reference.two_round_step(m, lambda m=m: F.cross_entropy(m(x), y), torch.Generator().manual_seed(seed))
    anl_fused.set_anl_enabled(plain, False)
    torch.manual_seed(100)
    F.cross_entropy(plain(x), y).backward()
    effects = [
        ((p.grad - q.grad).norm() / q.grad.norm()).item()
        for p, q in zip(plain.parameters(), ref.parameters())
        if q.grad.norm() > 1e-3 * flat_grads(ref).norm()
    ]
    assert sorted(effects)[len(effects) // 2] >= 10 * F32_STEP_RTOL, effects  # measured 0.7 (VGG), 1.7 (ResNet)
    for m in (plain, other):
        with pytest.raises(AssertionError, match="gradients differ"):
            assert_f32_grads_close(m, ref)


def test_layer_norm_differs_from_sample_norm():
    """Guard: norm="layer" is not silently the per-sample norm (the samples' gradients differ in size)."""
    torch.manual_seed(0)
    x, y = torch.randn(6, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (6,))
    grads = []
    for norm in ("sample", "layer"):
        torch.manual_seed(0)
        model = anl_fused.insert_anl(small_vgg(dropout=False).double(), eps=0.5, norm=norm)
        anl_fused.TwoRound(model, torch.Generator().manual_seed(0)).step(lambda: F.cross_entropy(model(x), y))
        grads.append(flat_grads(model))
    assert not torch.allclose(grads[0], grads[1], rtol=1e-6)


def test_one_draw_per_step(monkeypatch):
    """The RNG contract: a step makes one torch.randn call for all its layers."""
    torch.manual_seed(0)
    model = anl_fused.insert_anl(small_vgg().double(), eps=0.5, input_eps=0.2)
    anl_fused.anl_layers(model)[1].noise = "gaussian"  # mixed kinds: one draw covers B numbers and a whole activation
    x, y = torch.randn(6, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (6,))
    engine = anl_fused.TwoRound(model, torch.Generator().manual_seed(0))
    calls = []
    real = torch.randn
    monkeypatch.setattr(torch, "randn", lambda *a, **k: calls.append(a) or real(*a, **k))
    engine.step(lambda: F.cross_entropy(model(x), y))
    monkeypatch.undo()
    # input layer (6) + first hidden layer Gaussian (6*8*8*8) + two adversarial layers (6 each)
    assert calls == [(6 + 6 * 8 * 8 * 8 + 6 + 6,)]


def _resnet18(dtype):
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_torchvision_resnet18(dtype):
    model = anl_fused.insert_anl(_resnet18(dtype), eps=0.3)
    x, y = torch.randn(8, 3, 64, 64, dtype=dtype), torch.randint(0, 10, (8,))
    check(*run_both(model, x, y), dtype)


@pytest.mark.slow
@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "adversarial"])
def test_torchvision_resnet18_variants(variant):
    model = anl_fused.insert_anl(_resnet18(torch.float64), **VARIANTS[variant])
    x, y = torch.randn(3, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (3,))
    check(*run_both(model, x, y), torch.float64)


@pytest.mark.parametrize("variant", ["adversarial", "gaussian", "input_sign", "opposite"])
def test_naive_baseline_computes_the_same_step(variant):
    """The benchmark's authors'-style baseline does the same work, so the speed comparison is fair."""
    from anl_fused.benchmarks.naive import naive_step

    torch.manual_seed(0)
    model = anl_fused.insert_anl(small_vgg().double(), **VARIANTS[variant])
    x, y = torch.randn(6, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (6,))
    slow, ref = twins(model)
    losses = []
    for gen_s, gen_r in [(torch.Generator().manual_seed(0), torch.Generator().manual_seed(0))]:
        torch.manual_seed(1)
        ls = naive_step(slow, lambda: F.cross_entropy(slow(x), y), gen_s)
        torch.manual_seed(1)
        lr = reference.two_round_step(ref, lambda: F.cross_entropy(ref(x), y), gen_r)
        losses.append((ls.detach(), lr.detach()))
    check(slow, ref, losses, None, torch.float64)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_triton_backend_equals_reference(variant, monkeypatch):
    """TwoRound on the Triton kernels (interpreted on CPU here, compiled on a GPU) equals the oracle."""
    pytest.importorskip("triton")
    monkeypatch.setenv("ANL_FUSED_BACKEND", "triton")
    from anl_fused import kernels

    calls = []
    for op in ("std", "noise_scale", "add_noise"):
        fn = getattr(kernels, op)
        monkeypatch.setattr(kernels, op, lambda *a, fn=fn, op=op, **k: calls.append(op) or fn(*a, **k))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = anl_fused.insert_anl(small_vgg().double(), **VARIANTS[variant]).to(device)
    x = torch.randn(6, 3, 8, 8, dtype=torch.float64, device=device)
    y = torch.randint(0, 10, (6,), device=device)
    fast, ref = twins(model)
    engine = anl_fused.TwoRound(fast, torch.Generator(device).manual_seed(0))
    torch.manual_seed(1)
    lf = engine.step(lambda: F.cross_entropy(fast(x), y))
    torch.manual_seed(1)
    lr = reference.two_round_step(ref, lambda: F.cross_entropy(ref(x), y), torch.Generator(device).manual_seed(0))
    check(fast, ref, [(lf.detach(), lr.detach())], None, torch.float64)
    assert {"std", "add_noise"} <= set(calls), calls


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_cpp_backend_equals_reference(variant, monkeypatch):
    """TwoRound on the C++ CPU kernels (``ANL_FUSED_BACKEND=cpp``: an error, not the torch ops, where they
    cannot be built) equals the oracle, and every op it ran was a C++ kernel."""
    from anl_fused import ops

    monkeypatch.setenv("ANL_FUSED_BACKEND", "cpp")
    assert ops.backend() == "cpp", ops.cpp_status()
    calls = []
    real = ops._CPP[0]

    class Recording:
        def __getattr__(self, name):
            fn = getattr(real, name)
            return lambda *a, **k: calls.append(name) or fn(*a, **k)

    monkeypatch.setattr(ops, "_CPP", [Recording(), ops._CPP[1]])
    torch.manual_seed(0)
    model = anl_fused.insert_anl(small_vgg().double(), **VARIANTS[variant])
    x, y = torch.randn(6, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (6,))
    check(*run_both(model, x, y), torch.float64)
    # round 2's add_noise: the C++ kernel, with its C++ autograd node where h requires grad (not at the input)
    added = "add_noise" if variant == "input_only" else "add_noise_autograd"
    assert "std" in calls and added in calls, calls
    if variant not in ("gaussian", "input_sign", "input_only"):
        assert "noise_scale" in calls, calls


@pytest.mark.parametrize("backend", ["torch", "cpp", "triton"])
def test_channels_last_model_equals_reference(backend, monkeypatch):
    if backend == "triton":
        pytest.importorskip("triton")
    monkeypatch.setenv("ANL_FUSED_BACKEND", backend)
    torch.manual_seed(0)
    model = anl_fused.insert_anl(small_vgg().double(), eps=0.5, input_eps=0.1).to(memory_format=torch.channels_last)
    x = torch.randn(5, 3, 8, 8, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (5,))
    check(*run_both(model, x, y), torch.float64)


def test_bfloat16_autocast_equals_reference():
    """Under CPU autocast (bf16 activations) both paths compute the same noise up to rounding (the
    engine rounds scale * g once in bf16, the reference rounds a float64 eta), far closer to each
    other than to plain training."""
    torch.manual_seed(0)
    model = anl_fused.insert_anl(small_vgg(), eps=0.5)
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 10, (6,))
    fast, ref = twins(model)

    def closure(m):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return F.cross_entropy(m(x), y)

    torch.manual_seed(1)
    anl_fused.TwoRound(fast, torch.Generator().manual_seed(0)).step(lambda: closure(fast))
    torch.manual_seed(1)
    reference.two_round_step(ref, lambda: closure(ref), torch.Generator().manual_seed(0))
    gf, gr = flat_grads(fast), flat_grads(ref)
    anl_fused.set_anl_enabled(ref, False)
    ref.zero_grad()
    torch.manual_seed(1)
    closure(ref).backward()
    # measured: 6% apart (bf16 rounding of eta, amplified through BatchNorm at batch 6), 53% from plain
    assert (gf - gr).norm() <= 0.15 * gr.norm()
    assert (gf - flat_grads(ref)).norm() >= 0.3 * gr.norm()


class _Checkpointed(torch.nn.Module):
    """The small VGG with its first two conv-BN-ReLU blocks (two ANL layers) under non-reentrant checkpointing."""

    def __init__(self, checkpoint: bool):
        super().__init__()
        self.body = small_vgg(dropout=True)
        self.checkpoint = checkpoint

    def forward(self, x):
        if not self.checkpoint:
            return self.body(x)
        h = torch.utils.checkpoint.checkpoint(self.body[:7], x, use_reentrant=False)
        return self.body[7:](h)


def test_reference_under_non_reentrant_checkpointing_is_the_uncheckpointed_step():
    """Round 2's backward recomputes the checkpointed layers: the oracle must add the same eta again (it
    recomputed them without noise, 8.1e-3 off in float64), and round 1's recompute must add the same leaf."""
    torch.manual_seed(0)
    plain = anl_fused.insert_anl(_Checkpointed(False).double(), 0.5, input_eps=0.1)
    ckpt = copy.deepcopy(plain)
    ckpt.checkpoint = True
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 3, 8, 8, dtype=torch.float64, generator=g), torch.randint(0, 10, (6,), generator=g)
    for m in (plain, ckpt):
        torch.manual_seed(1)  # the same dropout masks
        reference.two_round_step(m, lambda m=m: F.cross_entropy(m(x), y), torch.Generator().manual_seed(2))
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-10, atol=1e-12, msg=name)
    with pytest.raises(RuntimeError, match=r"checkpointing needs reference.two_round_step\(..., backward=True\)"):
        reference.two_round_step(ckpt, lambda: F.cross_entropy(ckpt(x), y), torch.Generator(), backward=False)


def test_sign_form_needs_no_std():
    """``eta = eps sign(g)`` (Eq. 8) uses neither ``s(h)`` nor ``r_b``: a constant input (``s = 0``) still gets
    its noise, as in the oracle."""
    torch.manual_seed(0)
    model = anl_fused.insert_anl(small_vgg().double(), eps=0.5, input_eps=0.05, input_sign=True)
    x, y = torch.full((6, 3, 8, 8), 0.25, dtype=torch.float64), torch.randint(0, 10, (6,))
    check(*run_both(model, x, y, steps=2), torch.float64)
