"""The C++ CPU kernels (anl_fused/kernels/cpu/anl_ops.cpp) against a float64 truth, the torch backend and
the interpreted Triton kernels: every dtype, layout and extreme gradient, outputs poisoned.

Poisoning: torch's CPU allocator junk-fills every allocation while ``junk_filled()`` is active (c10's
``caffe2_cpu_allocator_do_junk_fill`` flag: NaN in float32, ~1.7e308 in float64, -0.47 / NaN in the 16-bit
types), so an output element a kernel leaves unwritten shows up. These tests need the C++ kernels built: they
fail (with the reason) where they cannot be, they never fall back to the torch ops.
"""

import contextlib
import ctypes
import os
import subprocess
import sys
import warnings
import zlib

import pytest
import torch

from anl_fused import kernels, ops
from anl_fused.kernels import cpu

from ._helpers import DTYPES, RTOL, rand

LAYOUTS = ["contiguous", "channels_last", "strided"]
STD_RTOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-6, torch.bfloat16: 2e-6}


@pytest.fixture(scope="module")
def cpp():
    """The extension module; a failed build fails the test (no silent fallback)."""
    module = ops._cpp()
    assert module is not None, ops.cpp_status()
    return module


@contextlib.contextmanager
def junk_filled():
    flag = ctypes.c_bool.in_dll(
        ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libc10.so")),
        "FLAGS_caffe2_cpu_allocator_do_junk_fill",
    )
    flag.value = True
    try:
        assert torch.empty(4).isnan().all()  # the poison is on
        yield
    finally:
        flag.value = False


def same(a, b):
    """Bitwise equal, NaN included."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.nan_to_num(7.25), b.nan_to_num(7.25))


# ---- std ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(4, 3, 7, 9), (3, 5000, 1, 2), (2, 3, 41, 43)])
def test_std(cpp, dtype, layout, shape):
    """Against float64 ``torch.std`` of the same values, a mean 1000 standard deviations off zero, one or many
    4096-element blocks."""
    h = rand(shape, dtype, "cpu", layout=layout, mean=-10.0, std=0.01)
    with junk_filled():
        s = cpp.std(h)
    want = h.double().std().item()
    assert s.dtype == ops.acc_dtype(dtype) and s.shape == ()
    assert abs(s.item() - want) <= STD_RTOL[dtype] * want, (s.item(), want)


@pytest.mark.parametrize("shape", [(0,), (1,), (1, 1, 1), (2, 0, 3)])
def test_std_at_most_one_element_is_zero(cpp, shape):
    with junk_filled():
        assert same(cpp.std(torch.full(shape, 3.0)), torch.tensor(0.0))


def test_std_does_not_depend_on_the_thread_count(cpp):
    h = torch.randn(40, 3, 33, 35)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cpp.std(h)
        torch.set_num_threads(3)
        three = cpp.std(h)
    finally:
        torch.set_num_threads(n)
    assert same(one, three)


# ---- noise_scale -------------------------------------------------------------------------------------------


def gradients(shape, dtype, layout):
    """Per sample: ordinary, zero, subnormal-sized, NaN, +inf, -inf, huge (extra samples ordinary)."""
    g = rand(shape, torch.float64, "cpu", std=1.0)
    flat = g.view(shape[0], -1)
    tiny = torch.finfo(dtype).smallest_normal / 4 if dtype != torch.float64 else 1e-310
    special = [None, 0.0, tiny, float("nan"), float("inf"), float("-inf"), torch.finfo(dtype).max / 2]
    for b, v in enumerate(special[: shape[0]]):
        if v == 0.0 or v == tiny or v == torch.finfo(dtype).max / 2:
            flat[b] = flat[b] / flat[b].abs().max() * v
        elif v is not None:
            flat[b, -1] = v  # the last element: the vector loops' tail or the last chunk
    g = g.to(dtype)
    if layout == "channels_last":
        return g.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        return g.transpose(-1, -2)
    return g


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize("z_s", ["z_s", "z", "none"])
def test_noise_scale_is_the_torch_backend_bit_for_bit(cpp, dtype, layout, layer_norm, z_s):
    """(scale, norm, stats) equal the torch backend's bits: same roundings, same order of operations."""
    B = 9
    g = gradients((B, 3, 5, 7), dtype, layout)
    acc = ops.acc_dtype(dtype)
    z = torch.randn(B, dtype=acc) * 3 if z_s != "none" else None
    if z is not None:
        z[-2:] = torch.tensor([-7.5, 6.0])  # beyond the clamp bounds
    s = torch.tensor(0.37) if z_s == "z_s" else None
    stats, want_stats = torch.tensor([5, 1]), torch.tensor([5, 1])
    with junk_filled():
        scale, norm = cpp.noise_scale(g, z, s, -0.3, layer_norm, stats)
    want_scale, want_norm = ops._torch_noise_scale(g, z, s, -0.3, layer_norm, want_stats)
    assert same(scale, want_scale) and same(norm, want_norm), (scale, want_scale, norm, want_norm)
    assert torch.equal(stats, want_stats) and stats.tolist() == [5 + 3, 1 + 1]
    assert torch.isfinite(scale).all() and (scale[3:6] == 0).all()  # non-finite samples: no noise
    assert layer_norm or scale[1] == 0  # a zero sample: no scale per sample (its noise is 0 either way)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_noise_scale_many_chunks(cpp, dtype):
    """Samples of several 16384-element chunks: NaN or inf only in a later chunk still counts."""
    g = rand((3, 40001), dtype, "cpu")
    g[0, 20000], g[1, 40000], g[2, 39999] = float("nan"), float("inf"), 1e4
    stats = torch.zeros(2, dtype=torch.int64)
    with junk_filled():
        scale, norm = cpp.noise_scale(g, None, None, 0.5, False, stats)
    want_scale, want_norm = ops._torch_noise_scale(g, None, None, 0.5, False, None)
    assert same(scale, want_scale) and same(norm, want_norm)
    assert norm[0].isnan() and norm[1].isinf() and norm[2].item() == pytest.approx(1e4, rel=1e-2)
    assert stats.tolist() == [2, 0]


