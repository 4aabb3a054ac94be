"""noise_scale kernel (kernels/noise_scale.py) against the torch formula of anl_fused.ops."""

import importlib
import os

import pytest
import torch

if not torch.cuda.is_available():  # as tests/conftest.py: before triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ._helpers import DTYPES, gpu_compiled_or_skip, kernel_device, poisoned_allocations, rand  # noqa: E402
from anl_fused import kernels, ops  # noqa: E402

ns_mod = importlib.import_module("anl_fused.kernels.noise_scale")

# scale is a few roundings of float32 arithmetic (float64 for float64 g) away from the truth.
RTOL = {torch.float64: 1e-13, torch.float32: 1e-6, torch.float16: 1e-6, torch.bfloat16: 1e-6}

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy in the interpreter, on inf/NaN


@pytest.fixture
def dev():
    return kernel_device()


@pytest.fixture
def small_blocks(monkeypatch):
    """Tiny blocks: samples span many chunks, the finalize loop runs several iterations."""
    monkeypatch.setattr(ns_mod, "MAX_BLOCK", 32)
    monkeypatch.setattr(ns_mod, "PART_BLOCK", 2)


def truth(g, z, s, eps):
    """The contract in float64: norm_b = max|g_b| (NaN-propagating), scale_b = r_b * s / norm_b or 0."""
    g64 = g.detach().double().cpu().reshape(g.shape[0], g[0].numel() if g.shape[0] else 0)
    norm = g64.abs().amax(dim=1) if g64.shape[1] else torch.zeros(g.shape[0], dtype=torch.float64)
    if z is None:
        r = torch.full_like(norm, eps)
    else:
        r = (eps / 2 + abs(eps) / 4 * z.double().cpu()).clamp(min(0.0, eps), max(0.0, eps))
    scale = r * (1.0 if s is None else s.double().cpu()) / norm
    valid = torch.isfinite(norm) & (norm > 0)
    return torch.where(valid, scale, torch.zeros_like(scale)), norm


def check(g, z, s, eps):
    with poisoned_allocations():
        scale, norm = kernels.noise_scale(g, z, s, eps)
    acc = ops.acc_dtype(g.dtype)
    B = g.shape[0]
    for t in (scale, norm):
        assert t.shape == (B,) and t.dtype == acc and t.device == g.device and not t.requires_grad
    t_scale, t_norm = truth(g, z, s, eps)
    # norm is an exact max of values of g: no rounding at all
    assert torch.equal(torch.isnan(norm.cpu()), torch.isnan(t_norm))
    fin = ~torch.isnan(t_norm)
    assert torch.equal(norm.double().cpu()[fin], t_norm[fin])
    # a few roundings of |eps| * s / norm (r_b = eps/2 + |eps|/4 z_b may cancel to ~0)
    ok = torch.isfinite(t_norm) & (t_norm > 0)
    mag = abs(eps) * (1.0 if s is None else abs(float(s))) / torch.where(ok, t_norm, 1.0)
    err = (scale.double().cpu() - t_scale).abs()
    assert (err <= 4 * RTOL[g.dtype] * (t_scale.abs() + mag)).all(), f"scale {scale} != {t_scale}"
    assert (scale.cpu()[~ok] == 0).all()
    return scale, norm


def rand_z(B, dev):
    return torch.randn(B, device=dev) * 3  # large |z| so the clamp binds for some samples


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_matches_torch(dev, dtype, layout):
    g = rand((5, 3, 7, 9), dtype, dev, layout=layout, std=1e-3)
    z, s = rand_z(5, dev), torch.tensor(0.8, device=dev, dtype=ops.acc_dtype(dtype))
    check(g, z, s, 0.25)


@pytest.mark.parametrize("eps", [0.5, -0.5, 1e-3])
@pytest.mark.parametrize("use_z", [True, False])
@pytest.mark.parametrize("use_s", [True, False])
def test_eps_z_s_variants(dev, eps, use_z, use_s):
    B = 6
    g = rand((B, 4, 5, 3), torch.float32, dev)
    z = rand_z(B, dev) if use_z else None
    s = torch.tensor(1.7, device=dev) if use_s else None
    scale, _ = check(g, z, s, eps)
    assert ((scale >= 0) if eps > 0 else (scale <= 0)).all()


