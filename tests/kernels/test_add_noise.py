"""add_noise kernel (kernels/add_noise.py) against the torch formula of anl_fused.ops; plus a CPU
check that torch.compile(fullgraph=True) traces the three ops of a round without graph breaks."""

import importlib
import os
import subprocess
import sys
import textwrap

import pytest
import torch

if not torch.cuda.is_available():  # as tests/conftest.py: before triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import given, settings
from hypothesis import strategies as st

from anl_fused import kernels, ops

from . import _helpers as helpers
from ._helpers import (
    DTYPES,
    RTOL,
    gpu_compiled_or_skip,
    kernel_device,
    poisoned_allocations,
    rand,
)

an_mod = importlib.import_module("anl_fused.kernels.add_noise")

pytestmark = [
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),  # numpy in the interpreter, on inf/NaN
    pytest.mark.usefixtures("seeded"),
]


def truth(h, g, scale):
    """(h, eta) in float64, eta = scale[b] * g' (g' = g with non-finite entries set to 0)."""
    g64 = torch.nan_to_num(g.detach().double().cpu(), nan=0.0, posinf=0.0, neginf=0.0)
    shape = (-1,) + (1,) * (h.dim() - 1)
    return h.detach().double().cpu(), scale.detach().double().cpu().reshape(shape) * g64


def check(h, g, scale):
    with poisoned_allocations():
        out = kernels.add_noise(h, g, scale)
    assert out.shape == h.shape and out.dtype == h.dtype and out.device == h.device
    h64, eta = truth(h, g, scale)
    # float32 (float64) arithmetic rounded once to h's dtype: a few ulps of |h| + |eta|
    err = (out.double().cpu() - (h64 + eta)).abs()
    assert (err <= RTOL[h.dtype] * (h64.abs() + eta.abs())).all(), f"max error {err.max().item():.3g}"
    return out


def scales(B, dev, dtype=torch.float32):
    return (torch.rand(B, device=dev, dtype=dtype) + 0.5) * torch.where(torch.arange(B, device=dev) % 2 == 0, 1, -1)


@pytest.mark.parametrize("h_dtype", DTYPES)
@pytest.mark.parametrize("g_dtype", [torch.float32, torch.bfloat16, None])
def test_dtypes(dev, h_dtype, g_dtype):
    g_dtype = g_dtype or h_dtype
    h = rand((4, 3, 7, 9), h_dtype, dev, mean=1.0)
    g = rand((4, 3, 7, 9), g_dtype, dev, std=0.1)
    check(h, g, scales(4, dev, ops.acc_dtype(h_dtype)))


@pytest.mark.parametrize("h_layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("g_layout", ["contiguous", "channels_last", "strided"])
def test_layouts(dev, h_layout, g_layout):
    """Every layout pair: the batch index of an element must follow h's layout and g's must match."""
    shape = (3, 5, 4, 6)
    h = rand(shape, torch.float32, dev, layout=h_layout)
    g = rand(shape, torch.float32, dev, layout=g_layout)
    out = check(h, g, scales(3, dev))
    if h_layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)
    else:
        assert out.is_contiguous()


def test_same_as_torch_backend(dev, monkeypatch):
    h = rand((4, 3, 6, 6), torch.float32, dev)
    g = rand((4, 3, 6, 6), torch.float32, dev)
    sc = scales(4, dev)
    monkeypatch.setenv("ANL_FUSED_BACKEND", "triton")
    got = ops.add_noise(h, g, sc)
    monkeypatch.setenv("ANL_FUSED_BACKEND", "torch")
    want = ops.add_noise(h, g, sc)
    # one float32 rounding of h + scale*g each (the CPU may fuse the multiply-add): an ulp of the
    # summands, not of the (possibly cancelling) result
    h64, eta = truth(h, g, sc)
    assert ((got.double().cpu() - want.double().cpu()).abs() <= 2 * RTOL[torch.float32] * (h64.abs() + eta.abs())).all()


def test_zero_scale_ignores_non_finite_g(dev):
    """eta_b = 0 where scale_b == 0 even if g_b holds inf/NaN: out_b == h_b exactly."""
    h = rand((4, 2, 5, 5), torch.float32, dev)
    g = rand((4, 2, 5, 5), torch.float32, dev)
    g[1, 0, 0, 0], g[1, 1, 4, 4], g[2, 1, 1, 1] = float("nan"), float("inf"), -float("inf")
    g[3] = float("nan")
    sc = torch.tensor([0.5, 0.0, 0.0, 0.0], device=dev)
    out = check(h, g, sc)
    assert torch.equal(out[1:], h[1:])
    assert torch.isfinite(out).all()