@pytest.mark.parametrize("layer_norm", [False, True])
def test_noise_scale_without_finite_samples(cpp, layer_norm):
    g = torch.full((3, 4), float("nan"))
    g[1, 0] = float("inf")
    with junk_filled():
        scale, norm = cpp.noise_scale(g, torch.randn(3), torch.tensor(1.0), 0.5, layer_norm, None)
    assert torch.equal(scale, torch.zeros(3)) and not torch.isfinite(norm).any()


@pytest.mark.parametrize("shape", [(0, 3), (2, 0), (5,)])
def test_noise_scale_shapes(cpp, shape):
    g = rand(shape, torch.float32, "cpu")
    with junk_filled():
        got = cpp.noise_scale(g, None, None, 0.5, False, None)
    want = ops._torch_noise_scale(g, None, None, 0.5, False, None)
    assert same(got[0], want[0]) and same(got[1], want[1])


# ---- add_noise ---------------------------------------------------------------------------------------------


def truth(h, g, scale, alpha):
    """float64 ``h + alpha * scale[b] * g'`` and ``|alpha * scale[b] * g'|``."""
    view = (-1,) + (1,) * (h.dim() - 1)
    f = alpha * (torch.ones(h.shape[0]) if scale is None else scale.double().reshape(-1)).double().view(view)
    eta = f * torch.nan_to_num(g.double(), nan=0.0, posinf=0.0, neginf=0.0)
    return h.double() + eta, eta.abs()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("g_dtype", [None, torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_add_noise_dtypes(cpp, dtype, g_dtype):
    g_dtype = g_dtype or dtype
    h = rand((4, 3, 7, 9), dtype, "cpu", mean=1.0)
    g = rand((4, 3, 7, 9), g_dtype, "cpu", std=0.1)
    g[1, 0, 0, 0], g[2, 2, 6, 8] = float("nan"), float("-inf")
    sc = torch.tensor([0.5, -2.0, 1e-3, 0.0], dtype=ops.acc_dtype(dtype))
    with junk_filled():
        out = cpp.add_noise(h, g, sc, 0.3)
    want, eta = truth(h, g, sc, 0.3)
    assert out.dtype == dtype and out.shape == h.shape
    # one rounding of the float32 (float64) sum to h's dtype, after one rounding of the product
    assert ((out.double() - want).abs() <= RTOL[dtype] * (want.abs() + eta)).all()
    assert torch.equal(out[3], h[3])


@pytest.mark.parametrize("h_layout", LAYOUTS)
@pytest.mark.parametrize("g_layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_add_noise_layouts_bit_for_bit(cpp, h_layout, g_layout, dtype):
    """The bits of ``fl(h + fl(f_b * g))`` in float32 (float64), rounded once to h's dtype (no fused
    multiply-add: the same bits on every vector ISA), and the interpreted Triton kernel's bits where its
    rounding to h's dtype is torch's (float32, float64); the batch index of an element follows h's layout."""
    h = rand((3, 5, 4, 6), dtype, "cpu", layout=h_layout)
    g = rand((3, 5, 4, 6), torch.float32, "cpu", layout=g_layout)
    sc = torch.tensor([0.7, -1.3, 2.0])
    with junk_filled():
        out = cpp.add_noise(h, g, sc, 0.25)
    acc = ops.acc_dtype(dtype)
    factor = (sc.to(acc) * torch.tensor(0.25, dtype=acc)).view(3, 1, 1, 1)
    assert same(out, (h.to(acc) + factor * g.to(acc)).to(dtype))
    if dtype in (torch.float32, torch.float64):  # the interpreter rounds float32 -> 16-bit differently
        assert same(out, kernels.add_noise(h, g, sc, alpha=0.25))
    fmt = torch.channels_last if h_layout == "channels_last" else torch.contiguous_format
    assert out.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize(
    "scale", [None, torch.tensor([0.5]), torch.tensor([0.5, 2.0, -1.0]).view(3, 1, 1), torch.tensor([1.5, 2, 3]).half()]
)
def test_add_noise_scale_forms(cpp, scale):
    h, g = rand((3, 4, 5), torch.float32, "cpu"), rand((3, 4, 5), torch.float32, "cpu")
    with junk_filled():
        out = cpp.add_noise(h, g, scale, 0.75)
    want, eta = truth(h, g, scale, 0.75)
    assert ((out.double() - want).abs() <= RTOL[torch.float32] * (want.abs() + eta)).all()
    assert same(out, kernels.add_noise(h, g, scale, alpha=0.75))


@pytest.mark.parametrize("shape", [(1, 3, 4, 5), (1, 70000), (7, 1), (5,), (2, 0), (0, 3), (65, 1031)])
def test_add_noise_shapes(cpp, shape):
    """Batch 1, samples larger than a thread's range, one element per sample, empty."""
    h, g = rand(shape, torch.bfloat16, "cpu"), rand(shape, torch.float32, "cpu")
    sc = torch.rand(shape[0]) * 4 - 2
    with junk_filled():
        out = cpp.add_noise(h, g, sc, 1.0)
    want, eta = truth(h, g, sc, 1.0)
    assert out.shape == h.shape and ((out.double() - want).abs() <= RTOL[torch.bfloat16] * (want.abs() + eta)).all()


# ---- the operator registration, autograd, errors, the backend choice -------------------------------------------


def test_registered_as_the_cpu_kernels_of_the_anl_fused_ops(cpp):
    for name in ("std", "noise_scale", "add_noise"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"anl_fused::{name}", "CPU"), name
    h, g = rand((4, 3, 6, 6), torch.float32, "cpu", mean=2.0), rand((4, 3, 6, 6), torch.float32, "cpu")
    assert same(torch.ops.anl_fused.std(h), cpp.std(h))
    z, s = torch.randn(4), torch.tensor(0.5)
    stats, want_stats = torch.zeros(2, dtype=torch.int64), torch.zeros(2, dtype=torch.int64)
    got = torch.ops.anl_fused.noise_scale(g, z, s, 0.2, True, stats)
    want = cpp.noise_scale(g, z, s, 0.2, True, want_stats)
    assert same(got[0], want[0]) and same(got[1], want[1]) and torch.equal(stats, want_stats)
    assert same(torch.ops.anl_fused.add_noise(h, g, got[0], 0.5), cpp.add_noise(h, g, got[0], 0.5))


def test_add_noise_autograd_is_identity_to_h(cpp, monkeypatch):
    monkeypatch.setenv("ANL_FUSED_BACKEND", "cpp")
    h = rand((3, 2, 4, 5), torch.float32, "cpu").requires_grad_()
    g = rand((3, 2, 4, 5), torch.float32, "cpu").requires_grad_()
    sc = torch.tensor([0.5, 1.0, -2.0], requires_grad=True)
    out = ops.add_noise(h, g, sc)
    assert out.requires_grad and same(out.detach(), cpp.add_noise(h.detach(), g.detach(), sc.detach(), 1.0))
    w = torch.randn_like(out)
    gh, gg, gs = torch.autograd.grad(out, (h, g, sc), w, allow_unused=True)
    assert torch.equal(gh, w) and gg is None and gs is None
    # the same gradient as the operator's own (Python) autograd, the path torch.compile traces
    (op_gh,) = torch.autograd.grad(torch.ops.anl_fused.add_noise(h, g.detach(), sc.detach(), 1.0), h, w)
    assert torch.equal(op_gh, gh)
    hd = h.detach().double().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: ops.add_noise(x, g.detach().double(), sc.detach(), alpha=0.5), hd)
    with torch.no_grad():
        assert not ops.add_noise(h, g, sc).requires_grad


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda m: m.noise_scale(torch.tensor(1.0), None, None, 0.5, False, None), ValueError, "batch dimension"),
        (lambda m: m.noise_scale(torch.ones(2, 3), torch.ones(3), None, 0.5, False, None), ValueError, "one value"),
        (lambda m: m.noise_scale(torch.ones(2, 3), None, torch.ones(2), 0.5, False, None), ValueError, "single"),
        (lambda m: m.noise_scale(torch.ones(2, 3), None, None, 0.5, False, torch.zeros(2)), ValueError, "int64"),
        (lambda m: m.noise_scale(torch.ones(2, 3, dtype=torch.int32), None, None, 0.5, False, None), TypeError, "g"),
        (lambda m: m.add_noise(torch.ones(2, 3), torch.ones(2, 4), None, 1.0), ValueError, "h's shape"),
        (lambda m: m.add_noise(torch.ones(2, 3), torch.ones(2, 3), torch.ones(3), 1.0), ValueError, "per sample"),
        (lambda m: m.add_noise(torch.tensor(1.0), torch.tensor(1.0), None, 1.0), ValueError, "batch dimension"),
        (lambda m: m.std(torch.ones(3, dtype=torch.int64)), TypeError, "h must be float32"),
    ],
)
def test_errors_name_the_bad_value(cpp, call, error, match):
    with pytest.raises(error, match=match):
        call(cpp)


