"""``anl-fused demo``: plain vs ANL vs opposite-ANL on scikit-learn's 8x8 digits, on a CPU, in minutes (docs/demo.md).

``vgg_tiny`` with each variant and 5 seeds, the paper's protocol (sec. 4.2.1, the
:class:`~.train.schedule.PlateauSchedule` of ``anl-fused train``) scaled down: 20 epochs with the variant's noise,
then 10 with it off at the floor rate 1e-3, for every variant (plain included), so that the noise is the only
difference. ANL's eps is :data:`DEMO_EPS` (chosen on the validation split by the rule in docs/demo.md). Prints
the table (:func:`format_table`, also what ``benchmarks/render.py`` puts in the README) and writes ``demo.png``,
``results.json``, ``results.txt`` and the runs under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time

import torch

from . import cli_types, stats, sweep
from .files import out_error, resolve_device
from .machine import machine_info
from .train.metrics import read_metrics
from .train.rundir import local_config

DEFAULT_VARIANTS = ("plain", "anl", "opposite")
VARIANTS = (*DEFAULT_VARIANTS, "gaussian", "dropout")
NOISY = ("anl", "opposite", "gaussian")
DEMO_EPS = 0.2  # vgg_tiny on digits: chosen on the validation split (docs/demo.md, benchmarks/results/demo-eps-val)
#: the settings every variant shares, from a run's config
PROTOCOL_KEYS = ("epochs", "finetune_epochs", "batch_size", "lr", "momentum", "weight_decay", "lr_factor", "patience")
PROTOCOL_KEYS += ("hold_epochs", "min_lr")
MIN_LR = 1e-3  # the schedule's floor and the fine-tuning rate (TrainConfig.min_lr, the paper's)


def _eps_list(text: str) -> list[float]:
    """``--eps``: one or more eps separated by commas, each a positive finite number."""
    try:
        return [cli_types.positive_float(t) for t in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected positive numbers separated by commas, got {text!r}") from None


EPS_HELP = (
    f"ANL eps, or several separated by commas for a sweep (opposite uses -eps). Default {DEMO_EPS:g}: "
    "chosen on this split's validation images by the rule in docs/demo.md (lowest mean final validation "
    "error over 5 seeds), never on test error. "
    "`anl-fused train` defaults to the model's eps instead (vgg_tiny: 0.02, listed by `anl-fused models`)"
)
LR_HELP = (
    f"initial learning rate, >= the floor {MIN_LR:g} (default 0.1, the paper's); halved when none of the last 5 "
    "epochs found a new best validation loss, each rate kept >= 5 epochs (sec. 4.2.1)"
)


def configure(parser: argparse.ArgumentParser) -> None:
    p, pos, nonneg = parser.add_argument, cli_types.positive_int, cli_types.nonneg_int
    p("--model", default="vgg_tiny", help="zoo model (default vgg_tiny, ~0.07M parameters)")
    p("--variants", default=",".join(DEFAULT_VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)} (%(default)s)")
    p("--eps", type=_eps_list, default=[DEMO_EPS], help=EPS_HELP)
    p("--seeds", type=pos, default=5, help="seeds per variant (default 5; the paired differences need >= 2)")
    p("--epochs", type=pos, default=20, help="epochs with the variant's noise (default 20)")
    p("--finetune-epochs", type=nonneg, default=10, help=f"then epochs without it at lr {MIN_LR:g} (default 10)")
    p("--batch-size", type=pos, default=64, help="training batch, up to the training set (digits: 897; default 64)")
    p("--lr", type=cli_types.number(float, ge=MIN_LR), default=0.1, help=LR_HELP)
    p("--threads", type=pos, default=1, help="torch threads of each training (default 1: fastest for a tiny model)")
    p("--jobs", type=pos, default=1, help="trainings at once (default 1)")
    p("--device", default="cpu", help="cpu (default), cuda or auto")
    p("--out", default="./demo_out", help="output directory (default ./demo_out)")
    p("--quick", action="store_true", help="a smoke run: 2 seeds, 1 + 1 epochs, batch 128")


COLORS = dict(plain="tab:gray", anl="tab:blue", opposite="tab:red", gaussian="tab:green", dropout="tab:purple")
SHADES = {"anl": "Blues", "opposite": "Reds", "gaussian": "Greens"}  # several eps of one variant: its shades


def _colors(summary: dict) -> dict:
    """Each entry's color: its variant's, or a shade of the variant's colormap when it runs several eps."""
    import matplotlib

    out = {}
    for v in dict.fromkeys(s["variant"] for s in summary.values()):
        same = [k for k, s in summary.items() if s["variant"] == v]
        shade = matplotlib.colormaps[SHADES.get(v, "Greys")]
        out |= {k: shade(0.45 + 0.5 * i / (len(same) - 1)) if same[1:] else COLORS.get(v) for i, k in enumerate(same)}
    return out


