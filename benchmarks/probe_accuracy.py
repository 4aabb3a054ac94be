"""Test accuracy of ``TwoRound(probe_dtype=torch.bfloat16)`` against the float32 probe, paired by seed.

    python benchmarks/probe_accuracy.py --protocol digits --seeds 10
    python benchmarks/probe_accuracy.py --protocol fashion-mnist --seeds 3 --data-dir DIR

Every seed trains ``plain`` once and ``anl`` once per probe dtype (``--probe-dtypes``, default fp32 and
bf16) with :func:`anl_fused.experiments.train.fit`; the same seed gives the same initial weights, data
order and noise draws ``z`` in every run, so the runs of one seed differ only by round 1's precision
(and plain by the noise). Protocols:

- ``digits``: ``anl-fused demo``'s (vgg_tiny, eps 0.1, batch 64, lr 0.1, 20 epochs with ANL + 10 without at
  the floor rate 1e-3; 600 test images, one image = 0.17%).
- ``fashion-mnist``: LeNet-5 (ANL after each conv, the paper's eps 0.03 of Table 1), batch 128, lr 0.02, 8
  epochs with ANL + 4 without at 1e-3 (about 5 minutes a run on one core of this machine); 10,000 test images.
  At lr 0.1 this LeNet-5 (no BatchNorm) sits at the edge of stability: 2 of 3 ANL runs died in their first
  epoch (chance error from then on) while their plain twins trained (``--lr 0.1``,
  ``probe-accuracy-fashion-mnist-lr0.1.md``).

Writes ``probe-accuracy-<protocol>.json`` (every run's final errors, time per step and history) and
``.md`` (the table) into ``--out``; the JSON is rewritten after every run, so an interrupted campaign
keeps what it finished and ``--resume`` skips it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

from anl_fused.experiments import stats

HERE = os.path.dirname(os.path.abspath(__file__))

PROTOCOLS = {
    "digits": {
        "model": "vgg_tiny",
        "dataset": "digits",
        "eps": 0.1,
        "batch_size": 64,
        "lr": 0.1,
        "epochs": 20,
        "finetune_epochs": 10,
    },
    "fashion-mnist": {
        "model": "lenet5",
        "dataset": "fashion-mnist",
        "eps": 0.03,
        "batch_size": 128,
        "lr": 0.02,
        "epochs": 8,
        "finetune_epochs": 4,
    },
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
    p, s = report["protocol"], report["summary"]
    lines = [
        f"# bf16 probe: test error against the fp32 probe ({report['name']})",
        "",
        f"{p['model']} on {p['dataset']} ({report['test_images']} test images, one image = "
        f"{100 / report['test_images']:.3g}%), eps {p['eps']}, batch {p['batch_size']}, lr {p['lr']}, "
        f"{p['epochs']} epochs with ANL + {p['finetune_epochs']} without at lr 1e-3; seeds "
        f"{report['seeds']}; {report['machine']}, torch {report['torch']}, {report['threads']} thread(s), "
        f"{report['date']}.",
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
    ap.add_argument("--resume", action="store_true", help="keep the runs the JSON in --out already holds")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    return ap


def _protocol(args: argparse.Namespace) -> dict:
    """``--protocol``'s settings with the command line's overrides (``--epochs``, ``--finetune-epochs``, ``--lr``)."""
    protocol = dict(PROTOCOLS[args.protocol])
    for k in ("epochs", "finetune_epochs", "lr"):
        if getattr(args, k) is not None:
            protocol[k] = getattr(args, k)
    return protocol


def _report_header(args: argparse.Namespace, argv, protocol: dict, seeds: list[int], bundle) -> dict:
    """The report's description of the protocol, the data and the machine (the runs come later)."""
    from anl_fused.benchmarks.step import machine_info

    info = machine_info(torch.device("cpu"))
    return {
        "name": args.protocol + args.tag,
        "protocol": protocol,
        "seeds": seeds,
        "test_images": len(bundle.test),
        "machine": info["cpu"],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": info["date"],
        "git_commit": info["git_commit"],
        "command": "python benchmarks/probe_accuracy.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }


def _train_arm(args: argparse.Namespace, protocol: dict, bundle, arm: str, dtype: str, seed: int, tmp: str) -> dict:
    """Trains one arm for one seed (in a run directory under ``tmp``) and returns its record for the report."""
    from anl_fused.experiments.train import TrainConfig, fit

    variant = "plain" if arm == "plain" else "anl"
    cfg = TrainConfig(
        model=protocol["model"],
        dataset=protocol["dataset"],
        data_dir=args.data_dir,
        variant=variant,
        eps=protocol["eps"],
        epochs=protocol["epochs"],
        finetune_epochs=protocol["finetune_epochs"],
        finetune_lr="floor",
        batch_size=protocol["batch_size"],
        lr=protocol["lr"],
        seed=seed,
        device="cpu",
        probe_dtype=dtype,
    )
    start = time.perf_counter()
    res = fit(
        cfg,
        os.path.join(tmp, f"{arm}-{seed}"),
        progress=False,
        bundle=bundle,
        log=lambda s: None,
        overwrite=True,
    )
    hist = res["history"]
    noisy = hist[1 : protocol["epochs"]] or hist[: protocol["epochs"]]
    return {
        "arm": arm,
        "seed": seed,
        "probe_dtype": dtype,
        "test_err_pct": hist[-1]["test_err"] * 100,
        "ms_per_step": statistics.median(h["time_per_step_s"] for h in noisy) * 1e3,
        "wall_s": time.perf_counter() - start,
        "history": [
            {k: h[k] for k in ("epoch", "test_err", "val_loss", "lr", "time_per_step_s") if k in h} for h in hist
        ],
    }


def main(argv=None) -> int:
    args = _parser().parse_args(argv)

    from anl_fused.experiments import data as data_mod
    from anl_fused.experiments.files import atomic_write

    torch.set_num_threads(args.threads)
    protocol = _protocol(args)
    bundle = data_mod.load(protocol["dataset"], args.data_dir)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    arms = ([] if args.no_plain else [("plain", "fp32")]) + [(f"anl-{d}", d) for d in args.probe_dtypes]
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"probe-accuracy-{args.protocol}{args.tag}.json")
    runs = []
    if args.resume and os.path.exists(path):
        with open(path) as f:
            runs = json.load(f)["runs"]
    done = {(r["arm"], r["seed"]) for r in runs}
    report = _report_header(args, argv, protocol, seeds, bundle)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for arm, dtype in arms:
                if (arm, seed) in done:
                    continue
                runs.append(_train_arm(args, protocol, bundle, arm, dtype, seed, tmp))
                print(
                    f"{arm} seed {seed}: test error {runs[-1]['test_err_pct']:.2f}%, "
                    f"{runs[-1]['ms_per_step']:.1f} ms/step, {runs[-1]['wall_s']:.0f} s",
                    flush=True,
                )
                report["runs"] = runs
                report["summary"] = summarize(runs, args.probe_dtypes)
                atomic_write(path, json.dumps(report, indent=1))
    report["runs"], report["summary"] = runs, summarize(runs, args.probe_dtypes)
    atomic_write(path, json.dumps(report, indent=1))
    md = markdown(report)
    atomic_write(path[:-5] + ".md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
