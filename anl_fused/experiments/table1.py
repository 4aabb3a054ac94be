"""``anl-fused table1``: the paper's Table 1 (test error of baseline, Gaussian, ANL and opposite ANL), docs/table1.md.

Every seed trains each method with ``anl-fused train`` in child processes (:mod:`.sweep`): ``baseline`` for
``E + F`` epochs, ``baseline-two-phase`` (a control the paper does not have) and the noise methods ``E`` epochs then
``F`` at the floor rate; the same seed gives every method the same initial weights and data order. Runs live in
``RUNS_DIR/<protocol>/<method>-seed<k>``; running again skips finished runs and resumes the others. Writes
``OUT/<protocol or --name>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import statistics
import sys
from dataclasses import dataclass

from ..layer import NORMS
from . import stats, sweep
from .cli_types import finite_float, nonneg_int, number, positive_float, positive_int
from .files import atomic_write, check_out_dir, md_table, out_error, resolve_device
from .machine import machine_info
from .train.config import NOISE_VARIANTS, TWO_PHASE_VARIANTS
from .train.config import PRESETS as TRAIN_PRESETS
from .train.config import VARIANTS as TRAIN_VARIANTS
from .train.metrics import read_metrics
from .train.rundir import local_config

#: The paper's Table 1 (test error %): baseline, Gaussian noise, +ANL eps=0.03, +ANL eps=-0.03.
PAPER_TABLE1 = {
    ("lenet5", "fashion-mnist"): {"plain": 9.44, "gaussian": 9.49, "anl": 9.17, "opposite": 12.00},
    ("vgg16", "fashion-mnist"): {"plain": 5.93, "gaussian": 5.96, "anl": 5.47, "opposite": 7.02},
    ("vgg16", "cifar10"): {"plain": 7.47, "gaussian": 7.62, "anl": 6.18, "opposite": 55.49},
}
PAPER_EPS = 0.03  # Table 1's eps for every row
#: a control the paper does not have: plain training in the noise methods' two phases (E epochs, then F at the
#: floor rate), so that the noise is the only difference to it
CONTROL = "baseline-two-phase"
#: the methods, in the table's order: ``anl-fused train``'s variants (not ``input``: it needs an input eps) and the
#: control; Table 1's by default. Two-phase variants train E then F epochs, the others E + F on the schedule.
VARIANTS = ("plain", CONTROL, *(v for v in TRAIN_VARIANTS if v not in ("plain", "input")))
TABLE1 = ("plain", CONTROL, "gaussian", "anl", "opposite")
NORMED = ("anl", "opposite")  # a row per --norms entry


@dataclass(frozen=True)
class RunSpec:
    """One training run of the campaign."""

    variant: str
    seed: int
    eps: float = 0.0  # |eps| (opposite negates it)
    norm: str = "sample"

    @property
    def name(self) -> str:
        eps = f"-eps{self.eps:g}" if self.variant in NOISE_VARIANTS else ""
        norm = f"-{self.norm}" if self.variant in NORMED else ""
        return f"{'baseline' if self.variant == 'plain' else self.variant}{eps}{norm}-seed{self.seed}"

    @property
    def column(self) -> str:
        """The table row this run belongs to (seeds pooled)."""
        return self.name.rsplit("-seed", 1)[0]


@dataclass(frozen=True)
class Protocol:
    model: str
    dataset: str
    epochs: int  # phase 1: noise on
    finetune_epochs: int  # phase 2: noise off, floor learning rate
    batch_size: int = 128
    lr: float = 0.1
    val_size: int | None = None  # None: the dataset's default (5,000 for Fashion-MNIST)

    @property
    def tag(self) -> str:
        val = "" if self.val_size is None else f"-v{self.val_size}"
        return f"{self.model}-{self.dataset}-e{self.epochs}f{self.finetune_epochs}-b{self.batch_size}{val}"

    @property
    def total(self) -> int:
        return self.epochs + self.finetune_epochs


def plan(seeds: list[int], eps: list[float], norms: list[str], variants=TABLE1) -> list[RunSpec]:
    """The runs, seed by seed (so that early results cover every method), baseline first: one per eps of the noise
    variants, one per norm of ANL and opposite."""
    out = []
    for seed in seeds:
        for v in variants:
            for e in eps if v in NOISE_VARIANTS else [0.0]:
                out += [RunSpec(v, seed, abs(e), n) for n in (norms if v in NORMED else ["sample"])]
    return out


def settings(spec: RunSpec, proto: Protocol, *, data_dir: str | None, device: str) -> dict:
    """The ``anl-fused train`` settings of one run: the baseline trains ``E + F`` epochs in one phase, the control and
    the two-phase variants ``E`` then ``F`` at the floor rate."""
    one_phase = spec.variant not in (CONTROL, *TWO_PHASE_VARIANTS)
    return {
        "model": proto.model,
        "dataset": proto.dataset,
        "variant": "plain" if spec.variant == CONTROL else spec.variant,
        "epochs": proto.total if one_phase else proto.epochs,
        "finetune_epochs": 0 if one_phase else proto.finetune_epochs,
        "batch_size": proto.batch_size,
        "lr": proto.lr,
        "seed": spec.seed,
        "device": device,
        "finetune_lr": "floor" if spec.variant == CONTROL else None,
        "eps": spec.eps if spec.variant in NOISE_VARIANTS else None,
        "norm": spec.norm if spec.variant in NORMED else None,
        "data_dir": data_dir or None,
        "val_size": proto.val_size,
    }


def job(spec: RunSpec, proto: Protocol, runs_dir: str, *, data_dir: str | None, device: str, threads: int):
    """The sweep's job of one run, in ``RUNS_DIR/<protocol>/<run>``."""
    d = os.path.join(runs_dir, proto.tag, spec.name)
    return sweep.train_job(spec.name, d, settings(spec, proto, data_dir=data_dir, device=device), threads)


