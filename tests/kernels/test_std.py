"""std kernel (kernels/std.py) against torch: std = torch.std (correction 1), accumulated in float32."""

import importlib
import os

import pytest
import torch

from anl_fused import ops as anl_ops

if not torch.cuda.is_available():  # as tests/conftest.py: before triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import given, settings
from hypothesis import strategies as st

from anl_fused import kernels, ops

from . import _helpers as helpers
from ._helpers import DTYPES, gpu_compiled_or_skip, kernel_device, poisoned_allocations, rand

std_mod = importlib.import_module("anl_fused.kernels.std")  # the module (the package exports the function)
layout_mod = importlib.import_module("anl_fused.kernels._layout")

# std in float32 accumulation of data exactly representable in the dtype: a few float32 ulps.
S_RTOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5}

pytestmark = pytest.mark.usefixtures("seeded")


@pytest.fixture
def small_blocks(monkeypatch):
    """Tiny blocks so that small tensors need many partials and several combine iterations."""
    monkeypatch.setattr(std_mod, "BLOCK", 64)
    monkeypatch.setattr(std_mod, "PART_BLOCK", 4)


@pytest.fixture
def multi_tile(monkeypatch):
    """Tiny blocks and at most 6 programs: each program merges several tiles (Chan) before the
    last one combines the partials."""
    monkeypatch.setattr(std_mod, "BLOCK", 64)
    monkeypatch.setattr(std_mod, "PART_BLOCK", 4)
    monkeypatch.setattr(std_mod, "MAX_PARTS", 6)


def check(h, torch_rtol=None):
    """Run std on poisoned allocations and compare with torch: the float64 truth to
    ``S_RTOL``, the torch backend of ``anl_fused.ops`` (float32 accumulation) to ``torch_rtol``."""
    before = h.clone()
    with poisoned_allocations():
        s = kernels.std(h)
    assert torch.equal(h, before) or h.isnan().any(), "std must not write its input"
    acc = ops.acc_dtype(h.dtype)
    assert s.shape == () and s.dtype == acc and not s.requires_grad
    if h.numel() <= 1:
        assert s.item() == 0.0
        return s
    truth = h.detach().double().std()
    torch.testing.assert_close(s.double().cpu(), truth.cpu(), rtol=S_RTOL[h.dtype], atol=0)
    torch.testing.assert_close(s, ops._torch_std(h), rtol=torch_rtol or S_RTOL[h.dtype], atol=0)
    return s


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_matches_torch(dev, dtype, layout):
    h = rand((3, 5, 7, 9), dtype, dev, layout=layout, mean=0.5, std=2.0)
    check(h)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_larger_than_one_block(dev, dtype):
    h = rand((2, 3, 41, 43), dtype, dev)  # 10578 elements: 11 blocks of 1024, the last partial
    assert h.numel() > std_mod._config(h.numel())[0]
    check(h)


