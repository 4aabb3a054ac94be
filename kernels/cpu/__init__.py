"""The C++ CPU kernels of anl-fused (``anl_ops.cpp``): built with ninja on first use, cached.

:func:`load` compiles ``anl_ops.cpp`` with ``torch.utils.cpp_extension.load`` (ninja) the first time
a process needs it and imports it; later processes find the build in torch's extension cache
(``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``), which torch rebuilds when the
source, the flags or the torch version change. The cache entry's name holds a hash of the source's path
and contents, so two checkouts (or versions) on one machine keep their own builds instead of rebuilding
over each other's. The build runs quietly; when it cannot run (no C++
compiler, no ninja), :func:`load` returns None, :func:`status` says why, and ``anl_fused.ops`` keeps
the torch ops (``anl_fused.ops.backend()`` tells which backend runs).

Vector ISA. ``at::vec::Vectorized`` picks its width when the file is compiled. The extension is
therefore built for the CPU capability torch itself dispatches to in this process
(``torch.backends.cpu.get_cpu_capability()``: AVX512, AVX2 or DEFAULT; ``ATEN_CPU_CAPABILITY``
lowers it) with the flags torch's own kernels of that capability are compiled with (no
``-march=native``): one cached build per capability, each valid on every CPU that has it.
``-ffp-contract=off``: no multiply-add is fused, so ``noise_scale`` and ``add_noise`` give the same
bits in every build (and ``noise_scale`` the torch backend's bits); only the summation order inside
``std`` depends on the vector width.

Importing this module imports ``anl_fused.kernels``, whose ``triton_op`` definitions provide the
``anl_fused::`` schemas the C++ code registers its CPU kernels for (``TORCH_LIBRARY_IMPL``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import warnings

import torch

__all__ = ["load", "status"]

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "anl_ops.cpp")

# the flags of torch's own CPU_CAPABILITY builds (cmake/Codegen.cmake); DEFAULT adds none
ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma"],
    "AVX2": ["-mavx2", "-mfma", "-mbmi", "-mbmi2", "-mf16c"],
    "DEFAULT": [],
}
COMMON_FLAGS = ["-O3", "-ffp-contract=off", "-fopenmp"]

_STATE: dict = {}


def capability() -> str:
    """The CPU capability the extension is built for: torch's own (AVX512, AVX2), else DEFAULT."""
    cap = torch.backends.cpu.get_cpu_capability()
    return cap if cap in ISA_FLAGS else "DEFAULT"


def load():
    """The compiled extension module (built on the first call of a process, from cache after), or
    None when it cannot be built; then :func:`status` holds the reason and one warning was issued."""
    if "module" not in _STATE:
        _STATE["module"] = None
        try:
            _STATE["module"] = _build(capability())
            _STATE["status"] = f"C++ CPU kernels ({_STATE['module'].capability()})"
        except Exception as exc:  # no compiler, no ninja, a compile error: the torch ops stay
            reason = " ".join(str(exc).split())[:300] or type(exc).__name__
            _STATE["status"] = f"torch ops (the C++ CPU kernels could not be built: {reason})"
            warnings.warn(
                f"anl_fused: the C++ CPU kernels could not be built, the torch ops run instead ({reason}); "
                "install a C++ compiler and ninja for the faster kernels",
                RuntimeWarning,
                stacklevel=3,
            )
    return _STATE["module"]


def status() -> str:
    """What :func:`load` found: ``"C++ CPU kernels (AVX2)"``, or ``"torch ops (...why...)"``, or
    ``"not loaded yet"``."""
    return _STATE.get("status", "not loaded yet")


def _build(cap: str):
    from anl_fused import kernels  # noqa: F401  (defines the anl_fused:: schemas the C++ registers for)

    with _quiet_import():
        from torch.utils import cpp_extension
    with open(SOURCE, "rb") as f:
        tag = hashlib.sha256(SOURCE.encode() + b"\0" + f.read()).hexdigest()[:10]
    with _ninja_on_path():
        return cpp_extension.load(
            name=f"anl_fused_cpu_{cap.lower()}_{tag}",
            sources=[SOURCE],
            extra_cflags=COMMON_FLAGS + ISA_FLAGS[cap] + [f"-DCPU_CAPABILITY={cap}", f"-DCPU_CAPABILITY_{cap}"],
            with_cuda=False,
            verbose=False,
        )


@contextlib.contextmanager
def _quiet_import():
    """``torch.utils.cpp_extension`` logs a CUDA_HOME guess at import on a machine without CUDA."""
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


@contextlib.contextmanager
def _ninja_on_path():
    """The ``ninja`` package's binary on PATH for the build (a venv used without activating it)."""
    path = os.environ.get("PATH", "")
    if shutil.which("ninja") is None:
        with contextlib.suppress(ImportError):
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + path
    try:
        yield
    finally:
        os.environ["PATH"] = path