def _plot(path: str, summary: dict, runs: dict, finetune_start: int, n_test: int) -> None:
    import matplotlib.ticker
    import numpy as np

    from .figures import _finish, _plt

    variants, color = list(summary), _colors(summary)
    fig, (ax1, ax2) = _plt().subplots(1, 2, figsize=(11, 4.2))
    for i, v in enumerate(variants):
        s, c = summary[v]["test_err"], color[v]
        ax1.scatter([i] * s["n"], s["values"], color=c, alpha=0.5, s=18, zorder=3)
        ax1.errorbar([i], [s["mean"]], yerr=[s["std"] or 0.0], fmt="o", color=c, capsize=6, ms=8, zorder=4)
        ax1.annotate(f"{s['mean']:.2f}", (i, s["mean"]), textcoords="offset points", xytext=(12, -3), fontsize=9)
    ax1.set_xticks(range(len(variants)), [summary[v]["label"].replace(" eps", "\neps") for v in variants], fontsize=8)
    ax1.set(ylabel="final test error (%)", title="test error: seeds (dots), mean ± std (bars)")
    ax1.grid(axis="y", alpha=0.3)
    floor = 50.0 / n_test  # half a test image: keeps a 0% seed visible on the log axis
    for v in variants:
        n = min(len(hist) for hist in runs[v])
        curves, ep = np.array([[h["test_err"] * 100 for h in hist[:n]] for hist in runs[v]]), range(1, n + 1)
        ax2.plot(ep, np.maximum(curves.mean(0), floor), color=color[v], label=summary[v]["label"])
        ax2.fill_between(ep, np.maximum(curves.min(0), floor), curves.max(0), color=color[v], alpha=0.15)
    lo_y, hi_y = ax2.get_ylim()
    if hi_y / max(lo_y, 1e-9) > 8:  # errors fall by orders of magnitude: log scale, plain-number labels
        ax2.set_yscale("log")
        ax2.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax2.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax2.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax2.axvline(finetune_start + 0.5, color="k", ls="--", lw=0.8)
    off = dict(fontsize=8, va="bottom", transform=ax2.get_xaxis_transform())
    ax2.text(finetune_start + 0.6, 0.03, "noise off,\nlr floor", **off)
    ax2.set(xlabel="epoch", ylabel="test error (%): mean over seeds, band = range", title="test error during training")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3, which="both")
    first = summary[variants[0]]
    _finish(fig, path, f"{first['model']} on scikit-learn digits (8x8), {first['test_err']['n']} seeds", fontsize=11)


def _machine(args: argparse.Namespace) -> dict:
    """Where and when the demo ran (:func:`~.machine.machine_info`), and the command that ran it."""
    argv = getattr(args, "_argv", None)
    argv = ["demo", *sys.argv[1:]] if argv is None else argv
    return {**machine_info(resolve_device(args.device)), "command": shlex.join(["anl-fused", *argv])}


def _eps_note(protocol: dict) -> str:
    """Where the eps comes from, and ``anl-fused train``'s default for the model."""
    eps = ", ".join(f"{e:g}" for e in protocol["eps"])
    train = (
        f"`anl-fused train` defaults to eps {protocol['train_default_eps']:g} for {protocol['model']} "
        "(`anl-fused models`)"
    )
    if protocol["eps"] == [DEMO_EPS] and protocol["model"] == "vgg_tiny":
        return (
            f"eps {eps}: chosen on this split's validation images (lowest mean final validation error over 5 "
            f"seeds, docs/demo.md), never on test error;\n{train}."
        )
    return f"eps {eps} (--eps); {train}."


