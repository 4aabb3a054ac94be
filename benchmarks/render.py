"""Render the measured tables of README.md and docs/*.md from the result files, so that no number in them is
typed by hand.

A table in a Markdown file sits between two markers that name its renderer and its data files::

    <!-- render:steps benchmarks/results/cpu-steps-2026-11-24.json -->
    | model | ... |
    <!-- /render -->

``python -m anl_fused.benchmarks.render`` rewrites every such block of the documentation pages (README.md and
every ``docs/*.md``, :func:`pages`) from the files it names; ``--check`` only reports blocks that are out of date
(exit code 1), which the test suite runs. A renderer is a function ``(paths: list[str]) -> str`` registered in
:data:`RENDERERS`; paths are relative to the repository root, whichever page the block is in.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pathlib
import re
import statistics
import sys
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = re.compile(r"(<!-- render:(?P<name>[\w-]+)(?P<args>[^>]*?)-->\n)(?P<body>.*?)(<!-- /render -->)", re.S)
RENDERERS: dict[str, Callable[[list[str]], str]] = {}

MODEL_NAMES = {
    "vgg11": "VGG-11",
    "vgg16": "VGG-16",
    "resnet18": "ResNet-18",
    "lenet5": "LeNet-5",
    "vgg_tiny": "vgg_tiny",
    "mobilenet_v2": "MobileNetV2",
}


def pages() -> list[str]:
    """The documentation pages whose blocks are rendered and checked: README.md, then every ``docs/*.md``."""
    return [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))


def renderer(name: str):
    def register(fn: Callable[[list[str]], str]) -> Callable[[list[str]], str]:
        RENDERERS[name] = fn
        return fn

    return register


def load_json(path: str) -> dict:
    with open(os.path.join(ROOT, path)) as f:
        return json.load(f)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds >= 0.1 else f"{seconds * 1e3:.1f} ms"


def table(header: str, rows) -> str:
    """A Markdown table: ``header`` is the titles joined by `` | ``, ``rows`` lists of cells (shown with str).
    The one table formatter of the benchmarks and the campaign."""
    lines = [f"| {header} |", "|" + "---|" * (header.count(" | ") + 1)]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows]) + "\n"


def _name(model: str) -> str:
    return MODEL_NAMES.get(model, model)


@renderer("steps")
def steps_table(paths: list[str]) -> str:
    """Step times (median of interleaved samples) and the ratios of one ``anl-fused bench`` JSON per path."""
    methods = ["plain", "naive", "reference", "tworound"]
    rows = []
    for r in (r for path in paths for r in load_json(path)["steps"]):
        ratios = [r["ratios"].get(k) for k in ("tworound/plain", "naive/tworound")]
        spread = max((max(t) - min(t)) / statistics.median(t) for t in r["times_s"].values())
        rows.append(
            [_name(r["model"]), r["batch"], r["amp"] or "fp32"]
            + [_ms(r["median_s"][m]) if m in r["median_s"] else "-" for m in methods]
            + [f"{v:.2f}x" if v is not None else "-" for v in ratios]
            + [f"{spread * 100:.0f}%"]
        )
    header = "model | batch | amp | plain | naive double pass | reference | TwoRound | TwoRound / plain | "
    return table(header + "naive / TwoRound | spread", rows)


@renderer("memory")
def memory_table(paths: list[str]) -> str:
    """The memory TwoRound keeps between the rounds (``noise_memory`` of ``anl-fused bench``)."""
    rows = [
        [_name(m["model"]), m["batch"], m["anl_layers"]]
        + [f"{m['held_bytes'][k] / 2**20:.1f} MiB" for k in ("float32", "bfloat16")]
        for path in paths
        for m in load_json(path)["noise_memory"]
    ]
    return table("model | batch | ANL layers | held in float32 | held with noise_dtype=bfloat16", rows)


def ratio_cell(r: dict, key: str) -> str:
    """``1.23x [1.20, 1.30]``: the headline ratio and the [min, max] of its rounds' paired ratios."""
    v, st = r["ratios"].get(key), r.get("ratio_stats", {}).get(key)
    if v is None:
        return "-"
    return f"{v:.2f}x" + (f" [{st['min']:.2f}, {st['max']:.2f}]" if st else "")


@renderer("probe-steps")
def probe_steps_table(paths: list[str]) -> str:
    """Step times of plain, TwoRound and TwoRound with the bf16 probe (``anl-fused bench`` JSON)."""
    rows = [
        [_name(r["model"]), r["batch"]]
        + [_ms(r["median_s"][m]) if m in r["median_s"] else "-" for m in ("plain", "tworound", "tworound-bf16probe")]
        + [ratio_cell(r, k) for k in ("tworound/plain", "tworound-bf16probe/plain", "tworound-bf16probe/tworound")]
        for path in paths
        for r in load_json(path)["steps"]
    ]
    header = "model | batch | plain | TwoRound | TwoRound, bf16 probe | TwoRound / plain | bf16 probe / plain | "
    return table(header + "bf16 probe / TwoRound", rows)


def _err(arm: dict | None) -> str:
    return "-" if arm is None else f"{arm['test_err_pct']['mean']:.2f} ± {arm['test_err_pct']['std']:.2f}%"


def _paired(d: dict | None) -> str:
    return "-" if d is None else f"{d['mean']:+.2f} ± {d['se']:.2f} pp ({d['better']}/{d['same']}/{d['worse']})"


@renderer("probe-accuracy")
def probe_accuracy_table(paths: list[str]) -> str:
    """Test error of plain, ANL with the fp32 probe and with the bf16 probe, and the paired differences
    (``benchmarks/probe_accuracy.py`` JSON)."""
    rows = []
    for rep in map(load_json, paths):
        arms, paired, p = rep["summary"]["arms"], rep["summary"]["paired"], rep["protocol"]
        rows.append(
            [f"{p['dataset']}, {_name(p['model'])}", len(rep["seeds"])]
            + [_err(arms.get(a)) for a in ("plain", "anl-fp32", "anl-bf16")]
            + [_paired(paired.get(k)) for k in ("anl-bf16 - anl-fp32", "anl-fp32 - plain")]
        )
    header = "data, model | seeds | plain | ANL, fp32 probe | ANL, bf16 probe | bf16 - fp32 probe, paired "
    return table(header + "(better/same/worse) | ANL fp32 probe - plain, paired", rows)


@renderer("probe-agreement")
def probe_agreement_table(paths: list[str]) -> str:
    """Per model: the bf16 / fp16 probe's noise against the fp32 probe's, and the fp32 noise after one SGD
    step for scale (``benchmarks/probe_agreement.py`` JSON)."""
    rows = []
    for model, arms in ((m, a) for path in paths for m, a in load_json(path)["summary"].items()):
        b, h, cos = arms["bf16"], arms["fp16"], lambda a: f"{a['cos_mean_median']:.3f} [{a['cos_mean_min']:.3f}]"
        sgd = " / ".join(f"{arms[k]['cos_mean_median']:.3f}" for k in ("sgd-1e-4", "sgd-0.1"))
        rows.append([_name(model), b["layers"], cos(b), f"{b['cos_min']:.3f}", f"{b['norm_err_max']:.1%}", cos(h), sgd])
    header = "model | ANL layers x seeds | bf16: cosine, layer means median [min] | bf16: worst sample | bf16: max abs "
    header += "norm error | fp16: cosine median [min] | after one SGD step at lr 1e-4 / 0.1: cosine median"
    return table(header, rows)


@renderer("study")
def study_comparisons(paths: list[str]) -> str:
    """The pre-registered study's tests and readings (:func:`anl_fused.experiments.study_report.comparisons`) from
    its ``summary.json`` (one per path)."""
    from anl_fused.experiments.study_report import comparisons

    return "".join(comparisons(load_json(path)) for path in paths)


@renderer("study-arms")
def study_arms(paths: list[str]) -> str:
    """Each arm's test error and cost, and the checks (:func:`anl_fused.experiments.study_report.arms_table`)."""
    from anl_fused.experiments.study_report import arms_table

    return "".join(arms_table(load_json(path)) for path in paths)


@renderer("study-robustness")
def study_robustness(paths: list[str]) -> str:
    """The study's robustness table and endpoint (:func:`anl_fused.experiments.study_report.robustness_markdown`)
    from its ``summary.json`` (one per path)."""
    from anl_fused.experiments.study_report import robustness_markdown

    return "".join(robustness_markdown(load_json(path)["robustness"]) for path in paths)


@renderer("demo")
def demo_table(paths: list[str]) -> str:
    """What ``anl-fused demo`` printed, from its ``results.json`` (one per path), as a text block: the demo's
    own formatting (:func:`anl_fused.experiments.demo.format_table`)."""
    from anl_fused.experiments.demo import format_table

    return "".join(f"```text\n{format_table(load_json(path))}\n```\n" for path in paths)


def _span(values: list[float]) -> str:
    return f"[{min(values):+.1f}, {max(values):+.1f}]" if values else "-"


@renderer("whitebox")
def whitebox_table(paths: list[str]) -> str:
    """White-box accuracy per method (from ``anl-fused figures whitebox --json`` at commit 8f4edf3: clean, FGSM and
    IFGSM accuracy of each run), means over the runs, the per-seed range of the difference to the two-phase control."""
    rows = []
    for path in paths:
        methods = {label.split(": ", 1)[-1]: runs for label, runs in load_json(path).items()}
        control = {r["seed"]: r for r in methods.get("baseline two-phase", [])}
        for label, runs in methods.items():
            means = [f"{statistics.mean(r[k] for r in runs):.1f}" for k in ("clean", "fgsm", "ifgsm")]
            diffs = [[r[k] - control[r["seed"]][k] for r in runs if r["seed"] in control] for k in ("fgsm", "ifgsm")]
            paired = ["-", "-"] if label == "baseline two-phase" else [_span(d) for d in diffs]
            rows.append([label, len(runs), *means, *paired])
    header = "method | runs | clean % | FGSM % | IFGSM % | FGSM vs two-phase control, same seed [min, max] pp | "
    return table(header + "IFGSM vs control [min, max] pp", rows)


def render_text(text: str) -> tuple[str, list[str]]:
    """``text`` with every block re-rendered, and the names of the blocks that changed."""
    changed = []

    def sub(m: re.Match) -> str:
        name, paths = m["name"], m["args"].split()
        if name not in RENDERERS:
            raise KeyError(f"no renderer {name!r} (known: {', '.join(sorted(RENDERERS))})")
        body = RENDERERS[name](paths)
        if body != m["body"]:
            changed.append(f"{name} {' '.join(paths)}".strip())
        return m.group(1) + body + m.group(5)

    return BLOCK.sub(sub, text), changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m anl_fused.benchmarks.render", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", help="Markdown files (default: README.md and every docs/*.md)")
    parser.add_argument("--check", action="store_true", help="only report out-of-date tables (exit code 1)")
    args = parser.parse_args(argv)
    stale = []
    for path in args.files or pages():
        new, changed = render_text(pathlib.Path(path).read_text())
        shown = path if args.files else os.path.relpath(path, ROOT)
        stale += [f"{shown}: {c}" for c in changed]
        if changed and not args.check:
            from anl_fused.experiments.files import atomic_write

            atomic_write(path, new)
    for s in stale:
        print(("out of date: " if args.check else "rendered: ") + s)
    return 1 if (stale and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
