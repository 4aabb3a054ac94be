"""The GPU campaign: every device measurement of the project in one command, into one results directory.

    pip install --no-deps --no-build-isolation -e . && python benchmarks/run.py --out $OUT/campaign

Parts (:data:`PARTS`, in order): tests, steps, graphs, kernels, aot, memory. Each runs on its own (a failure is
recorded with its traceback and the next part runs), a part that would start after ``--budget-s`` is skipped, and
``summary.json`` / ``summary.md`` are rewritten after every part. ``--device cpu --smoke`` runs the same code at
toy size on a CPU (``tests/benchmarks/test_run.py``). What each part measures: docs/speed.md, "GPU".
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

try:
    from .render import table
except ImportError:  # run as a script (python benchmarks/run.py): render.py sits next to it
    from render import table

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

PARTS = ("tests", "steps", "graphs", "kernels", "aot", "memory")
COMMAND = "pip install --no-deps --no-build-isolation -e . && python benchmarks/run.py --out $OUT/campaign"
METHODS = ["plain", "naive", "tworound", "tworound-bf16probe"]
GRAPH_METHODS = ("plain", "tworound", "tworound-bf16probe")

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
    "aot": {"model": "vgg16", "batch": 128, "size": 32, "dtypes": ["fp32", "bf16", "fp16"]},
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
    "aot": {"model": "vgg_tiny", "batch": 8, "size": 8, "dtypes": ["fp32"]},
}


class Skipped(Exception):
    """A part that cannot run here (the reason is recorded)."""


def _write_replacing(path: str, text: str) -> None:
    """``text`` into ``path`` through a temporary file renamed over it (no dependency on the library, which may
    not import on the machine)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    # O_EXCL: a file or symlink already at the temporary name is refused, never written through
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "w") as f:
        f.write(text)
    os.replace(tmp, path)


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
            for path in (os.path.join(dirpath, n) for n in sorted(filenames) if n.endswith(".py")):
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
        info.update(
            cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            git_dirty=bool(_run_text(["git", "status", "--porcelain", "--untracked-files=no"])),
            source_digest=source_digest(),
        )
        if device.type == "cuda":
            p = torch.cuda.get_device_properties(device)
            info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count)
            info["gpu_memory_gib"] = round(p.total_memory / 2**30, 1)
            query = "--query-gpu=driver_version,clocks.max.sm,power.limit"
            smi = _run_text(["nvidia-smi", query, "--format=csv,noheader"])
            info["driver"] = smi.splitlines()[0] if smi else None
        from anl_fused.experiments.machine import machine_info

        info.update(machine_info(device))
    except Exception as e:  # the versions must not cost the measurements
        info["meta_error"] = f"{type(e).__name__}: {e}"
    return info


# --------------------------------------------------------------------------------------------------
# the parts: each returns a JSON-able dict (raise Skipped to skip)


def part_tests(ctx: dict) -> dict:
    """``pytest -m "gpu or not slow"`` (``TRITON_INTERPRET=0`` on CUDA), output to ``pytest.txt``."""
    marker = "gpu or not slow" if ctx["cuda"] else "not slow"
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", marker, "-p", "no:cacheprovider"]
    cmd += ["--continue-on-collection-errors", *ctx["pytest_args"]]
    env = dict(os.environ, **({"TRITON_INTERPRET": "0"} if ctx["cuda"] else {}))
    timeout = max(10.0, min(ctx["tests_timeout"], ctx["budget_left"]()))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, timed_out = proc.communicate(timeout=timeout)[0], False
    except subprocess.TimeoutExpired:
        proc.kill()
        out, timed_out = proc.communicate()[0], True
    _write_replacing(os.path.join(ctx["out"], "pytest.txt"), out)
    lines = out.strip().splitlines()
    counted = [line for line in lines if " in " in line and any(w in line for w in ("passed", "failed", "error"))]
    tail = counted[-1] if counted else (lines[-1] if lines else "")
    return {
        "command": " ".join(cmd),
        "returncode": proc.returncode,
        "timed_out": timed_out,
        "timeout_s": timeout,
        "summary": tail.strip("= "),
        "failed": [line for line in lines if line.startswith(("FAILED", "ERROR"))][:50],
    }


def part_steps(ctx: dict) -> dict:
    from anl_fused.benchmarks import step

    cfg, results = ctx["cfg"], []
    for amp in cfg["amps"]:
        for name in cfg["models"]:
            ctx["check_budget"](f"steps {name} {amp}")
            sizes = (cfg["batch"], cfg["size"], ctx["device"], METHODS, cfg["repeats"], cfg["inner"], amp, 0.05)
            results.append(step.benchmark_model(name, *sizes))
            said = ", ".join(f"{k} {v:.2f}x" for k, v in results[-1]["ratios"].items())
            print(f"  steps {name} amp={amp}: {said}", flush=True)
    return {"steps": results, "table": step.format_table(results)}


