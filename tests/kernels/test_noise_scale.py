"""noise_scale kernel (kernels/noise_scale.py) against the torch formula of anl_fused.ops."""

import importlib
import os

import pytest
import torch

if not torch.cuda.is_available():  # as tests/conftest.py: before triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import given, settings
from hypothesis import strategies as st

from anl_fused import kernels, ops

from . import _helpers as helpers
from ._helpers import DTYPES, gpu_compiled_or_skip, kernel_device, poisoned_allocations, rand

layout_mod = importlib.import_module("anl_fused.kernels._layout")

ns_mod = importlib.import_module("anl_fused.kernels.noise_scale")

# scale is a few roundings of float32 arithmetic (float64 for float64 g) away from the truth.
RTOL = {torch.float64: 1e-13, torch.float32: 1e-6, torch.float16: 1e-6, torch.bfloat16: 1e-6}

pytestmark = [
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),  # numpy in the interpreter, on inf/NaN
    pytest.mark.usefixtures("seeded"),
]


@pytest.fixture
def small_blocks(monkeypatch):
    """Tiny blocks: samples span many chunks, the finalize loop runs several iterations."""
    monkeypatch.setattr(ns_mod, "MAX_BLOCK", 32)
    monkeypatch.setattr(ns_mod, "PART_BLOCK", 2)


@pytest.fixture
def many_programs(monkeypatch):
    """Tiny blocks and few partials: many programs, each reducing several tiles, and a finalize
    that loops over several [samples, chunks] tiles."""
    monkeypatch.setattr(ns_mod, "MAX_BLOCK", 16)
    monkeypatch.setattr(ns_mod, "MAX_PARTS", 40)
    monkeypatch.setattr(ns_mod, "PART_BLOCK", 2)
    monkeypatch.setattr(ns_mod, "FINAL_SAMPLES", 4)


def truth(g, z, s, eps, layer_norm=False):
    """The contract in float64: norm_b = max|g_b| (NaN-propagating); scale_b = r_b * s / d_b with
    d_b = norm_b (per sample) or the largest finite norm (per layer), 0 where invalid, clamped to
    the finite range of the result dtype."""
    g64 = g.detach().double().cpu().reshape(g.shape[0], g[0].numel() if g.shape[0] else 0)
    norm = g64.abs().amax(dim=1) if g64.shape[1] else torch.zeros(g.shape[0], dtype=torch.float64)
    if z is None:
        r = torch.full_like(norm, eps)
    else:
        r = (eps / 2 + abs(eps) / 4 * z.double().cpu()).clamp(min(0.0, eps), max(0.0, eps))
    rs = r * (1.0 if s is None else s.double().cpu())
    finite = torch.isfinite(norm)
    if layer_norm:
        n = norm[finite].max() if finite.any() else torch.tensor(0.0, dtype=torch.float64)
        valid = finite & (n > 0)
        divisor = torch.where(valid, n, 1.0)
    else:
        valid = finite & (norm > 0)
        divisor = torch.where(valid, norm, 1.0)
    big = torch.finfo(ops.acc_dtype(g.dtype)).max
    scale = (rs / divisor).clamp(-big, big)
    return torch.where(valid, scale, torch.zeros_like(scale)), norm, divisor