def format_table(results: dict) -> str:
    """The demo's printout (header, table, notes) from its ``results.json``: what ``anl-fused demo``
    prints and what ``benchmarks/render.py`` puts in the README."""
    p, m, n = results["protocol"], results["machine"], results["dataset_sizes"]
    summary = results["summary"]
    lines = [
        f"anl-fused demo: {p['model']} on scikit-learn digits (8x8 grey, train {n['train']} / val {n['val']} / "
        f"test {n['test']}), {p['seeds']} seed(s) per variant",
        f"protocol: SGD lr {p['lr']:g}, momentum {p['momentum']:g}, wd {p['weight_decay']:g}, batch "
        f"{p['batch_size']}; {p['epochs']} epochs with noise + {p['finetune_epochs']} noise off at lr "
        f"{p['min_lr']:g} (all variants)",
        f"schedule (sec. 4.2.1): lr x{p['lr_factor']:g} when the last {p['patience']} epochs found no new best val "
        f"loss, each rate kept >= {p['hold_epochs']} epochs, floor {p['min_lr']:g}",
        _eps_note(p),
        f"{m['date']}, device {m['device']}, torch {m['torch']}, triton {m['triton'] or '-'}, {m['threads']} "
        f"thread(s), {m['cpu_count']} CPU(s), {m['cpu']}",
        "",
        f"{'variant':<22} {'test error %':>16} {'[min, max]':>14} {'vs plain, paired':>22} "
        f"{'train err %':>11} {'ms/step':>8} {'vs plain':>8}",
    ]
    for s in summary.values():
        t, d = s["test_err"], s.get("paired_diff_vs_plain")
        ratio = s.get("time_ratio_vs_plain")
        span = f"[{t['min']:.2f}, {t['max']:.2f}]"
        paired = f"{d['mean']:+.2f} ± {d['se']:.2f} ({d['better']}/{d['same']}/{d['worse']})" if d else "-"
        lines.append(
            f"{s['label']:<22} {t['mean']:>7.2f} ± {t['std'] or 0.0:<6.2f} {span:>14} {paired:>22} "
            f"{s['final_train_err']:>11.2f} {s['time_per_step_ms']:>8.2f} "
            f"{(f'{ratio:.2f}x' if ratio is not None else '-'):>8}"
        )
    lines += [
        "",
        f"test error: after the last epoch, over {n['test']} test images (one image = {100 / n['test']:.2f}%); "
        "mean ± std over seeds.",
        "vs plain, paired: mean over seeds of (error - plain's error with the same seed) ± its standard error "
        "(better/same/worse seeds).",
        "ms/step: median wall time of one optimizer step in the noise phase (epoch 1 excluded), measured here.",
        f"total wall time {results['wall_time_s']:.1f} s. A paired difference within about two standard errors of "
        "0 is not evidence either way.",
    ]
    return "\n".join(lines)


def _problem(args: argparse.Namespace, variants: list[str], n_train: int) -> str | None:
    """The arguments' one-line usage error, checked before anything trains (None: they are fine)."""
    from .models import MODELS

    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        return f"unknown variant(s) {bad}"
    if args.model not in MODELS:
        return f"unknown --model {args.model!r} (known: {', '.join(MODELS)})"
    if args.batch_size > n_train:  # not one full batch an epoch
        return f"argument --batch-size: must be <= {n_train} (the training images), got {args.batch_size!r}"
    return out_error(args.out, directory=True)


def _entries(variants: list[str], eps_list: list[float]) -> list[tuple[str, str, float]]:
    """One ``(key, variant, eps)`` per run of a seed; variants without noise run once."""
    entries = []
    for v in variants:
        for eps in eps_list if v in NOISY else [0.0]:
            key = v if (v not in NOISY or len(eps_list) == 1) else f"{v}@{eps:g}"
            entries.append((key, v, eps))
    return entries


def _jobs(args: argparse.Namespace, entries: list) -> list[tuple[str, sweep.Job]]:
    """``(key, job)`` of every entry for every seed, seed by seed; each run in ``OUT/runs/<key>-seed<k>``."""
    out = []
    for seed in range(args.seeds):
        for key, v, eps in entries:
            settings = dict(model=args.model, dataset="digits", variant=v, eps=eps if v in NOISY else None, seed=seed)
            settings |= dict(epochs=args.epochs, finetune_epochs=args.finetune_epochs, finetune_lr="floor")
            settings |= dict(batch_size=args.batch_size, lr=args.lr, min_lr=MIN_LR, device=args.device)
            d = os.path.join(args.out, "runs", f"{key.replace('@', '-eps')}-seed{seed}")
            out.append((key, sweep.train_job(f"{key} seed {seed}", d, settings, args.threads)))
    return out


