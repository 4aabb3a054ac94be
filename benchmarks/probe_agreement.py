"""Noise of ``TwoRound(probe_dtype=torch.bfloat16)`` (and float16) against the float32 probe's, per ANL layer.

    python benchmarks/probe_agreement.py --models vgg11 vgg16 resnet18 mobilenet_v2 --seeds 3

For each model of the zoo (ANL after every BatchNorm, the model's eps), 32x32 inputs, batch 32, and each
seed (initial weights, a batch of N(0, 1) images with random labels), one step of each probe dtype runs on a
copy of the same model with the same noise generator seed and the same dropout seed, so ``z`` is the same
and the noise ``eta_b = r_b std(h) g_b / ||g_b||_inf`` differs only by what round 1 measured. Per layer:

- ``cos``: the cosine of each sample's ``eta_b`` with the float32 probe's (samples whose float32 noise is
  not zero: ``r_b`` clipped to 0 gives none), mean and min over the samples;
- ``norm_err``: ``||eta|| / ||eta_fp32|| - 1`` over the whole layer (L2);
- ``std_err``: ``std(h) / std_fp32(h) - 1`` (the noise's size per sample is ``|r_b| std(h)``).

For scale, the same numbers for the float32 noise of the same batch after one plain SGD step from the same
weights, at lr 0.1 (the protocol's, ``sgd-0.1``) and at lr 1e-4 (``sgd-1e-4``): how much the noise of a
batch moves from one training step to the next anyway (per-sample activation gradients of deep ReLU
networks are very sensitive to the weights).

Writes ``probe-agreement.json`` (every layer of every seed) and ``probe-agreement.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ARMS = {"bf16": torch.bfloat16, "fp16": torch.float16}
SGD_LRS = {"sgd-0.1": 0.1, "sgd-1e-4": 1e-4}  # the comparison: the fp32 noise after one SGD step at these rates


@contextlib.contextmanager
def recorded_noise() -> Iterator[list]:
    """Records the noise of every ``ops.add_noise`` call while the block runs: yields a list that gets, per call,
    ``alpha * scale[b] * g_b`` flattened per sample in float64 (``g``'s non-finite entries count as 0, as in
    ``add_noise``). The original ``ops.add_noise`` still does the work and is put back on exit."""
    from anl_fused import ops

    seen = []
    add_noise = ops.add_noise

    def spy(h, g, scale, alpha=1.0):
        seen.append(
            alpha * scale.double()[:, None] * torch.nan_to_num(g.double(), nan=0, posinf=0, neginf=0).flatten(1)
        )
        return add_noise(h, g, scale, alpha=alpha)

    ops.add_noise = spy
    try:
        yield seen
    finally:
        ops.add_noise = add_noise


def _step_noise(model, x, y, probe_dtype=None) -> tuple[list, dict]:
    """``(per layer [B, n] float64 noise, {layer name: std})`` of one step of a copy of ``model``."""
    from anl_fused import TwoRound

    net = copy.deepcopy(model)
    engine = TwoRound(net, torch.Generator().manual_seed(0), probe_dtype=probe_dtype)
    with recorded_noise() as seen:
        torch.manual_seed(1)
        engine.step(lambda: F.cross_entropy(net(x), y))
    return seen, {k: v.item() for k, v in engine.last_stds.items()}


def compare(got: list, ref: list, stds: dict, ref_stds: dict) -> list[dict]:
    rows = []
    for (name, s_ref), a, b in zip(ref_stds.items(), got, ref):
        on = b.norm(dim=1) > 0
        cos = F.cosine_similarity(a[on], b[on], dim=1)
        rows.append(
            {
                "layer": name,
                "samples": int(on.sum()),
                "cos_mean": cos.mean().item(),
                "cos_min": cos.min().item(),
                "norm_err": (a.norm() / b.norm() - 1).item(),
                "std_err": stds[name] / s_ref - 1,
            }
        )
    return rows


def measure(name: str, seed: int, batch: int, size: int) -> dict:
    from anl_fused import insert_anl, set_anl_enabled
    from anl_fused.experiments.models import MODELS, build

    torch.manual_seed(seed)
    model = insert_anl(build(name), MODELS[name].eps)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    ref, ref_stds = _step_noise(model, x, y)
    out = {"model": name, "seed": seed, "eps": MODELS[name].eps, "layers": len(ref), "arms": {}}
    for arm, dtype in ARMS.items():
        start = time.perf_counter()
        got, stds = _step_noise(model, x, y, dtype)
        out["arms"][arm] = compare(got, ref, stds, ref_stds)
        print(f"{name} seed {seed} {arm}: {time.perf_counter() - start:.1f} s", flush=True)
    for arm, lr in SGD_LRS.items():
        moved = copy.deepcopy(model)
        set_anl_enabled(moved, False)
        torch.manual_seed(1)
        F.cross_entropy(moved(x), y).backward()
        with torch.no_grad():
            for p in moved.parameters():
                if p.grad is not None:
                    p -= lr * p.grad
        moved.zero_grad(set_to_none=True)
        set_anl_enabled(moved, True)
        got, stds = _step_noise(moved, x, y)
        out["arms"][arm] = compare(got, ref, stds, ref_stds)
    return out


def summary(results: list[dict]) -> dict:
    """Per model and arm: over layers and seeds, the min / median of the layers' mean cosines, the worst
    sample's cosine, and the largest |norm_err| and |std_err|."""
    out = {}
    for r in results:
        for arm, rows in r["arms"].items():
            out.setdefault(r["model"], {}).setdefault(arm, []).extend(rows)
    table = {}
    for model, arms in out.items():
        table[model] = {}
        for arm, rows in arms.items():
            means = [row["cos_mean"] for row in rows]
            table[model][arm] = {
                "layers": len(rows),
                "cos_mean_median": statistics.median(means),
                "cos_mean_min": min(means),
                "cos_min": min(row["cos_min"] for row in rows),
                "norm_err_max": max(abs(row["norm_err"]) for row in rows),
                "norm_err_mean": statistics.fmean(row["norm_err"] for row in rows),
                "std_err_max": max(abs(row["std_err"]) for row in rows),
            }
    return table