# ----------------------------------------------------------------------------------------------
# the table


def collect(specs: list[RunSpec], proto: Protocol, runs_dir: str) -> dict:
    """Every run's result and the per-row statistics (only finished runs count)."""
    runs = []
    for spec in specs:
        j = job(spec, proto, runs_dir, data_dir=None, device="cpu", threads=1)
        hist = read_metrics(j.run_dir)
        row = {
            **dataclasses.asdict(spec),
            "name": spec.name,
            "row": spec.column,
            "dir": j.run_dir,
            "finished": sweep.finished(j.run_dir, j.epochs),
            "epochs_done": len(hist),
        }
        if hist:
            phase1 = hist[: settings(spec, proto, data_dir=None, device="cpu")["epochs"]]
            row.update(
                test_err=hist[-1]["test_err"] * 100,
                train_err=(1 - hist[-1]["train_acc"]) * 100,
                train_time_s=sum(h.get("epoch_train_time_s", 0.0) for h in hist),
                time_per_step_s=statistics.median(h["time_per_step_s"] for h in phase1),
                lr_end_phase1=phase1[-1]["lr"],
            )
        runs.append(row)
    done = [r for r in runs if r["finished"]]
    base = {r["seed"]: r["test_err"] for r in done if r["variant"] == "plain"}
    base2 = {r["seed"]: r["test_err"] for r in done if r["variant"] == CONTROL}
    rows: dict[str, dict] = {}
    for r in done:
        rows.setdefault(r["row"], {"variant": r["variant"], "eps": r["eps"], "norm": r["norm"], "errs": {}})
        rows[r["row"]]["errs"][r["seed"]] = r["test_err"]
    for row in rows.values():
        seeds = sorted(row["errs"])
        row["seeds"] = seeds
        row["test_err"] = stats.summary([row["errs"][s] for s in seeds])
        row["diverged_seeds"] = [s for s in seeds if stats.diverged(row["errs"][s])]
        kept = [row["errs"][s] for s in seeds if s not in row["diverged_seeds"]]
        if row["diverged_seeds"] and kept:
            row["test_err_without_diverged"] = stats.summary(kept)
        for key, ref, own in (("vs_baseline", base, "plain"), ("vs_two_phase", base2, CONTROL)):
            _, paired = stats.pair(row["errs"], ref)  # over the seeds where neither run diverged
            if row["variant"] != own and paired:
                row[key] = stats.differences(paired)
        row.pop("errs")
    return {"runs": runs, "rows": rows, "finished": len(done), "planned": len(runs)}