@pytest.mark.parametrize("n", [2, 63, 64, 65, 1000, 4099])
def test_many_partials(dev, small_blocks, n):
    check(rand((n,), torch.float32, dev, mean=-3.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mean_much_larger_than_std(dev, small_blocks, dtype):
    """mean / std = 1e5: a plain float32 sum / sum of squares would lose every digit; the shifted
    per-block statistics keep float32 accuracy (torch's own float32 std is off by ~4e-5 here)."""
    h = rand((8, 3, 11, 13), torch.float64, dev, mean=1000.0, std=0.01).to(dtype)
    check(h, torch_rtol=2e-4)


@pytest.mark.parametrize("shape", [(), (1,), (0,), (1, 1, 1, 1), (0, 3)])
def test_at_most_one_element(dev, shape):
    h = torch.full(shape, 2.5, device=dev)
    check(h)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy in the interpreter, on inf - inf
def test_non_finite_propagates(dev):
    h = rand((4, 100), torch.float32, dev)
    h[2, 7] = float("inf")
    assert torch.isnan(kernels.std(h))
    h[2, 7] = float("nan")
    assert torch.isnan(kernels.std(h))


@settings(max_examples=8, deadline=None)
@given(
    shape=st.lists(st.integers(1, 13), min_size=1, max_size=4),
    dtype=st.sampled_from(DTYPES),
    mean=st.floats(-100, 100),
)
def test_hypothesis_shapes(shape, dtype, mean):
    dev = kernel_device()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(std_mod, "BLOCK", 128)
        mp.setattr(std_mod, "PART_BLOCK", 2)
        check(rand(shape, dtype, dev, mean=mean))


def test_no_gradient(dev):
    h = rand((3, 4, 5, 6), torch.float32, dev).requires_grad_()
    assert not kernels.std(h).requires_grad


def test_ops_dispatch(dev, monkeypatch):
    h = rand((3, 4, 5), torch.float32, dev)
    monkeypatch.setenv("ANL_FUSED_BACKEND", "triton")
    s_k = ops.std(h)
    monkeypatch.setenv("ANL_FUSED_BACKEND", "torch")
    s_t = ops.std(h)
    torch.testing.assert_close(s_k, s_t, rtol=1e-5, atol=0)


def test_rejects_integer_input(dev):
    with pytest.raises(TypeError, match="float32"):
        kernels.std(torch.ones(3, 4, dtype=torch.int32, device=dev))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [7, 1000, 2999])
def test_programs_with_several_tiles(dev, multi_tile, dtype, n):
    _, tiles, parts, _ = std_mod._config(n)
    assert n < 64 or (parts > 1 and (n < 600 or tiles > 1))
    check(rand((n,), dtype, dev, mean=2.5, std=0.7))


def test_many_programs_default_blocks(dev):
    """The real block size (1024 below 4M elements) with ~300 programs."""
    h = rand((3, 17, 73, 81), torch.float32, dev, layout="channels_last", mean=-1.0)
    assert std_mod._config(h.numel())[2] > 256
    check(h)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_batch_one_odd_sizes(dev, small_blocks, layout):
    check(rand((1, 3, 13, 7), torch.bfloat16, dev, layout=layout, mean=0.3))


def test_repeated_calls_are_bitwise_equal(dev, multi_tile):
    """The counter is back at 0 after every call: three calls give the same bits."""
    h = rand((5, 7, 11, 13), torch.float32, dev, mean=4.0)
    first = kernels.std(h)
    for _ in range(2):
        assert torch.equal(kernels.std(h), first)
    assert int(layout_mod.counter(h.device, std_mod.COUNTER_SLOT)) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_result_does_not_depend_on_which_program_is_last(dev, multi_tile, dtype):
    """Programs run in a shuffled order (the interpreter's grid loop, permuted): another program
    is the last to finish and combines the partials, in the same order, to the same bits."""
    if not helpers.interpreted():
        pytest.skip("reorders the interpreter's programs")
    h = rand((3, 5, 9, 11), dtype, dev, mean=-7.0)
    want = kernels.std(h)
    with helpers.shuffled_programs(seed=1):
        got = kernels.std(h)
    assert torch.equal(got, want)


def test_compile_path_matches_eager(dev):
    """The triton_op that torch.compile traces (fresh counter each call) gives the eager bits."""
    h = rand((4, 3, 9, 10), torch.float32, dev, mean=1.5)
    if h.device.type == "cpu" and anl_ops.backend("cpu") == "cpp":
        # on the CPU the op dispatches to its C++ kernel (registered for the CPU key): its own bits, and the
        # Triton kernel's value up to the summation order
        assert torch.equal(torch.ops.anl_fused.std(h), anl_ops.std(h))
        torch.testing.assert_close(torch.ops.anl_fused.std(h), kernels.std(h), rtol=1e-6, atol=0)
        return
    assert torch.equal(torch.ops.anl_fused.std(h), kernels.std(h))


@pytest.mark.gpu
class TestGPU:
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_cuda_large(self, dtype):
        gpu_compiled_or_skip()
        h = rand((128, 64, 32, 32), dtype, "cuda", layout="channels_last", mean=3.0)
        check(h)

    def test_cuda_repeated_calls_bitwise(self):
        """Thousands of programs finish in a different order on every launch; the result must not."""
        gpu_compiled_or_skip()
        for shape in ((256, 64, 32, 32), (4096, 512, 16, 16)):  # the second: several tiles per program
            h = rand(shape, torch.bfloat16, "cuda", mean=0.5)
            first = kernels.std(h)
            for _ in range(20):
                assert torch.equal(kernels.std(h), first)

    def test_cuda_graph_capture(self):
        """The three ops captured in a CUDA graph (counters created before capture, as the warm-up
        makes them) replay to the eager results, again and again."""
        gpu_compiled_or_skip()
        h = rand((64, 32, 16, 16), torch.float32, "cuda", mean=1.0)
        g = rand((64, 32, 16, 16), torch.float32, "cuda", std=1e-3)
        z = torch.randn(64, device="cuda")
        stats = torch.zeros(2, dtype=torch.int64, device="cuda")

        def step():
            s = kernels.std(h)
            scale, _ = kernels.noise_scale(g, z, s, 0.3, stats=stats)
            return kernels.add_noise(h, g, scale)

        want = step()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = step()
        for _ in range(3):
            graph.replay()
            torch.cuda.synchronize()
            assert torch.equal(out, want)
        assert stats.tolist() == [0, 0]

    def test_compile_fullgraph(self):
        gpu_compiled_or_skip()
        torch._dynamo.reset()

        def f(x):
            return torch.relu(x) * kernels.std(x)

        h = rand((16, 8, 9, 9), torch.float32, "cuda")
        torch.testing.assert_close(torch.compile(f, fullgraph=True)(h), f(h))
