"""The GPU campaign: every device measurement of the project in one command, into one results directory.

On a lent GPU machine (Python 3.12, torch 2.11, Triton 3.6 there; no internet, no package index), from the
repository root:

    pip install --no-deps --no-build-isolation -e . && python benchmarks/run.py --out $OUT/campaign

Parts, in this order; each runs in ``try/except`` (a failure is recorded with its traceback and the next part
runs), and a part that would start after ``--budget-s`` seconds (default 420, so that a 10-minute device call
keeps a margin for the install and the copy back) is skipped and recorded as such:

1. ``tests``: ``pytest -m "gpu or not slow"`` with ``TRITON_INTERPRET=0`` (the GPU-marked tests and the
   Triton kernels compiled), at most ``--tests-timeout`` seconds; the output goes to ``pytest.txt``.
2. ``steps``: the step benchmark (``anl-fused bench``'s interleaved timing) of plain / naive / TwoRound /
   TwoRound with the bf16 probe, VGG-11, VGG-16, ResNet-18 at 32x32, batch 128, fp32 and bf16 autocast.
3. ``graphs``: CUDA-graph capture of a whole forward + backward step (``torch.cuda.graph``, static
   inputs, warm-up on a side stream) of plain, TwoRound and the bf16 probe; replay time against eager time
   and the ratios between methods, in child processes (a failed capture can leave a CUDA context unusable).
   A method whose capture fails is recorded with the error; a TwoRound method is then also captured
   without its global-RNG replay (``-norng``: ``TwoRound(replay_rng=False)``, valid for these models,
   which have no stochastic layer), since PyTorch does not allow ``torch.cuda.get_rng_state`` /
   ``set_rng_state`` during capture.
4. ``kernels``: per-kernel bandwidth (``benchmarks/kernels.py``) against a measured device-to-device copy.
5. ``aot``: the AOT report (``benchmarks/aot_report.py``: launches, registers, spills, vector widths for
   sm_80 / sm_90); ``aot.md`` and ``aot.json``.
6. ``memory``: peak allocated memory of one step of each method, and what TwoRound holds between the rounds.

Written into ``--out`` (at most 5 files): ``summary.json`` (the device, driver, versions of Python / torch /
Triton / CUDA / cuDNN, git commit or a digest of the sources, date, and every part's status, time and
results), ``summary.md`` (the same as tables), ``pytest.txt``, ``aot.md`` and ``aot.json``. ``summary.json``
is rewritten after every part, so a call that runs out of time keeps what finished.

``--device cpu --smoke`` runs the same code at toy sizes on a CPU, which is how
``tests/benchmarks/test_run.py`` checks the campaign without a GPU: the kernel bandwidth is skipped with the
reason, the graph part runs its child processes but times the steps eagerly (no capture on a CPU), memory
counts the held bytes but measures no peak.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

PARTS = ("tests", "steps", "graphs", "kernels", "aot", "memory")
COMMAND = "pip install --no-deps --no-build-isolation -e . && python benchmarks/run.py --out $OUT/campaign"

# sizes of a real run and of the CPU smoke run
FULL = {
    "models": ["vgg11", "vgg16", "resnet18"],
    "graph_models": ["vgg11", "resnet18"],
    "batch": 128,
    "size": 32,
    "amps": [None, torch.bfloat16],
    "repeats": 7,
    "inner": 10,
    "graph_replays": 20,
    "methods": ["plain", "naive", "tworound", "tworound-bf16probe"],
    "aot": ["--model", "vgg16", "--dtypes", "fp32", "bf16", "fp16", "--batch", "128", "--size", "32"],
}
SMOKE = {
    "models": ["vgg_tiny"],
    "graph_models": ["vgg_tiny"],
    "batch": 4,
    "size": 8,
    "amps": [None],
    "repeats": 3,
    "inner": 1,
    "graph_replays": 2,
    "methods": ["plain", "naive", "tworound", "tworound-bf16probe"],
    "aot": ["--model", "vgg_tiny", "--dtypes", "fp32", "--batch", "8", "--size", "8", "--step-batch", "2"],
}


class Skipped(Exception):
    """A part that cannot run here (the reason is recorded)."""


# --------------------------------------------------------------------------------------------------
# the machine


def _run_text(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=ROOT)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def source_digest() -> str:
    """sha256 over the package's, kernels' and benchmarks' Python sources (the copy on a device machine may
    have no git directory; this still names the code that ran)."""
    h = hashlib.sha256()
    for top in ("anl_fused", "kernels", "benchmarks"):
        for dirpath, dirnames, filenames in sorted(os.walk(os.path.join(ROOT, top))):
            dirnames.sort()
            for name in sorted(filenames):
                if name.endswith(".py"):
                    path = os.path.join(dirpath, name)
                    h.update(os.path.relpath(path, ROOT).encode())
                    with open(path, "rb") as f:
                        h.update(f.read())
    return h.hexdigest()[:16]


def meta(device: torch.device) -> dict:
    """:func:`anl_fused.experiments.machine.machine_info` with cuDNN, whether the working tree is dirty, the sources'
    digest and, on CUDA, the GPU's properties and driver. What cannot be read stays None and the error is recorded
    as ``meta_error`` (the campaign runs on, even where anl_fused does not import)."""
    keys = ("date", "python", "cuda", "cudnn", "triton", "git_commit", "source_digest")
    info = {**dict.fromkeys(keys), "torch": torch.__version__, "device": str(device), "git_dirty": False}
    try:
        _device_meta(info, device)
        from anl_fused.experiments.machine import machine_info

        info.update(machine_info(device))
    except Exception as e:  # the versions must not cost the measurements
        info["meta_error"] = f"{type(e).__name__}: {e}"
    return info


def _device_meta(info: dict, device: torch.device) -> None:
    info.update(
        cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        git_dirty=bool(_run_text(["git", "status", "--porcelain", "--untracked-files=no"])),
        source_digest=source_digest(),
    )
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            sms=props.multi_processor_count,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
        )
        smi = _run_text(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit", "--format=csv,noheader"])
        info["driver"] = smi.splitlines()[0] if smi else None


# --------------------------------------------------------------------------------------------------
# the parts: each returns a JSON-able dict (raise Skipped to skip)


def part_tests(ctx: dict) -> dict:
    """``pytest -m "gpu or not slow"`` (``TRITON_INTERPRET=0`` on CUDA), output to ``pytest.txt``."""
    marker = "gpu or not slow" if ctx["cuda"] else "not slow"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-m",
        marker,
        "-p",
        "no:cacheprovider",
        "--continue-on-collection-errors",
        *ctx["pytest_args"],
    ]
    env = dict(os.environ)
    if ctx["cuda"]:
        env["TRITON_INTERPRET"] = "0"
    timeout = max(10.0, min(ctx["tests_timeout"], ctx["budget_left"]()))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        timed_out = True
    from anl_fused.experiments.files import atomic_write

    atomic_write(os.path.join(ctx["out"], "pytest.txt"), out)
    lines = out.strip().splitlines()
    counted = [line for line in lines if " in " in line and any(w in line for w in ("passed", "failed", "error"))]
    tail = counted[-1] if counted else (lines[-1] if lines else "")
    failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    return {
        "command": " ".join(cmd),
        "returncode": proc.returncode,
        "timed_out": timed_out,
        "timeout_s": timeout,
        "summary": tail.strip("= "),
        "failed": failed[:50],
    }


def part_steps(ctx: dict) -> dict:
    from anl_fused.benchmarks import step

    cfg, results = ctx["cfg"], []
    for amp in cfg["amps"]:
        for name in cfg["models"]:
            ctx["check_budget"](f"steps {name} {amp}")
            results.append(
                step.benchmark_model(
                    name,
                    cfg["batch"],
                    cfg["size"],
                    ctx["device"],
                    cfg["methods"],
                    cfg["repeats"],
                    cfg["inner"],
                    amp,
                    0.05,
                )
            )
            print(
                f"  steps {name} amp={amp}: " + ", ".join(f"{k} {v:.2f}x" for k, v in results[-1]["ratios"].items()),
                flush=True,
            )
    return {"steps": results, "table": step.format_table(results)}


def capture_step(step: Callable, device: torch.device, replays: int) -> dict:
    """Capture ``step`` (forward + backward, static inputs) in a CUDA graph; its replay and eager times, and
    whether two consecutive replays give different gradients (TwoRound: new noise draws each replay). Timed by
    ``anl-fused bench``'s harness (``step.time_methods``): 5 interleaved rounds of ``replays`` calls each, the
    medians, and ``speedup`` the median of the paired eager/graph ratios. On a CPU (the smoke run) there is no
    graph: only the eager time."""
    from anl_fused.benchmarks.step import time_methods

    engine = step.engine
    if device.type != "cuda":
        times = time_methods({"eager": step}, device, 5, warmup=2, inner=replays)
        return {"eager_ms": statistics.median(times["eager"]) * 1e3, "capture": "none: CPU smoke run, eager only"}
    s = torch.cuda.Stream(device)
    s.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(s):
        for _ in range(3):  # warm-up on a side stream: compilation, workspaces, grads allocated
            step()
    torch.cuda.current_stream(device).wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    if engine is not None:
        if not hasattr(graph, "register_generator_state"):
            raise RuntimeError(
                f"torch {torch.__version__} has no CUDAGraph.register_generator_state: the noise "
                "generator cannot be captured"
            )
        graph.register_generator_state(engine.generator)
    with torch.cuda.graph(graph):
        step()
    params = [p for p in step.model.parameters() if p.requires_grad]
    graph.replay()
    first = [p.grad.detach().clone() for p in params]
    graph.replay()
    torch.cuda.synchronize(device)
    second = [p.grad for p in params]
    out = {
        "grads_finite": all(bool(torch.isfinite(g).all()) for g in second),
        "consecutive_replays_differ": any(not torch.equal(a, b) for a, b in zip(first, second)),
    }
    times = time_methods({"eager": step, "graph": graph.replay}, device, 5, inner=replays)
    paired = statistics.median(e / g for e, g in zip(times["eager"], times["graph"]))
    out.update({f"{k}_ms": statistics.median(t) * 1e3 for k, t in times.items()}, speedup=paired)
    return out


def graph_child(jobs: list[list[str]], smoke: bool, device: str, deadline: float, fail: str | None) -> int:
    """Run capture jobs ``[model, method]`` in order in this (child) process, one JSON line per job on stdout;
    stop at the first failure (a failed capture can leave the CUDA context unusable). ``method`` ending in
    ``-norng``: ``TwoRound(replay_rng=False)``. ``fail``: a method that raises, or with
    ``crash:`` before it, that kills this process (for tests)."""
    from anl_fused.benchmarks.step import make_step
    from anl_fused.experiments.models import build

    cfg, device = SMOKE if smoke else FULL, torch.device(device)
    models = {}
    for name, method in jobs:
        if time.time() > deadline:
            print(json.dumps({"model": name, "method": method, "skipped": "time budget spent"}), flush=True)
            continue
        if name not in models:
            torch.manual_seed(0)
            models[name] = (
                build(name).to(device),
                torch.randn(cfg["batch"], 3, cfg["size"], cfg["size"], device=device),
                torch.randint(0, 10, (cfg["batch"],), device=device),
            )
        model, x, y = models[name]
        base = method.removesuffix("-norng")
        try:
            if fail in (method, "crash:" + method):
                if fail.startswith("crash:"):
                    os._exit(9)  # a child that dies without a word (a segfault, the OOM killer)
                raise RuntimeError(f"injected failure of {method}")
            step = make_step(base, model, x, y, replay_rng=not method.endswith("-norng"))
            result = capture_step(step, device, cfg["graph_replays"])
        except Exception as e:  # one failure must not lose the others: recorded
            print(
                json.dumps(
                    {
                        "model": name,
                        "method": method,
                        "error": f"{type(e).__name__}: {e}",
                        "traceback": traceback.format_exc()[-3000:],
                    }
                ),
                flush=True,
            )
            return 3
        print(json.dumps({"model": name, "method": method, "result": result}), flush=True)
    return 0


GRAPH_METHODS = ("plain", "tworound", "tworound-bf16probe")


def _graph_child_run(ctx: dict, jobs: list[list[str]]) -> tuple[list[dict], int | str, str]:
    """One child process that runs ``jobs`` until one fails: its JSON lines, its exit code (``"timeout"`` when it
    ran out of time) and its stderr."""
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--_graph-child",
        json.dumps(jobs),
        "--device",
        str(ctx["device"]),
    ]
    cmd += ["--_deadline", str(time.time() + ctx["budget_left"]())]
    cmd += ["--smoke"] if ctx["smoke"] else []
    cmd += ["--_fail-method", ctx["fail_method"]] if ctx.get("fail_method") else []
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(30.0, ctx["budget_left"]() + 60)
        )
        stdout, stderr, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        stdout, stderr, code = e.stdout or "", e.stderr or "", "timeout"
        stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
        stderr = stderr.decode() if isinstance(stderr, bytes) else stderr
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")], code, stderr


def part_graphs(ctx: dict) -> dict:
    """Capture jobs in child processes: one child runs the jobs until one fails; a TwoRound method that
    fails gets a ``-norng`` job; a fresh child goes on with the rest."""
    if not ctx["cuda"] and not ctx["smoke"]:
        raise Skipped("CUDA graphs need a CUDA device")
    cfg = ctx["cfg"]
    jobs = [[name, method] for name in cfg["graph_models"] for method in GRAPH_METHODS]
    results: dict[str, dict] = {name: {} for name in cfg["graph_models"]}
    children = 0
    while jobs:
        children += 1
        done, code, stderr = _graph_child_run(ctx, jobs)
        for d in done:
            results[d["model"]][d["method"]] = d.get("result") or {
                k: d[k] for k in ("error", "traceback", "skipped") if k in d
            }
        failed = done[-1] if done and "error" in done[-1] else None
        if len(done) < len(jobs) and failed is None:  # the child died (or hung) without saying why
            name, method = jobs[len(done)]
            failed = {"model": name, "method": method, "error": f"child exited {code}: {stderr.strip()[-2000:]}"}
            results[name][method] = {"error": failed["error"]}
            done.append(failed)
        jobs = jobs[len(done) :]
        if code == "timeout":
            for name, method in jobs:
                results[name][method] = {"skipped": "the graph part ran out of time"}
            jobs = []
        elif failed and failed["method"] != "plain" and not failed["method"].endswith("-norng"):
            jobs = [[failed["model"], failed["method"] + "-norng"]] + jobs
    return {
        "graphs": [_graph_row(n, methods, cfg["batch"]) for n, methods in results.items()],
        "child_processes": children,
    }


def _graph_row(name: str, methods: dict, batch: int) -> dict:
    """A model's row of the graph part: each method's result and its eager (and graph) time over plain's."""
    base, ratios = methods.get("plain", {}), {}
    for method, r in methods.items():
        if method != "plain" and "eager_ms" in r and "eager_ms" in base:
            ratios[f"{method}/plain"] = {"eager": r["eager_ms"] / base["eager_ms"]}
            if "graph_ms" in r and "graph_ms" in base:
                ratios[f"{method}/plain"]["graph"] = r["graph_ms"] / base["graph_ms"]
    said = (
        f"{m} {r['speedup']:.2f}x" if "speedup" in r else f"{m} {'failed' if 'error' in r else 'eager only'}"
        for m, r in methods.items()
    )
    print(f"  graphs {name}: " + ", ".join(said), flush=True)
    return {"model": name, "batch": batch, "methods": methods, "ratios": ratios}