def check(g, z, s, eps, layer_norm=False, stats=None, fn=None):
    """Run noise_scale (``fn``, default the Triton op) on poisoned allocations; compare with the
    float64 contract; check the stats increment."""
    fn = fn or kernels.noise_scale
    before = None if stats is None else stats.clone()
    with poisoned_allocations():
        scale, norm = fn(g, z, s, eps, layer_norm=layer_norm, stats=stats)
    acc = ops.acc_dtype(g.dtype)
    B = g.shape[0]
    for t in (scale, norm):
        assert t.shape == (B,) and t.dtype == acc and t.device == g.device and not t.requires_grad
    t_scale, t_norm, divisor = truth(g, z, s, eps, layer_norm)
    # norm is an exact max of values of g: no rounding at all
    assert torch.equal(torch.isnan(norm.cpu()), torch.isnan(t_norm))
    fin = ~torch.isnan(t_norm)
    assert torch.equal(norm.double().cpu()[fin], t_norm[fin])
    # a few roundings of |eps| * s / divisor (r_b = eps/2 + |eps|/4 z_b may cancel to ~0)
    mag = (abs(eps) * (1.0 if s is None else abs(float(s))) / divisor).clamp(max=torch.finfo(acc).max)
    err = (scale.double().cpu() - t_scale).abs()
    assert (err <= 4 * RTOL[g.dtype] * (t_scale.abs() + mag)).all(), f"scale {scale} != {t_scale}"
    assert (scale.cpu()[t_scale == 0] == 0).all()
    assert torch.isfinite(scale).all()
    if stats is not None:
        want = torch.tensor([(~torch.isfinite(t_norm)).sum(), (t_norm == 0).sum()])
        assert torch.equal(stats.cpu() - before.cpu(), want), (stats, before, want)
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
    _, norm = check(g, rand_z(3, dev), torch.tensor(0.5, device=dev), 0.2)
    assert norm[1] == 50.0


def test_float64_eps_keeps_precision(dev):
    """eps travels as a float32 pair; the float64 result must match to float64 precision."""
    g = rand((3, 20), torch.float64, dev)
    for eps in (0.1, -1 / 3, 2.0**-30 * 1.2345678901234):
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


def stats0(dev):
    return torch.zeros(2, dtype=torch.int64, device=dev)


