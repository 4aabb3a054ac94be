"""Compatibility with older Triton releases: the one place where this package depends on the Triton version.

Triton before 3.8 converts a scalar to a Python ``int`` in the interpreter
(``range(0, n)`` over a runtime argument, ``TRITON_INTERPRET=1``) with ``int(array)`` on a 1-element 1-d
array, which NumPy 2.4 turned from a deprecation into a ``TypeError`` ("only 0-dimensional arrays can be
converted to Python scalars"; triton-lang/triton#9171, fixed by triton-lang/triton#9172). ``patch_interpreter()`` makes
``__index__`` extract the element explicitly (what Triton 3.8 does), only for Triton < 3.8 with NumPy >= 2.4;
compiled kernels are not affected.
"""

from __future__ import annotations

import importlib.metadata
import re

import triton

__all__ = ["installed_version", "needs_index_patch", "patch_interpreter", "version_tuple"]


def version_tuple(version: str) -> tuple[int, int]:
    """``(major, minor)`` of a version string (``"3.6.0"``, ``"2.4.0rc1"``, ``"3.8.0+git1234"``)."""
    nums = re.findall(r"\d+", version)[:2]
    return tuple(int(n) for n in nums) + (0,) * (2 - len(nums))


def installed_version(package: str) -> str:
    """The installed version of ``package`` from its metadata (no import), ``"0"`` if it is not installed."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "0"


def needs_index_patch(triton_version: str = triton.__version__, numpy_version: str | None = None) -> bool:
    """True where the interpreter's ``tensor.__index__`` raises on NumPy's 1-element arrays
    (``numpy_version``: the installed NumPy's when ``None``)."""
    if numpy_version is None:
        numpy_version = installed_version("numpy")
    return version_tuple(triton_version) < (3, 8) and version_tuple(numpy_version) >= (2, 4)


def patch_interpreter() -> bool:
    """Install the ``__index__`` fix into Triton's interpreter where it is needed (idempotent); True if
    installed (now or before)."""
    if not needs_index_patch():
        return False
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "_anl_fused_index_fix", False):
        return True

    def _patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        # the scope restores in reverse order: this one first, then Triton's own
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    _patch_lang_tensor._anl_fused_index_fix = True
    interpreter._patch_lang_tensor = _patch_lang_tensor
    return True