def part_kernels(ctx: dict) -> dict:
    if not ctx["cuda"]:
        raise Skipped("the kernel bandwidth benchmark needs a CUDA device")
    from anl_fused.benchmarks.kernels import kernel_benchmarks

    rows = kernel_benchmarks(ctx["device"])
    by = {}
    for r in rows:
        by.setdefault(f"{r['op']} {r['dtype']}", []).append(r)
    summary = {
        k: {
            "frac_of_copy_median": statistics.median(r["frac_of_copy"] for r in v),
            "frac_of_copy_min": min(r["frac_of_copy"] for r in v),
            "speedup_vs_torch_median": statistics.median(r["speedup"] for r in v),
        }
        for k, v in by.items()
    }
    return {"copy_gbps": rows[0]["copy_gbps"] if rows else None, "summary": summary, "rows": rows}


def part_aot(ctx: dict) -> dict:
    from anl_fused.benchmarks import aot_report
    from anl_fused.experiments.files import atomic_write

    report = aot_report.make_report(aot_report.parse_args(ctx["cfg"]["aot"]))
    atomic_write(os.path.join(ctx["out"], "aot.md"), aot_report.markdown(report))
    atomic_write(os.path.join(ctx["out"], "aot.json"), json.dumps(report, indent=1))
    totals = {k: v for k, v in report.items() if k in ("args", "versions", "totals", "date")}
    return {"files": ["aot.md", "aot.json"], **totals}


