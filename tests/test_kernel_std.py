"""std kernel (kernels/std.py) against torch: std = torch.std (correction 1), accumulated in float32."""

import importlib
import os

import pytest
import torch

if not torch.cuda.is_available():  # as tests/conftest.py: before triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from _kernel_helpers import DTYPES, gpu_compiled_or_skip, kernel_device, poisoned_allocations, rand  # noqa: E402
from anl_fused import kernels, ops  # noqa: E402
std_mod = importlib.import_module("anl_fused.kernels.std")  # the module (the package exports the function)

# std in float32 accumulation of data exactly representable in the dtype: a few float32 ulps.
S_RTOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5}


@pytest.fixture
def dev():
    return kernel_device()


@pytest.fixture
def small_blocks(monkeypatch):
    """Tiny blocks so that small tensors need many partials and several combine iterations."""
    monkeypatch.setattr(std_mod, "BLOCK", 64)
    monkeypatch.setattr(std_mod, "PART_BLOCK", 4)


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


@pytest.mark.gpu
class TestGPU:
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_cuda_large(self, dtype):
        gpu_compiled_or_skip()
        h = rand((128, 64, 32, 32), dtype, "cuda", layout="channels_last", mean=3.0)
        check(h)

    def test_compile_fullgraph(self):
        gpu_compiled_or_skip()
        torch._dynamo.reset()

        def f(x):
            return torch.relu(x) * kernels.std(x)

        h = rand((16, 8, 9, 9), torch.float32, "cuda")
        torch.testing.assert_close(torch.compile(f, fullgraph=True)(h), f(h))
