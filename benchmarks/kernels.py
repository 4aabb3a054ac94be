"""Bandwidth of the three kernels against the unfused torch sequences (CUDA only).

For every distinct ANL input shape of VGG-16 and ResNet-18 on 32x32 inputs (:func:`.step.anl_shapes`) at batch
128, in float32 and bfloat16, each op is timed with ``triton.testing.do_bench`` (median) as the fused Triton kernel
and as ``anl_fused.ops``' torch backend. The bandwidth counts the bytes the op must move at least (std: read h;
noise_scale: read g; add_noise: read h and g, write out) and is compared with the device's copy bandwidth.

    python -m anl_fused.benchmarks.kernels          # prints a table
"""

import itertools
from collections import Counter
from unittest import mock

import torch

from anl_fused.benchmarks.render import table
from anl_fused.benchmarks.step import anl_shapes

MODELS = ("vgg16", "resnet18")
BATCH = 128
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _bench(fn) -> float:
    """Median milliseconds of ``fn`` (triton.testing.do_bench, L2 flushed between runs)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def copy_bandwidth(device, nbytes: int = 1 << 30) -> float:
    """The device's copy bandwidth in GB/s (bytes read + written) from one large ``copy_``."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    return 2 * nbytes / _bench(lambda: dst.copy_(src)) / 1e6


def op_cases(shape, dtype, device):
    """(op, bytes moved, fused fn, torch fn) for one activation shape and dtype. The torch fns are
    ``anl_fused.ops`` calls, timed with ``ANL_FUSED_BACKEND=torch``."""
    from anl_fused import kernels, ops

    gen = torch.Generator(device=device).manual_seed(0)
    h = torch.randn(shape, generator=gen, device=device, dtype=dtype)
    g = torch.randn(shape, generator=gen, device=device, dtype=dtype) * 1e-3
    z = torch.randn(shape[0], generator=gen, device=device)
    s = h.float().std()
    scale, _ = kernels.noise_scale(g, z, s, 0.1)
    n = h.numel() * h.element_size()
    return [
        ("std", n, lambda: kernels.std(h), lambda: ops.std(h)),
        ("noise_scale", n, lambda: kernels.noise_scale(g, z, s, 0.1), lambda: ops.noise_scale(g, z, s, 0.1)),
        ("add_noise", 3 * n, lambda: kernels.add_noise(h, g, scale), lambda: ops.add_noise(h, g, scale)),
    ]


def kernel_benchmarks(device="cuda") -> list:
    """One dict per (model, shape, dtype, op): times (ms, median), GB/s of the fused kernel and of the torch
    sequence, the fused kernel's fraction of the copy bandwidth, and the speedup. ``[]`` without CUDA."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return []
    copy_gbps, rows = copy_bandwidth(device), []
    for model in MODELS:
        for (chw, layers), (dname, dtype) in itertools.product(Counter(anl_shapes(model, 32)).items(), DTYPES.items()):
            for op, nbytes, fused, unfused in op_cases((BATCH, *chw), dtype, device):
                ms_fused = _bench(fused)
                with mock.patch.dict("os.environ", ANL_FUSED_BACKEND="torch"):
                    ms_torch = _bench(unfused)
                row = {"model": model, "shape": [BATCH, *chw], "layers": layers, "dtype": dname, "op": op}
                row.update(bytes=nbytes, ms_fused=ms_fused, ms_torch=ms_torch, copy_gbps=copy_gbps)
                row.update(gbps_fused=nbytes / ms_fused / 1e6, gbps_torch=nbytes / ms_torch / 1e6)
                rows.append({**row, "frac_of_copy": row["gbps_fused"] / copy_gbps, "speedup": ms_torch / ms_fused})
    return rows


def format_rows(rows) -> str:
    """The rows as a Markdown table, and the copy bandwidth."""
    keys = ("gbps_fused", "gbps_torch", "frac_of_copy", "speedup")
    cells = [[r["model"], tuple(r["shape"]), r["dtype"], r["op"], *(f"{r[k]:.2f}" for k in keys)] for r in rows]
    text = table("model | shape | dtype | op | fused GB/s | torch GB/s | of copy | speedup", cells)
    return text + (f"copy bandwidth: {rows[0]['copy_gbps']:.0f} GB/s\n" if rows else "")


if __name__ == "__main__":
    results = kernel_benchmarks()
    print(format_rows(results) if results else "no CUDA device: nothing measured")