def part_memory(ctx: dict) -> dict:
    from anl_fused.benchmarks.step import make_step, noise_memory
    from anl_fused.experiments.models import build

    cfg, device, rows = ctx["cfg"], ctx["device"], []
    for name in cfg["models"]:
        ctx["check_budget"](f"memory {name}")
        row = {"model": name, "batch": cfg["batch"], "held": noise_memory(name, cfg["batch"], cfg["size"], device)}
        if ctx["cuda"]:
            torch.manual_seed(0)
            model = build(name).to(device)
            x = torch.randn(cfg["batch"], 3, cfg["size"], cfg["size"], device=device)
            y = torch.randint(0, 10, (cfg["batch"],), device=device)
            peaks = {}
            for method in cfg["methods"]:
                step = make_step(method, model, x, y)
                step()  # warm-up: grads exist, allocator warm
                torch.cuda.synchronize(device)
                before = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
                step()
                torch.cuda.synchronize(device)
                peaks[method] = {
                    "before_bytes": before,
                    "peak_bytes": torch.cuda.max_memory_allocated(device),
                    "step_bytes": torch.cuda.max_memory_allocated(device) - before,
                }
                del step
            plain = peaks["plain"]["step_bytes"]
            for p in peaks.values():
                p["step_vs_plain"] = p["step_bytes"] / plain if plain else None
            row["peaks"] = peaks
        else:
            row["peaks"] = "skipped: peak allocated memory needs a CUDA device (held bytes are counted)"
        rows.append(row)
    return {"memory": rows}