def _row_label(row: dict) -> str:
    v, eps = row["variant"], f"eps={row['eps']:g}"
    if v in ("anl", "opposite"):
        sign = "-" if v == "opposite" else ""
        return f"+ANL eps={sign}{row['eps']:g}{' (opposite)' if v == 'opposite' else ''}, norm={row['norm']}"
    labels = {"plain": "baseline", CONTROL: "baseline, two phases (control)", "gaussian": f"Gaussian, {eps}"}
    return labels.get(v, f"{v}, {eps}" if v in NOISE_VARIANTS else v)


def _row_order(name_row: tuple[str, dict]) -> tuple:
    _, row = name_row
    return (VARIANTS.index(row["variant"]), row["eps"], NORMS.index(row["norm"]) if row["norm"] in NORMS else 9)


def _paired(vs: dict | None) -> str:  # (better/worse) counts the pairs
    return "-" if vs is None else f"{stats.spread(vs, '+', '')} ({vs['better']}/{vs['worse']})"


def _table(result: dict, two: bool) -> list[str]:
    """The table's lines: a row per method, the paper's number beside ours (``two``: the column of the paired
    differences to the two-phase control)."""
    p = result["protocol"]
    paper = PAPER_TABLE1.get((p["model"], p["dataset"]), {})
    header = ["method", "paper (Table 1)", "ours: test error % (mean ± std)", "seeds", "per seed"]
    header += ["vs baseline, same seed (mean ± std; better/worse)"] + ["vs two-phase baseline, same seed"] * two
    rows = []
    for _, row in sorted(result["rows"].items(), key=_row_order):
        t = row["test_err"]
        paper_v = paper.get(row["variant"]) if row["eps"] in (0.0, PAPER_EPS) else None
        mean = stats.spread(t)
        if row.get("diverged_seeds"):
            k, w = len(row["diverged_seeds"]), row.get("test_err_without_diverged")
            mean += f"; without the {k} diverged: " + (stats.spread(w) if w else "-")
        rows.append(
            [_row_label(row), "-" if paper_v is None else f"{paper_v:.2f}", mean, t["n"]]
            + [", ".join(f"{v:.2f}" + (" (diverged)" if stats.diverged(v) else "") for v in t["values"])]
            + [_paired(row.get("vs_baseline"))]
            + [_paired(row.get("vs_two_phase"))] * two
        )
    return md_table(header, rows)


def render_markdown(result: dict) -> str:
    """The table, the paper's numbers beside ours, and the protocol, as Markdown."""
    p = result["protocol"]
    two = any("vs_two_phase" in row for row in result["rows"].values())
    missing = result["planned"] - result["finished"]
    base = "the baseline" if p["finetune_epochs"] else "every method"
    control = (
        f" The two-phase baseline (a control, not in the paper) trains without noise in the same {p['epochs']}"
        f" + {p['finetune_epochs']} epochs as the noise methods."
        if two
        else ""
    )
    lines = _table(result, two) + [
        "",
        f"Protocol: {p['model']} on {p['dataset']} ({result['dataset_sizes']}), batch {p['batch_size']}, SGD "
        f"(lr {p['lr']}, momentum 0.9, weight decay 5e-4), learning rate halved when the last 5 epochs found no "
        f"new best validation loss, each rate kept at least 5 epochs, floor 1e-3 (sec. 4.2.1), no augmentation. "
        f"Noise methods: {p['epochs']} epochs with "
        f"the noise on, then {p['finetune_epochs']} with it off at the floor rate 1e-3; {base} "
        f"{p['epochs'] + p['finetune_epochs']} epochs"
        + (
            " (the paper's protocol: 100 + 100, baseline 200)."
            if (p["epochs"], p["finetune_epochs"]) == (100, 100)
            else f" (the paper's 100 + 100 / 200 scaled by {p['epochs'] / 100:g})."
        )
        + f" Test error at the last epoch. Seeds {', '.join(map(str, result['seeds']))}: the same seed gives every "
        "method the same initial weights and data order." + control,
    ]
    diverged = sorted(
        {f"{_row_label(r)} seed {s}" for r in result["rows"].values() for s in r.get("diverged_seeds", [])}
    )
    if diverged:
        lines.append(
            f"Diverged (final test error >= {stats.DIVERGED:g}%, a network stuck at chance): "
            + "; ".join(diverged)
            + ". The paired columns leave out seeds where either run diverged."
        )
    if missing:
        lines.append(
            f"Incomplete: {result['finished']} of {result['planned']} runs finished; rows count finished runs only."
        )
    return "\n".join(lines) + "\n"