def layer_norm_g(dtype, dev, B=7, rest=(3, 5, 6), layout="contiguous"):
    """Random samples of very different sizes (a layer norm differs from per-sample norms)."""
    g = rand((B, *rest), dtype, dev, layout=layout)
    return g * torch.logspace(-2, 1, B, dtype=torch.float64).to(dtype).to(dev).view(-1, *(1,) * len(rest))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_layer_norm(dev, dtype, layout):
    """Algorithm 1's reading: one divisor, the largest norm of the layer, for every sample."""
    g = layer_norm_g(dtype, dev, layout=layout)
    z = torch.randn(7, device=dev).clamp(-1.5, 1.5)  # r_b never clamps to 0
    s = torch.tensor(0.8, device=dev, dtype=ops.acc_dtype(dtype))
    scale, norm = check(g, z, s, 0.3, layer_norm=True, stats=stats0(dev))
    per_sample, _ = kernels.noise_scale(g, z, s, 0.3)
    # the largest sample has the same scale either way, the others get proportionally less
    top = int(norm.argmax())
    torch.testing.assert_close(scale[top], per_sample[top], rtol=1e-6, atol=0)
    assert (per_sample != 0).all()
    ratio = (scale / per_sample).double().cpu()
    torch.testing.assert_close(ratio, (norm / norm.max()).double().cpu(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_layer_norm_non_finite_and_zero_samples(dev, many_programs, layer_norm):
    """NaN / inf samples get scale 0 and do not enter the layer's norm; a zero sample gets the
    layer's scale (its g is 0, so is its noise); stats count both kinds."""
    g = layer_norm_g(torch.float32, dev, B=9, rest=(4, 13))
    g[1, 0, 3] = float("nan")
    g[4, 2, 12] = float("inf")
    g[8, 3, 0] = -float("inf")
    g[6] = 0
    stats = stats0(dev)
    z = torch.randn(9, device=dev).clamp(-1.5, 1.5)  # r_b never clamps to 0
    scale, _ = check(g, z, torch.tensor(1.3, device=dev), -0.2, layer_norm=layer_norm, stats=stats)
    assert stats.tolist() == [3, 1]
    assert (scale[[1, 4, 8]] == 0).all()
    assert (scale[6] != 0) == layer_norm


@pytest.mark.parametrize("layer_norm", [False, True])
def test_all_samples_non_finite_or_zero(dev, layer_norm):
    g = rand((4, 3, 5), torch.float32, dev)
    g[0, 1, 1] = float("nan")
    g[1, 2, 2] = float("inf")
    g[2:] = 0
    stats = stats0(dev)
    scale, _ = check(g, rand_z(4, dev), None, 0.5, layer_norm=layer_norm, stats=stats)
    assert (scale == 0).all() and stats.tolist() == [2, 2]


def test_stats_accumulate_and_are_optional(dev):
    """stats is cumulative over calls (the engine keeps one tensor), untouched without it."""
    g = rand((5, 2, 9), torch.bfloat16, dev)
    g[3, 1, 8] = float("nan")
    g[0] = 0
    stats = torch.tensor([10, 20], dtype=torch.int64, device=dev)
    for _ in range(3):
        check(g, rand_z(5, dev), None, 0.1, stats=stats)
    assert stats.tolist() == [13, 23]
    kernels.noise_scale(g, rand_z(5, dev), None, 0.1)
    assert stats.tolist() == [13, 23]


def test_stats_must_be_int64_pair(dev):
    g = rand((3, 4), torch.float32, dev)
    for bad in (torch.zeros(2, dtype=torch.int32, device=dev), torch.zeros(3, dtype=torch.int64, device=dev)):
        with pytest.raises(ValueError, match="stats"):
            kernels.noise_scale(g, None, None, 0.1, stats=bad)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer_norm", [False, True])
def test_many_programs(dev, many_programs, dtype, layer_norm):
    """Samples larger than one block, many programs that each reduce several tiles: every
    partial reaches the last program."""
    g = rand((11, 3, 7, 19), dtype, dev)  # M = 399: 25 tiles of 16 per sample, 7 tiles per program
    B, M = g.shape[0], g[0].numel()
    _, tiles, chunks, sb, cb = ns_mod._config(B, M)
    assert tiles > 1 and B * chunks > 40 and sb < B and cb < chunks
    g[5, 2, 6, 18] = 40.0  # the maximum in the last tile of one sample
    _, norm = check(g, rand_z(B, dev), torch.tensor(0.6, device=dev), 0.4, layer_norm=layer_norm, stats=stats0(dev))
    assert norm[5] == 40.0


@pytest.mark.parametrize("layer_norm", [False, True])
def test_repeated_calls_are_bitwise_equal(dev, many_programs, layer_norm):
    """The counter is back at 0 after every call: three calls give the same bits."""
    g = rand((6, 5, 11), torch.float32, dev)
    z, s = rand_z(6, dev), torch.tensor(0.7, device=dev)
    first = kernels.noise_scale(g, z, s, 0.2, layer_norm=layer_norm)
    for _ in range(2):
        again = kernels.noise_scale(g, z, s, 0.2, layer_norm=layer_norm)
        assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])
    assert int(layout_mod.counter(g.device, ns_mod.COUNTER_SLOT)) == 0