PART_FUNCS = {
    "tests": part_tests,
    "steps": part_steps,
    "graphs": part_graphs,
    "kernels": part_kernels,
    "aot": part_aot,
    "memory": part_memory,
}


# --------------------------------------------------------------------------------------------------
# the report


def _header(summary: dict) -> list[str]:
    """The title, the machine and the command, the import error if any, and the table of the parts' status."""
    m = summary["meta"]
    lines = [
        f"# GPU campaign: {m.get('gpu') or m['device']}",
        "",
        f"{m['date']}; Python {m['python']}, torch {m['torch']} (CUDA {m['cuda']}, cuDNN {m['cudnn']}), "
        f"Triton {m['triton']}; driver {m.get('driver')}; commit {m['git_commit']}"
        f"{' (dirty)' if m['git_dirty'] else ''}, sources {m['source_digest']}. Command: `{summary['command']}`.",
        "",
        "| part | status | seconds |",
        "| --- | --- | --- |",
    ]
    if summary.get("import_error"):
        lines[2:2] = [f"**anl_fused did not import**: `{summary['import_error'].strip().splitlines()[-1]}`", ""]
    for name, p in summary["parts"].items():
        status = p["status"] + (f": {p['reason']}" if p.get("reason") else "")
        if p.get("error"):
            status += f": {p['error'].splitlines()[0][:200]}"
        lines.append(f"| {name} | {status} | {p.get('seconds', 0):.0f} |")
    return lines


