"""AOT report of the ANL kernels for A100 (sm_80) and H100 / H200 (sm_90), made on a CPU machine.

    python benchmarks/aot_report.py --model vgg16 --dtypes fp32 bf16 fp16 --batch 128 --size 32 \\
        --out benchmarks/results

For each dtype, in a subprocess with ``TRITON_INTERPRET=1`` and ``ANL_FUSED_BACKEND=triton``:

1. one warm-up and one recorded ``TwoRound`` step of the model at ``--step-batch`` (the kernels run
   in the interpreter): every kernel launch (kernel, grid, ``num_warps``, constexprs, argument
   dtypes and specialization) and every torch op that does work inside ``anl_fused.ops`` is
   recorded, per op call, and the ANL layers that ran are counted;
2. every op call of that step is replayed at ``--batch`` with the same per-sample shapes, dtypes,
   memory formats and options, its kernels not run (launch configurations depend on nothing else;
   replaying at the step batch reproduces the recorded launches exactly, which is checked).

Then, in a process without ``TRITON_INTERPRET``, every distinct specialization is compiled for
sm_80 and sm_90 (``anl_fused.kernels.aot``): registers, spills, shared memory, and the widths of the
global loads / stores in the PTX. The report gives, per kernel, those numbers; per ANL layer, the
grid against the SM count, the bytes moved against the minimum (std: read h; noise_scale: read g;
add_noise: read h + read g + write out), and the time that traffic takes at the HBM bandwidth of an
H100 (3.35 TB/s) and an H200 (4.8 TB/s), next to the ~3-5 us a kernel launch costs on the host.

Writes ``aot-report.json`` and ``aot-report.md`` into ``--out``. No GPU is needed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from collections import Counter

from anl_fused.benchmarks.render import table

HERE = os.path.dirname(os.path.abspath(__file__))

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
GPUS = {
    "A100": {"arch": 80, "sms": 108, "bw": None},
    "H100": {"arch": 90, "sms": 132, "bw": 3.35e12},
    "H200": {"arch": 90, "sms": 132, "bw": 4.8e12},
}
LAUNCH_US = (3.0, 5.0)  # host + driver cost of one kernel launch, for comparison
OPS = ("std", "noise_scale", "add_noise")
# which positional arguments of each op carry the batch dimension (replayed at another batch)
BATCH_ARGS = {"std": (0,), "noise_scale": (0, 1), "add_noise": (0, 1, 2)}
# aten ops that launch nothing on a GPU (allocation, aliasing, metadata)
_FREE = (
    "empty empty_like empty_strided new_empty new_empty_strided detach alias lift_fresh _unsafe_view view reshape "
    "as_strided expand t permute squeeze unsqueeze slice select _reshape_alias unbind split is_same_size sym_size "
    "sym_stride sym_numel"
)
FREE_OPS = frozenset(_FREE.split())


# --------------------------------------------------------------------------------------------------
# recording (runs in a process with TRITON_INTERPRET=1)


def _is_free(func) -> bool:
    return getattr(func, "is_view", False) or func._schema.name.split("::")[-1] in FREE_OPS


class OpRecorder:
    """Records what each call of ``anl_fused.ops.std / noise_scale / add_noise`` does: its
    arguments (for replay), the kernel launches made inside it, and the torch ops that do work
    (outside the interpreter's own handling of a kernel)."""

    def __init__(self):
        self.calls: list[dict] = []
        self.active: list[dict] = []

    @contextlib.contextmanager
    def patched(self, launches: list):
        from torch.utils._python_dispatch import TorchDispatchMode

        from anl_fused import ops
        from anl_fused.kernels import aot

        recorder = self

        class OpsInOps(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if recorder.active and not aot.in_kernel() and not _is_free(func):
                    recorder.active[-1]["torch_ops"].append(str(func))
                return func(*args, **(kwargs or {}))

        def wrap(name, real):
            def op(*args, **kwargs):
                call = {
                    "op": name,
                    "args": [_describe_arg(a) for a in args],
                    "kwargs": {k: _describe_arg(v) for k, v in kwargs.items()},
                    "torch_ops": [],
                    "first_launch": len(launches),
                }
                self.active.append(call)
                try:
                    return real(*args, **kwargs)
                finally:
                    self.active.pop()
                    call["launches"] = launches[call.pop("first_launch") :]
                    if not self.active:
                        self.calls.append(call)

            return op

        reals = {name: getattr(ops, name) for name in OPS}
        for name, real in reals.items():
            setattr(ops, name, wrap(name, real))
        try:
            with OpsInOps():
                yield self
        finally:
            for name, real in reals.items():
                setattr(ops, name, real)


def _describe_arg(a):
    import torch

    if isinstance(a, torch.Tensor):
        channels_last = a.dim() == 4 and not a.is_contiguous() and a.is_contiguous(memory_format=torch.channels_last)
        fmt = "channels_last" if channels_last else "contiguous"
        return {"tensor": True, "shape": list(a.shape), "dtype": str(a.dtype).removeprefix("torch."), "format": fmt}
    if isinstance(a, (bool, int, float, str)) or a is None:
        return a
    return repr(a)


def record_step(model, x, y, warmup: int = 1) -> dict:
    """One recorded ``TwoRound`` step (after ``warmup`` unrecorded ones, which create the device's
    counters): ``{"calls": [...], "launches": [...], "layers": n}``. Needs the Triton backend."""
    import torch
    import torch.nn.functional as F

    import anl_fused
    from anl_fused.kernels import aot

    engine = anl_fused.TwoRound(model, torch.Generator(device=x.device).manual_seed(0))
    for _ in range(warmup):
        engine.step(lambda: F.cross_entropy(model(x), y))
    model.zero_grad(set_to_none=True)
    rec = OpRecorder()
    with aot.record(execute=True) as launches, rec.patched(launches):
        engine.step(lambda: F.cross_entropy(model(x), y))
    layers = sum(1 for layer in anl_fused.anl_layers(model) if layer.active)
    return {"calls": rec.calls, "launches": list(launches), "layers": layers}


def per_layer_counts(step: dict) -> dict:
    """Launches per ANL layer per step: every kernel launch of the step (whoever made it) plus the
    torch ops that do work inside the ops, divided by the number of active ANL layers."""
    by_kernel = Counter(launch["kernel"] for launch in step["launches"])
    torch_ops = Counter(name for call in step["calls"] for name in call["torch_ops"])
    kernels, extra, per = len(step["launches"]), sum(torch_ops.values()), max(step["layers"], 1)
    return {
        "layers": step["layers"],
        "kernel_launches": kernels,
        "torch_ops_in_ops": extra,
        "op_calls": dict(Counter(call["op"] for call in step["calls"])),
        "by_kernel": dict(by_kernel),
        "torch_ops": dict(torch_ops),
        "per_layer": {
            "kernels": kernels / per,
            "torch_ops": extra / per,
            "total": (kernels + extra) / per,
            **{k: v / per for k, v in by_kernel.items()},
        },
    }


def replay(calls: list[dict], batch: int, step_batch: int) -> list[dict]:
    """Re-run every recorded op call at ``batch`` (kernels not run): ``[{"op", "launches", "args"}]``."""
    from anl_fused import ops
    from anl_fused.kernels import aot

    out = []
    for call in calls:
        args = []
        for i, a in enumerate(call["args"]):
            if isinstance(a, dict) and a.get("tensor"):
                shape = list(a["shape"])
                if i in BATCH_ARGS[call["op"]] and shape and shape[0] == step_batch:
                    shape[0] = batch
                a = _tensor(a, shape)
            args.append(a)
        kwargs = {k: _tensor(v) if isinstance(v, dict) and v.get("tensor") else v for k, v in call["kwargs"].items()}
        with aot.record(execute=False) as launches:
            getattr(ops, call["op"])(*args, **kwargs)
        out.append({"op": call["op"], "launches": list(launches), "args": [_describe_arg(a) for a in args]})
    return out


def _tensor(described: dict, shape: list[int] | None = None):
    """A tensor like the one :func:`_describe_arg` described (at ``shape`` if given)."""
    import torch

    dtype, shape = getattr(torch, described["dtype"]), described["shape"] if shape is None else shape
    t = torch.randn(shape, dtype=dtype) if dtype.is_floating_point else torch.zeros(shape, dtype=dtype)
    return t.contiguous(memory_format=torch.channels_last) if described["format"] == "channels_last" else t


def _record_main(argv) -> None:
    """Subprocess entry: record the step of one dtype and print JSON."""
    p = argparse.ArgumentParser()
    for name, kind in (("--model", str), ("--dtype", str), ("--batch", int), ("--step-batch", int), ("--size", int)):
        p.add_argument(name, type=kind)
    a = p.parse_args(argv)
    import torch

    from anl_fused.experiments.models import build_anl

    torch.manual_seed(0)
    dtype = getattr(torch, DTYPES[a.dtype])
    model = build_anl(a.model).to(dtype)
    x = torch.randn(a.step_batch, 3, a.size, a.size, dtype=dtype)
    step = record_step(model, x, torch.randint(0, 10, (a.step_batch,)))
    check = replay(step["calls"], a.step_batch, a.step_batch)
    same = all(_strip(r["launches"]) == _strip(c["launches"]) for r, c in zip(check, step["calls"]))
    full = replay(step["calls"], a.batch, a.step_batch)
    json.dump({"counts": per_layer_counts(step), "replay_matches_step": same, "calls": full}, sys.stdout)


def _strip(launches):
    """The launches without the argument addresses' alignment (allocation-dependent)."""
    out = []
    for launch in launches:
        args = {n: {k: v for k, v in d.items() if k != "align16"} for n, d in launch["args"].items()}
        out.append({k: v for k, v in launch.items() if k != "args"} | {"args": args})
    return out


# --------------------------------------------------------------------------------------------------
# the report (runs in the parent process; no torch needed beyond versions)

_ESIZE = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8, "int64": 8, "int32": 4}


def traffic(op: str, launch: dict) -> tuple[int, int]:
    """``(bytes moved, minimum bytes)`` of one launch. The minimum is the tensor traffic the op
    cannot avoid; moved adds the partials, the per-sample vectors and the counter atomics."""
    args = launch["args"]
    grid = launch["grid"][0]

    def e(name):
        return _ESIZE[args[name]["dtype"]] if args[name]["kind"] == "tensor" else 0

    if op == "std":
        n = args["n"]["value"]
        acc = e("s_ptr")
        minimum = n * e("h_ptr")
        moved = minimum + grid * (2 * acc + e("h_ptr") + 8) + 3 * grid * acc + acc
    elif op == "noise_scale":
        B, M = args["B"]["value"], args["M"]["value"]
        acc = e("norm_ptr")
        minimum = B * M * e("g_ptr")
        per_sample = B * (3 * acc + acc + (e("z_ptr") if launch["constexprs"].get("HAS_Z") else 0))
        moved = minimum + grid * (2 * acc + 8) + per_sample + (16 if launch["constexprs"].get("HAS_STATS") else 0)
    elif op == "add_noise":
        M, chunks = args["M"]["value"], args["chunks"]["value"]
        B = grid // chunks
        n = B * M
        minimum = n * (2 * e("h_ptr") + e("g_ptr"))
        scale = (
            e("scale_ptr") * (B if launch["constexprs"].get("PER_SAMPLE") else 1)
            if launch["constexprs"].get("HAS_SCALE")
            else 0
        )
        moved = minimum + scale
    else:
        raise KeyError(op)
    return moved, minimum


def _cost(entries: list[dict]) -> dict:
    """Launches, bytes moved and the minimum, the time those bytes take at each GPU's HBM bandwidth and the
    launches' host cost, of some launches (a layer's or the step's)."""
    moved = sum(e["bytes"] for e in entries)
    return {
        "launches": len(entries),
        "bytes": moved,
        "min_bytes": sum(e["min_bytes"] for e in entries),
        "ideal_us": {g: moved / v["bw"] * 1e6 for g, v in GPUS.items() if v["bw"]},
        "launch_us": [len(entries) * c for c in LAUNCH_US],
    }


def _launch_rows(calls: list[dict], ids: dict) -> list[dict]:
    """One row per launch of the replayed step: its layer (the k-th call of an op belongs to the k-th layer that
    ran), kernel, grid, specialization and traffic."""
    from anl_fused.kernels import aot

    rows, seen = [], Counter()
    for call in calls:
        layer = seen[call["op"]]
        seen[call["op"]] += 1
        for launch in call["launches"]:
            moved, minimum = traffic(call["op"], launch)
            rows.append(
                {
                    "layer": layer,
                    "op": call["op"],
                    "kernel": launch["kernel"],
                    "input_shape": call["args"][0]["shape"],
                    "grid": launch["grid"][0],
                    "num_warps": launch["num_warps"],
                    "constexprs": launch["constexprs"],
                    "specialization": _spec_facts(launch),
                    "kernel_id": ids[aot.launch_key(launch)],
                    "bytes": moved,
                    "min_bytes": minimum,
                    "grid_per_sm": {g: launch["grid"][0] / v["sms"] for g, v in GPUS.items()},
                }
            )
    return rows


def build_report(args, per_dtype: dict, compiled: dict) -> dict:
    import torch
    import triton

    report = {
        "date": dt.date.today().isoformat(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        **{k: getattr(args, k) for k in ("model", "batch", "size", "step_batch")},
        "gpus": GPUS,
        "launch_us": LAUNCH_US,
        "dtypes": {},
        "kernels": {},
    }
    ids = {key: f"k{i}" for i, key in enumerate(compiled)}  # short ids for the distinct specializations
    for key, archs in compiled.items():
        report["kernels"][ids[key]] = {"launch_key": key, **{f"sm_{a}": info for a, info in archs.items()}}
    for name, rec in per_dtype.items():
        launches = _launch_rows(rec["calls"], ids)
        layers = []
        for k in range(max((e["layer"] for e in launches), default=-1) + 1):
            mine = [e for e in launches if e["layer"] == k]
            grids = {e["op"]: e["grid"] for e in mine}
            layers.append({"layer": k, "shape": mine[0]["input_shape"], "grids": grids, **_cost(mine)})
        report["dtypes"][name] = {
            "counts": rec["counts"],
            "replay_matches_step": rec["replay_matches_step"],
            "layers": layers,
            "launches": launches,
            "totals": _cost(launches),
        }
    return report


def _spec_facts(launch: dict) -> str:
    """What Triton specialized the integer / pointer arguments on (value 1, multiple of 16, 16-byte
    aligned address), e.g. ``M%16 chunks=1``."""
    out = []
    for n, a in launch["args"].items():
        if a["kind"] == "int":
            if a["value"] == 1:
                out.append(f"{n}=1")
            elif a["value"] % 16 == 0:
                out.append(f"{n}%16")
        elif a["kind"] == "tensor" and not a["align16"]:
            out.append(f"{n} unaligned")
    return " ".join(out)


def _fmt_vec(d: dict) -> str:
    return " ".join(f"{int(k)}B x{v}" for k, v in sorted(d.items(), key=lambda kv: -int(kv[0]))) or "-"


def _header_and_counts(report: dict) -> list[str]:
    """The title, the provenance and the table of launches per ANL layer per dtype (with what it counts)."""
    rows = []
    for name, d in report["dtypes"].items():
        c, pl = d["counts"], d["counts"]["per_layer"]
        counts = [f"{pl.get(op, 0):g}" for op in OPS] + [f"{pl['torch_ops']:g}", f"{pl['total']:g}"]
        rows.append([name, c["layers"], *counts, d["replay_matches_step"]])
    header = "dtype | ANL layers | std | noise_scale | add_noise | torch ops inside the ops | total per layer "
    return [
        f"# AOT report: {report['model']}, batch {report['batch']}, {report['size']}x{report['size']}",
        "",
        f"Date {report['date']}; torch {report['torch']}, Triton {report['triton']}, Python {report['python']}. "
        "Made on a CPU machine: launches recorded from a real `TwoRound` step under the Triton interpreter "
        f"(batch {report['step_batch']}), replayed at batch {report['batch']}; every specialization "
        "compiled for sm_80 and sm_90 with Triton's own compiler (`anl_fused.kernels.aot`). "
        f"Command: `python benchmarks/aot_report.py --model {report['model']} --dtypes {' '.join(report['dtypes'])} "
        f"--batch {report['batch']} --size {report['size']} --out DIR`.",
        "",
        "## Launches per ANL layer per step",
        "",
        table(header + "| replay = step", rows),
        "Counted: every Triton kernel launch of the step plus every torch op that does work inside "
        "`anl_fused.ops` (the engine's own draw of z, one `randn` per step for all layers, is not an op "
        "of this package and is not counted; the non-finite / zero counting is inside `noise_scale`).",
        "",
    ]


def _kernel_row(e: dict, kernel: dict) -> list:
    """A kernel table row: a specialization's first launch and its sm_80 / sm_90 compilation."""
    a80, a90 = kernel["sm_80"], kernel["sm_90"]
    dtypes = {v.split("*")[-1] for n, v in a90["signature"].items() if v.startswith("*") and n in ("h_ptr", "g_ptr")}
    constexprs = ", ".join(f"{n}={v}" for n, v in e["constexprs"].items() if n != "MAX_SCALE")
    return [e["kernel"], ",".join(sorted(dtypes)), constexprs, e["specialization"], e["num_warps"]] + [
        a80["registers"],
        f"{a80['spill_stores']}+{a80['spill_loads']}",
        a90["registers"],
        f"{a90['spill_stores']}+{a90['spill_loads']}",
        a90["shared_bytes"],
        _fmt_vec(a90["vectors"]["ld"]),
        _fmt_vec(a90["vectors"]["st"]),
    ]


def _kernel_table(report: dict) -> list[str]:
    """The table of the kernels' resources and global memory accesses, one row per distinct specialization."""
    first = {}  # each specialization's first launch
    for e in (e for d in report["dtypes"].values() for e in d["launches"]):
        first.setdefault(e["kernel_id"], e)
    rows = [_kernel_row(e, report["kernels"][k]) for k, e in first.items()]
    header = "kernel | dtype(s) | constexprs | specialized | warps | sm_80 regs | sm_80 spills | sm_90 regs | "
    return [
        "## Kernels (per distinct specialization)",
        "",
        "Registers / spill stores+loads (bytes) / shared memory (bytes) from Triton's cubin and `ptxas -v`; "
        "global loads and stores from the PTX, as access width x number of instructions "
        "(16B = `ld.global.v4.b32`: 4 floats or 8 halves).",
        "",
        table(header + "sm_90 spills | smem | loads (sm_90) | stores (sm_90)", rows),
    ]


def _layer_section(name: str, d: dict) -> list[str]:
    """Dtype ``name``'s table per ANL layer (grids, bytes, ideal and launch times) and the step's total."""
    t, rows = d["totals"], []
    for e in d["layers"]:
        grids = " / ".join(str(e["grids"].get(op, "-")) for op in OPS)
        mb = [f"{e['bytes'] / 1e6:.3f}", f"{e['min_bytes'] / 1e6:.3f}"]
        ideal = [f"{e['ideal_us'][g]:.2f}" for g in ("H100", "H200")]
        launch = f"{e['launch_us'][0]:.0f}-{e['launch_us'][1]:.0f}"
        rows.append([e["layer"], "x".join(map(str, e["shape"])), grids, e["launches"], *mb, *ideal, launch])
    header = "layer | input | grids std / noise_scale / add_noise | launches | MB moved | MB minimum | "
    return [
        f"## Per ANL layer, {name}",
        "",
        "Grids in programs (A100: 108 SMs, H100/H200: 132). Ideal time: the layer's bytes at the HBM "
        "bandwidth (H100 3.35 TB/s, H200 4.8 TB/s), next to the cost of launching its kernels "
        f"({LAUNCH_US[0]:g}-{LAUNCH_US[1]:g} us each).",
        "",
        table(header + "ideal us H100 | ideal us H200 | launch us", rows),
        f"Step total ({name}): {t['launches']} launches, {t['bytes'] / 1e6:.2f} MB moved "
        f"({t['min_bytes'] / 1e6:.2f} MB minimum, {100 * (t['bytes'] / max(t['min_bytes'], 1) - 1):.3f}% over); "
        f"ideal {t['ideal_us']['H100']:.1f} us (H100) / {t['ideal_us']['H200']:.1f} us (H200) against "
        f"{t['launch_us'][0]:.0f}-{t['launch_us'][1]:.0f} us of launch cost.",
        "",
    ]


def markdown(report: dict) -> str:
    """``aot-report.md``: launch counts, the kernels' resources, and per dtype the cost of each ANL layer."""
    lines = _header_and_counts(report) + _kernel_table(report)
    for name, d in report["dtypes"].items():
        lines += _layer_section(name, d)
    return "\n".join(lines).rstrip("\n") + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    """The command line of :func:`main` (``anl-fused bench --aot`` builds one too)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="vgg16")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16", "fp16"], choices=list(DTYPES))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--step-batch", type=int, default=4, help="batch of the real step (replayed at --batch)")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    return p.parse_args(argv)


def make_report(args: argparse.Namespace) -> dict:
    """Record the step of every dtype (a subprocess each), compile the specializations, build the report."""
    from anl_fused.kernels import aot

    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "ANL_FUSED_BACKEND")}
    env.update(PYTHONWARNINGS="ignore", TRITON_INTERPRET="1", ANL_FUSED_BACKEND="triton")
    per_dtype = {}
    for name in args.dtypes:
        cmd = [sys.executable, os.path.abspath(__file__), "--_record", "--model", args.model, "--dtype", name]
        cmd += ["--batch", str(args.batch), "--step-batch", str(args.step_batch), "--size", str(args.size)]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"recording {name} failed:\n{res.stderr[-5000:]}")
        per_dtype[name] = json.loads(res.stdout)
        print(f"recorded {name}: {per_dtype[name]['counts']['per_layer']}", flush=True)
    launches = [launch for rec in per_dtype.values() for call in rec["calls"] for launch in call["launches"]]
    return build_report(args, per_dtype, aot.compile_in_subprocess(launches, archs=(80, 90)))


def write_report(report: dict, out: str) -> tuple[str, str]:
    """``aot-report.json`` and ``aot-report.md`` in the directory ``out`` (atomic writes); their paths."""
    from anl_fused.experiments.files import atomic_write

    paths = os.path.join(out, "aot-report.json"), os.path.join(out, "aot-report.md")
    atomic_write(paths[0], json.dumps(report, indent=1))
    atomic_write(paths[1], markdown(report))
    return paths


def main(argv=None) -> dict:
    args = parse_args(argv)
    report = make_report(args)
    json_path, _ = write_report(report, args.out)
    print(f"wrote {json_path} and aot-report.md")
    return report


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_record":
        _record_main(sys.argv[2:])
    else:
        main()