def test_noise_scale_then_add_noise(dev):
    """The round as the engine runs it: non-finite samples get no noise, the others do."""
    h = rand((5, 3, 6, 7), torch.bfloat16, dev)
    g = rand((5, 3, 6, 7), torch.float32, dev, std=1e-4)
    g[2, 0, 1, 1] = float("nan")
    g[4, 2, 5, 6] = float("inf")
    sc, _ = kernels.noise_scale(g, torch.randn(5, device=dev), torch.tensor(0.5, device=dev), 0.2)
    out = check(h, g.to(torch.bfloat16), sc)
    assert torch.equal(out[2], h[2]) and torch.equal(out[4], h[4])
    assert not torch.equal(out[0], h[0])


@pytest.mark.parametrize("shape", [(1, 3, 4, 5), (1, 5000), (2, 3, 41, 43), (7, 1), (5,), (2, 0), (0, 3)])
def test_shapes(dev, shape):
    """Batch 1, samples larger than one block, one element per sample, empty."""
    h = rand(shape, torch.float32, dev)
    g = rand(shape, torch.float32, dev)
    check(h, g, scales(shape[0], dev))


@pytest.mark.parametrize("M", [1, 31, 32, 33, 97])
def test_many_chunks(dev, monkeypatch, M):
    monkeypatch.setattr(an_mod, "MAX_BLOCK", 32)
    check(rand((3, M), torch.float32, dev), rand((3, M), torch.float32, dev), scales(3, dev))


def test_scale_shape_and_dtype(dev):
    """scale may be [B, 1, 1, 1] and of another float dtype; it is read as h's accumulation dtype."""
    h = rand((3, 2, 4, 4), torch.float64, dev)
    g = rand((3, 2, 4, 4), torch.float64, dev)
    check(h, g, scales(3, dev).view(3, 1, 1, 1))


def test_bad_arguments(dev):
    h = rand((3, 4), torch.float32, dev)
    with pytest.raises(ValueError, match="shape"):
        kernels.add_noise(h, rand((3, 5), torch.float32, dev), scales(3, dev))
    with pytest.raises(ValueError, match="one value per sample"):
        kernels.add_noise(h, h, scales(4, dev))
    with pytest.raises(ValueError, match="alpha"):
        kernels.add_noise(h, h, scales(3, dev), alpha=float("nan"))
    with pytest.raises(TypeError):
        kernels.add_noise(h.to(torch.int64), h, scales(3, dev))


def test_gradient_only_to_h(dev):
    h = rand((3, 2, 4, 5), torch.float32, dev, layout="channels_last").requires_grad_()
    g = rand((3, 2, 4, 5), torch.float32, dev).requires_grad_()
    sc = scales(3, dev).requires_grad_()
    out = kernels.add_noise(h, g, sc)
    w = torch.randn(out.shape, device=dev)
    (out * w).sum().backward()
    assert torch.equal(h.grad, w)
    assert g.grad is None and sc.grad is None


def test_gradcheck(dev):
    h = rand((2, 3, 2, 3), torch.float64, dev).requires_grad_()
    g = rand((2, 3, 2, 3), torch.float64, dev)
    sc = scales(2, dev, torch.float64)
    assert torch.autograd.gradcheck(lambda x: kernels.add_noise(x, g, sc), (h,))


@settings(max_examples=8, deadline=None)
@given(
    B=st.integers(1, 5),
    rest=st.lists(st.integers(1, 11), min_size=0, max_size=3),
    h_dtype=st.sampled_from(DTYPES),
    g_dtype=st.sampled_from(DTYPES),
    channels_last=st.booleans(),
)
def test_hypothesis(B, rest, h_dtype, g_dtype, channels_last):
    dev = kernel_device()
    shape = (B, *rest)
    layout = "channels_last" if channels_last and len(shape) == 4 else "contiguous"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(an_mod, "MAX_BLOCK", 16)
        check(rand(shape, h_dtype, dev, layout=layout), rand(shape, g_dtype, dev), scales(B, dev))