def _tests_section(t: dict) -> list[str]:
    lines = [
        "",
        "## Tests",
        "",
        f"`{t['command']}`: {t['summary']} (exit {t['returncode']}"
        f"{', timed out' if t['timed_out'] else ''}); output in `pytest.txt`.",
    ]
    return lines + [f"- {f}" for f in t["failed"][:20]]


def _graphs_section(graphs: dict) -> list[str]:
    lines = [
        "",
        "## CUDA graphs: whole step captured",
        "",
        "| model | method | eager ms | graph ms | graph speedup | vs plain (graph) | vs plain (eager) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    fmt = lambda d, k, f: format(d[k], f) if k in d else "-"
    for row in graphs["graphs"]:
        for method, r in row["methods"].items():
            ratio = row["ratios"].get(f"{method}/plain", {})
            if "eager_ms" in r:
                lines.append(
                    f"| {row['model']} | {method} | {r['eager_ms']:.2f} | {fmt(r, 'graph_ms', '.2f')} | "
                    f"{fmt(r, 'speedup', '.2f')} | {fmt(ratio, 'graph', '.2f')} | "
                    f"{fmt(ratio, 'eager', '.2f')} |"
                )
            else:
                why = r.get("error") or r.get("skipped", "?")
                lines.append(f"| {row['model']} | {method} | not measured: {why.splitlines()[0][:150]} | | | | |")
    return lines


def _kernels_section(k: dict) -> list[str]:
    lines = [
        "",
        f"## Kernel bandwidth (device copy {k['copy_gbps']:.0f} GB/s)",
        "",
        "| op dtype | fraction of copy bandwidth (median, min over shapes) | speedup vs torch (median) |",
        "| --- | --- | --- |",
    ]
    for key, s in k["summary"].items():
        lines.append(
            f"| {key} | {s['frac_of_copy_median']:.2f}, {s['frac_of_copy_min']:.2f} | "
            f"{s['speedup_vs_torch_median']:.2f}x |"
        )
    return lines


def _memory_section(memory: dict) -> list[str]:
    lines = [
        "",
        "## Memory",
        "",
        "| model | batch | held fp32 MiB | held bf16 MiB | step peak over plain |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in memory["memory"]:
        held = row["held"]["held_bytes"]
        peaks = row["peaks"]
        extra = (
            ", ".join(f"{m} {p['step_vs_plain']:.2f}x" for m, p in peaks.items()) if isinstance(peaks, dict) else peaks
        )
        lines.append(
            f"| {row['model']} | {row['batch']} | {held['float32'] / 2**20:.1f} | "
            f"{held['bfloat16'] / 2**20:.1f} | {extra} |"
        )
    return lines


def markdown(summary: dict) -> str:
    """``summary.md``: the parts' status, then a section per part that has a result."""
    lines = _header(summary)
    parts = summary["parts"]
    res = lambda k: parts.get(k, {}).get("result") or {}
    if res("tests"):
        lines += _tests_section(res("tests"))
    if res("steps"):
        lines += ["", "## Step times (median of interleaved rounds)", "", res("steps")["table"]]
    if res("graphs"):
        lines += _graphs_section(res("graphs"))
    if res("kernels"):
        lines += _kernels_section(res("kernels"))
    if res("memory"):
        lines += _memory_section(res("memory"))
    if res("aot"):
        lines += ["", "## AOT report", "", "In `aot.md` / `aot.json`."]
    return "\n".join(lines) + "\n"


def _write_replacing(path: str, text: str) -> None:
    """Stand-in for ``atomic_write`` when the package does not import: a temporary file renamed over ``path``."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _library_io():
    """``(atomic_write, resolve_device, None)`` from ``anl_fused``; if the package does not import (an API
    this torch lacks), stand-ins and the traceback, so that the campaign still runs and records every part."""
    try:
        from anl_fused.experiments.files import atomic_write, resolve_device
    except Exception:
        device = lambda name: torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
        return _write_replacing, device, traceback.format_exc()
    return atomic_write, resolve_device, None


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="results directory (created; at most 5 files are written)")
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cuda or cpu")
    ap.add_argument("--smoke", action="store_true", help="toy sizes (a CPU check of the campaign in seconds)")
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS, help="default: all, in this order")
    ap.add_argument("--skip", nargs="+", default=[], choices=PARTS, help="parts not to run (recorded as skipped)")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=420.0,
        help="skip the parts (and the models within a part) that would start after this many seconds (default 420)",
    )
    ap.add_argument("--tests-timeout", type=float, default=180.0, help="seconds the test part may take (default 180)")
    ap.add_argument("--pytest-args", nargs="+", default=["tests"], help="what pytest runs (default: tests)")
    ap.add_argument("--_graph-child", dest="graph_child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_deadline", dest="deadline", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_fail-method", dest="fail_method", default=None, help=argparse.SUPPRESS)
    return ap


def _context(args: argparse.Namespace, device: torch.device, start: float) -> dict:
    """What every part gets: the sizes, the device, where to write, and the time budget (started at ``start``)."""
    budget_left = lambda: args.budget_s - (time.perf_counter() - start)

    def check_budget(what: str) -> None:
        if budget_left() <= 0:
            raise Skipped(f"time budget of {args.budget_s:.0f} s spent before {what}")

    return {
        "cfg": SMOKE if args.smoke else FULL,
        "device": device,
        "cuda": device.type == "cuda",
        "smoke": args.smoke,
        "out": args.out,
        "budget_left": budget_left,
        "check_budget": check_budget,
        "tests_timeout": args.tests_timeout,
        "pytest_args": args.pytest_args,
        "fail_method": args.fail_method,
    }


def _run_part(name: str, skip: list[str], ctx: dict) -> dict:
    """Runs part ``name``: its summary entry, ``ok`` with the result, ``skipped`` with the reason or ``error``
    with the traceback (one failure must not lose the other parts), and the seconds it took."""
    t0 = time.perf_counter()
    entry = {"status": "ok"}
    try:
        if name in skip:
            raise Skipped("--skip")
        ctx["check_budget"](name)
        entry["result"] = PART_FUNCS[name](ctx)
    except Skipped as e:
        entry = {"status": "skipped", "reason": str(e)}
    except (Exception, SystemExit) as e:  # one failure (an argparse exit too) must not lose the others: recorded
        entry = {"status": "error", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    entry["seconds"] = time.perf_counter() - t0
    return entry


def _exit_code(summary: dict, import_error: str | None) -> int:
    """1 where a part failed, the library did not import or the test part's pytest failed; else 0."""
    errors = [n for n, p in summary["parts"].items() if p["status"] == "error"] + (["import"] if import_error else [])
    tests = summary["parts"].get("tests", {}).get("result") or {}
    return 1 if errors or tests.get("returncode", 0) != 0 else 0


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    if args.smoke:
        torch.set_num_threads(1)  # toy sizes: one thread is fastest and does not stall on a busy machine
    if args.graph_child is not None:
        return graph_child(json.loads(args.graph_child), args.smoke, args.device, args.deadline, args.fail_method)

    if args.out is None:
        ap.error("--out is required")
    atomic_write, resolve_device, import_error = _library_io()
    device = resolve_device(args.device)
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    ctx = _context(args, device, start)
    summary = {
        "meta": meta(device),
        "command": "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "smoke": args.smoke,
        "budget_s": args.budget_s,
        "parts": {},
    }
    if import_error:
        summary["import_error"] = import_error
        print(f"anl_fused does not import (each part records its own error):\n{import_error}", flush=True)
    summary_path = os.path.join(args.out, "summary.json")
    print(f"campaign on {summary['meta'].get('gpu') or device}, parts {args.parts}", flush=True)
    for name in args.parts:
        entry = summary["parts"][name] = _run_part(name, args.skip, ctx)
        print(
            f"{name}: {entry['status']} ({entry['seconds']:.0f} s)"
            + (f": {entry.get('reason') or entry.get('error', '').splitlines()[0]}" if entry["status"] != "ok" else ""),
            flush=True,
        )
        summary["seconds"] = time.perf_counter() - start
        atomic_write(summary_path, json.dumps(summary, indent=1, default=str))
        atomic_write(os.path.join(args.out, "summary.md"), markdown(summary))
        if ctx["cuda"]:
            torch.cuda.empty_cache()
    print(f"wrote {summary_path} and summary.md ({summary['seconds']:.0f} s)")
    return _exit_code(summary, import_error)


if __name__ == "__main__":
    sys.exit(main())