def report(
    specs: list[RunSpec],
    proto: Protocol,
    runs_dir: str,
    out_dir: str,
    seeds: list[int],
    command: str,
    name: str | None = None,
    device: str = "cpu",
) -> tuple[str, dict]:
    result = collect(specs, proto, runs_dir)
    found = (local_config(r["dir"]) or {} for r in result["runs"])  # not train's config.json: another run says them
    s = next((c["dataset_sizes"] for c in found if c.get("dataset_sizes")), None)
    sizes = f"train {s['train']:,} / val {s['val']:,} / test {s['test']:,}" if s else "?"
    result.update(
        protocol=dataclasses.asdict(proto),
        seeds=seeds,
        dataset_sizes=sizes,
        command=command,
        paper=PAPER_TABLE1.get((proto.model, proto.dataset)),
        written=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        machine=machine_info(device),
    )
    for r in result["runs"]:
        r["dir"] = os.path.relpath(r["dir"], runs_dir)
    md = render_markdown(result)
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, name or proto.tag)
    atomic_write(base + ".json", json.dumps(result, indent=2) + "\n")
    atomic_write(base + ".md", f"## {name or 'Table 1'}: {proto.model} on {proto.dataset}\n\n{md}")
    return base, result


# ----------------------------------------------------------------------------------------------
# CLI


def _eps(text: str) -> float:
    """``--eps``: the |eps| of a noise method, a finite number and not 0."""
    value = finite_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be non-zero (the noise methods need an eps), got {text!r}")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    p, paper = parser.add_argument, "the paper: 100 epochs with noise + 100 without at 1e-3, baseline 200 (sec. 4.2.1)"
    p("--model", default="lenet5", help="zoo model (default lenet5; the paper: lenet5, vgg16)")
    p("--dataset", default="fashion-mnist", help="dataset (default fashion-mnist)")
    p("--data-dir", default=None, help="dataset directory (default: anl-fused train's)")
    p("--seeds", type=positive_int, default=3, help="seeds 0..N-1 (default 3)")
    p("--preset", choices=sorted(TRAIN_PRESETS), default=None, help=paper)
    p("--epochs", type=positive_int, default=None, help="epochs with the noise on (phase 1)")
    p("--finetune-epochs", type=nonneg_int, default=None, help="epochs with the noise off at 1e-3 (phase 2)")
    p("--eps", type=_eps, nargs="+", default=[PAPER_EPS], help="noise |eps| (default 0.03, Table 1); several: a sweep")
    p("--norms", nargs="+", default=["sample"], choices=NORMS, help="ANL norms to run (default sample)")
    methods = f"methods (default: Table 1's plain, gaussian, anl, opposite and {CONTROL}, a control without noise)"
    p("--variants", nargs="+", default=list(TABLE1), choices=VARIANTS, help=methods)
    p("--batch-size", type=positive_int, default=128)
    p("--lr", type=positive_float, default=0.1)
    p("--val-size", type=positive_int, default=None, help="training images held out for validation (default 5,000)")
    p("--device", default="cpu", help="cpu (default), cuda, auto")
    p("--jobs", type=positive_int, default=1, help="trainings at once (default 1)")
    p("--threads", type=positive_int, default=1, help="intra-op threads per training (default 1)")
    p("--nice", type=number(int, ge=-20, le=19), default=10, help="niceness of the trainings, -20..19 (default 10)")
    p("--runs-dir", default="runs/table1", help="where the runs live (default runs/table1)")
    p("--out", default="benchmarks/results/table1", help="where the table goes")
    p("--name", default=None, help="file name of the table (default: the protocol: lenet5-fashion-mnist-e20f20-b128)")
    p("--report-only", action="store_true", help="train nothing; write the table from finished runs")
    p("--dry-run", action="store_true", help="print the runs and their state, train nothing")


