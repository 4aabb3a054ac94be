"""``anl-fused study``: the pre-registered study (``benchmarks/results/study/prereg.md``, docs/study.md): does ANL
lower LeNet-5's clean test error on Fashion-MNIST against a two-phase control, and how does it fare against SAM?

    anl-fused study run --runs-dir /work/study-runs --jobs 2 --threads 1   # resumable; Ctrl-C / kill checkpoints
    anl-fused study report --runs-dir /work/study-runs --out benchmarks/results/study
    anl-fused study plan                                                    # the runs and their state

Stages: the *pilot*, the design it fixes by the pre-registered rules (:func:`design`), the *main* runs and the
*cosine* runs. Everything here is what the pre-registration fixes; change nothing without listing it there as a
deviation.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from dataclasses import dataclass

from . import stats, sweep
from .files import atomic_write
from .train.metrics import read_metrics

T = 100  # epochs of each phase (the paper's 100 + 100; the one-schedule baseline trains 2T)
EPS, NORM = 0.03, "layer"  # the paper's Table 1 eps; Algorithm 1's per-layer norm
EFFECT = 0.27  # pp: the paper's Table 1 gain (9.44 -> 9.17)
PILOT_SEEDS = (100, 101, 102, 103)
RHO_GRID, RHO_SEEDS = (0.02, 0.05, 0.1), (100, 101)
MIN_SEEDS, MAX_SEEDS = 12, 40  # of the primary pair
STAGE2_FIRST_SEED, STAGE2_MAX_SEEDS = 200, 60  # the replication (prereg "Stage 2"): seeds 200, 201, ...
OTHER_SEEDS = tuple(range(5))
COSINE_SEEDS = tuple(range(8))
MATCHED_RATIO = 2.2  # ANL's step / plain step, measured (benchmarks/results/study/throughput.json): 22.6 / 10.3 ms
ARMS = ("baseline", "control", "anl", "opposite", "gaussian", "sam", "matched")
ROBUST_ARMS, ROBUST_SEEDS, ROBUST_IMAGES = ("baseline", "control", "anl", "sam"), tuple(range(5)), 1000


@dataclass(frozen=True)
class Run:
    """One training run of the study."""

    arm: str
    seed: int
    schedule: str = "plateau"
    rho: float = 0.0  # sam only

    @property
    def name(self) -> str:
        rho = f"-rho{self.rho:g}" if self.arm == "sam" else ""
        return f"{self.arm}{rho}-{self.schedule}-seed{self.seed}"

    @property
    def phases(self) -> tuple[int, int]:
        """Epochs of phase 1 (regularizer on / scheduled) and phase 2 (off, at the floor rate)."""
        if self.arm == "baseline":
            return 2 * T, 0
        if self.arm == "matched":
            return round(MATCHED_RATIO * T), T
        return T, T

    def job(self, out_dir: str, threads: int) -> sweep.Job:
        """The sweep's job of this run in ``out_dir`` (its arguments without ``--resume``)."""
        variant = {"baseline": "plain", "control": "plain", "matched": "plain"}.get(self.arm, self.arm)
        epochs, finetune = self.phases
        args = ["train", "--model", "lenet5", "--dataset", "fashion-mnist", "--variant", variant]
        args += ["--epochs", str(epochs), "--finetune-epochs", str(finetune), "--batch-size", "128", "--lr", "0.1"]
        args += ["--schedule", self.schedule, "--seed", str(self.seed), "--device", "cpu", "--threads", str(threads)]
        args += ["--finetune-lr", "continue" if self.arm == "baseline" else "floor"]
        if self.arm in ("anl", "opposite", "gaussian"):
            args += ["--eps", repr(EPS)]
        if self.arm in ("anl", "opposite"):
            args += ["--norm", NORM]
        if self.arm == "sam":
            args += ["--sam-rho", repr(self.rho)]
        args += ["--out", out_dir, "--no-progress"]
        return sweep.Job(self.name, out_dir, tuple(args), epochs + finetune)


#: the black-box attacks' source: an independently trained plain model (its seed is no other run's)
TRANSFER_SOURCE = Run("baseline", 900)


