"""The study's analysis, as pre-registered (``benchmarks/results/study/prereg.md``): ``summary.json`` (one record
per finished run, the design, the primary block, the Holm-corrected secondary comparisons, the cosine analysis)
and ``summary.md``. Only finished runs count; the state ("k of m runs") is part of both files."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from collections.abc import Collection

from . import stats
from .files import atomic_write, md_table, save_figure
from .machine import machine_info
from .study import (
    COSINE_SEEDS,
    EFFECT,
    OTHER_SEEDS,
    STAGE2_FIRST_SEED,
    TRANSFER_SOURCE,
    WALL_NAME,
    cosine_runs,
    design,
    design2,
    main_runs,
    pilot_runs,
    record,
    robustness_runs,
    run_dir,
    stage2_runs,
    stages,
)
from .train.metrics import read_metrics

#: the secondary comparisons (arm, reference arm), Holm-corrected as one family, paired by seed
SECONDARY = (
    ("baseline", "control"),
    ("opposite", "control"),
    ("gaussian", "control"),
    ("sam", "control"),
    ("matched", "control"),
    ("anl", "sam"),
    ("anl", "matched"),
)


def _by_arm(records: list[dict], schedule: str = "plateau") -> dict[str, dict[int, dict]]:
    out: dict[str, dict[int, dict]] = {}
    for r in records:
        if r["schedule"] == schedule:
            out.setdefault(r["arm"], {})[r["seed"]] = r
    return out


def compare(arms: dict[str, dict[int, dict]], arm: str, ref: str, planned) -> dict | None:
    """Paired (arm - ref) final test error over the seeds both finished without diverging; None below 2 seeds.
    ``complete``: every one of the ``planned`` seeds of both arms has finished (diverged or not); until then the
    comparison is interim, not the pre-registered test."""
    a, b = ({s: r["test_err"] for s, r in arms.get(k, {}).items() if not r["diverged"]} for k in (arm, ref))
    seeds, diffs = stats.pair(a, b)
    complete = set(planned) <= arms.get(arm, {}).keys() & arms.get(ref, {}).keys()
    return (
        {"arm": arm, "control": ref, "seeds": seeds, "complete": complete, **stats.paired(diffs)}
        if len(seeds) >= 2
        else None
    )


def verdict(primary: dict | None, n_planned: int | None) -> str:
    """The pre-registered reading of the primary block (gain = control - ANL, in pp)."""
    if primary is None:
        return "no result yet"
    lo, hi = primary["ci"]
    state = (
        ""
        if primary["complete"]
        else f" (interim: {primary['n']} of {n_planned or '?'} seeds; not the pre-registered test)"
    )
    if hi < 0:
        reading = "ANL lowers the test error (95% CI of ANL - control below 0)"
        if -lo < EFFECT:
            reading += (
                f"; the paper's size of effect ({EFFECT} pp) is refuted (the gain's upper bound {-lo:.2f} < {EFFECT})"
            )
    elif lo > 0:
        reading = "ANL raises the test error (95% CI of ANL - control above 0)"
    elif -lo < EFFECT:
        reading = (
            f"no gain detected, and the paper's size of effect ({EFFECT} pp) is refuted "
            f"(the gain's upper 95% bound {-lo:.2f} pp < {EFFECT})"
        )
    else:
        reading = f"inconclusive: the 95% CI [{lo:+.2f}, {hi:+.2f}] pp of ANL - control includes 0 and -{EFFECT}"
    return reading + state


def _stage2(records: list[dict], d2: dict | None) -> dict | None:
    """Stage 2's test (its pairs alone, the primary's reading) and, as a description only, stages 1 and 2 pooled."""
    if d2 is None:
        return None
    seeds = range(STAGE2_FIRST_SEED, STAGE2_FIRST_SEED + d2["n_stage2"])
    c = compare(_by_arm([r for r in records if r["seed"] in seeds]), "anl", "control", seeds)
    pooled = compare(_by_arm([r for r in records if r["seed"] < 100 or r["seed"] in seeds]), "anl", "control", ())
    return {"design": d2, "test": c and {**c, "verdict": verdict(c, d2["n_stage2"])}, "pooled_description": pooled}


def analyse(runs_dir: str) -> dict:
    d, d2 = design(runs_dir), design2(runs_dir)
    planned = pilot_runs() + cosine_runs() + (main_runs(d["n_primary"], d["sam_rho"]) if d else [])
    planned += stage2_runs(d2["n_stage2"]) if d2 else []
    records = [rec for r in planned if (rec := record(runs_dir, r)) is not None]
    main = [r for r in records if r["seed"] < 100]
    arms = _by_arm(main)
    primary = compare(arms, "anl", "control", range(d["n_primary"]) if d else ())
    secondary = {f"{a} - {b}": c for a, b in SECONDARY if (c := compare(arms, a, b, OTHER_SEEDS)) is not None}
    family_complete = len(secondary) == len(SECONDARY) and all(c["complete"] for c in secondary.values())
    holm = stats.holm({k: v["p"] for k, v in secondary.items()}) if family_complete else {}
    for name, c in secondary.items():  # Holm over the whole family only: none while a member is interim
        c["p_holm"] = holm.get(name)
    noise_phase = [r for r in main if r["arm"] not in ("baseline",) and r["epochs_phase2"] > 0]
    return {
        "state": f"{len(records)} of {len(planned)} planned runs finished"
        + ("" if d else " (main runs not planned yet: pilot unfinished)"),
        "design": d,
        "primary": primary and {**primary, "verdict": verdict(primary, d and d["n_primary"])},
        "secondary": secondary,
        "cosine": compare(_by_arm(main, "cosine"), "anl", "control", COSINE_SEEDS),
        "stage2": _stage2(records, d2),
        "lr_floor_check": {
            "runs": len(noise_phase),
            "not_at_floor": [
                r["name"] for r in noise_phase if r["schedule"] == "plateau" and r["lr_end_phase1"] > 1e-3 * (1 + 1e-9)
            ],
        },
        "diverged": [r["name"] for r in records if r["diverged"]],
        "core_hours": sum(r["core_s"] for r in records) / 3600,
        "runs": records,
        "written": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "diverged_threshold_pct": stats.DIVERGED,
    }


def _fmt(c: dict | None) -> str:
    if c is None:
        return "- (fewer than 2 paired seeds)"
    return (
        f"{c['mean']:+.2f} pp [{c['ci'][0]:+.2f}, {c['ci'][1]:+.2f}], bootstrap [{c['bootstrap_ci'][0]:+.2f}, "
        f"{c['bootstrap_ci'][1]:+.2f}], p {c['p']:.3g}, n {c['n']} ({c['better']}/{c['same']}/{c['worse']})"
        + ("" if c["complete"] else "; interim")
    )


def _group(seed: int) -> str:
    """Which runs a seed belongs to (arms table): stage 1 (seeds 0-99), the pilot, stage 2, the transfer source."""
    if seed < 100:
        return ""
    if seed < STAGE2_FIRST_SEED:
        return ", seeds 100-199: pilot"
    return ", stage 2" if seed != TRANSFER_SOURCE.seed else ", the transfer source"


def markdown(s: dict) -> str:
    """``summary.md``: a title with the state, then :func:`tables`."""
    return f"# ANL study: results ({s['state']})\n\n" + tables(s)


def tables(s: dict) -> str:
    """:func:`comparisons`, then :func:`arms_table`."""
    return comparisons(s) + "\n" + arms_table(s)


def comparisons(s: dict) -> str:
    """The primary result and its pre-registered reading, the secondary comparisons, the cosine analysis and stage 2
    (what the README renders)."""
    p, s2 = s["primary"], s["stage2"]
    lines = [
        f"- **Primary** (ANL - control, final-epoch test error in pp, paired by seed; mean [95% CI]): {_fmt(p)}",
        f"- Reading: {p['verdict'] if p else 'no result yet'}",
        f"- Cosine schedule (secondary, ANL - control): {_fmt(s['cosine'])}",
    ]
    if s2:
        t = s2["test"]
        lines += [
            f"- Stage 2, the replication on fresh seeds ({s2['design']['n_stage2']} planned pairs alone): {_fmt(t)}",
            f"- Stage 2's reading: {t['verdict'] if t else 'no result yet'}",
        ]
        if t:
            lines.append(f"- Stages 1 and 2 pooled (a description, not a test): {_fmt(s2['pooled_description'])}")
    lines.append("")
    if s["secondary"]:
        ci = lambda c, k: f"[{c[k][0]:+.2f}, {c[k][1]:+.2f}]"
        rows = [
            [k + ("" if c["complete"] else " (interim)"), f"{c['mean']:+.2f} {ci(c, 'ci')}", ci(c, "bootstrap_ci")]
            + [f"{c['p']:.3g}", "-" if c["p_holm"] is None else f"{c['p_holm']:.3g}", c["n"]]
            for k, c in s["secondary"].items()
        ]
        lines += md_table(
            ["comparison", "mean [95% CI]", "bootstrap", "p", "p (Holm, once all are complete)", "n"], rows
        )
        lines.append("")
    return "\n".join(lines) + "\n"


def arms_table(s: dict) -> str:
    """Each arm's test error, runs and core-minutes per run, and the checks (learning-rate floor, divergence,
    core-hours)."""
    lines = []
    arms: dict[str, list[dict]] = {}
    for r in s["runs"]:
        arms.setdefault(f"{r['arm']} ({r['schedule']}{_group(r['seed'])})", []).append(r)
    rows = []
    for k, rs in sorted(arms.items()):
        kept, left = [r["test_err"] for r in rs if not r["diverged"]], sum(r["diverged"] for r in rs)
        err = stats.spread(stats.summary(kept), one="") if kept else "-"
        runs = f"{len(rs)}" + (f" ({left} diverged)" if left else "")
        rows.append([k, err, runs, f"{sum(r['core_s'] for r in rs) / len(rs) / 60:.0f}"])
    head = ["arm", "test error % (mean ± std; diverged runs left out)", "runs", "training core-minutes per run (mean)"]
    lines += md_table(head, rows)
    lc = s["lr_floor_check"]
    lines += [
        "",
        f"Learning-rate floor reached by the end of phase 1: {lc['runs'] - len(lc['not_at_floor'])} of {lc['runs']} "
        f"two-phase runs (not: {', '.join(lc['not_at_floor']) or 'none'}). "
        f"Diverged: {', '.join(s['diverged']) or 'none'}. "
        f"Training core-hours of the finished runs (evaluation not counted): {s['core_hours']:.1f}.",
    ]
    return "\n".join(lines) + "\n"


def plot_paired(s: dict, path: str) -> bool:
    """Each comparison's per-seed differences (dots), mean and 95% CI (bar); the paper's -0.27 pp as a line.
    Returns whether there was anything to draw."""
    comps = ([("anl - control", s["primary"])] if s["primary"] else []) + list(s["secondary"].items())
    if s["cosine"]:
        comps.append(("anl - control (cosine)", s["cosine"]))
    if not comps:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.5 * len(comps) + 1.5))
    for i, (_, c) in enumerate(comps):
        ax.plot(c["values"], [i] * len(c["values"]), "o", color="0.6", ms=4)
        ax.errorbar(c["mean"], i, xerr=[[c["mean"] - c["ci"][0]], [c["ci"][1] - c["mean"]]], fmt="D", color="k")
    ax.axvline(0, color="0.3", lw=0.8)
    ax.axvline(-EFFECT, color="tab:red", lw=0.8, ls="--", label=f"the paper's gain (-{EFFECT} pp)")
    ax.set_yticks(range(len(comps)), [n if c["complete"] else f"{n}, interim (n {c['n']})" for n, c in comps])
    ax.set_xlabel("paired difference of final test error (pp), per seed; mean and 95% CI")
    ax.legend(loc="upper right", bbox_to_anchor=(1, -0.1), fontsize=8, frameon=False)  # below: no row hidden
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return True


#: the battery's accuracies (%) in the robustness table, in its column order
ROBUST_METRICS = ("clean", "fgsm", "pgd20", "pgd100", "apgd_ce", "transfer_pgd20")


def robustness(results: dict[str, dict], diverged: Collection[str] = ()) -> dict:
    """The pre-registered robustness analysis of ``anl-fused study robustness``'s ``robustness.json`` (one battery
    per model, keyed by run name, with its ``arm`` and ``seed``): per arm, each accuracy over its models and how many
    models pass all four sanity checks; per arm against the control, the endpoint (PGD-100 accuracy, arm - control,
    paired by seed; ``better`` = more robust) and ``claimable``: a gain may be claimed only when every paired model
    passes all four checks; per arm, the mean eps curve. The models of ``diverged`` runs are left out of all of it
    (the pre-registered rule for diverged runs) and listed under ``"diverged"``."""
    by_arm: dict[str, dict[int, dict]] = {}
    for name, r in results.items():
        if name not in diverged:
            by_arm.setdefault(r["arm"], {})[r["seed"]] = r
    arms = {
        arm: {
            "n": len(models),
            "sane": sum(r["sanity"]["all"] for r in models.values()),
            **{
                k: stats.summary([r[k] for r in models.values()])
                for k in ROBUST_METRICS
                if k in next(iter(models.values()))
            },
            "curve": {
                eps: {a: sum(r["curve"][eps][a] for r in models.values()) / len(models) for a in ("fgsm", "pgd20")}
                for eps in next(iter(models.values()))["curve"]
            },
        }
        for arm, models in sorted(by_arm.items())
    }
    endpoint = {}
    control = by_arm.get("control", {})
    for arm, models in sorted(by_arm.items()):
        seeds = sorted(set(models) & set(control)) if arm != "control" else []
        if len(seeds) < 2:
            continue
        p = stats.paired([models[s]["pgd100"] - control[s]["pgd100"] for s in seeds])
        sane = all(m[s]["sanity"]["all"] for m in (models, control) for s in seeds)
        endpoint[f"{arm} - control"] = {
            **p,
            "better": p["worse"],
            "worse": p["better"],
            "seeds": seeds,
            "claimable": sane,
        }
    return {"arms": arms, "endpoint": endpoint, "diverged": sorted(n for n in results if n in diverged)}


def _robustness_reading(c: dict) -> str:
    """The pre-registered reading of one endpoint comparison: a difference is claimed only where the 95% CI excludes 0
    and every paired model passes all four sanity checks."""
    if not c["claimable"]:
        return "no claim: a sanity check fails for a paired model (gradient masking not ruled out)"
    lo, hi = c["ci"]
    if lo > 0:
        return "more robust than the control (CI above 0; every sanity check holds)"
    if hi < 0:
        return "less robust than the control (CI below 0; every sanity check holds)"
    return "no difference shown (the CI includes 0; every sanity check holds)"


def robustness_markdown(r: dict) -> str:
    """The robustness table (mean ± std over an arm's models; sanity: models passing all four checks) and the
    endpoint's paired comparisons."""
    rows = [
        [arm, a["n"], *(stats.spread(a[k], one="") if k in a else "-" for k in ROBUST_METRICS), f"{a['sane']}/{a['n']}"]
        for arm, a in r["arms"].items()
    ]
    lines = md_table(["arm", "models", *ROBUST_METRICS, "sanity: all four hold"], rows) + [""]
    if r.get("diverged"):
        lines += [f"Left out (diverged runs, the pre-registered rule): {', '.join(r['diverged'])}.", ""]
    for name, c in r["endpoint"].items():
        claim = _robustness_reading(c)
        lines.append(
            f"PGD-100 accuracy, {name} (pp, paired by seed): {c['mean']:+.2f} [{c['ci'][0]:+.2f}, {c['ci'][1]:+.2f}],"
            f" p {c['p']:.3g}, n {c['n']} ({c['better']} more robust / {c['same']} same / {c['worse']} less); {claim}."
        )
    return "\n".join(lines) + "\n"


def plot_eps_curves(r: dict, path: str) -> None:
    """Accuracy against the attack's eps per arm (mean over its models): PGD-20 solid, FGSM dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    first_with: dict[str, str] = {}  # an arm whose curves equal an earlier arm's is drawn over it: say so
    for i, (arm, a) in enumerate(r["arms"].items()):
        same = first_with.setdefault(repr(a["curve"]), arm)
        eps = [float(e.split("/")[0]) for e in a["curve"]]
        for attack, style in (("pgd20", "-"), ("fgsm", "--")):
            ys = [c[attack] for c in a["curve"].values()]
            label = f"{arm} {attack.upper()}" + ("" if same == arm else f" (= {same})")
            ax.plot(eps, ys, style, marker="o", ms=3, color=f"C{i}", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("eps (x / 255, L-inf, pixels in [0, 1])")
    ax.set_ylabel("accuracy (%), mean over seeds")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def progress(runs_dir: str) -> str:
    """Each stage's state ("k of m runs finished") and a row per started run: epochs done, the rate at the end of
    phase 1, the epoch the 1e-3 floor was reached, the final test error."""
    lines = []
    for name, runs in stages(runs_dir):
        if runs is None:
            lines += [f"## {name}: fixed by the pilot's design (pilot unfinished)", ""]
            continue
        rows, done = [], 0
        for r in runs:
            hist, rec = read_metrics(run_dir(runs_dir, r)), record(runs_dir, r)
            done += rec is not None
            if hist:
                floor = next((h["epoch"] for h in hist[: r.phases[0]] if h["lr"] <= 1e-3 * (1 + 1e-9)), "-")
                end = (rec["lr_end_phase1"], f"{rec['test_err']:.2f}") if rec else ("-", "-")
                rows.append([r.name, f"{len(hist)} of {sum(r.phases)}", end[0], floor, end[1]])
        header = ["run", "epochs done", "lr at the end of phase 1", "epoch the floor 1e-3 was reached", "test error %"]
        lines += [f"## {name}: {done} of {len(runs)} runs finished", ""] + md_table(header, rows) + [""]
    return "\n".join(lines)


#: what is kept of a finished run in the results folder (its battery result if it has one; ``checkpoint.pt`` only for
#: the robustness battery's models)
ARCHIVED = ("config.json", "metrics.jsonl", WALL_NAME, "robustness.json")


def archive(runs_dir: str, out: str) -> None:
    """Copy every finished run's small files into ``out/runs/<name>/``, and the final checkpoint of the models the
    robustness battery attacks and of its transfer source, so that the runs dir can be rebuilt on another machine."""
    robust = {r.name for r in robustness_runs(runs_dir)} | {TRANSFER_SOURCE.name}
    for _, runs in stages(runs_dir):
        for r in (r for r in runs or () if record(runs_dir, r) is not None):
            dst = os.path.join(out, "runs", r.name)
            os.makedirs(dst, exist_ok=True)
            for f in ARCHIVED + (("checkpoint.pt",) if r.name in robust else ()):
                if os.path.isfile(src := os.path.join(run_dir(runs_dir, r), f)):
                    shutil.copy2(src, os.path.join(dst, f))


def write_report(runs_dir: str, out: str) -> int:
    """``summary.json`` and ``summary.md`` (with each run's progress) in ``out``, the figures, and the archive."""
    s = analyse(runs_dir)
    robustness_json = os.path.join(out, "robustness.json")
    if os.path.isfile(robustness_json):
        with open(robustness_json) as f:
            s["robustness"] = robustness(json.load(f), diverged=s["diverged"])
        plot_eps_curves(s["robustness"], os.path.join(out, "eps-curves.png"))
    atomic_write(os.path.join(out, "summary.json"), json.dumps(s, indent=1) + "\n")
    md = markdown(s) + ("\n" + robustness_markdown(s["robustness"]) if "robustness" in s else "")
    atomic_write(os.path.join(out, "summary.md"), md + "\n" + progress(runs_dir))
    archive(runs_dir, out)
    plot_paired(s, os.path.join(out, "paired-differences.png"))
    print(md)
    return 0


__all__ = [
    "analyse",
    "archive",
    "arms_table",
    "compare",
    "comparisons",
    "markdown",
    "plot_eps_curves",
    "plot_paired",
    "progress",
    "robustness",
    "robustness_markdown",
    "tables",
    "verdict",
    "write_report",
]
