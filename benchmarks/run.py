"""The GPU campaign: every device measurement of the project in one command, into one results directory.

    pip install --no-deps --no-build-isolation -e . && python benchmarks/run.py --out $OUT/campaign

Parts (:data:`PARTS`, in order): tests, steps, graphs, kernels, aot, memory. Each runs on its own (a failure is
recorded with its traceback and the next part runs), a part that would start after ``--budget-s`` is skipped, and
``summary.json`` / ``summary.md`` are rewritten after every part. ``--device cpu --smoke`` runs the same code at
toy size on a CPU (``tests/benchmarks/test_run.py``). What each part measures: docs/speed.md, "GPU".
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import json
import os
import pathlib
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
GRAPH_METHODS = ("plain", "tworound", "tworound-norng", "tworound-bf16probe", "tworound-bf16probe-norng")

# sizes of a real run and of the CPU smoke run
FULL = dict(models=["vgg11", "vgg16", "resnet18"], graph_models=["vgg11", "resnet18"], batch=128, size=32)
FULL.update(amps=[None, torch.bfloat16], repeats=7, inner=10, graph_replays=20)
FULL["aot"] = {"model": "vgg16", "batch": 128, "size": 32, "dtypes": ["fp32", "bf16", "fp16"]}
SMOKE = dict(models=["vgg_tiny"], graph_models=["vgg_tiny"], batch=4, size=8, amps=[None], repeats=3, inner=1)
SMOKE.update(graph_replays=2, aot={"model": "vgg_tiny", "batch": 8, "size": 8, "dtypes": ["fp32"]})


class Skipped(Exception):
    """A part that cannot run here (the reason is recorded)."""


def _write_replacing(path: str, text: str) -> None:
    """``text`` into ``path`` by a rename over it (no dependency on the library, which may not import here)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    # O_EXCL: a file or symlink already at the temporary name is refused, never written through
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _output(*cmd: str) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=ROOT)
        return out.stdout.strip() if out.returncode == 0 else None
    return None


def source_digest() -> str:
    """sha256 of the Python sources (a device machine's copy may have no git directory: this names the code)."""
    h = hashlib.sha256()
    tops = ("anl_fused", "kernels", "benchmarks")
    for path in sorted(p for top in tops for p in glob.glob(f"{ROOT}/{top}/**/*.py", recursive=True)):
        h.update(os.path.relpath(path, ROOT).encode() + pathlib.Path(path).read_bytes())
    return h.hexdigest()[:16]


def meta(device: torch.device) -> dict:
    """:func:`anl_fused.experiments.machine.machine_info` with cuDNN, the sources' digest, whether the working tree is
    dirty and, on CUDA, the GPU's properties and driver. What cannot be read is missing and the error recorded as
    ``meta_error`` (the campaign runs on, even where anl_fused does not import)."""
    info = {"torch": torch.__version__, "device": str(device), "source_digest": source_digest()}
    try:
        from anl_fused.experiments.machine import machine_info

        info.update(machine_info(device), cudnn=torch.backends.cudnn.version())
        info["git_dirty"] = bool(_output("git", "status", "--porcelain", "--untracked-files=no"))
        if device.type == "cuda":
            p = torch.cuda.get_device_properties(device)
            info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count)
            info["gpu_memory_gib"] = round(p.total_memory / 2**30, 1)
            smi = _output("nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit", "--format=csv")
            info["driver"] = smi.splitlines()[-1] if smi else None
    except Exception as e:  # the versions must not cost the measurements
        info["meta_error"] = f"{type(e).__name__}: {e}"
    return info


# the parts: each returns a JSON-able dict whose "section" is its Markdown in summary.md (raise Skipped to skip)