def capture_step(step: Callable, device: torch.device, replays: int) -> dict:
    """Capture ``step`` (forward + backward, static inputs) in a CUDA graph; its replay and eager times
    (``step.time_methods``: 5 interleaved rounds of ``replays`` calls, medians; ``speedup`` the median of the paired
    eager/graph ratios), and whether two consecutive replays give different gradients (TwoRound: new noise draws
    each replay). On a CPU (the smoke run) there is no graph: only the eager time."""
    from anl_fused.benchmarks.step import time_methods

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
    if step.engine is not None:
        if not hasattr(graph, "register_generator_state"):
            raise RuntimeError(f"torch {torch.__version__} has no CUDAGraph.register_generator_state")
        graph.register_generator_state(step.engine.generator)
    with torch.cuda.graph(graph):
        step()
    params = [p for p in step.model.parameters() if p.requires_grad]
    graph.replay()
    first = [p.grad.detach().clone() for p in params]
    graph.replay()
    torch.cuda.synchronize(device)
    out = {
        "grads_finite": all(bool(torch.isfinite(p.grad).all()) for p in params),
        "consecutive_replays_differ": any(not torch.equal(a, p.grad) for a, p in zip(first, params)),
    }
    times = time_methods({"eager": step, "graph": graph.replay}, device, 5, inner=replays)
    out.update({f"{k}_ms": statistics.median(t) * 1e3 for k, t in times.items()})
    out["speedup"] = statistics.median(e / g for e, g in zip(times["eager"], times["graph"]))
    return out


def _say(**line) -> None:
    print(json.dumps(line), flush=True)


def graph_child(jobs: list[list[str]], smoke: bool, device: str, deadline: float, fail: str | None) -> int:
    """Run capture jobs ``[model, method]`` in order in this (child) process, one JSON line per job on stdout;
    stop at the first failure (a failed capture can leave the CUDA context unusable). ``method`` ending in
    ``-norng``: ``TwoRound(replay_rng=False)``. ``fail``: a method that raises, or with ``crash:`` before it,
    that kills this process (for tests)."""
    from anl_fused.benchmarks.step import make_step, model_and_batch

    cfg, device, models = SMOKE if smoke else FULL, torch.device(device), {}
    for name, method in jobs:
        if time.time() > deadline:
            _say(model=name, method=method, skipped="time budget spent")
            continue
        if name not in models:
            models[name] = model_and_batch(name, cfg["batch"], cfg["size"], device)
        try:
            if fail in (method, "crash:" + method):
                if fail.startswith("crash:"):
                    os._exit(9)  # a child that dies without a word (a segfault, the OOM killer)
                raise RuntimeError(f"injected failure of {method}")
            norng = method.endswith("-norng")
            step = make_step(method.removesuffix("-norng"), *models[name], replay_rng=not norng)
            result = capture_step(step, device, cfg["graph_replays"])
        except Exception as e:  # one failure must not lose the others: recorded
            _say(model=name, method=method, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-3000:])
            return 3
        _say(model=name, method=method, result=result)
    return 0


def _graph_child_run(ctx: dict, jobs: list[list[str]]) -> tuple[list[dict], int | str, str]:
    """One child process that runs ``jobs`` until one fails: its JSON lines, its exit code (``"timeout"`` when it
    ran out of time) and its stderr."""
    cmd = [sys.executable, os.path.abspath(__file__), "--_graph-child", json.dumps(jobs)]
    cmd += ["--device", str(ctx["device"])]
    cmd += ["--_deadline", str(time.time() + ctx["budget_left"]())] + (["--smoke"] if ctx["smoke"] else [])
    cmd += ["--_fail-method", ctx["fail_method"]] if ctx.get("fail_method") else []
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=max(30.0, ctx["budget_left"]() + 60))
        stdout, stderr, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        stdout, stderr, code = e.stdout or b"", e.stderr or b"", "timeout"
    lines = stdout.decode().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")], code, stderr.decode()


def part_graphs(ctx: dict) -> dict:
    """CUDA-graph capture of a whole step of each of :data:`GRAPH_METHODS`, in child processes (a failed capture can
    leave a CUDA context unusable): one child runs the jobs until one fails, a fresh one goes on with the rest. A
    TwoRound method that fails is retried as ``-norng`` (``TwoRound(replay_rng=False)``, valid for models without
    a stochastic layer): PyTorch does not allow ``get_rng_state`` / ``set_rng_state`` during capture."""
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
            keep = ("error", "traceback", "skipped")
            results[d["model"]][d["method"]] = d.get("result") or {k: d[k] for k in keep if k in d}
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
    rows = [_graph_row(n, methods, cfg["batch"]) for n, methods in results.items()]
    return {"graphs": rows, "child_processes": children}


