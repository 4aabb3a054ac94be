"""Ahead-of-time inspection of the kernels for NVIDIA GPUs, on a machine without one.

Two halves, meant for two processes:

- ``record(execute=...)`` (any process; under ``TRITON_INTERPRET=1`` the kernels can run on CPU
  tensors) records every launch of this package's kernels as a JSON-able dict: kernel, grid,
  ``num_warps``, constexprs and, per runtime argument, what Triton specializes on (tensor dtype and
  16-byte alignment of its address, integer value).
- ``compile_launch(launch, arch)`` (a process *without* ``TRITON_INTERPRET``: it needs the real
  ``JITFunction``) rebuilds exactly the specialization Triton's launcher would compute for those
  arguments (Triton's own binder, for ``GPUTarget("cuda", arch, 32)``), compiles it to PTX and cubin,
  and reads the resource usage: registers, spill stores / loads and stack (``ptxas -v``), shared
  memory (Triton's metadata), and the global load / store instructions of the PTX with their widths
  in bytes (``ld.global.v4.b32`` = 16 bytes, e.g. 4 floats or 8 halves).

``python -m anl_fused.kernels.aot`` reads ``{"launches": [...], "archs": [80, 90]}`` on stdin and
writes the compile results as JSON on stdout (one entry per distinct specialization and arch).
Nothing here needs a GPU; ptxas and cuobjdump ship with Triton (``triton/backends/nvidia/bin``).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
import threading

import torch
import triton

__all__ = ["KERNELS", "compile_launch", "launch_key", "record", "vector_summary"]

#: The kernels of this package: short name -> (module, attribute).
KERNELS = {
    "std": ("anl_fused.kernels.std", "_std_kernel"),
    "noise_scale": ("anl_fused.kernels.noise_scale", "_noise_scale_kernel"),
    "add_noise": ("anl_fused.kernels.add_noise", "_add_noise_kernel"),
}
_BY_FN_NAME = {attr: name for name, (_, attr) in KERNELS.items()}
_LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")

_state = threading.local()


def in_kernel() -> bool:
    """True while a recorded kernel is running (so op counters can ignore the interpreter's own
    torch calls)."""
    return getattr(_state, "depth", 0) > 0


def _describe(value):
    if isinstance(value, torch.Tensor):
        return {
            "kind": "tensor",
            "dtype": str(value.dtype).removeprefix("torch."),
            "align16": value.data_ptr() % 16 == 0,
            "numel": value.numel(),
        }
    if isinstance(value, bool):
        return {"kind": "bool", "value": value}
    if isinstance(value, int):
        return {"kind": "int", "value": value}
    if isinstance(value, float):
        return {"kind": "float", "value": value}
    if value is None:
        return {"kind": "none"}
    return {"kind": "other", "repr": repr(value)}


def _launch_dict(fn, args, kwargs, grid) -> dict:
    params = list(inspect.signature(fn).parameters)
    bound = dict(zip(params, args))
    constexpr_names = {p for p, a in inspect.get_annotations(fn).items() if "constexpr" in str(a)}
    options = {k: kwargs[k] for k in _LAUNCH_OPTIONS if k in kwargs}
    runtime, constexprs = {}, {}
    for k, v in list(bound.items()) + [(k, v) for k, v in kwargs.items() if k not in _LAUNCH_OPTIONS]:
        if k in constexpr_names:
            constexprs[k] = v
        else:
            runtime[k] = _describe(v)
    grid = tuple(grid) + (1,) * (3 - len(grid))
    return {
        "kernel": _BY_FN_NAME.get(fn.__name__, fn.__name__),
        "fn": fn.__name__,
        "grid": list(grid),
        "num_warps": options.get("num_warps", 4),
        "options": options,
        "constexprs": constexprs,
        "args": runtime,
    }


@contextlib.contextmanager
def record(execute: bool = True):
    """Record the launches of every ``triton.jit`` kernel made inside (the list is yielded).
    ``execute=False`` skips the kernels (outputs stay unwritten): enough to learn launch
    configurations of any size quickly."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    launches: list[dict] = []
    real = {cls: cls.run for cls in (InterpretedFunction, JITFunction)}

    def patched(cls):
        def run(self, *args, grid, warmup, **kwargs):
            fn = self.fn
            g = grid(dict(zip(inspect.signature(fn).parameters, args))) if callable(grid) else grid
            launches.append(_launch_dict(fn, args, kwargs, g))
            if not execute:
                return None
            _state.depth = getattr(_state, "depth", 0) + 1
            try:
                return real[cls](self, *args, grid=grid, warmup=warmup, **kwargs)
            finally:
                _state.depth -= 1

        return run

    for cls in real:
        cls.run = patched(cls)
    try:
        yield launches
    finally:
        for cls, fn in real.items():
            cls.run = fn


def launch_key(launch: dict) -> str:
    """What identifies a compiled specialization: kernel, constexprs, options and the argument
    facts Triton specializes on (not the grid, nor sizes beyond divisibility)."""
    facts = {}
    for k, a in launch["args"].items():
        if a["kind"] == "tensor":
            facts[k] = (a["dtype"], a["align16"])
        elif a["kind"] == "int":
            v = a["value"]
            facts[k] = ("int", v == 1, v % 16 == 0, -(2**31) <= v < 2**31)
        else:
            facts[k] = (a["kind"],)
    return json.dumps(
        [
            launch["kernel"],
            sorted(launch["constexprs"].items()),
            sorted(launch["options"].items()),
            sorted(facts.items()),
        ],
        default=str,
    )