def test_same_as_torch_backend(dev, monkeypatch):
    g = rand((4, 3, 6, 6), torch.float32, dev)
    z, s = rand_z(4, dev), torch.tensor(0.3, device=dev)
    monkeypatch.setenv("ANL_FUSED_BACKEND", "triton")
    k_scale, k_norm = ops.noise_scale(g, z, s, -0.4)
    monkeypatch.setenv("ANL_FUSED_BACKEND", "torch")
    t_scale, t_norm = ops.noise_scale(g, z, s, -0.4)
    assert torch.equal(k_norm, t_norm)
    torch.testing.assert_close(k_scale, t_scale, rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_non_finite_samples(dev, small_blocks, dtype):
    """NaN anywhere in a sample makes its norm NaN (even next to inf and in the last chunk);
    inf makes it inf; both, and all-zero samples, get scale 0; the other samples are unaffected."""
    g = rand((6, 3, 5, 7), dtype, dev)
    g[0, 2, 4, 6] = float("nan")  # last element of the sample
    g[1, 0, 0, 0] = float("inf")
    g[2, 1, 2, 3] = -float("inf")
    g[3, 1, 1, 1] = float("nan")
    g[3, 2, 2, 2] = float("inf")
    g[4] = 0
    z = torch.full((6,), 0.5, device=dev)  # r_b = 0.1875, inside the clamp range
    scale, norm = check(g, z, torch.tensor(2.0, device=dev), 0.3)
    assert torch.isnan(norm[0]) and torch.isnan(norm[3])
    assert norm[1] == float("inf") and norm[2] == float("inf") and norm[4] == 0
    assert (scale[:5] == 0).all() and scale[5] != 0


@pytest.mark.parametrize("shape", [(1, 3, 4, 5), (1, 5000), (3, 2, 50, 50), (7, 1), (4,), (2, 0), (0, 3)])
def test_shapes(dev, shape):
    """Batch 1, a sample larger than the largest block, one element per sample, empty."""
    g = rand(shape, torch.float32, dev)
    check(g, rand_z(shape[0], dev), None, 0.1)


@pytest.mark.parametrize("M", [1, 31, 32, 33, 95, 97, 1000])
def test_many_chunks(dev, small_blocks, M):
    g = rand((3, M), torch.float32, dev)
    g[1, M - 1] = 50.0  # the maximum in the last chunk of one sample
    scale, norm = check(g, rand_z(3, dev), torch.tensor(0.5, device=dev), 0.2)
    assert norm[1] == 50.0


def test_float64_eps_keeps_precision(dev):
    """eps travels as a float32 pair; the float64 result must match to float64 precision."""
    g = rand((3, 20), torch.float64, dev)
    for eps in (0.1, -1 / 3, 2.0 ** -30 * 1.2345678901234):
        check(g, rand_z(3, dev).double(), torch.tensor(0.7, dtype=torch.float64, device=dev), eps)
        check(g, None, None, eps)


def test_bad_arguments(dev):
    g = rand((3, 4), torch.float32, dev)
    with pytest.raises(ValueError, match="one value per sample"):
        kernels.noise_scale(g, torch.randn(4, device=dev), None, 0.1)
    with pytest.raises(ValueError, match="single value"):
        kernels.noise_scale(g, None, torch.ones(2, device=dev), 0.1)
    with pytest.raises(ValueError, match="finite"):
        kernels.noise_scale(g, None, None, float("inf"))
    with pytest.raises(TypeError):
        kernels.noise_scale(g.to(torch.int32), None, None, 0.1)


def test_no_gradient(dev):
    g = rand((3, 4), torch.float32, dev).requires_grad_()
    s = torch.tensor(0.5, device=dev, requires_grad=True)
    scale, norm = kernels.noise_scale(g, None, s, 0.1)
    assert not scale.requires_grad and not norm.requires_grad


@settings(max_examples=8, deadline=None)
@given(
    B=st.integers(1, 5),
    rest=st.lists(st.integers(1, 11), min_size=0, max_size=3),
    dtype=st.sampled_from(DTYPES),
    eps=st.floats(-2, 2).filter(lambda e: abs(e) > 1e-6),
    use_z=st.booleans(),
    use_s=st.booleans(),
)
def test_hypothesis(B, rest, dtype, eps, use_z, use_s):
    dev = kernel_device()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ns_mod, "MAX_BLOCK", 16)
        mp.setattr(ns_mod, "PART_BLOCK", 4)
        g = rand((B, *rest), dtype, dev, std=10.0)
        z = rand_z(B, dev) if use_z else None
        s = torch.rand((), device=dev) + 0.1 if use_s else None
        check(g, z, s, eps)


@pytest.mark.gpu
class TestGPU:
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_cuda_large(self, dtype):
        gpu_compiled_or_skip()
        g = rand((128, 64, 32, 32), dtype, "cuda", layout="channels_last", std=1e-2)
        g[3, 5, 7, 9] = float("nan")
        g[7, 0, 0, 0] = float("inf")
        check(g, rand_z(128, "cuda"), torch.tensor(0.9, device="cuda"), 0.5)

    def test_compile_fullgraph(self):
        gpu_compiled_or_skip()
        torch._dynamo.reset()

        def f(g, z, s):
            return kernels.noise_scale(g, z, s, -0.3)

        g = rand((16, 8, 9, 9), torch.bfloat16, "cuda")
        z, s = rand_z(16, "cuda"), torch.tensor(0.4, device="cuda")
        got = torch.compile(f, fullgraph=True)(g, z, s)
        want = f(g, z, s)
        assert torch.equal(got[1], want[1])
        torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=0)