def extreme_gradients(dtype, dev, shape=(5, 3, 8, 8)):
    """g in ``dtype`` whose samples are: all zero; zero but one subnormal element; zero but one
    element at the largest finite value; huge everywhere; ordinary. The 4x3x8x8 float16 case of
    issue #12 is sample 1 (a single 6e-8)."""
    g = rand(shape, dtype, dev, std=1e-2)
    fin = torch.finfo(dtype)
    g[0] = 0
    g[1] = 0
    g[1, 2, 3, 4] = fin.smallest_normal * fin.eps  # the smallest subnormal (6e-8 in float16)
    g[2] = 0
    g[2, 0, 0, 0] = fin.max
    g[3] = rand(shape[1:], dtype, dev) * (fin.max / 8)
    return g


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_extreme_gradients_give_finite_outputs(dev, monkeypatch, backend, dtype, layer_norm):
    """Issue #12: the torch backend cast scale to float16 before the multiply, so a tiny max|g|
    overflowed scale to inf and inf * 0 made every output NaN. Both backends compute in float32
    and round once; with zero, subnormal and huge gradients the output is finite wherever h is,
    and equals h + r_b * s * g_b / norm_b up to rounding where that is representable."""
    monkeypatch.setenv("ANL_FUSED_BACKEND", backend)
    h = rand((5, 3, 8, 8), dtype, dev, mean=0.5)
    h[4, 0, 0, 0] = float("inf")  # not finite in h: may stay so
    g = extreme_gradients(dtype, dev)
    z, s = torch.randn(5, device=dev), ops.std(h[:4])
    scale, _ = ops.noise_scale(g, z, s, 0.3, layer_norm=layer_norm)
    out = ops.add_noise(h, g, scale)
    assert out.dtype == dtype
    assert torch.isfinite(out[torch.isfinite(h)]).all(), out
    interp_bf16 = backend == "triton" and dtype == torch.bfloat16 and helpers.interpreted()
    if not layer_norm and not interp_bf16:  # (the interpreter flushes bfloat16 subnormals)
        # every sample with a finite, nonzero norm gets noise of size |r_b| * s at its max element
        for b in (1, 2, 3):
            i = g[b].abs().argmax()
            eta = (out[b].flatten()[i].double() - h[b].flatten()[i].double()).abs()
            want = scale[b].double().abs() * g[b].flatten()[i].double().abs()
            assert eta <= want * 1.01 + 4 * RTOL[dtype] * h[b].abs().max().double()
    assert torch.equal(out[0], h[0])  # zero gradient: no noise


def test_issue_12_float16_case(monkeypatch):
    """The exact case of the issue on the torch backend: h 4x3x8x8 half, g zero but one 6e-8."""
    monkeypatch.setenv("ANL_FUSED_BACKEND", "torch")
    h = torch.randn(4, 3, 8, 8).half()
    g = torch.zeros_like(h)
    g[1, 2, 3, 4] = 6e-8
    scale, _ = ops.noise_scale(g, torch.randn(4), ops.std(h), 0.1)
    out = ops.add_noise(h, g, scale)
    assert torch.isfinite(out).all()
    assert out[1, 2, 3, 4] != h[1, 2, 3, 4]


@pytest.mark.parametrize("h_dtype", DTYPES)
def test_alpha_and_shared_scale(dev, h_dtype):
    """Gaussian noise in one launch (what noise_terms hands to add_noise): add_noise(h, z, s, alpha=|eps|/4)
    equals the per-sample form scale_b = full(|eps|/4) * s, bit for bit."""
    acc = ops.acc_dtype(h_dtype)
    h = rand((4, 3, 5, 7), h_dtype, dev, mean=1.0)
    z = torch.randn(h.shape, device=dev, dtype=acc)
    s = torch.tensor(0.37, device=dev, dtype=acc)
    eps = -0.3
    want = kernels.add_noise(h, z, torch.full((4,), abs(eps) / 4, dtype=acc, device=dev) * s)
    with poisoned_allocations():
        got = kernels.add_noise(h, z, s, alpha=abs(eps) / 4)
    if h_dtype == torch.float64:  # alpha travels as a float32 pair (~48 bits)
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
    else:
        assert torch.equal(got, want)
    check(h, z, (s * abs(eps) / 4).expand(4))
    # no scale: alpha alone
    torch.testing.assert_close(
        kernels.add_noise(h, z, None, alpha=0.5), kernels.add_noise(h, z, s.new_full((4,), 0.5)), rtol=0, atol=0
    )