@pytest.mark.parametrize("layer_norm", [False, True])
def test_result_does_not_depend_on_which_program_is_last(dev, many_programs, monkeypatch, layer_norm):
    """Programs run in a shuffled order (the interpreter's grid loop, permuted): the last
    program is another one, the bits are the same."""
    if not helpers.interpreted():
        pytest.skip("reorders the interpreter's programs")
    g = rand((5, 4, 9), torch.float32, dev)
    g[2, 3, 8] = float("nan")
    z, s = rand_z(5, dev), torch.tensor(0.9, device=dev)
    want = kernels.noise_scale(g, z, s, -0.3, layer_norm=layer_norm)
    with helpers.shuffled_programs(seed=3):
        got = kernels.noise_scale(g, z, s, -0.3, layer_norm=layer_norm)
    assert torch.equal(got[1].isnan(), want[1].isnan()) and torch.equal(got[0], want[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_subnormal_and_huge_norms_give_finite_scales(dev, dtype, layer_norm):
    """A subnormal max|g| would make r*s/norm overflow: the scale is clamped to the largest finite
    value instead (never inf, so round 2 never computes inf * 0); huge norms give tiny scales."""
    tiny = torch.finfo(dtype).smallest_normal / 4  # subnormal in dtype
    g = rand((4, 3, 5), dtype, dev)
    g[0] = 0
    g[0, 1, 2] = tiny
    g[1] = g[1] / g[1].abs().max() * torch.finfo(dtype).max / 2
    g[2] = 0
    s = torch.tensor(2.0, device=dev)
    if dtype == torch.bfloat16 and helpers.interpreted():
        # Triton's interpreter flushes bfloat16 subnormals to 0 when it converts them (a GPU does not)
        scale, norm = kernels.noise_scale(g, None, s, 0.5, layer_norm=layer_norm)
        assert norm[0] == 0
    else:
        scale, _ = check(g, None, s, 0.5, layer_norm=layer_norm)
    assert torch.isfinite(scale).all()


def torch_backend(g, z, s, eps, *, layer_norm, stats):
    return ops._torch_noise_scale(g, z, s, eps, layer_norm, stats)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer_norm", [False, True])
def test_torch_backend_same_contract(dtype, layer_norm):
    """The torch backend of anl_fused.ops against the same float64 contract (stats included)."""
    g = layer_norm_g(dtype, "cpu")
    g[2, 1, 1, 1] = float("nan")
    g[3] = 0
    check(
        g,
        rand_z(7, "cpu"),
        torch.tensor(0.8, dtype=ops.acc_dtype(dtype)),
        0.25,
        layer_norm=layer_norm,
        stats=stats0("cpu"),
        fn=torch_backend,
    )


@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize("use_z", [True, False])
def test_backends_agree_bitwise(dev, monkeypatch, layer_norm, use_z):
    """Interpreted, the kernel computes what the torch backend computes, bit for bit (correctly
    rounded division on both); stats included. On a GPU the kernel's float32 arithmetic may be
    contracted into FMAs: a few ulps."""
    g = layer_norm_g(torch.float32, dev, B=6)
    g[4, 0, 0, 0] = float("inf")
    z, s = (rand_z(6, dev) if use_z else None), torch.tensor(0.45, device=dev)
    results = {}
    for backend in ("triton", "torch"):
        monkeypatch.setenv("ANL_FUSED_BACKEND", backend)
        stats = stats0(dev)
        results[backend] = ops.noise_scale(g, z, s, 0.35, layer_norm=layer_norm, stats=stats) + (stats,)
    (ks, kn, kst), (ts, tn, tst) = results["triton"], results["torch"]
    assert torch.equal(kn, tn) and torch.equal(kst, tst)
    if helpers.interpreted():
        assert torch.equal(ks, ts)
    else:
        torch.testing.assert_close(ks, ts, rtol=1e-6, atol=0)


@pytest.mark.gpu
class TestGPU:
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("layer_norm", [False, True])
    def test_cuda_large(self, dtype, layer_norm):
        gpu_compiled_or_skip()
        g = rand((128, 64, 32, 32), dtype, "cuda", layout="channels_last", std=1e-2)
        g[3, 5, 7, 9] = float("nan")
        g[7, 0, 0, 0] = float("inf")
        g[9] = 0
        stats = stats0("cuda")
        check(g, rand_z(128, "cuda"), torch.tensor(0.9, device="cuda"), 0.5, layer_norm=layer_norm, stats=stats)
        assert stats.tolist() == [2, 1]

    def test_cuda_repeated_calls_bitwise(self):
        """Thousands of programs finish in a different order on every launch; the result must not."""
        gpu_compiled_or_skip()
        g = rand((256, 64, 32, 32), torch.bfloat16, "cuda")
        z, s = rand_z(256, "cuda"), torch.tensor(0.9, device="cuda")
        for layer_norm in (False, True):
            first = kernels.noise_scale(g, z, s, 0.5, layer_norm=layer_norm)
            for _ in range(20):
                again = kernels.noise_scale(g, z, s, 0.5, layer_norm=layer_norm)
                assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])

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