class _Ptr:
    """Stands in for a tensor in Triton's binder: a dtype and an address with the recorded alignment."""

    def __init__(self, dtype: torch.dtype, aligned: bool):
        self.dtype = dtype
        self._ptr = 1 << 20 if aligned else (1 << 20) + 4

    def data_ptr(self) -> int:
        return self._ptr


def _jit_function(kernel: str):
    mod, attr = KERNELS[kernel]
    fn = getattr(importlib.import_module(mod), attr)
    if not isinstance(fn, triton.runtime.jit.JITFunction):
        raise RuntimeError("compile_launch needs the real JITFunction: run it in a process without TRITON_INTERPRET")
    return fn


def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


_LDST = re.compile(r"^\s*(?:@!?%p\d+\s+)?((?:ld|st)\.global[\w:.]*)\s", re.M)


def vector_summary(ptx: str) -> dict:
    """Global loads and stores of a PTX text: ``{"ld": {bytes: count}, "st": {bytes: count}}`` plus
    the instruction spellings; bytes = vector length x element width (``.v4.b32`` -> 16)."""
    out = {"ld": {}, "st": {}, "instructions": {}}
    for ins in _LDST.findall(ptx):
        parts = ins.split(".")
        vec = 1
        width = None
        for p in parts:
            if re.fullmatch(r"v[248]", p):
                vec = int(p[1:])
            m = re.fullmatch(r"[bsuf](8|16|32|64|128)", p)
            if m:
                width = int(m.group(1))
        nbytes = vec * (width or 0) // 8
        kind = "ld" if ins.startswith("ld") else "st"
        out[kind][nbytes] = out[kind].get(nbytes, 0) + 1
        out["instructions"][ins] = out["instructions"].get(ins, 0) + 1
    return out


def _ptxas_info(ptx: str, cubin: bytes) -> dict:
    """Resources of the kernel: ``ptxas -v`` run with the flags Triton's own compile uses (spills,
    stack, registers), checked against ``cuobjdump -res-usage`` of Triton's cubin (registers,
    local memory)."""
    target = re.search(r"^\.target\s+(\w+)", ptx, re.M).group(1)
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        res = subprocess.run(
            [
                _tool("ptxas"),
                "-lineinfo",
                "-v",
                "--regAllocOptLevel=2",
                f"--gpu-name={target}",
                src,
                "-o",
                os.path.join(d, "k.cubin"),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        binary = os.path.join(d, "triton.cubin")
        with open(binary, "wb") as f:
            f.write(cubin)
        dump = subprocess.run([_tool("cuobjdump"), "-res-usage", binary], capture_output=True, text=True, check=True)
    text = res.stdout + res.stderr
    info = {"target": target}
    m = re.search(r"Used (\d+) registers", text)
    info["registers"] = int(m.group(1)) if m else None
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", text)
    if m:
        info["stack_bytes"], info["spill_stores"], info["spill_loads"] = map(int, m.groups())
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", dump.stdout)
    if m:
        info["cubin_registers"], info["cubin_stack"], info["cubin_shared"], info["cubin_local"] = map(int, m.groups())
    return info


def compile_launch(launch: dict, arch: int, keep_ptx: bool = False) -> dict:
    """Compile ``launch``'s specialization for ``sm_<arch>`` and report its resources (and the PTX
    text itself with ``keep_ptx``)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = _jit_function(launch["kernel"])
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    args = []
    for p in fn.params:
        name = p.name
        if name in launch["constexprs"]:
            args.append(launch["constexprs"][name])
            continue
        a = launch["args"][name]
        if a["kind"] == "tensor":
            args.append(_Ptr(getattr(torch, a["dtype"]), a["align16"]))
        elif a["kind"] in ("int", "float", "bool"):
            args.append(a["value"])
        else:
            raise ValueError(f"cannot rebuild argument {name}: {a}")
    options = dict(launch["options"])
    bound, specialization, opts = binder(*args, **options)
    options_obj, signature, constexprs, attrs = fn._pack_args(backend, options, bound, specialization, opts)
    kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options_obj.__dict__)
    ptx = kernel.asm["ptx"]
    info = _ptxas_info(ptx, kernel.asm["cubin"])
    info.update(
        arch=arch,
        kernel=launch["kernel"],
        num_warps=kernel.metadata.num_warps,
        shared_bytes=kernel.metadata.shared,
        vectors=vector_summary(ptx),
        signature={k: v for k, v in signature.items()},
        specialized={str(k[0]): v for k, v in attrs.items() if v},
    )
    if keep_ptx:
        info["ptx"] = ptx
    return info


def compile_all(launches: list[dict], archs=(80, 90)) -> dict:
    """``{launch_key: {arch: info}}`` for every distinct specialization in ``launches``."""
    out = {}
    for launch in launches:
        key = launch_key(launch)
        if key in out:
            continue
        out[key] = {str(arch): compile_launch(launch, arch) for arch in archs}
    return out


def compile_in_subprocess(launches: list[dict], archs=(80, 90), timeout: float = 900) -> dict:
    """``compile_all`` in a fresh interpreter without ``TRITON_INTERPRET`` (usable from a process
    that runs the kernels in the interpreter)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "ANL_FUSED_BACKEND")}
    env["PYTHONWARNINGS"] = "ignore"
    res = subprocess.run(
        [sys.executable, "-m", "anl_fused.kernels.aot"],
        input=json.dumps({"launches": launches, "archs": list(archs)}),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if res.returncode != 0:
        raise RuntimeError(f"AOT compile failed ({res.returncode}):\n{res.stderr[-5000:]}")
    return json.loads(res.stdout)


def _main() -> None:
    req = json.load(sys.stdin)
    json.dump(compile_all(req["launches"], tuple(req.get("archs", (80, 90)))), sys.stdout)


if __name__ == "__main__":
    _main()
