"""anl_fused.ops documents each op where ``help()`` finds it: its shapes, dtypes, math and backend."""

import inspect

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
