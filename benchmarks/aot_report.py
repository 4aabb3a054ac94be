"""AOT report of the ANL kernels for A100 (sm_80) and H100 / H200 (sm_90), made on a CPU machine (no GPU).

    anl-fused bench --aot --models vgg16 --batch 128 --aot-dtypes fp32 bf16 fp16 --out benchmarks/results

For every ANL layer's input shape (:func:`.step.anl_shapes`) at ``--batch`` and every dtype, the three kernels are
called as a ``TwoRound`` step calls them and their launches recorded, not run (``anl_fused.kernels.aot.record``):
grid, warps and specialization are what the ops' own launch-config logic chooses. Each distinct specialization is
compiled for sm_80 and sm_90 (registers, spills, shared memory, PTX load / store widths); per layer, the bytes moved
against the minimum (std: read h; noise_scale: read g; add_noise: read h and g, write out), and the time those bytes
take at HBM bandwidth next to the launches' host cost. Writes ``aot-report.json`` and ``aot-report.md``.
"""

from __future__ import annotations

import datetime as dt
import json
import os

import torch

from .render import table
from .step import anl_shapes

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ARCHS = (80, 90)
SMS = {"A100": 108, "H100": 132, "H200": 132}
HBM = {"H100": 3.35e12, "H200": 4.8e12}  # bytes per second
LAUNCH_US = (3.0, 5.0)  # host + driver cost of one kernel launch, for comparison
KERNEL_HEADER = "id | kernel | dtype | constexprs | specialized | warps | sm_80 regs | sm_90 regs | sm_80 spills | "
KERNEL_HEADER += "sm_90 spills | smem | loads (sm_90) | stores (sm_90)"
LAYER_HEADER = "layer | input | grids std / noise_scale / add_noise | kernels | MB moved | MB minimum | "
LAYER_HEADER += "ideal us H100 | ideal us H200 | launch us"


def layer_launches(shape: tuple[int, ...], dtype: torch.dtype) -> list[dict]:
    """The three kernel launches of one ANL layer's input ``shape`` (batch first) in ``dtype``, recorded, not run."""
    from anl_fused import kernels
    from anl_fused.kernels import aot

    h = torch.empty(shape, dtype=dtype)
    z, s, stats = torch.empty(shape[0]), torch.empty(()), torch.zeros(2, dtype=torch.int64)
    with aot.record(execute=False) as launches:
        kernels.std(h)
        kernels.noise_scale(h, z, s, 0.05, stats=stats)
        kernels.add_noise(h, h, z)
    return launches


def traffic(launch: dict) -> tuple[int, int]:
    """``(bytes moved, minimum bytes)`` of one launch. The minimum is the tensor traffic the op cannot avoid;
    moved adds the per-program partials (written, read back), the per-sample vectors and the counters."""
    a, grid, cx = launch["args"], launch["grid"][0], launch["constexprs"]
    size = lambda name: torch.empty(0, dtype=getattr(torch, a[name]["dtype"])).element_size()
    if launch["kernel"] == "std":
        minimum, acc = a["n"]["value"] * size("h_ptr"), size("s_ptr")
        return minimum + grid * (4 * acc + 8) + acc, minimum
    if launch["kernel"] == "noise_scale":
        B, acc = a["B"]["value"], size("norm_ptr")
        minimum = B * a["M"]["value"] * size("g_ptr")
        per_sample = B * (4 * acc + (size("z_ptr") if cx["HAS_Z"] else 0))
        return minimum + grid * (2 * acc + 8) + per_sample + (16 if cx["HAS_STATS"] else 0), minimum
    B = grid // a["chunks"]["value"]  # add_noise: one program per (sample, chunk)
    minimum = B * a["M"]["value"] * (2 * size("h_ptr") + size("g_ptr"))
    return minimum + (size("scale_ptr") * (B if cx["PER_SAMPLE"] else 1) if cx["HAS_SCALE"] else 0), minimum


def _cost(launches: list[dict]) -> dict:
    moved = sum(e["bytes"] for e in launches)
    return {
        "launches": len(launches),
        "bytes": moved,
        "min_bytes": sum(e["min_bytes"] for e in launches),
        "ideal_us": {gpu: moved / bw * 1e6 for gpu, bw in HBM.items()},
        "launch_us": [len(launches) * c for c in LAUNCH_US],
    }


def make_report(model: str, batch: int, size: int, dtypes: list[str]) -> dict:
    """The report of zoo model ``model``'s ANL layers at ``batch`` x ``size`` x ``size`` in each of ``dtypes``."""
    import triton

    from anl_fused.kernels import aot

    shapes = [(batch, *chw) for chw in anl_shapes(model, size)]
    recorded = {d: [layer_launches(shape, DTYPES[d]) for shape in shapes] for d in dtypes}
    compiled = aot.compile_in_subprocess([x for layers in recorded.values() for ls in layers for x in ls], ARCHS)
    ids = {key: f"k{i}" for i, key in enumerate(compiled)}
    report = {"date": dt.date.today().isoformat(), "torch": torch.__version__, "triton": triton.__version__}
    report.update(model=model, batch=batch, size=size, sms=SMS, hbm=HBM, launch_us=LAUNCH_US, kernels={}, dtypes={})
    for d, layers in recorded.items():
        rows = []
        for shape, launches in zip(shapes, layers):
            entries = []
            for launch in launches:
                key = aot.launch_key(launch)
                first = {k: launch[k] for k in ("kernel", "num_warps", "constexprs", "args")}
                kernel = report["kernels"].setdefault(ids[key], {"dtype": d, **first, **compiled[key]})
                moved, minimum = traffic(launch)
                entries.append({"kernel": kernel["kernel"], "id": ids[key], "grid": launch["grid"][0]})
                entries[-1].update(bytes=moved, min_bytes=minimum)
            rows.append({"shape": list(shape), "kernels": entries, **_cost(entries)})
        report["dtypes"][d] = {"layers": rows, "totals": _cost([e for r in rows for e in r["kernels"]])}
    return report