@pytest.mark.parametrize("form", ["per_sample", "shared", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_backends_agree(dev, monkeypatch, form, dtype):
    h = rand((3, 4, 5, 6), dtype, dev, layout="channels_last")
    g = rand((3, 4, 5, 6), torch.bfloat16, dev)
    g[1, 0, 0, 0] = float("nan")
    sc = {"per_sample": scales(3, dev), "shared": torch.tensor([0.7], device=dev), "none": None}[form]
    outs = []
    for backend in ("triton", "torch"):
        monkeypatch.setenv("ANL_FUSED_BACKEND", backend)
        outs.append(ops.add_noise(h, g, sc, alpha=0.25))
    assert outs[0].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(outs[0], outs[1])  # float32 math on both (the CPU may fuse a multiply-add)


def test_eager_autograd_paths(dev):
    """With grad enabled the direct launch goes through a light autograd.Function; without, no
    graph is built; the compile path (the triton_op) gives the same values and gradient."""
    h = rand((3, 2, 4, 5), torch.float32, dev).requires_grad_()
    g, sc = rand((3, 2, 4, 5), torch.float32, dev), scales(3, dev)
    out = kernels.add_noise(h, g, sc)
    op_out = torch.ops.anl_fused.add_noise(h, g, sc, 1.0)
    assert torch.equal(out, op_out) and out.requires_grad
    w = torch.randn_like(out)
    (gh,) = torch.autograd.grad(out, h, w)
    (gop,) = torch.autograd.grad(op_out, h, w)
    assert torch.equal(gh, w) and torch.equal(gop, w)
    with torch.no_grad():
        assert not kernels.add_noise(h, g, sc).requires_grad


def test_repeated_calls_are_bitwise_equal(dev):
    h, g = rand((5, 3, 7, 7), torch.bfloat16, dev), rand((5, 3, 7, 7), torch.float32, dev)
    sc = scales(5, dev)
    first = kernels.add_noise(h, g, sc)
    for _ in range(2):
        assert torch.equal(kernels.add_noise(h, g, sc), first)


_TRACE_SCRIPT = textwrap.dedent(
    """
    import re
    import torch
    from torch._dynamo.backends.common import aot_autograd
    from anl_fused import kernels

    graphs = []

    class Traced(Exception):
        pass

    def capture(gm, example_inputs):
        graphs.append(gm)
        def run(*args):
            raise Traced  # traced and captured; running needs a GPU
        return run

    def step(h, z, stats):
        s = kernels.std(h)
        out = torch.relu(h)
        scale, norm = kernels.noise_scale(out, z, s, 0.25, stats=stats)
        sign_scale, _ = kernels.noise_scale(out, None, None, -0.5, layer_norm=True)
        gauss = kernels.add_noise(h, out, s, alpha=0.125)
        return kernels.add_noise(gauss, out.to(torch.bfloat16), scale + sign_scale), norm

    h = torch.randn(4, 3, 8, 8).to(memory_format=torch.channels_last).requires_grad_()
    fn = torch.compile(step, fullgraph=True, backend=aot_autograd(fw_compiler=capture))
    try:
        fn(h, torch.randn(4), torch.zeros(2, dtype=torch.int64))
    except Traced:
        pass
    code = graphs[0].code
    # one launch per op call: std, noise_scale (twice), add_noise (twice)
    assert code.count("triton_kernel_wrapper_functional(") == 5, code
    assert re.search(r"'stats_ptr': (arg|primals)\\w+", code), code  # stats is the graph input, updated in place
    print("TRACED_OK")
    """
)


def test_compile_traces_fullgraph_on_cpu():
    """torch.compile(fullgraph=True) of std -> ReLU -> noise_scale (with and without z, s, stats,
    layer_norm) -> add_noise (Gaussian form, then adversarial) traces into one graph holding one
    Triton kernel launch per op call (no graph break, no opaque op). Runs in a
    subprocess without TRITON_INTERPRET, since interpreted kernels cannot be traced; the captured
    graph is not run (compiled Triton needs a GPU: see TestGPU for that)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "ANL_FUSED_BACKEND")}
    env["PYTHONWARNINGS"] = "ignore"
    res = subprocess.run([sys.executable, "-c", _TRACE_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert "TRACED_OK" in res.stdout, res.stdout[-3000:] + res.stderr[-5000:]


@pytest.mark.gpu
class TestGPU:
    @pytest.mark.parametrize("h_dtype", DTYPES)
    def test_cuda_large(self, h_dtype):
        gpu_compiled_or_skip()
        h = rand((128, 64, 32, 32), h_dtype, "cuda", layout="channels_last")
        g = rand((128, 64, 32, 32), torch.bfloat16, "cuda", layout="channels_last", std=1e-2)
        g[5, 1, 2, 3] = float("nan")
        sc = scales(128, "cuda", ops.acc_dtype(h_dtype))
        sc[5] = 0
        out = check(h, g, sc)
        assert torch.equal(out[5], h[5])

    def test_compile_fullgraph_round(self):
        """The whole round compiled with inductor on CUDA equals the eager kernels, gradients included."""
        gpu_compiled_or_skip()
        torch._dynamo.reset()

        def step(h, z):
            s = kernels.std(h)
            out = torch.relu(h)
            scale, norm = kernels.noise_scale(out, z, s, 0.25)
            return kernels.add_noise(h, out.to(torch.bfloat16), scale), norm

        h = rand((16, 8, 9, 9), torch.float32, "cuda", layout="channels_last").requires_grad_()
        z = torch.randn(16, device="cuda")
        got, got_norm = torch.compile(step, fullgraph=True)(h, z)
        want, want_norm = step(h, z)
        assert torch.equal(got_norm, want_norm)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        w = torch.randn_like(got)
        (grad,) = torch.autograd.grad(got, h, w)
        assert torch.equal(grad, w)