def _graph_row(name: str, methods: dict, batch: int) -> dict:
    """A model's row of the graph part: each method's result and its eager (and graph) time over plain's."""
    base, ratios = methods.get("plain", {}), {}
    for method, r in methods.items():
        if method != "plain" and "eager_ms" in r and "eager_ms" in base:
            kinds = [k for k in ("eager", "graph") if f"{k}_ms" in r and f"{k}_ms" in base]
            ratios[f"{method}/plain"] = {k: r[f"{k}_ms"] / base[f"{k}_ms"] for k in kinds}
    said = [
        f"{m} {r['speedup']:.2f}x" if "speedup" in r else f"{m} {'failed' if 'error' in r else 'eager only'}"
        for m, r in methods.items()
    ]
    print(f"  graphs {name}: " + ", ".join(said), flush=True)
    return {"model": name, "batch": batch, "methods": methods, "ratios": ratios}


def part_kernels(ctx: dict) -> dict:
    if not ctx["cuda"]:
        raise Skipped("the kernel bandwidth benchmark needs a CUDA device")
    from anl_fused.benchmarks.kernels import kernel_benchmarks

    rows, by = kernel_benchmarks(ctx["device"]), {}
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

    report = aot_report.make_report(**ctx["cfg"]["aot"])
    _write_replacing(os.path.join(ctx["out"], "aot.md"), aot_report.markdown(report))
    _write_replacing(os.path.join(ctx["out"], "aot.json"), json.dumps(report, indent=1))
    return {"files": ["aot.md", "aot.json"], "date": report["date"]}


def part_memory(ctx: dict) -> dict:
    from anl_fused.benchmarks.step import make_step, model_and_batch, noise_memory, step_bytes

    cfg, device, rows = ctx["cfg"], ctx["device"], []
    for name in cfg["models"]:
        ctx["check_budget"](f"memory {name}")
        row = {"model": name, "batch": cfg["batch"], "held": noise_memory(name, cfg["batch"], cfg["size"])}
        row["peaks"] = "skipped: peak allocated memory needs a CUDA device (held bytes are counted)"
        if ctx["cuda"]:
            model, x, y = model_and_batch(name, cfg["batch"], cfg["size"], device)
            peaks = {m: step_bytes(make_step(m, model, x, y), device) for m in METHODS}
            plain = peaks["plain"]["step_bytes"]
            for p in peaks.values():
                p["step_vs_plain"] = p["step_bytes"] / plain if plain else None
            row["peaks"] = peaks
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
    m, rows = summary["meta"], []
    for name, p in summary["parts"].items():
        status = p["status"] + (f": {p['reason']}" if p.get("reason") else "")
        status += f": {p['error'].splitlines()[0][:200]}" if p.get("error") else ""
        rows.append([name, status, f"{p.get('seconds', 0):.0f}"])
    lines = [
        f"# GPU campaign: {m.get('gpu') or m['device']}",
        "",
        f"{m['date']}; Python {m['python']}, torch {m['torch']} (CUDA {m['cuda']}, cuDNN {m['cudnn']}), "
        f"Triton {m['triton']}; driver {m.get('driver')}; commit {m['git_commit']}"
        f"{' (dirty)' if m['git_dirty'] else ''}, sources {m['source_digest']}. Command: `{summary['command']}`.",
        "",
        table("part | status | seconds", rows),
    ]
    if summary.get("import_error"):
        lines[2:2] = [f"**anl_fused did not import**: `{summary['import_error'].strip().splitlines()[-1]}`", ""]
    return lines


def _tests_section(t: dict) -> list[str]:
    said = f"`{t['command']}`: {t['summary']} (exit {t['returncode']}{', timed out' if t['timed_out'] else ''})"
    return ["## Tests", "", f"{said}; output in `pytest.txt`.", *(f"- {f}" for f in t["failed"][:20]), ""]


def _graphs_section(graphs: dict) -> list[str]:
    fmt = lambda d, k: format(d[k], ".2f") if k in d else "-"
    rows = []
    for row in graphs["graphs"]:
        for method, r in row["methods"].items():
            ratio = row["ratios"].get(f"{method}/plain", {})
            if "eager_ms" in r:
                cells = [fmt(r, k) for k in ("eager_ms", "graph_ms", "speedup")] + [
                    fmt(ratio, "graph"),
                    fmt(ratio, "eager"),
                ]
            else:
                why = r.get("error") or r.get("skipped", "?")
                cells = [f"not measured: {why.splitlines()[0][:150]}", "", "", "", ""]
            rows.append([row["model"], method, *cells])
    header = "model | method | eager ms | graph ms | graph speedup | vs plain (graph) | vs plain (eager)"
    return ["## CUDA graphs: whole step captured", "", table(header, rows)]