def part_tests(ctx: dict) -> dict:
    """``pytest -m "gpu or not slow"`` (``TRITON_INTERPRET=0`` on CUDA), output to ``pytest.txt``."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu or not slow" if ctx["cuda"] else "not slow"]
    cmd += ["-p", "no:cacheprovider", "--continue-on-collection-errors", *ctx["pytest_args"]]
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
    summary = (counted[-1] if counted else (lines[-1] if lines else "")).strip("= ")
    failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))][:50]
    said = f"`{' '.join(cmd)}`: {summary} (exit {proc.returncode}{', timed out' if timed_out else ''})"
    section = "\n".join(["## Tests\n", f"{said}; output in `pytest.txt`.", *(f"- {f}" for f in failed[:20])]) + "\n"
    result = {"command": " ".join(cmd), "returncode": proc.returncode, "timed_out": timed_out, "timeout_s": timeout}
    return result | {"summary": summary, "failed": failed, "section": section}


def part_steps(ctx: dict) -> dict:
    from anl_fused.benchmarks import step

    cfg, results = ctx["cfg"], []
    for amp in cfg["amps"]:
        for name in cfg["models"]:
            ctx["check_budget"](f"steps {name} {amp}")
            sizes = (cfg["batch"], cfg["size"], ctx["device"], METHODS, cfg["repeats"], cfg["inner"], amp, 0.05)
            results.append(step.benchmark_model(name, *sizes))
            print(f"  steps {name} amp={amp}: {results[-1]['ratios']}", flush=True)
    title = "## Step times (median of interleaved rounds)\n\n"
    return {"steps": results, "section": title + step.format_table(results)}


def capture_step(step: Callable, device: torch.device, replays: int) -> dict:
    """Capture ``step`` (forward + backward, static inputs) in a CUDA graph; its replay and eager times
    (``step.time_methods``, 5 interleaved rounds of ``replays`` calls: medians; ``speedup`` the median of the paired
    eager/graph ratios), and whether two consecutive replays give different gradients (TwoRound: new noise draws
    each replay). On a CPU (the smoke run) there is no graph: only the eager time."""
    from anl_fused.benchmarks.step import ratio_stats, time_methods

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
        graph.register_generator_state(step.engine.generator)
    with torch.cuda.graph(graph):
        step()
    params = [p for p in step.model.parameters() if p.requires_grad]
    graph.replay()
    first = [p.grad.detach().clone() for p in params]
    graph.replay()
    torch.cuda.synchronize(device)
    out = {"grads_finite": all(bool(torch.isfinite(p.grad).all()) for p in params)}
    out["consecutive_replays_differ"] = any(not torch.equal(a, p.grad) for a, p in zip(first, params))
    times = time_methods({"eager": step, "graph": graph.replay}, device, 5, inner=replays)
    out.update({f"{k}_ms": statistics.median(t) * 1e3 for k, t in times.items()})
    return out | {"speedup": ratio_stats(times, [("eager", "graph")])["eager/graph"]["median"]}


def graph_child(job: dict) -> int:
    """Run capture jobs ``job["jobs"]`` (``[model, method]``) in order in this (child) process, one JSON line per job
    on stdout; stop at the first failure (a failed capture can leave the CUDA context unusable). ``method`` ending in
    ``-norng``: ``TwoRound(replay_rng=False)``. ``job["fail"]``: a method that raises, or with ``crash:`` before it,
    that kills this process (for tests)."""
    from anl_fused.benchmarks.step import make_step, model_and_batch

    cfg, device, models, fail = SMOKE if job["smoke"] else FULL, torch.device(job["device"]), {}, job["fail"]
    say = lambda **line: print(json.dumps(line), flush=True)
    for name, method in job["jobs"]:
        if time.time() > job["deadline"]:
            say(model=name, method=method, skipped="time budget spent")
            continue
        try:
            if fail == "crash:" + method:
                os._exit(9)  # a child that dies without a word (a segfault, the OOM killer)
            if fail == method:
                raise RuntimeError(f"injected failure of {method}")
            models.setdefault(name, model_and_batch(name, cfg["batch"], cfg["size"], device))
            step = make_step(method.removesuffix("-norng"), *models[name], replay_rng=not method.endswith("-norng"))
            result = capture_step(step, device, cfg["graph_replays"])
        except Exception as e:  # one failure must not lose the others: recorded
            say(model=name, method=method, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-3000:])
            return 3
        say(model=name, method=method, result=result)
    return 0


def _graph_child_run(ctx: dict, jobs: list[list[str]]) -> list[dict]:
    """A child process running ``jobs`` until one fails: one entry per job it got to (a child that died or hung
    without a word: its exit code and stderr; out of time: every job left is skipped)."""
    job = {"jobs": jobs, "smoke": ctx["smoke"], "device": str(ctx["device"]), "fail": ctx.get("fail_method")}
    job["deadline"] = time.time() + ctx["budget_left"]()
    cmd = [sys.executable, os.path.abspath(__file__), "--_graph-child", json.dumps(job)]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=max(30.0, ctx["budget_left"]() + 60))
        stdout, stderr, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        stdout, stderr, code = e.stdout or b"", e.stderr or b"", "timeout"
    done = [json.loads(line) for line in stdout.decode().splitlines() if line.startswith("{")]
    if code == "timeout":
        return done + [
            {"model": n, "method": m, "skipped": "the graph part ran out of time"} for n, m in jobs[len(done) :]
        ]
    if len(done) < len(jobs) and not (done and "error" in done[-1]):  # the child died silently
        error = f"child exited {code}: {stderr.decode().strip()[-2000:]}"
        done.append({"model": jobs[len(done)][0], "method": jobs[len(done)][1], "error": error})
    return done


def part_graphs(ctx: dict) -> dict:
    """CUDA-graph capture of a whole step of each of :data:`GRAPH_METHODS`, in child processes (a failed capture can
    leave a CUDA context unusable): one child runs the jobs until one fails, a fresh one goes on with the rest.
    ``-norng``: ``TwoRound(replay_rng=False)`` (valid for models without a stochastic layer), as PyTorch does not
    allow ``get_rng_state`` / ``set_rng_state`` during capture."""
    if not ctx["cuda"] and not ctx["smoke"]:
        raise Skipped("CUDA graphs need a CUDA device")
    models = ctx["cfg"]["graph_models"]
    jobs, results, children = [[name, m] for name in models for m in GRAPH_METHODS], {name: {} for name in models}, 0
    while jobs:
        children += 1
        done = _graph_child_run(ctx, jobs)
        for d in done:
            results[d["model"]][d["method"]] = d.get("result") or {k: d[k] for k in ("error", "skipped") if k in d}
        jobs = jobs[len(done) :]
    return {"graphs": results, "child_processes": children, "section": _graph_table(results)}


def _graph_table(results: dict[str, dict]) -> str:
    rows, fmt = [], lambda v: "-" if v is None else f"{v:.2f}"
    for name, methods in results.items():
        plain = methods.get("plain", {})
        for method, r in methods.items():
            if "eager_ms" not in r:
                why = (r.get("error") or r.get("skipped", "?")).splitlines()[0][:150]
                rows.append([name, method, f"not measured: {why}", "", "", "", ""])
                continue
            over = [r[k] / plain[k] if k in r and k in plain else None for k in ("graph_ms", "eager_ms")]
            rows.append([name, method, *(fmt(r.get(k)) for k in ("eager_ms", "graph_ms", "speedup")), *map(fmt, over)])
    header = "model | method | eager ms | graph ms | graph speedup | vs plain (graph) | vs plain (eager)"
    return "## CUDA graphs: whole step captured\n\n" + table(header, rows)


def part_kernels(ctx: dict) -> dict:
    if not ctx["cuda"]:
        raise Skipped("the kernel bandwidth benchmark needs a CUDA device")
    from anl_fused.benchmarks.kernels import format_rows, kernel_benchmarks

    rows = kernel_benchmarks(ctx["device"])
    return {"rows": rows, "section": "## Kernel bandwidth\n\n" + format_rows(rows)}


def part_aot(ctx: dict) -> dict:
    from anl_fused.benchmarks import aot_report

    report = aot_report.make_report(**ctx["cfg"]["aot"])
    _write_replacing(os.path.join(ctx["out"], "aot.md"), aot_report.markdown(report))
    _write_replacing(os.path.join(ctx["out"], "aot.json"), json.dumps(report, indent=1))
    return {
        "files": ["aot.md", "aot.json"],
        "date": report["date"],
        "section": "## AOT report\n\nIn `aot.md` / `aot.json`.\n",
    }


def step_bytes(step: Callable, device: torch.device) -> dict:
    """Allocated CUDA memory around one call of ``step`` after a warm-up call (allocator warm, grads exist): before
    it, its peak, and the peak over before."""
    step()
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return {"before_bytes": before, "peak_bytes": peak, "step_bytes": peak - before}


def part_memory(ctx: dict) -> dict:
    from anl_fused.benchmarks.step import make_step, model_and_batch, noise_memory

    cfg, device, rows, cells = ctx["cfg"], ctx["device"], [], []
    for name in cfg["models"]:
        ctx["check_budget"](f"memory {name}")
        held = noise_memory(name, cfg["batch"], cfg["size"])["held_bytes"]
        peaks = said = "skipped: peak allocated memory needs a CUDA device (held bytes are counted)"
        if ctx["cuda"]:
            model, x, y = model_and_batch(name, cfg["batch"], cfg["size"], device)
            peaks = {m: step_bytes(make_step(m, model, x, y), device) for m in METHODS}
            for p in peaks.values():
                p["step_vs_plain"] = p["step_bytes"] / max(peaks["plain"]["step_bytes"], 1)
            said = ", ".join(f"{m} {p['step_vs_plain']:.2f}x" for m, p in peaks.items())
        rows.append({"model": name, "batch": cfg["batch"], "held": held, "peaks": peaks})
        cells.append([name, cfg["batch"], *(f"{held[k] / 2**20:.1f}" for k in ("float32", "bfloat16")), said])
    header = "model | batch | held fp32 MiB | held bf16 MiB | step peak over plain"
    return {"memory": rows, "section": "## Memory\n\n" + table(header, cells)}


PART_FUNCS = {name: globals()[f"part_{name}"] for name in PARTS}


def markdown(summary: dict) -> str:
    """``summary.md``: the machine, the command, the parts' status, then each part's section."""
    m, status = summary["meta"], []
    for name, p in summary["parts"].items():
        said = p["status"] + (f": {p['reason']}" if p.get("reason") else "")
        said += f": {p['error'].splitlines()[0][:200]}" if p.get("error") else ""
        status.append([name, said, f"{p.get('seconds', 0):.0f}"])
    commit = f"{m.get('git_commit')}{' (dirty)' if m.get('git_dirty') else ''}"
    lines = [
        f"# GPU campaign: {m.get('gpu') or m['device']}",
        "",
        f"{m.get('date')}; Python {m.get('python')}, torch {m['torch']} (CUDA {m.get('cuda')}, cuDNN "
        f"{m.get('cudnn')}), Triton {m.get('triton')}; driver {m.get('driver')}; commit {commit}, sources "
        f"{m['source_digest']}. Command: `{summary['command']}`.",
        "",
        table("part | status | seconds", status),
    ]
    if summary.get("import_error"):
        lines[2:2] = [f"**anl_fused did not import**: `{summary['import_error'].strip().splitlines()[-1]}`", ""]
    lines += [p["result"]["section"] for p in summary["parts"].values() if p.get("result")]
    return "\n".join(lines).rstrip("\n") + "\n"


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
    ap.add_argument("--_fail-method", dest="fail_method", default=None, help=argparse.SUPPRESS)
    return ap


def _context(args: argparse.Namespace, device: torch.device) -> dict:
    """What every part gets: the sizes, the device, where to write, and the time budget (starting now)."""
    start = time.perf_counter()
    budget_left = lambda: args.budget_s - (time.perf_counter() - start)

    def check_budget(what: str) -> None:
        if budget_left() <= 0:
            raise Skipped(f"time budget of {args.budget_s:.0f} s spent before {what}")

    ctx = {"cfg": SMOKE if args.smoke else FULL, "device": device, "cuda": device.type == "cuda", "smoke": args.smoke}
    ctx.update(out=args.out, budget_left=budget_left, check_budget=check_budget, fail_method=args.fail_method)
    return ctx | {"tests_timeout": args.tests_timeout, "pytest_args": args.pytest_args}


def _run_part(name: str, skip: list[str], ctx: dict) -> dict:
    """Part ``name``'s summary entry: ``ok`` and its result, ``skipped`` and why, or ``error`` and the traceback."""
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
        return graph_child(json.loads(args.graph_child))
    if args.out is None:
        ap.error("--out is required")
    try:  # where the library does not import, every part still runs and records its own outcome
        import anl_fused.experiments.files  # noqa: F401

        import_error = None
    except Exception:
        import_error = traceback.format_exc()
        print(f"anl_fused does not import (each part records its own error):\n{import_error}", flush=True)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    os.makedirs(args.out, exist_ok=True)
    ctx = _context(args, device)
    command = "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    summary = {"meta": meta(device), "command": command, "smoke": args.smoke, "budget_s": args.budget_s, "parts": {}}
    summary.update({"import_error": import_error} if import_error else {})
    print(f"campaign on {summary['meta'].get('gpu') or device}, parts {args.parts}", flush=True)
    for name in args.parts:
        entry = summary["parts"][name] = _run_part(name, args.skip, ctx)
        why = entry.get("reason") or entry.get("error", "").splitlines()[0] if entry["status"] != "ok" else ""
        print(f"{name}: {entry['status']} ({entry['seconds']:.0f} s)" + (f": {why}" if why else ""), flush=True)
        summary["seconds"] = sum(p["seconds"] for p in summary["parts"].values())
        _write_replacing(os.path.join(args.out, "summary.json"), json.dumps(summary, indent=1, default=str))
        _write_replacing(os.path.join(args.out, "summary.md"), markdown(summary))
        if ctx["cuda"]:
            torch.cuda.empty_cache()
    print(f"wrote {os.path.join(args.out, 'summary.json')} and summary.md ({summary['seconds']:.0f} s)")
    errors = [n for n, p in summary["parts"].items() if p["status"] == "error"] + (["import"] if import_error else [])
    return 1 if errors or (summary["parts"].get("tests", {}).get("result") or {}).get("returncode", 0) else 0


if __name__ == "__main__":
    sys.exit(main())