def markdown(report: dict) -> str:
    a = report["args"]
    lines = [
        "# bf16 probe: noise against the fp32 probe, per ANL layer",
        "",
        f"Zoo models with ANL after every BatchNorm (the model's eps), {a['size']}x{a['size']} N(0, 1) images "
        f"with random labels, batch {a['batch']}, seeds {a['seeds']}, fresh weights; {report['machine']}, "
        f"torch {report['torch']}, {report['date']}. Command: `{report['command']}`.",
        "",
        "cos: cosine of each sample's noise eta_b with the fp32 probe's (same z, same dropout masks); "
        "norm err: ||eta|| / ||eta_fp32|| - 1 per layer; std err: std(h) / std_fp32(h) - 1. sgd-0.1, sgd-1e-4: "
        "the fp32 noise of the same batch after one plain SGD step at lr 0.1 / 1e-4 from the same weights, "
        "for scale.",
        "",
        "| model | probe | layers x seeds | layer-mean cos: median | min | worst sample cos | "
        "max abs norm err | mean norm err | max abs std err |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model, arms in report["summary"].items():
        for arm, s in arms.items():
            lines.append(
                f"| {model} | {arm} | {s['layers']} | {s['cos_mean_median']:.4f} | {s['cos_mean_min']:.4f} | "
                f"{s['cos_min']:.4f} | {s['norm_err_max']:.2%} | {s['norm_err_mean']:+.2%} | "
                f"{s['std_err_max']:.2%} |"
            )
    lines += ["", "Per layer, seed 0:", ""]
    for r in report["results"]:
        if r["seed"] != report["args"]["seeds"][0]:
            continue
        lines += [
            f"### {r['model']} (eps {r['eps']})",
            "",
            "| layer | bf16 cos mean | bf16 cos min | bf16 norm err | bf16 std err | fp16 cos mean | "
            "sgd-1e-4 cos mean | sgd-0.1 cos mean |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for b, h, s4, s1 in zip(*(r["arms"][k] for k in ("bf16", "fp16", "sgd-1e-4", "sgd-0.1"))):
            lines.append(
                f"| {b['layer']} | {b['cos_mean']:.4f} | {b['cos_min']:.4f} | {b['norm_err']:+.2%} | "
                f"{b['std_err']:+.3%} | {h['cos_mean']:.4f} | {s4['cos_mean']:.4f} | {s1['cos_mean']:.4f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["vgg11", "vgg16", "resnet18", "mobilenet_v2"])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)

    from anl_fused.experiments.files import atomic_write
    from anl_fused.experiments.machine import machine_info

    torch.set_num_threads(args.threads)
    info = machine_info(torch.device("cpu"))
    results = [measure(m, seed, args.batch, args.size) for m in args.models for seed in range(args.seeds)]
    report = {
        "args": {**vars(args), "seeds": list(range(args.seeds))},
        "machine": info["cpu"],
        "torch": torch.__version__,
        "date": info["date"],
        "git_commit": info["git_commit"],
        "command": "python benchmarks/probe_agreement.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "summary": summary(results),
        "results": results,
    }
    atomic_write(os.path.join(args.out, "probe-agreement.json"), json.dumps(report, indent=1))
    md = markdown(report)
    atomic_write(os.path.join(args.out, "probe-agreement.md"), md)
    print(md.split("Per layer")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