def _kernels_section(k: dict) -> list[str]:
    rows = [
        [key, f"{s['frac_of_copy_median']:.2f}, {s['frac_of_copy_min']:.2f}", f"{s['speedup_vs_torch_median']:.2f}x"]
        for key, s in k["summary"].items()
    ]
    header = "op dtype | fraction of copy bandwidth (median, min over shapes) | speedup vs torch (median)"
    return [f"## Kernel bandwidth (device copy {k['copy_gbps']:.0f} GB/s)", "", table(header, rows)]


def _memory_section(memory: dict) -> list[str]:
    rows = []
    for row in memory["memory"]:
        held, peaks = row["held"]["held_bytes"], row["peaks"]
        if isinstance(peaks, dict):
            peaks = ", ".join(f"{m} {p['step_vs_plain']:.2f}x" for m, p in peaks.items())
        rows.append(
            [row["model"], row["batch"], f"{held['float32'] / 2**20:.1f}", f"{held['bfloat16'] / 2**20:.1f}", peaks]
        )
    header = "model | batch | held fp32 MiB | held bf16 MiB | step peak over plain"
    return ["## Memory", "", table(header, rows)]


def markdown(summary: dict) -> str:
    """``summary.md``: the parts' status, then a section per part that has a result."""
    res = lambda k: summary["parts"].get(k, {}).get("result") or {}
    sections = {
        "tests": _tests_section,
        "steps": lambda r: ["## Step times (median of interleaved rounds)", "", r["table"]],
        "graphs": _graphs_section,
        "kernels": _kernels_section,
        "memory": _memory_section,
        "aot": lambda r: ["## AOT report", "", "In `aot.md` / `aot.json`.", ""],
    }
    lines = _header(summary)
    for name, section in sections.items():
        if res(name):
            lines += section(res(name))
    return "\n".join(lines).rstrip("\n") + "\n"


def _import_error() -> str | None:
    """The traceback of importing the library, or None: where it does not import (an API this torch lacks), the
    campaign still runs and records every part."""
    try:
        import anl_fused.experiments.files  # noqa: F401
    except Exception:
        return traceback.format_exc()
    return None


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="results directory (created; at most 5 files are written)")
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cuda or cpu")
    ap.add_argument("--smoke", action="store_true", help="toy sizes (a CPU check of the campaign in seconds)")
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS, help="default: all, in this order")
    ap.add_argument("--skip", nargs="+", default=[], choices=PARTS, help="parts not to run (recorded as skipped)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip what would start after this (default 420)")
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


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    if args.smoke:
        torch.set_num_threads(1)  # toy sizes: one thread is fastest and does not stall on a busy machine
    if args.graph_child is not None:
        return graph_child(json.loads(args.graph_child), args.smoke, args.device, args.deadline, args.fail_method)
    if args.out is None:
        ap.error("--out is required")
    import_error = _import_error()
    if import_error:
        print(f"anl_fused does not import (each part records its own error):\n{import_error}", flush=True)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    ctx = _context(args, device, start)
    command = "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    summary = {"meta": meta(device), "command": command, "smoke": args.smoke, "budget_s": args.budget_s, "parts": {}}
    summary.update({"import_error": import_error} if import_error else {})
    print(f"campaign on {summary['meta'].get('gpu') or device}, parts {args.parts}", flush=True)
    for name in args.parts:
        entry = summary["parts"][name] = _run_part(name, args.skip, ctx)
        why = entry.get("reason") or entry.get("error", "").splitlines()[0] if entry["status"] != "ok" else ""
        print(f"{name}: {entry['status']} ({entry['seconds']:.0f} s)" + (f": {why}" if why else ""), flush=True)
        summary["seconds"] = time.perf_counter() - start
        _write_replacing(os.path.join(args.out, "summary.json"), json.dumps(summary, indent=1, default=str))
        _write_replacing(os.path.join(args.out, "summary.md"), markdown(summary))
        if ctx["cuda"]:
            torch.cuda.empty_cache()
    print(f"wrote {os.path.join(args.out, 'summary.json')} and summary.md ({summary['seconds']:.0f} s)")
    errors = [n for n, p in summary["parts"].items() if p["status"] == "error"] + (["import"] if import_error else [])
    tests = summary["parts"].get("tests", {}).get("result") or {}
    return 1 if errors or tests.get("returncode", 0) != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
