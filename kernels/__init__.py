"""Triton kernels of anl-fused (installed as ``anl_fused.kernels``).

Three ops, each a ``torch.library.triton_op`` in the ``anl_fused`` namespace (so
``torch.compile(fullgraph=True)`` traces into them) with the semantics documented in
``anl_fused.ops``:

- ``std(h) -> s``: ``std(h)`` over all elements in one read of ``h`` (no gradient).
- ``noise_scale(g, z, s, eps) -> (scale, norm)``: per-sample ``max|g_b|`` and ``r_b * s / norm_b``.
- ``add_noise(h, g, scale) -> out``: ``h + scale[b] * g`` in one pass (autograd: identity to ``h``).

Off CUDA they run only under the Triton interpreter (``TRITON_INTERPRET=1`` set before ``triton``
is imported); ``anl_fused.ops`` picks torch ops for CPU tensors by default.
"""

from .add_noise import add_noise
from .noise_scale import noise_scale
from .std import std

__all__ = ["add_noise", "noise_scale", "std"]