def test_cpu_tensors_use_the_cpp_backend_by_default(cpp, monkeypatch):
    monkeypatch.delenv("ANL_FUSED_BACKEND", raising=False)
    assert ops.backend() == "cpp" and ops.backend_for(torch.ones(1)) == "cpp"
    assert ops.cpp_status().startswith("C++ CPU kernels (") and cpu.capability() in ops.cpp_status()
    monkeypatch.setenv("ANL_FUSED_BACKEND", "torch")
    assert ops.backend() == "torch"


def test_without_the_build_the_torch_ops_run_and_forcing_cpp_fails(monkeypatch):
    monkeypatch.delenv("ANL_FUSED_BACKEND", raising=False)
    monkeypatch.setattr(ops, "_CPP", [None, "torch ops (the C++ CPU kernels could not be built: no compiler)"])
    assert ops.backend() == "torch"
    h = rand((3, 4), torch.float32, "cpu")
    assert same(ops.std(h), ops._torch_std(h))
    monkeypatch.setenv("ANL_FUSED_BACKEND", "cpp")
    with pytest.raises(RuntimeError, match=r"ANL_FUSED_BACKEND=cpp, but torch ops .*no compiler"):
        ops.std(h)


def test_a_failed_build_warns_once_and_says_why(monkeypatch):
    def fail(cap):
        raise RuntimeError("Error building extension: c++: command not found")

    monkeypatch.setattr(cpu, "_STATE", {})
    monkeypatch.setattr(cpu, "_build", fail)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cpu.load() is None and cpu.load() is None
    assert len(caught) == 1 and "c++: command not found" in str(caught[0].message)
    assert cpu.status().startswith("torch ops (the C++ CPU kernels could not be built: ")


