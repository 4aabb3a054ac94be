"""The Triton-version workaround (``anl_fused.kernels._compat``): when it applies, and that a kernel looping
over a runtime argument (``range(0, n)``) runs in the interpreter of the installed Triton."""

import pytest
import torch
import triton
import triton.language as tl

from anl_fused.kernels import _compat

from ._helpers import kernel_device


@pytest.mark.parametrize(
    ("version", "expected"), [("3.6.0", (3, 6)), ("3.8.0+git1a2b3c", (3, 8)), ("2.4.0rc1", (2, 4)), ("3", (3, 0))]
)
def test_version_tuple(version, expected):
    assert _compat.version_tuple(version) == expected


@pytest.mark.parametrize(
    ("triton_version", "numpy_version", "expected"),
    [
        ("3.6.0", "2.4.1", True),
        ("3.7.1", "2.4.0", True),
        ("3.6.0", "2.3.5", False),
        ("3.8.0", "2.4.6", False),
        ("3.9.0", "3.0.0", False),
        ("3.6.0", "1.26.4", False),
    ],
)
def test_the_patch_applies_to_old_triton_with_new_numpy_only(triton_version, numpy_version, expected):
    assert _compat.needs_index_patch(triton_version, numpy_version) is expected


@triton.jit
def _count_kernel(out_ptr, n, BLOCK: tl.constexpr):
    acc = tl.zeros([BLOCK], dtype=tl.int32)
    for t in range(0, n):  # a runtime bound: __index__ of a scalar in the interpreter
        acc += t
    tl.store(out_ptr + tl.arange(0, BLOCK), acc)


def test_a_loop_over_a_runtime_argument_runs():
    """Under the interpreter this needs the workaround on Triton < 3.8 with NumPy >= 2.4."""
    out = torch.zeros(4, dtype=torch.int32, device=kernel_device())
    _count_kernel[(1,)](out, 5, BLOCK=4)
    assert out.tolist() == [10] * 4


def test_patch_is_installed_where_needed_and_idempotent():
    assert _compat.patch_interpreter() is _compat.needs_index_patch()
    assert _compat.patch_interpreter() is _compat.needs_index_patch()
    if _compat.needs_index_patch():
        from triton.runtime import interpreter

        assert interpreter._patch_lang_tensor._anl_fused_index_fix


def test_the_numpy_version_comes_from_its_metadata():
    """``_compat`` reads NumPy's version without importing NumPy."""
    import numpy as np

    assert _compat.installed_version("numpy") == np.__version__
    assert _compat.installed_version("anl-fused-not-a-package") == "0"
    assert _compat.needs_index_patch() is _compat.needs_index_patch(triton.__version__, np.__version__)
    assert not any(getattr(v, "__name__", "") == "numpy" for v in vars(_compat).values())