def pilot_runs() -> list[Run]:
    pair = [Run(a, s) for s in PILOT_SEEDS for a in ("anl", "control")]
    return pair + [Run("sam", s, rho=r) for s in RHO_SEEDS for r in RHO_GRID]


def main_runs(n: int, rho: float) -> list[Run]:
    """The primary pair on seeds 0..n-1 (seed by seed), then the other arms on :data:`OTHER_SEEDS`."""
    runs = [Run(a, s) for s in range(n) for a in ("anl", "control")]
    others = [a for a in ARMS if a not in ("anl", "control")]
    runs += [Run(a, s, rho=rho if a == "sam" else 0.0) for s in OTHER_SEEDS for a in others]
    return runs + [TRANSFER_SOURCE]


def cosine_runs() -> list[Run]:
    return [Run(a, s, schedule="cosine") for s in COSINE_SEEDS for a in ("anl", "control")]


# ----------------------------------------------------------------------------------------------
# results of runs


def run_dir(runs_dir: str, run: Run) -> str:
    return os.path.join(runs_dir, run.name)


def finished(runs_dir: str, run: Run) -> bool:
    return sweep.finished(run_dir(runs_dir, run), sum(run.phases))


def record(runs_dir: str, run: Run) -> dict | None:
    """The summary record of a finished run (None if unfinished)."""
    d = run_dir(runs_dir, run)
    if not finished(runs_dir, run):
        return None
    hist = read_metrics(d)
    epochs, finetune = run.phases
    last, end1 = hist[-1], hist[epochs - 1]
    wall, threads = _wall(d)
    train_time = sum(h.get("epoch_train_time_s", 0.0) for h in hist)
    return {
        "name": run.name,
        "arm": run.arm,
        "seed": run.seed,
        "schedule": run.schedule,
        "eps": EPS if run.arm in ("anl", "gaussian") else -EPS if run.arm == "opposite" else 0.0,
        "norm": NORM if run.arm in ("anl", "opposite") else None,
        "rho": run.rho if run.arm == "sam" else None,
        "epochs_phase1": epochs,
        "epochs_phase2": finetune,
        "lr_end_phase1": end1["lr"],
        "floor_reached_epoch": next((h["epoch"] for h in hist[:epochs] if h["lr"] <= 1e-3 * (1 + 1e-9)), None),
        "test_err": last["test_err"] * 100,
        "train_err": (1 - last["train_acc"]) * 100,
        "val_err": (1 - last["val_acc"]) * 100,
        "train_time_s": train_time,
        "wall_s": wall,  # recorded per finished child process: misses a process killed with the driver
        "core_s": train_time * threads,  # training only (no evaluation), from the metrics: survives kills
        "diverged": stats.diverged(last["test_err"] * 100, last["train_loss"]),
    }


WALL_NAME = "study-wall.jsonl"  # one line per child process that trained the run: its wall time and threads


def _wall(d: str) -> tuple[float, int]:
    """The recorded wall seconds of the run's child processes, and their threads (the last one's; 1 if none)."""
    wall, threads = 0.0, 1
    path = os.path.join(d, WALL_NAME)
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    w = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill
                wall += w["wall_s"]
                threads = w["threads"]
    return wall, threads


# ----------------------------------------------------------------------------------------------
# the design the pilot fixes (pre-registered rules)