def test_first_use_in_a_fresh_process_prints_nothing(cpp):
    """Importing anl_fused and running an op (the build cached by now) writes nothing to stdout or stderr."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "ANL_FUSED_BACKEND")}
    code = (
        "import torch, anl_fused; from anl_fused import ops; ops.std(torch.randn(3, 4)); assert ops.backend() == 'cpp'"
    )
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout == "" and res.stderr == "", res.stdout + res.stderr


# ---- max_pool2x2 (the model zoo's pool) --------------------------------------------------------------------

BITS = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def pool_input(shape, dtype, kind):
    """Kinds: random (distinct values); ties (a few small integers: many equal maxima, -0.0 next to 0.0); special
    (ties plus NaN, +inf and -inf sprinkled, whole windows of -inf and of NaN included). Seeded by the arguments."""
    g = torch.Generator().manual_seed(zlib.crc32(repr((shape, dtype, kind)).encode()))
    if kind == "random":
        return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    x = torch.randint(-2, 3, shape, generator=g).to(dtype)
    x[torch.rand(shape, generator=g) < 0.2] = -0.0
    if kind == "special":
        for v, p in ((float("nan"), 0.1), (float("inf"), 0.05), (float("-inf"), 0.2)):
            x[torch.rand(shape, generator=g) < p] = v
        x[..., :2, :2] = float("-inf")
        x[..., -2:, :2] = float("nan")
    return x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["random", "ties", "special"])
@pytest.mark.parametrize(
    "shape", [(3, 6, 28, 28), (2, 16, 10, 10), (2, 3, 7, 9), (1, 2, 2, 70), (2, 1, 5, 2), (0, 3, 4, 4)]
)
def test_max_pool2x2_is_aten_bit_for_bit(cpp, dtype, kind, shape):
    """Values (NaN payloads and the sign of zero included) and indices equal aten's ``max_pool2d``: odd sizes (the
    last row / column dropped), rows shorter and longer than a vector, the end of the tensor; outputs poisoned."""
    x = pool_input(shape, dtype, kind)
    with junk_filled():
        values, indices = cpp.max_pool2x2(x)
    want_values, want_indices = torch.nn.functional.max_pool2d(x, 2, 2, return_indices=True)
    assert values.dtype == dtype and values.shape == want_values.shape
    assert torch.equal(values.view(BITS[dtype]), want_values.view(BITS[dtype]))
    assert torch.equal(indices, want_indices)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_max_pool2x2_backward_is_aten_bit_for_bit(cpp, dtype):
    x = pool_input((4, 5, 12, 14), dtype, "ties").requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    out = cpp.max_pool2x2_autograd(x)
    want = torch.nn.functional.max_pool2d(x_ref, 2, 2)
    grad = torch.randn(want.shape, dtype=torch.float64).to(dtype)
    out.backward(grad)
    want.backward(grad)
    assert torch.equal(out.detach().view(BITS[dtype]), want.detach().view(BITS[dtype]))
    assert torch.equal(x.grad.view(BITS[dtype]), x_ref.grad.view(BITS[dtype]))


@pytest.mark.parametrize(
    "x", [torch.randn(2, 3, 4, 4).transpose(-1, -2), torch.randn(3, 4, 4), torch.ones(2, 2, 4, 4, dtype=torch.int32)]
)
def test_max_pool2x2_refuses_what_it_does_not_handle(cpp, x):
    with pytest.raises(RuntimeError, match="max_pool2x2: needs a contiguous 4-d floating-point CPU tensor"):
        cpp.max_pool2x2(x)