def _train_all(args: argparse.Namespace, entries: list) -> tuple[dict, dict] | None:
    """Every entry for every seed, each run from scratch (``--jobs`` at a time): ``({key: [history per seed]},
    {key: its config.json})``, or None after saying which runs failed."""
    jobs = _jobs(args, entries)
    failed = sweep.run(
        [j for _, j in jobs], parallel=args.jobs, overwrite=True, log=lambda s: print(s, file=sys.stderr)
    )
    if failed:
        names = ", ".join(f"{os.path.join(j.run_dir, sweep.LOG_NAME)} (exit {rc})" for j, rc in failed)
        print(f"anl-fused demo: error: {len(failed)} run(s) failed; see {names}", file=sys.stderr)
        return None
    runs: dict[str, list] = {k: [] for k, _, _ in entries}
    for key, j in jobs:
        runs[key].append(read_metrics(j.run_dir))
    return runs, {key: local_config(j.run_dir) for key, j in jobs}


def _summarize(args: argparse.Namespace, entries: list, runs: dict, configs: dict) -> dict:
    """Per entry: its label, test errors over seeds, time per step and train error; the paired
    differences to plain (same seed = same initial weights and data order)."""
    summary = {}
    for key, v, _ in entries:
        errs = [hist[-1]["test_err"] * 100 for hist in runs[key]]
        # time per step in the first (noise) phase, first epoch excluded (warm-up), median over epochs and seeds
        tps = [h["time_per_step_s"] for hist in runs[key] for h in hist[1 : args.epochs]]
        tps = tps or [h["time_per_step_s"] for hist in runs[key] for h in hist[: args.epochs]]
        eps = configs[key]["eps"]
        summary[key] = {
            "label": {"anl": "ANL", "gaussian": "Gaussian"}.get(v, v) + (f" eps={eps:g}" if eps else ""),
            "variant": v,
            "model": args.model,
            "eps": eps,
            "test_err": stats.summary(errs),
            "time_per_step_ms": statistics.median(tps) * 1e3,
            "final_train_err": statistics.fmean(100 - hist[-1]["train_acc"] * 100 for hist in runs[key]),
        }
    plain = summary.get("plain")
    for key, s in summary.items():  # same seed = same initial weights and data order: compare pairwise
        if plain:
            s["time_ratio_vs_plain"] = s["time_per_step_ms"] / plain["time_per_step_ms"]
        if plain and key != "plain" and s["test_err"]["n"] > 1:
            d = [a - b for a, b in zip(s["test_err"]["values"], plain["test_err"]["values"])]
            s["paired_diff_vs_plain"] = stats.paired(d)
    return summary


def _protocol(args: argparse.Namespace, variants: list[str], configs: dict) -> dict:
    """The protocol every variant shares (from a resolved config)."""
    from .models import MODELS

    c = next(iter(configs.values()))
    return {
        "model": args.model,
        "dataset": "digits",
        "variants": variants,
        "eps": list(args.eps),
        "train_default_eps": MODELS[args.model].eps,
        "seeds": args.seeds,
        **{k: c[k] for k in PROTOCOL_KEYS},
    }


def run(args: argparse.Namespace) -> int:
    from . import data as data_mod

    if args.quick:
        args.seeds, args.epochs, args.finetune_epochs, args.batch_size = 2, 1, 1, 128
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    problem = _problem(args, variants, len(data_mod.load("digits").train))
    if problem:
        print(f"anl-fused demo: error: {problem}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    try:
        return _run(args, variants)
    except OSError as e:  # an unwritable --out, a full disk: each file is whole or absent (atomic writes)
        print(f"anl-fused demo: error: writing to --out {args.out!r} failed: {e}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, variants: list[str]) -> int:
    from .files import atomic_write

    os.makedirs(args.out, exist_ok=True)
    entries = _entries(variants, list(args.eps))
    t_start = time.perf_counter()
    trained = _train_all(args, entries)
    if trained is None:
        return 1
    runs, configs = trained
    wall = time.perf_counter() - t_start
    sizes = next(iter(configs.values()))["dataset_sizes"]
    summary = _summarize(args, entries, runs, configs)
    results = {
        "summary": summary,
        "protocol": _protocol(args, variants, configs),
        "machine": _machine(args),
        "wall_time_s": wall,
        "dataset_sizes": sizes,
        "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
    }
    text = format_table(results)
    print(text)
    png = os.path.join(args.out, "demo.png")
    _plot(png, summary, runs, args.epochs, sizes["test"])
    atomic_write(os.path.join(args.out, "results.json"), json.dumps(results, indent=2) + "\n")
    atomic_write(os.path.join(args.out, "results.txt"), text + "\n")
    print(f"wrote {png}, {os.path.join(args.out, 'results.json')}, runs under {os.path.join(args.out, 'runs')}")
    return 0