def _widths(counts: dict) -> str:
    return " ".join(f"{k}B x{v}" for k, v in sorted(counts.items(), key=lambda kv: -int(kv[0]))) or "-"


def _kernel_row(kid: str, k: dict) -> list:
    constexprs = ", ".join(f"{n}={v}" for n, v in k["constexprs"].items() if n != "MAX_SCALE")
    ints = [(n, a["value"]) for n, a in k["args"].items() if a["kind"] == "int"]  # what Triton specializes on
    spec = " ".join(f"{n}=1" if v == 1 else f"{n}%16" for n, v in ints if v == 1 or v % 16 == 0)
    a80, a90 = k["80"], k["90"]
    return [kid, k["kernel"], k["dtype"], constexprs, spec, k["num_warps"], a80["registers"], a90["registers"]] + [
        *(f"{a['spill_stores']}+{a['spill_loads']}" for a in (a80, a90)),
        *(a90["shared_bytes"], _widths(a90["vectors"]["ld"]), _widths(a90["vectors"]["st"])),
    ]


def _layer_row(i: int, e: dict) -> list:
    mb = [f"{e[k] / 1e6:.3f}" for k in ("bytes", "min_bytes")]
    grids, ids = " / ".join(str(x["grid"]) for x in e["kernels"]), " ".join(x["id"] for x in e["kernels"])
    launch = "{:.0f}-{:.0f}".format(*e["launch_us"])
    return [i, "x".join(map(str, e["shape"])), grids, ids, *mb, *(f"{e['ideal_us'][g]:.2f}" for g in HBM), launch]


def markdown(report: dict) -> str:
    """``aot-report.md``: the kernels' resources, then per dtype each ANL layer's launches and traffic."""
    r = report
    dtypes = " ".join(r["dtypes"])
    lines = [
        f"# AOT report: {r['model']}, batch {r['batch']}, {r['size']}x{r['size']}",
        "",
        f"Date {r['date']}; torch {r['torch']}, Triton {r['triton']}. Made on a CPU machine: each ANL layer's "
        "launches recorded (not run) from the ops' own launch configuration, every specialization compiled for "
        f"sm_80 and sm_90. Command: `anl-fused bench --aot --models {r['model']} --batch {r['batch']} "
        f"--size {r['size']} --aot-dtypes {dtypes} --out DIR`.",
        "",
        "## Kernels (per distinct specialization)",
        "",
        "Registers and spill stores+loads (bytes) from `ptxas -v`; shared memory (bytes) from Triton; global loads "
        "and stores from the PTX, as access width x instructions (16B = `ld.global.v4.b32`: 4 floats or 8 halves).",
        "",
        table(KERNEL_HEADER, [_kernel_row(kid, k) for kid, k in r["kernels"].items()]),
    ]
    for name, d in r["dtypes"].items():
        t = d["totals"]
        over = 100 * (t["bytes"] / max(t["min_bytes"], 1) - 1)
        lines += [
            f"## Per ANL layer, {name}",
            "",
            "Grids in programs (A100: 108 SMs, H100 / H200: 132). Ideal: the layer's bytes at HBM bandwidth "
            f"(H100 3.35 TB/s, H200 4.8 TB/s), next to its launches' host cost ({LAUNCH_US[0]:g}-{LAUNCH_US[1]:g} us "
            "each).",
            "",
            table(LAYER_HEADER, [_layer_row(i, e) for i, e in enumerate(d["layers"])]),
            f"Step total ({name}): {t['launches']} launches, {t['bytes'] / 1e6:.2f} MB moved "
            f"({t['min_bytes'] / 1e6:.2f} MB minimum, {over:.3f}% over); ideal {t['ideal_us']['H100']:.1f} us (H100) "
            f"/ {t['ideal_us']['H200']:.1f} us (H200) against {t['launch_us'][0]:.0f}-{t['launch_us'][1]:.0f} us "
            "of launch cost.",
            "",
        ]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_report(report: dict, out: str) -> tuple[str, str]:
    """``aot-report.json`` and ``aot-report.md`` in the directory ``out`` (atomic writes); their paths."""
    from anl_fused.experiments.files import atomic_write

    paths = os.path.join(out, "aot-report.json"), os.path.join(out, "aot-report.md")
    atomic_write(paths[0], json.dumps(report, indent=1))
    atomic_write(paths[1], markdown(report))
    return paths