def design(runs_dir: str) -> dict | None:
    """The number of primary seeds and SAM's rho from the finished pilot (None until it is finished).

    n: the smallest number of seeds whose paired t-test (two-sided, alpha 0.05) has power >= 0.8 for a
    difference of :data:`EFFECT` pp given the pilot's paired SD of (ANL - control) test error, within
    [:data:`MIN_SEEDS`, :data:`MAX_SEEDS`]. rho: the grid value with the lowest mean final validation error
    over :data:`RHO_SEEDS` (ties: the smaller rho). Test error plays no part in rho."""
    recs = {r.name: record(runs_dir, r) for r in pilot_runs()}
    if any(v is None for v in recs.values()):
        return None
    diffs = [recs[Run("anl", s).name]["test_err"] - recs[Run("control", s).name]["test_err"] for s in PILOT_SEEDS]
    sd = stats.summary(diffs)["std"]
    n = stats.seeds_for_power(EFFECT, sd, low=MIN_SEEDS, high=MAX_SEEDS)
    val = {r: stats.summary([recs[Run("sam", s, rho=r).name]["val_err"] for s in RHO_SEEDS])["mean"] for r in RHO_GRID}
    rho = min(RHO_GRID, key=lambda r: (val[r], r))
    return {
        "pilot_diffs_pp": diffs,
        "pilot_paired_sd_pp": sd,
        "n_primary": n,
        "power_at_n": stats.power(n, EFFECT, sd),
        "sam_val_err_by_rho": {f"{r:g}": v for r, v in val.items()},
        "sam_rho": rho,
        "pilot_lr_end_phase1": {k: v["lr_end_phase1"] for k, v in recs.items()},
    }


def design2(runs_dir: str) -> dict | None:
    """Stage 2's size (prereg "Stage 2") from stage 1's finished primary pairs (None until all have finished): the
    smallest m in [:data:`MIN_SEEDS`, :data:`STAGE2_MAX_SEEDS`] with power >= 0.8 for :data:`EFFECT` pp at the SD of
    stage 1's paired differences (seeds where a run diverged left out)."""
    d = design(runs_dir)
    if d is None:
        return None
    pairs = [(record(runs_dir, Run("anl", s)), record(runs_dir, Run("control", s))) for s in range(d["n_primary"])]
    if any(a is None or c is None for a, c in pairs):
        return None
    diffs = [a["test_err"] - c["test_err"] for a, c in pairs if not (a["diverged"] or c["diverged"])]
    sd = stats.summary(diffs)["std"]
    m = stats.seeds_for_power(EFFECT, sd, low=MIN_SEEDS, high=STAGE2_MAX_SEEDS)
    return {"stage1_paired_sd_pp": sd, "n_stage2": m, "power_at_n": stats.power(m, EFFECT, sd)}


def stage2_runs(m: int) -> list[Run]:
    """The replication's pairs, seed by seed: seeds :data:`STAGE2_FIRST_SEED` .. + m - 1."""
    return [Run(a, s) for s in range(STAGE2_FIRST_SEED, STAGE2_FIRST_SEED + m) for a in ("anl", "control")]


# ----------------------------------------------------------------------------------------------
# running


def _wall_recorder(threads: int):
    """Appends each child's wall time, threads and exit code to its run's :data:`WALL_NAME`."""

    def record(job: sweep.Job, exit_code: int, wall_s: float) -> None:
        with open(os.path.join(job.run_dir, WALL_NAME), "a") as f:
            f.write(json.dumps({"wall_s": wall_s, "threads": threads, "exit": exit_code}) + "\n")

    return record


def stages(runs_dir: str) -> list[tuple[str, list[Run] | None]]:
    """The study's stages in the order they run; a stage whose size a finished earlier one fixes is None until then."""
    d, d2 = design(runs_dir), design2(runs_dir)
    main = main_runs(d["n_primary"], d["sam_rho"]) if d else None
    return [
        ("pilot", pilot_runs()),
        ("main", main),
        ("cosine", cosine_runs()),
        ("stage2", d2 and stage2_runs(d2["n_stage2"])),
    ]


def _run(args) -> int:
    log = lambda s: print(f"[{dt.datetime.now():%Y-%m-%d %H:%M:%S}] {s}", flush=True)
    for name in ("pilot", "main", "cosine", "stage2"):
        runs = dict(stages(args.runs_dir))[name]  # main (stage 2) exists once the pilot (main's primary pairs) finished
        if runs is None:
            log(f"stage {name}: not planned (the stage that fixes its size has not finished)")
            return 1
        todo = [r.job(run_dir(args.runs_dir, r), args.threads) for r in runs if not finished(args.runs_dir, r)]
        log(f"stage {name}: {len(runs) - len(todo)} of {len(runs)} runs finished; {len(todo)} to go")
        if name in ("pilot", "cosine") and not todo:
            log(f"design (pre-registered rules): {json.dumps([design(args.runs_dir), design2(args.runs_dir)])}")
        try:
            failed = sweep.run(todo, parallel=args.jobs, nice=args.nice, log=log, on_exit=_wall_recorder(args.threads))
        except KeyboardInterrupt:
            return 130
        if failed:
            log(f"stopping: {len(failed)} run(s) failed")
            return 1
    return 0


