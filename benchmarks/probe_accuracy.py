"""Test accuracy of ``TwoRound(probe_dtype=torch.bfloat16)`` against the float32 probe, paired by seed.

    python benchmarks/probe_accuracy.py --protocol digits --seeds 10
    python benchmarks/probe_accuracy.py --protocol fashion-mnist --seeds 3 --data-dir DIR

Every seed trains ``plain`` once and ``anl`` once per probe dtype (``--probe-dtypes``, default fp32 and
bf16); the same seed gives the same initial weights, data
order and noise draws ``z`` in every run, so the runs of one seed differ only by round 1's precision
(and plain by the noise). Protocols:

- ``digits``: ``anl-fused demo``'s (vgg_tiny, eps 0.1, batch 64, lr 0.1, 20 epochs with ANL + 10 without at
  the floor rate 1e-3; 600 test images, one image = 0.17%).
- ``fashion-mnist``: LeNet-5 (ANL after each conv, the paper's eps 0.03 of Table 1), batch 128, lr 0.02, 8
  epochs with ANL + 4 without at 1e-3 (about 5 minutes a run on one core of this machine); 10,000 test images.
  At lr 0.1 this LeNet-5 (no BatchNorm) sits at the edge of stability: 2 of 3 ANL runs died in their first
  epoch (chance error from then on) while their plain twins trained (``--lr 0.1``,
  ``probe-accuracy-fashion-mnist-lr0.1.md``).

The runs are ``anl-fused train`` children (:mod:`anl_fused.experiments.sweep`, ``--jobs`` at a time) in
``--runs-dir``: running the command again skips the finished runs and resumes the interrupted ones. Writes
``probe-accuracy-<protocol>.json`` (every finished run's final errors, time per step and history) and ``.md``
(the table) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch

from anl_fused.experiments import stats, sweep
from anl_fused.experiments.files import atomic_write
from anl_fused.experiments.machine import machine_info
from anl_fused.experiments.train.metrics import read_metrics
from anl_fused.experiments.train.rundir import local_config

HERE = os.path.dirname(os.path.abspath(__file__))

PROTOCOLS = {
    "digits": dict(model="vgg_tiny", dataset="digits", eps=0.1, batch_size=64, lr=0.1, epochs=20, finetune_epochs=10),
    "fashion-mnist": dict(
        model="lenet5", dataset="fashion-mnist", eps=0.03, batch_size=128, lr=0.02, epochs=8, finetune_epochs=4
    ),
}


def summarize(runs: list[dict], probe_dtypes: list[str]) -> dict:
    """Per arm (plain, anl-<dtype>): test error stats; paired differences of each low-precision arm against
    anl-fp32 and of every anl arm against plain, over the seeds both have where neither run diverged."""
    errs: dict[str, dict[int, float]] = {}
    for r in runs:
        errs.setdefault(r["arm"], {})[r["seed"]] = r["test_err_pct"]
    out = {"arms": {}, "paired": {}}
    for arm, by_seed in errs.items():
        steps = [r["ms_per_step"] for r in runs if r["arm"] == arm]
        out["arms"][arm] = {"test_err_pct": stats.summary(by_seed.values()), "ms_per_step": statistics.median(steps)}
    pairs = [(f"anl-{d}", "anl-fp32") for d in probe_dtypes if d != "fp32"]
    for a, b in pairs + [(f"anl-{d}", "plain") for d in probe_dtypes]:
        seeds, d = stats.pair(errs.get(a, {}), errs.get(b, {}))
        if seeds:
            out["paired"][f"{a} - {b}"] = {**stats.differences(d), "seeds": seeds}
    return out


def markdown(report: dict) -> str:
    p, s, m = report["protocol"], report["summary"], report["machine"]
    lines = [
        f"# bf16 probe: test error against the fp32 probe ({report['name']})",
        "",
        f"{p['model']} on {p['dataset']} ({report['test_images']} test images, one image = "
        f"{100 / report['test_images']:.3g}%), eps {p['eps']}, batch {p['batch_size']}, lr {p['lr']}, "
        f"{p['epochs']} epochs with ANL + {p['finetune_epochs']} without at lr 1e-3; seeds "
        f"{report['seeds']}; {m['cpu']}, torch {m['torch']}, {m['threads']} thread(s), {m['date']}.",
        "",
        "| arm | test error % (mean ± std) | [min, max] | ms/step (median) |",
        "| --- | --- | --- | --- |",
    ]
    for arm, a in s["arms"].items():
        t = a["test_err_pct"]
        span = f"[{t['min']:.2f}, {t['max']:.2f}]"
        lines.append(f"| {arm} | {t['mean']:.2f} ± {t['std'] or 0.0:.2f} | {span} | {a['ms_per_step']:.1f} |")
    lines += [
        "",
        "Paired by seed (same initial weights, data order and noise draws):",
        "",
        "| difference | mean ± standard error (percentage points) | better / same / worse | per seed |",
        "| --- | --- | --- | --- |",
    ]
    for k, d in s["paired"].items():
        lines.append(
            f"| {k} | {d['mean']:+.3f} ± {d['se'] or 0.0:.3f} | {d['better']} / {d['same']} / {d['worse']} | "
            + ", ".join(f"{x:+.2f}" for x in d["values"])
            + " |"
        )
    lines += ["", "A mean within about two standard errors of 0 is no evidence of a difference either way.", ""]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--protocol", choices=tuple(PROTOCOLS), required=True)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--probe-dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--no-plain", action="store_true", help="skip the plain arm")
    ap.add_argument("--data-dir", default="./data")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=None, help="override the protocol's ANL epochs (smoke runs)")
    ap.add_argument("--finetune-epochs", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None, help="override the protocol's learning rate")
    ap.add_argument("--tag", default="", help="appended to the file names (e.g. -lr0.1)")
    ap.add_argument("--jobs", type=int, default=1, help="trainings at once")
    ap.add_argument("--runs-dir", default="runs/probe-accuracy", help="where the runs live (resumable)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    return ap


def _protocol(args: argparse.Namespace) -> dict:
    """``--protocol``'s settings with the command line's overrides (``--epochs``, ``--finetune-epochs``, ``--lr``)."""
    protocol = dict(PROTOCOLS[args.protocol])
    for k in ("epochs", "finetune_epochs", "lr"):
        if getattr(args, k) is not None:
            protocol[k] = getattr(args, k)
    return protocol


def _jobs(args: argparse.Namespace, protocol: dict) -> list[tuple[str, str, int, sweep.Job]]:
    """``(arm, probe dtype, seed, job)`` of every run, seed by seed, in ``RUNS_DIR/<protocol><tag>/<arm>-seed<k>``."""
    arms = ([] if args.no_plain else [("plain", "fp32")]) + [(f"anl-{d}", d) for d in args.probe_dtypes]
    out = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for arm, dtype in arms:
            anl = arm != "plain"
            settings = {
                "model": protocol["model"],
                "dataset": protocol["dataset"],
                "data_dir": args.data_dir,
                "variant": "anl" if anl else "plain",
                "eps": protocol["eps"] if anl else None,
                "probe_dtype": dtype if anl else None,
                "epochs": protocol["epochs"],
                "finetune_epochs": protocol["finetune_epochs"],
                "finetune_lr": "floor",
                "batch_size": protocol["batch_size"],
                "lr": protocol["lr"],
                "seed": seed,
                "device": "cpu",
            }
            d = os.path.join(args.runs_dir, args.protocol + args.tag, f"{arm}-seed{seed}")
            out.append((arm, dtype, seed, sweep.train_job(f"{arm} seed {seed}", d, settings, args.threads)))
    return out


def _record(arm: str, dtype: str, seed: int, job: sweep.Job, protocol: dict) -> dict:
    """The report's record of a finished run: final test error, median time per step of the ANL phase (its first
    epoch, the warm-up, left out) and the history."""
    hist = read_metrics(job.run_dir)
    noisy = hist[1 : protocol["epochs"]] or hist[: protocol["epochs"]]
    return {
        "arm": arm,
        "seed": seed,
        "probe_dtype": dtype,
        "test_err_pct": hist[-1]["test_err"] * 100,
        "ms_per_step": statistics.median(h["time_per_step_s"] for h in noisy) * 1e3,
        "history": [
            {k: h[k] for k in ("epoch", "test_err", "val_loss", "lr", "time_per_step_s") if k in h} for h in hist
        ],
    }


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    protocol = _protocol(args)
    jobs = _jobs(args, protocol)
    code = 0
    try:
        code = 1 if sweep.run([j for *_, j in jobs], parallel=args.jobs) else 0
    except KeyboardInterrupt:  # the report of the finished runs; the next call resumes the others
        code = 130
    done = [(a, d, s, j) for a, d, s, j in jobs if sweep.state(j) == "finished"]
    if not done:
        print("no run has finished: nothing to report", file=sys.stderr)
        return code or 1
    runs = [_record(*x, protocol) for x in done]
    report = {
        "name": args.protocol + args.tag,
        "protocol": protocol,
        "seeds": sorted({s for _, _, s, _ in jobs}),
        "test_images": local_config(done[0][3].run_dir)["dataset_sizes"]["test"],
        "machine": machine_info(),
        "command": "python benchmarks/probe_accuracy.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "runs": runs,
        "summary": summarize(runs, args.probe_dtypes),
    }
    path = os.path.join(args.out, f"probe-accuracy-{report['name']}.json")
    atomic_write(path, json.dumps(report, indent=1))
    md = markdown(report)
    atomic_write(path[:-5] + ".md", md)
    print(md)
    return code


if __name__ == "__main__":
    sys.exit(main())