def _protocol(args: argparse.Namespace) -> Protocol:
    """The runs' protocol from the options (their numbers are checked as they are parsed: :func:`configure`)."""
    from .data import canonical_name
    from .models import get_spec

    if args.preset and (args.epochs is not None or args.finetune_epochs is not None):
        raise ValueError("give either --preset or --epochs/--finetune-epochs, not both")
    if args.preset:
        preset = TRAIN_PRESETS[args.preset]["noise"]  # the baseline trains their sum in one phase
        epochs, finetune = preset["epochs"], preset["finetune_epochs"]
    elif args.epochs is None:
        raise ValueError("give --preset paper or --epochs E [--finetune-epochs F]")
    else:
        epochs, finetune = args.epochs, args.finetune_epochs or 0
    model, dataset = get_spec(args.model).name, canonical_name(args.dataset)
    return Protocol(model, dataset, epochs, finetune, args.batch_size, args.lr, args.val_size)


def _command(args: argparse.Namespace, proto: Protocol) -> str:
    """The command that reproduces this table (its protocol spelled out)."""
    opts = {**dataclasses.asdict(proto), "seeds": args.seeds, "device": args.device, "data_dir": args.data_dir}
    opts |= {"eps": " ".join(f"{e:g}" for e in args.eps), "norms": " ".join(args.norms), "lr": f"{proto.lr:g}"}
    opts["variants"] = " ".join(args.variants) if list(args.variants) != list(TABLE1) else None
    return " ".join(["anl-fused table1", *(f"--{k.replace('_', '-')} {v}" for k, v in opts.items() if v is not None)])


def _check_name(name: str | None) -> None:
    """``--name``: a file name in ``--out``, never a path out of it."""
    if name is not None and (not name or name in (".", "..") or "/" in name or os.sep in name or "\0" in name):
        raise ValueError(f"--name must be a file name (no directory), got {name!r}; put the directory in --out")


def run(args: argparse.Namespace) -> int:
    try:
        proto = _protocol(args)
        _check_name(args.name)
        check_out_dir(args.out)
        problem = None if args.dry_run else out_error(args.out, directory=True)  # before any run, not after them all
        if problem:
            raise ValueError(problem)
        return _run(args, proto)
    except (ValueError, KeyError) as e:  # also a run's metrics.jsonl or config.json that is not what train writes
        print(f"anl-fused table1: error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    except OSError as e:  # an unwritable --out, a full disk
        print(f"anl-fused table1: error: writing the table to {args.out!r} failed: {e}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, proto: Protocol) -> int:
    seeds = list(range(args.seeds))
    specs = plan(seeds, args.eps, args.norms, args.variants)
    where = dict(data_dir=args.data_dir, device=args.device, threads=args.threads)
    jobs = [job(spec, proto, args.runs_dir, **where) for spec in specs]
    todo = [j for j in jobs if sweep.state(j) != "finished"]
    if args.dry_run:
        for j in jobs:
            print(f"{sweep.state(j):<8} {j.run_dir}")
        return 0
    os.makedirs(args.out, exist_ok=True)  # an unusable --out is said before any training
    log = lambda s: print(f"[{dt.datetime.now():%H:%M:%S}] {s}", flush=True)
    failed = []
    if todo and not args.report_only:
        log(
            f"{proto.tag}: {len(jobs) - len(todo)} of {len(jobs)} runs finished; {len(todo)} to go, {args.jobs} at once"
        )
        try:
            failed = sweep.run(todo, parallel=args.jobs, nice=args.nice, log=log)
        except KeyboardInterrupt:
            return 130
    command = _command(args, proto)
    base, result = report(specs, proto, args.runs_dir, args.out, seeds, command, args.name, resolve_device(args.device))
    print(render_markdown(result))
    log(f"wrote {base}.md and {base}.json ({result['finished']} of {result['planned']} runs finished)")
    return 1 if failed else 0
