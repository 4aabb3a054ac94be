"""Triton kernels of anl-fused (installed as ``anl_fused.kernels``).

Three ops, each a ``torch.library.triton_op`` in the ``anl_fused`` namespace (so
``torch.compile(fullgraph=True)`` traces into them) with the semantics documented in
``anl_fused.ops``:

- ``std(h) -> s``: ``std(h)`` over all elements in one read of ``h`` (no gradient).
- ``noise_scale(g, z, s, eps, *, layer_norm=False, stats=None) -> (scale, norm)``: per-sample
  ``max|g_b|`` and ``r_b * s / norm_b`` (or the layer's largest finite norm), counting non-finite
  and zero norms into ``stats``.
- ``add_noise(h, g, scale, *, alpha=1.0) -> out``: ``h + alpha * scale[b] * g`` in one pass
  (autograd: identity to ``h``).

Each is one kernel launch. ``std`` and ``noise_scale`` are single-launch reductions: the last
program to finish combines the partials, in a fixed order (bitwise reproducible), using a
persistent per-device workspace (``_layout.Workspace``: counters that every launch leaves at 0,
reusable partials; one stream per device at a time). Eager calls launch the kernels directly (a
few microseconds of host work); under ``torch.compile`` the ``triton_op`` is traced instead.
``anl_fused.kernels.aot`` compiles them for sm_80 / sm_90 without a GPU and reads their resources.

Off CUDA they run only under the Triton interpreter (``TRITON_INTERPRET=1`` set before ``triton``
is imported); ``anl_fused.ops`` picks torch ops for CPU tensors by default.
"""

from ._compat import patch_interpreter
from .add_noise import add_noise
from .noise_scale import noise_scale
from .std import std

patch_interpreter()  # before any kernel runs: the one Triton-version workaround (see _compat)

__all__ = ["add_noise", "noise_scale", "std"]
