"""One command for the whole suite on this machine: tests (GPU-marked ones included when CUDA is
here) and benchmarks, results as JSON under ``--out``.

    python benchmarks/run.py --out benchmarks/results

On CUDA: the step benchmark (plain / naive / TwoRound; VGG-11, VGG-16, ResNet-18 at 32x32, batch
128, fp32 and bf16 autocast) and the per-kernel bandwidth benchmark. On CPU: the step benchmark of
issue 2 (VGG-11 and ResNet-18, batch 64, with the reference too). The JSON names the device, the
versions and the date; copy it to ``benchmarks/results/`` and commit it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys

import torch

from anl_fused.experiments.files import atomic_write

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run_tests(out_dir: str, cuda: bool) -> dict:
    junit = os.path.join(out_dir, "pytest-junit.xml")
    marker = "gpu or not slow" if cuda else "not slow"
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", marker, f"--junitxml={junit}", "tests"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    with open(os.path.join(out_dir, "pytest-output.txt"), "w") as f:
        f.write(proc.stdout + proc.stderr)
    tail = (proc.stdout.strip().splitlines() or [""])[-1]
    print(f"tests: {tail}", flush=True)
    return {"command": " ".join(cmd), "returncode": proc.returncode, "summary": tail}


def run_steps(out_dir: str, cuda: bool, tag: str) -> list[str]:
    from anl_fused.benchmarks import step as benchmark

    if cuda:
        gpu = ["--models", "vgg11", "vgg16", "resnet18", "--batch", "128", "--methods", "naive", "tworound"]
        runs = [gpu + ["--amp", "none", "--kernels"], gpu + ["--amp", "bf16"]]
    else:
        runs = [["--models", "vgg11", "resnet18", "--batch", "64", "--repeats", "7"]]
    paths = []
    for i, args in enumerate(runs):
        path = os.path.join(out_dir, f"steps-{tag}-{i}.json")
        benchmark.main(args + ["--out", path])
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(HERE, "results"), help="folder for the JSON files")
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name().replace(" ", "-") if cuda else "cpu"
    tag = f"{device}-{dt.date.today().isoformat()}"
    summary = {"device": device, "torch": torch.__version__, "date": dt.datetime.now(dt.timezone.utc).isoformat()}
    if not args.skip_tests:
        summary["tests"] = run_tests(args.out, cuda)
    summary["step_results"] = [os.path.basename(p) for p in run_steps(args.out, cuda, tag)]
    path = os.path.join(args.out, f"suite-{tag}.json")
    atomic_write(path, json.dumps(summary, indent=2))
    print(f"wrote {path}")
    return 0 if summary.get("tests", {}).get("returncode", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
