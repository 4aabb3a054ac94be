"""Shared helpers of the kernel tests (tests/test_kernel_*.py).

The kernels run in the Triton interpreter on CPU tensors when ``TRITON_INTERPRET=1`` was set
before ``triton`` was imported (tests/conftest.py does it); with ``TRITON_INTERPRET=0`` on a
machine with CUDA the same tests run the compiled kernels on the GPU.
"""

import contextlib
import importlib

import pytest
import torch
import triton

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]

# Relative tolerance of a value rounded once to each dtype (a few ulps).
RTOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def interpreted() -> bool:
    """True when ``triton.jit`` kernels run in the interpreter (TRITON_INTERPRET was set)."""
    mod = importlib.import_module("anl_fused.kernels.std")
    return not isinstance(mod._std_kernel, triton.runtime.jit.JITFunction)


def kernel_device() -> str:
    """Where the kernels can run here: CPU under the interpreter, else CUDA, else skip."""
    if interpreted():
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    pytest.skip("compiled Triton kernels need CUDA (set TRITON_INTERPRET=1 to use the interpreter)")


def gpu_compiled_or_skip() -> None:
    """For @pytest.mark.gpu tests: need CUDA and compiled (not interpreted) kernels."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    if interpreted():
        pytest.skip("kernels are interpreted (TRITON_INTERPRET=1); run with TRITON_INTERPRET=0 on a GPU")


@contextlib.contextmanager
def poisoned_allocations():
    """Every ``torch.empty`` / ``torch.empty_like`` made inside is filled with NaN (ints: -7), and so
    are the reusable partials buffers of the kernels' device workspaces, so a kernel that leaves
    any output element (or partial) unwritten makes the result wrong."""
    real_empty, real_empty_like = torch.empty, torch.empty_like
    layout = importlib.import_module("anl_fused.kernels._layout")
    for ws in layout._WORKSPACE.values():
        for buf in ws.partials_by_dtype.values():
            buf.fill_(float("nan"))

    def fill(t):
        if t.numel():
            t.fill_(float("nan") if t.dtype.is_floating_point else -7)
        return t

    def empty(*args, **kwargs):
        return fill(real_empty(*args, **kwargs))

    def empty_like(*args, **kwargs):
        return fill(real_empty_like(*args, **kwargs))

    mp = pytest.MonkeyPatch()
    mp.setattr(torch, "empty", empty)
    mp.setattr(torch, "empty_like", empty_like)
    try:
        yield
    finally:
        mp.undo()


@contextlib.contextmanager
def shuffled_programs(seed: int = 0):
    """Under the interpreter, run the programs of every launch in a random order (the grid loop
    maps its index through a permutation): a kernel whose result depends on which program runs
    last (or first) then gives other results."""
    from triton.runtime.interpreter import interpreter_builder

    real_dim, real_idx = interpreter_builder.set_grid_dim, interpreter_builder.set_grid_idx
    gen = torch.Generator().manual_seed(seed)
    perm = []

    def set_grid_dim(x, y, z):
        perm[:] = torch.randperm(x, generator=gen).tolist()
        if x > 1 and perm[-1] == x - 1:  # the program that runs last is never the last one
            perm[0], perm[-1] = perm[-1], perm[0]
        return real_dim(x, y, z)

    def set_grid_idx(x, y, z):
        return real_idx(perm[x], y, z)

    mp = pytest.MonkeyPatch()
    mp.setattr(interpreter_builder, "set_grid_dim", set_grid_dim)
    mp.setattr(interpreter_builder, "set_grid_idx", set_grid_idx)
    try:
        yield
    finally:
        mp.undo()


def rand(shape, dtype, device, *, layout="contiguous", mean=0.0, std=1.0, gen=None):
    """Random (never zero) data of ``shape`` in ``layout``: contiguous, channels_last, or strided
    (a non-contiguous view: every other element of the last dimension of a larger tensor)."""
    shape = tuple(shape)
    if layout == "strided":
        big = torch.randn(*shape[:-1], 2 * shape[-1] if shape else 1, generator=gen, dtype=torch.float64)
        base = (big * std + mean).to(dtype).to(device)
        t = base[..., ::2] if shape else base[0]
        assert shape == () or not t.is_contiguous() or t.numel() <= 1
        return t
    t = (torch.randn(shape, generator=gen, dtype=torch.float64) * std + mean).to(dtype).to(device)
    if layout == "channels_last":
        t = t.contiguous(memory_format=torch.channels_last)
    return t