def _plan(args) -> int:
    for name, runs in stages(args.runs_dir):
        if runs is None:
            print(f"# {name}: fixed by the pilot's design (pilot unfinished)")
            continue
        done = sum(finished(args.runs_dir, r) for r in runs)
        print(f"# {name}: {done} of {len(runs)} finished")
        for r in runs:
            print(f"{sweep.state(r.job(run_dir(args.runs_dir, r), args.threads)):<8} {r.name}")
    return 0


def robustness_runs(runs_dir: str) -> list[Run]:
    d = design(runs_dir)
    rho = d["sam_rho"] if d else 0.0
    return [Run(a, s, rho=rho if a == "sam" else 0.0) for s in ROBUST_SEEDS for a in ROBUST_ARMS]


def _robustness(args) -> int:
    """The battery on every finished robustness run (each result kept in its run dir: resumable), then
    ``OUT/robustness.json``."""
    import torch

    from . import robustness
    from .data import DATASETS, load
    from .train import CHECKPOINT_NAME, load_trained

    torch.set_num_threads(args.threads)
    src_dir = run_dir(args.runs_dir, TRANSFER_SOURCE)
    if not finished(args.runs_dir, TRANSFER_SOURCE):
        print(f"anl-fused study: error: the transfer source {src_dir} has not finished", file=sys.stderr)
        return 2
    info = DATASETS["fashion-mnist"]
    test = load("fashion-mnist", None).test
    x = test.x[:ROBUST_IMAGES].float() / (255.0 if test.x.dtype == torch.uint8 else 1.0)
    y = test.y[:ROBUST_IMAGES]

    def normalized(d: str):
        return robustness.Normalized(load_trained(os.path.join(d, CHECKPOINT_NAME))[0], info.mean, info.std)

    source = normalized(src_dir)
    results = {}
    for r in robustness_runs(args.runs_dir):
        d = run_dir(args.runs_dir, r)
        path = os.path.join(d, "robustness.json")
        if not finished(args.runs_dir, r):
            continue
        if not os.path.isfile(path):
            print(f"robustness: {r.name}", file=sys.stderr, flush=True)
            atomic_write(path, json.dumps(robustness.battery(normalized(d), x, y, source=source), indent=1) + "\n")
        with open(path) as f:
            results[r.name] = {"arm": r.arm, "seed": r.seed, **json.load(f)}
    atomic_write(os.path.join(args.out, "robustness.json"), json.dumps(results, indent=1) + "\n")
    print(f"{len(results)} model(s) evaluated; {os.path.join(args.out, 'robustness.json')}")
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("run", "report", "plan", "robustness"))
    parser.add_argument("--runs-dir", required=True, help="where the runs live (outside the checkout)")
    parser.add_argument("--out", default="benchmarks/results/study", help="report: where summary.json goes")
    parser.add_argument("--jobs", type=int, default=2, help="run: trainings at once (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="run: intra-op threads per training (default 1)")
    parser.add_argument("--nice", type=int, default=10, help="run: niceness of the trainings (default 10)")


def run(args: argparse.Namespace) -> int:
    if args.action == "run":
        return _run(args)
    if args.action == "plan":
        return _plan(args)
    if args.action == "robustness":
        return _robustness(args)
    from .study_report import write_report

    return write_report(args.runs_dir, args.out)


__all__ = ["ARMS", "Run", "cosine_runs", "design", "design2", "main_runs", "pilot_runs", "record", "stage2_runs"]


if __name__ == "__main__":  # pragma: no cover
    from ..cli import main

    sys.exit(main(["study", *sys.argv[1:]]))
