"""Render the README's measured tables from the result files, so that no number in the README is typed by hand.

A table in a Markdown file sits between two markers that name its renderer and its data files::

    <!-- render:steps benchmarks/results/cpu-steps-2026-11-24.json -->
    | model | ... |
    <!-- /render -->

``python -m anl_fused.benchmarks.render`` rewrites every such block of README.md from the files it names;
``--check`` only reports blocks that are out of date (exit code 1), which the test suite runs. A renderer
is a function ``(paths: list[str]) -> str`` registered in :data:`RENDERERS`; paths are relative to the
repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = re.compile(r"(<!-- render:(?P<name>[\w-]+)(?P<args>[^>]*?)-->\n)(?P<body>.*?)(<!-- /render -->)", re.S)
RENDERERS: dict[str, Callable[[list[str]], str]] = {}

MODEL_NAMES = {"vgg11": "VGG-11", "vgg16": "VGG-16", "resnet18": "ResNet-18", "lenet5": "LeNet-5",
               "vgg_tiny": "vgg_tiny"}


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


@renderer("steps")
def steps_table(paths: list[str]) -> str:
    """Step times (median of interleaved samples) and the ratios of one ``anl-fused bench`` JSON per path."""
    methods = [("plain", "plain"), ("naive", "naive double pass"), ("reference", "reference"), ("tworound", "TwoRound")]
    lines = ["| model | batch | amp | " + " | ".join(label for _, label in methods)
             + " | TwoRound / plain | naive / TwoRound | spread |",
             "|---|---|---|" + "---|" * (len(methods) + 3)]
    for path in paths:
        report = load_json(path)
        for r in report["steps"]:
            med = r["median_s"]
            cells = [_ms(med[m]) if m in med else "-" for m, _ in methods]
            ratios = [r["ratios"].get(k) for k in ("tworound/plain", "naive/tworound")]
            cells += [f"{v:.2f}x" if v is not None else "-" for v in ratios]
            spread = max((max(t) - min(t)) / statistics.median(t) for t in r["times_s"].values())
            cells.append(f"{spread * 100:.0f}%")
            lines.append(f"| {MODEL_NAMES.get(r['model'], r['model'])} | {r['batch']} | {r['amp'] or 'fp32'} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@renderer("memory")
def memory_table(paths: list[str]) -> str:
    """The memory TwoRound keeps between the rounds (``noise_memory`` of ``anl-fused bench``)."""
    lines = ["| model | batch | ANL layers | held in float32 | held with noise_dtype=bfloat16 |", "|---|---|---|---|---|"]
    for path in paths:
        for m in load_json(path)["noise_memory"]:
            held = m["held_bytes"]
            lines.append(f"| {MODEL_NAMES.get(m['model'], m['model'])} | {m['batch']} | {m['anl_layers']} | "
                         f"{held['float32'] / 2**20:.1f} MiB | {held['bfloat16'] / 2**20:.1f} MiB |")
    return "\n".join(lines) + "\n"


@renderer("table1")
def table1_table(paths: list[str]) -> str:
    """The paper's Table 1 next to ours, with the protocol (one ``anl-fused table1`` JSON per path)."""
    from anl_fused.experiments.table1 import render_markdown

    return "\n".join(render_markdown(load_json(path)) for path in paths)


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
    parser.add_argument("files", nargs="*", default=[os.path.join(ROOT, "README.md")], help="Markdown files")
    parser.add_argument("--check", action="store_true", help="only report out-of-date tables (exit code 1)")
    args = parser.parse_args(argv)
    stale = []
    for path in args.files:
        with open(path) as f:
            text = f.read()
        new, changed = render_text(text)
        stale += [f"{path}: {c}" for c in changed]
        if changed and not args.check:
            with open(path, "w") as f:
                f.write(new)
    for s in stale:
        print(("out of date: " if args.check else "rendered: ") + s)
    return 1 if (stale and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
