"""anl_fused.ops documents each op where ``help()`` finds it: its shapes, dtypes, math and backend."""

import inspect
import sys

import pytest

from anl_fused import ops

# per op: what its docstring must state (shapes, the math, dtypes, the backend)
DOCUMENTED = {
    "std": ["0-d", "correction 1", "float32", "Backend"],
    "noise_scale": [
        "[B]",
        "norm_b = max_i |g_b,i|",
        "scale_b = r_b * s / norm_b",
        "layer_norm",
        "stats",
        "float32",
        "Backend",
    ],
    "add_noise": ["[B, ...]", "out = h + alpha * scale[b] * g'", "non-finite", "h``'s shape and dtype", "Backend"],
    "backend_for": ["triton", "ANL_FUSED_BACKEND"],
}


@pytest.mark.parametrize("name", ops.__all__)
def test_every_public_op_has_its_own_docstring(name):
    doc = inspect.getdoc(getattr(ops, name))
    assert doc, f"ops.{name} has no docstring"
    for needle in DOCUMENTED.get(name, []):
        assert needle in doc, f"ops.{name}'s docstring does not say {needle!r}"


@pytest.mark.parametrize(
    ("missing", "said"),
    [("triton", "need triton for the op schemas"), ("anl_fused.kernels.cpu", "cannot be imported")],
)
def test_cpp_status_names_why_the_kernels_did_not_import(monkeypatch, missing, said):
    """Without triton the C++ kernels lack their op schemas; an anl_fused without its kernels subpackage (a source
    tree shadowing the install) is named as such, not blamed on triton."""
    monkeypatch.setattr(ops, "_CPP", [])
    monkeypatch.delitem(sys.modules, "anl_fused.kernels.cpu", raising=False)
    if "anl_fused.kernels" in sys.modules:  # `from anl_fused.kernels import cpu` reads the attribute first
        monkeypatch.delattr(sys.modules["anl_fused.kernels"], "cpu", raising=False)
    monkeypatch.setitem(sys.modules, missing, None)  # makes importing it raise ImportError(name=missing)
    if missing == "triton":  # anl_fused.kernels imported afresh: its first line that imports triton fails
        for name in [m for m in sys.modules if m.startswith("anl_fused.kernels")]:
            monkeypatch.delitem(sys.modules, name)
    status = ops.cpp_status()
    assert status.startswith(f"torch ops (the C++ CPU kernels {said}: "), status
