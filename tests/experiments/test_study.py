"""The study's pieces: SAM's step and the cosine schedule in training, the statistics, the design rules and the
analysis (issue #17)."""

from __future__ import annotations

import copy
import json
import math
import os
import random
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from scipy import stats as sps

from anl_fused.benchmarks import render
from anl_fused.experiments import robustness, stats, study, study_report, sweep
from anl_fused.experiments.train.config import TrainConfig
from anl_fused.experiments.train.loop import _Loop
from anl_fused.experiments.train.parts import build_parts
from anl_fused.experiments.train.schedule import CosineSchedule, make_schedule


def train_args(run: study.Run, out_dir: str, threads: int) -> list[str]:
    """``anl-fused train`` arguments of a study run in ``out_dir`` (``--resume`` when it holds the run already)."""
    return sweep.command(run.job(out_dir, threads))


# ----------------------------------------------------------------------------------------------
# SAM and the cosine schedule in the training loop


def _loop(cfg: TrainConfig):
    parts = build_parts(cfg.resolved())
    loop = _Loop.bare(parts)
    return parts, loop


def test_sam_step_is_sharpness_aware_minimization_written_out():
    """One loop step of variant sam = the gradient at w + rho g / ||g|| (g: the gradient at w), applied to w by SGD
    with momentum and weight decay; in the fine-tuning phase a plain SGD step."""
    rho, lr, wd = 0.1, 0.1, 5e-4
    parts, loop = _loop(TrainConfig(model="lenet5", variant="sam", sam_rho=rho, epochs=1, finetune_epochs=1))
    x, y = next(iter(parts.train_batches.epoch(0)))
    model = copy.deepcopy(parts.model)
    params = [p for p in model.parameters()]
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
    with torch.no_grad():
        e = [rho * g / (norm + 1e-12) for g in grads]
        for p, ei in zip(params, e):
            p.add_(ei)
    grads2 = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    with torch.no_grad():
        expected = [p - ei - lr * (g2 + wd * (p - ei)) for p, ei, g2 in zip(params, e, grads2)]
    loop._step(x, y, in_anl_phase=True)
    for got, want in zip(parts.model.parameters(), expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    plain = [p.detach().clone() for p in parts.model.parameters()]  # phase 2: the base optimizer alone
    loop._step(x, y, in_anl_phase=False)
    moved = [not torch.equal(a, b) for a, b in zip(plain, parts.model.parameters())]
    assert all(moved)


def test_cosine_schedule_rates_resume_and_horizon():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    s = CosineSchedule(opt, horizon=4, min_lr=1e-3)
    rates = [opt.param_groups[0]["lr"]]
    for _ in range(5):
        s.step(float("nan"))  # the validation loss plays no part
        rates.append(opt.param_groups[0]["lr"])
    want = [1e-3 + (0.1 - 1e-3) * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)] + [1e-3, 1e-3]
    assert rates == pytest.approx(want, rel=1e-12)
    opt2 = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    s2 = CosineSchedule(opt2, horizon=9, min_lr=0.5)
    s2.load_state_dict(s.state_dict())
    assert (s2.horizon, s2.min_lr, s2.epochs) == (4, 1e-3, 5)
    two = TrainConfig(variant="anl", schedule="cosine", epochs=7, finetune_epochs=3).resolved()
    one = TrainConfig(variant="plain", schedule="cosine", epochs=7, finetune_epochs=3).resolved()
    assert make_schedule(opt, two).horizon == 7 and make_schedule(opt, one).horizon == 10
    with pytest.raises(ValueError, match='schedule "step" is not allowed'):
        TrainConfig(schedule="step").resolved()


def test_sam_rho_is_part_of_sam_runs_only():
    assert TrainConfig(variant="sam", sam_rho=0.2).resolved().sam_rho == 0.2
    assert TrainConfig(variant="anl", sam_rho=0.2).resolved().sam_rho == TrainConfig.sam_rho
    assert TrainConfig(variant="sam").resolved().finetune_lr == "floor"
    with pytest.raises(ValueError, match="sam_rho"):
        TrainConfig(variant="sam", sam_rho=0.0).resolved()


# ----------------------------------------------------------------------------------------------
# statistics


def test_paired_matches_scipy_and_bootstrap_brackets_the_mean():
    rng = random.Random(1)
    d = [rng.gauss(-0.3, 0.5) for _ in range(12)]
    r = stats.paired(d)
    ref = sps.ttest_1samp(d, 0.0)
    assert r["p"] == pytest.approx(ref.pvalue, rel=1e-12)
    ci = ref.confidence_interval(0.95)
    assert r["ci"] == pytest.approx([ci.low, ci.high], rel=1e-12)
    assert r["bootstrap_ci"][0] < r["mean"] < r["bootstrap_ci"][1]
    assert r["better"] + r["same"] + r["worse"] == 12
    with pytest.raises(ValueError, match="at least 2"):
        stats.paired([0.1])


def test_pairs_leave_out_diverged_runs_and_one_value_has_no_spread():
    seeds, d = stats.pair({0: 10.0, 1: 90.0, 2: 9.0, 3: 8.0}, {0: 11.0, 1: 10.0, 2: 85.0, 5: 1.0})
    assert seeds == [0] and d == [-1.0]
    assert stats.diverged(80.0) and not stats.diverged(79.9) and stats.diverged(10.0, float("nan"))
    one = stats.differences([-0.5])
    assert (one["std"], one["se"], one["better"], one["values"]) == (None, None, 1, [-0.5])
    assert stats.summary([]) == {"n": 0, "mean": None, "std": None, "min": None, "max": None, "values": []}


def test_holm_step_down():
    got = stats.holm({"a": 0.01, "b": 0.04, "c": 0.03})
    assert got == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})
    assert stats.holm({"a": 0.6, "b": 0.9}) == {"a": 1.0, "b": 1.0}


def test_power_against_a_simulation_and_the_seed_rule():
    n, effect, sd = 10, 0.3, 0.4
    rng = torch.Generator().manual_seed(0)
    d = effect + sd * torch.randn(20_000, n, generator=rng, dtype=torch.float64)
    t = d.mean(1) / (d.std(1) / math.sqrt(n))
    simulated = (t.abs() > sps.t.ppf(0.975, n - 1)).double().mean().item()
    assert stats.power(n, effect, sd) == pytest.approx(simulated, abs=0.015)
    k = stats.seeds_for_power(0.27, 0.5, low=2, high=200)
    assert stats.power(k, 0.27, 0.5) >= 0.8 > stats.power(k - 1, 0.27, 0.5)
    assert stats.seeds_for_power(0.27, 0.01, low=12, high=40) == 12
    assert stats.seeds_for_power(0.27, 5.0, low=12, high=40) == 40


# ----------------------------------------------------------------------------------------------
# the design rules and the analysis, on made-up finished runs


def _fake_run(runs_dir, run: study.Run, test_err: float, val_err: float, lr_end: float = 1e-3):
    d = runs_dir / run.name
    d.mkdir(parents=True)
    epochs, finetune = run.phases
    lines = []
    for e in range(1, epochs + finetune + 1):
        lr = (0.1 if e < epochs else lr_end) if e <= epochs else 1e-3
        lines.append(
            json.dumps(
                {
                    "epoch": e,
                    "lr": lr,
                    "test_err": test_err / 100,
                    "train_acc": 0.95,
                    "val_acc": 1 - val_err / 100,
                    "train_loss": 0.1,
                    "epoch_train_time_s": 1.0,
                }
            )
        )
    (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (d / study.WALL_NAME).write_text(json.dumps({"wall_s": 10.0, "threads": 1, "exit": 0}) + "\n")


def test_design_fixes_n_from_the_pilot_sd_and_rho_on_validation_not_test(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "T", 2)
    diffs = [-0.2, -0.9, 0.4, -0.5]
    for s, d in zip(study.PILOT_SEEDS, diffs):
        _fake_run(tmp_path, study.Run("control", s), 10.0, 10.0)
        _fake_run(tmp_path, study.Run("anl", s), 10.0 + d, 10.0)
    assert study.design(str(tmp_path)) is None  # SAM's pilot runs missing
    for s in study.RHO_SEEDS:  # rho 0.1 best on validation, 0.02 best on test: validation decides
        for rho, val, test in ((0.02, 12.0, 8.0), (0.05, 11.0, 9.0), (0.1, 10.5, 9.5)):
            _fake_run(tmp_path, study.Run("sam", s, rho=rho), test, val)
    d = study.design(str(tmp_path))
    assert d["sam_rho"] == 0.1
    sd = stats.summary(diffs)["std"]
    assert d["pilot_paired_sd_pp"] == pytest.approx(sd)
    assert d["n_primary"] == stats.seeds_for_power(0.27, sd, low=12, high=40)
    main = study.main_runs(d["n_primary"], d["sam_rho"])
    assert main[:2] == [study.Run("anl", 0), study.Run("control", 0)]
    assert study.Run("sam", 4, rho=0.1) in main and main[-1] == study.TRANSFER_SOURCE
    assert not any(100 <= r.seed < 900 for r in main)  # no pilot seed reused


def _finished_pilot(tmp_path, monkeypatch) -> int:
    """A finished pilot of 2-epoch phases (at least 3 primary seeds) in ``tmp_path``; returns the n it fixes."""
    monkeypatch.setattr(study, "T", 2)
    monkeypatch.setattr(study, "MIN_SEEDS", 3)
    for s in study.PILOT_SEEDS:
        _fake_run(tmp_path, study.Run("control", s), 10.0, 10.0)
        _fake_run(tmp_path, study.Run("anl", s), 10.0 - 0.1 * (s - 99), 10.0)
    for s in study.RHO_SEEDS:
        for rho in study.RHO_GRID:
            _fake_run(tmp_path, study.Run("sam", s, rho=rho), 10.0, 10.0 + rho)
    return study.design(str(tmp_path))["n_primary"]


def test_analysis_primary_secondary_and_floor_check(tmp_path, monkeypatch):
    n = _finished_pilot(tmp_path, monkeypatch)
    for s in range(n):
        _fake_run(tmp_path, study.Run("control", s), 10.0, 10.0, lr_end=0.05 if s == 0 else 1e-3)
        _fake_run(tmp_path, study.Run("anl", s), 9.0 + 0.01 * s, 10.0)
    _fake_run(tmp_path, study.Run("sam", 0, rho=0.02), 95.0, 10.0)  # diverged
    _fake_run(tmp_path, study.Run("sam", 1, rho=0.02), 9.5, 10.0)
    (tmp_path / "sam-rho0.02-plateau-seed1" / study.WALL_NAME).write_text(json.dumps({"wall_s": 5.0, "threads": 2}))
    for seed in (0, 1):  # 2 of the 5 planned seeds: an interim secondary comparison, no Holm yet
        _fake_run(tmp_path, study.Run("baseline", seed), 10.2 + 0.1 * seed, 10.0)
    s = study_report.analyse(str(tmp_path))
    b = s["secondary"]["baseline - control"]
    assert b["n"] == 2 and not b["complete"] and b["p_holm"] is None
    assert "baseline - control (interim)" in study_report.markdown(s)
    p = s["primary"]
    assert p["n"] == n and p["mean"] == pytest.approx(-1.0 + 0.01 * (n - 1) / 2)
    assert p["verdict"].startswith("ANL lowers the test error") and "interim" not in p["verdict"]
    assert s["lr_floor_check"]["not_at_floor"] == ["control-plateau-seed0"]
    assert s["diverged"] == ["sam-rho0.02-plateau-seed0"]
    assert "| sam (plateau) | 9.50 | 2 (1 diverged) |" in study_report.arms_table(s)  # the mean leaves it out
    assert "sam - control" not in s["secondary"]  # one seed left after the diverged one
    # core time is the metrics' training time (1 s an epoch here, 2 threads for one run), not the recorded wall
    # (10 s a run), which misses a child killed together with the driver
    threads = {"sam-rho0.02-plateau-seed1": 2}
    core_s = [(r["epochs_phase1"] + r["epochs_phase2"]) * threads.get(r["name"], 1) for r in s["runs"]]
    assert s["core_hours"] == pytest.approx(sum(core_s) / 3600)
    assert "ANL study: results" in study_report.markdown(s)
    for run in (study.Run("anl", 0), study.Run("anl", 1, schedule="cosine")):  # a battery model, another run
        (tmp_path / run.name).mkdir(exist_ok=True)
        (tmp_path / run.name / "checkpoint.pt").write_bytes(b"weights")
    study_report.write_report(str(tmp_path), str(tmp_path / "out"))
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["primary"]["n"] == n
    md = (tmp_path / "out" / "summary.md").read_text()
    assert f"## main: {2 * n + 4} of " in md and "| control-plateau-seed0 | 4 of 4 | 0.05 | - | 10.00 |" in md
    kept = tmp_path / "out" / "runs"
    assert (kept / "anl-plateau-seed0" / "checkpoint.pt").read_bytes() == b"weights"  # the battery attacks it
    assert (kept / "sam-rho0.02-plateau-seed1" / "metrics.jsonl").is_file()
    assert not (kept / "anl-cosine-seed1").exists()  # not finished
    monkeypatch.setattr(render, "ROOT", str(tmp_path))  # the README's block renders the same tables from the JSON
    assert render.RENDERERS["study"](["out/summary.json"]) == study_report.comparisons(s) != ""
    assert render.RENDERERS["study-arms"](["out/summary.json"]) == study_report.arms_table(s) != ""
    assert study_report.tables(s) == study_report.comparisons(s) + "\n" + study_report.arms_table(s)
    assert (tmp_path / "out" / "paired-differences.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "ci,reading",
    [
        ((-0.5, -0.1), "ANL lowers the test error"),
        ((-0.2, -0.05), "refuted (the gain's upper bound 0.20"),
        ((0.1, 0.4), "ANL raises"),
        ((-0.2, 0.3), "no gain detected, and the paper's size of effect (0.27 pp) is refuted"),
        ((-0.6, 0.3), "inconclusive"),
    ],
)
def test_verdict_follows_the_preregistered_rule(ci, reading):
    assert reading in study_report.verdict({"ci": list(ci), "n": 12, "complete": True}, 12)
    assert "interim: 5 of 12" in study_report.verdict({"ci": list(ci), "n": 5, "complete": False}, 12)
    # a seed that diverged leaves n below the plan; the test is final once every planned run has finished
    assert "interim" not in study_report.verdict({"ci": list(ci), "n": 11, "complete": True}, 12)


def test_each_arm_trains_what_the_preregistration_says(tmp_path):
    args = {a: train_args(study.Run(a, 3, rho=0.05), "OUT", 1) for a in study.ARMS}

    def opt(a, flag):
        return args[a][args[a].index(flag) + 1] if flag in args[a] else None

    assert [opt("baseline", f) for f in ("--variant", "--epochs", "--finetune-epochs", "--finetune-lr")] == [
        "plain",
        str(2 * study.T),
        "0",
        "continue",
    ]
    assert [opt("control", f) for f in ("--variant", "--epochs", "--finetune-epochs", "--finetune-lr")] == [
        "plain",
        str(study.T),
        str(study.T),
        "floor",
    ]
    assert opt("matched", "--epochs") == str(round(study.MATCHED_RATIO * study.T))
    assert (opt("anl", "--eps"), opt("anl", "--norm"), opt("opposite", "--variant")) == ("0.03", "layer", "opposite")
    assert opt("sam", "--sam-rho") == "0.05" and opt("control", "--sam-rho") is None
    assert all(opt(a, "--seed") == "3" and opt(a, "--dataset") == "fashion-mnist" for a in study.ARMS)
    assert not any("--resume" in v for v in args.values())  # nothing in OUT: new runs
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.json").write_text(json.dumps({"model": "lenet5"}))
    assert "--resume" in train_args(study.Run("anl", 0), str(tmp_path / "r"), 1)


#: every arm's exact ``anl-fused train`` arguments and run name, as the running study (pinned copy at 55d6e16) has
#: them: a refactored study must produce the same, so that it can take over the study's run directories
PINNED = {  # arm: name, variant, epochs, finetune epochs, finetune lr, the arm's own arguments
    "baseline": ("baseline-plateau-seed3", "plain", 200, 0, "continue", ""),
    "control": ("control-plateau-seed3", "plain", 100, 100, "floor", ""),
    "anl": ("anl-plateau-seed3", "anl", 100, 100, "floor", "--eps 0.03 --norm layer"),
    "opposite": ("opposite-plateau-seed3", "opposite", 100, 100, "floor", "--eps 0.03 --norm layer"),
    "gaussian": ("gaussian-plateau-seed3", "gaussian", 100, 100, "floor", "--eps 0.03"),
    "sam": ("sam-rho0.05-plateau-seed3", "sam", 100, 100, "floor", "--sam-rho 0.05"),
    "matched": ("matched-plateau-seed3", "plain", 220, 100, "floor", ""),
}


@pytest.mark.parametrize("arm", study.ARMS)
def test_each_arms_train_arguments_and_name_are_pinned(arm, tmp_path):
    name, variant, epochs, finetune, finetune_lr, extra = PINNED[arm]
    run = study.Run(arm, 3, rho=0.05 if arm == "sam" else 0.0)
    want = (
        f"train --model lenet5 --dataset fashion-mnist --variant {variant} --epochs {epochs} --finetune-epochs "
        f"{finetune} --batch-size 128 --lr 0.1 --schedule plateau "
        f"--seed 3 --device cpu --threads 1 --finetune-lr {finetune_lr} {extra} --out OUT --no-progress"
    ).split()
    assert run.name == name and train_args(run, "OUT", 1) == want
    assert study.run_dir("R", run) == f"R/{name}"
    cosine = study.Run(arm, 5, schedule="cosine", rho=run.rho)
    d = tmp_path / cosine.name
    d.mkdir()
    (d / "config.json").write_text("{}")
    got = train_args(cosine, str(d), 2)
    assert cosine.name == name.replace("plateau-seed3", "cosine-seed5")
    assert got == [*want[: want.index("--schedule")], "--schedule", "cosine", "--seed", "5", "--device", "cpu"] + [
        "--threads",
        "2",
        *want[want.index("--finetune-lr") : want.index("--out")],
        "--out",
        str(d),
        "--no-progress",
        "--resume",
    ]


def test_the_stages_run_names_are_pinned():
    assert [r.name for r in study.pilot_runs()] == [
        *(f"{a}-plateau-seed{s}" for s in study.PILOT_SEEDS for a in ("anl", "control")),
        *(f"sam-rho{r:g}-plateau-seed{s}" for s in study.RHO_SEEDS for r in study.RHO_GRID),
    ]
    main = [r.name for r in study.main_runs(12, 0.05)]
    assert main[:4] == ["anl-plateau-seed0", "control-plateau-seed0", "anl-plateau-seed1", "control-plateau-seed1"]
    assert main[24:30] == [
        "baseline-plateau-seed0",
        "opposite-plateau-seed0",
        "gaussian-plateau-seed0",
        "sam-rho0.05-plateau-seed0",
        "matched-plateau-seed0",
        "baseline-plateau-seed1",
    ]
    assert main[-1] == "baseline-plateau-seed900" and len(main) == 24 + 5 * 5 + 1
    assert [r.name for r in study.cosine_runs()][:2] == ["anl-cosine-seed0", "control-cosine-seed0"]


def _battery(clean: float, pgd100: float, *, masked: bool = False) -> dict:
    """A battery's numbers (robustness.battery's keys), sanity computed by the real check; ``masked``: PGD-100
    above PGD-20, a gradient-masking sign."""
    curve = {f"{k}/255": {"fgsm": clean / k, "pgd20": clean / (2 * k) if k < 128 else 0.0} for k in (1, 8, 128)}
    r = {"n": 100, "clean": clean, "fgsm": pgd100 + 10, "pgd20": pgd100 - (5 if masked else 0), "pgd100": pgd100}
    r |= {"apgd_ce": pgd100 - 1, "transfer_pgd20": pgd100 + 20, "curve": curve}
    return r | {"sanity": robustness.sanity(r)}


def test_robustness_report_pairs_by_seed_and_claims_only_when_sane(tmp_path, monkeypatch):
    real_analyse, results = study_report.analyse, {}
    for seed in range(3):
        results[f"control-{seed}"] = {"arm": "control", "seed": seed, **_battery(90.0, 10.0 + seed)}
        results[f"anl-{seed}"] = {"arm": "anl", "seed": seed, **_battery(90.0, 13.0 + seed, masked=seed == 1)}
        results[f"sam-{seed}"] = {"arm": "sam", "seed": seed, **_battery(91.0, 9.0 + 2 * seed)}
    results["sam-7"] = {"arm": "sam", "seed": 7, **_battery(91.0, 50.0)}  # no control with seed 7: not paired
    results["sam-3"] = {"arm": "sam", "seed": 3, **_battery(10.0, 10.0)}  # a diverged run's model: left out
    results["control-3"] = {"arm": "control", "seed": 3, **_battery(90.0, 30.0)}
    r = study_report.robustness(results, diverged={"sam-3", "anl-9"})
    assert r["diverged"] == ["sam-3"]
    assert r["arms"]["anl"]["sane"] == 2 and r["arms"]["control"]["sane"] == 4 and r["arms"]["sam"]["n"] == 4
    assert r["arms"]["control"]["pgd100"]["mean"] == pytest.approx(15.75)
    assert r["arms"]["sam"]["curve"]["8/255"]["fgsm"] == pytest.approx(91.0 / 8)
    anl, sam = r["endpoint"]["anl - control"], r["endpoint"]["sam - control"]
    assert anl["mean"] == pytest.approx(3.0) and anl["better"] == 3 and not anl["claimable"]
    assert sam["seeds"] == [0, 1, 2] and sam["values"] == pytest.approx([-1.0, 0.0, 1.0])
    assert (sam["better"], sam["same"], sam["worse"]) == (1, 1, 1) and sam["claimable"]
    md = study_report.robustness_markdown(r)
    assert "| anl | 3 | 90.00 ± 0.00 |" in md and "| 2/3 |" in md
    assert "anl - control (pp, paired by seed): +3.00" in md and "no claim: a sanity check fails" in md
    assert "sam - control (pp, paired by seed): +0.00" in md and "no difference shown (the CI includes 0" in md
    assert "Left out (diverged runs, the pre-registered rule): sam-3." in md
    more = study_report._robustness_reading({"claimable": True, "ci": [0.5, 2.0]})
    assert (
        more.startswith("more robust")
        and study_report._robustness_reading({"claimable": True, "ci": [-2, -1]})[:4] == "less"
    )
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "robustness.json").write_text(json.dumps(results))
    monkeypatch.setattr(study_report, "analyse", lambda runs_dir: {**real_analyse(runs_dir), "diverged": ["sam-3"]})
    study_report.write_report(str(tmp_path / "runs"), str(tmp_path / "out"))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["robustness"]["endpoint"]["sam - control"]["claimable"]
    assert summary["robustness"]["diverged"] == ["sam-3"]  # write_report passes the run records' divergence
    assert "sanity: all four hold" in (tmp_path / "out" / "summary.md").read_text()
    assert (tmp_path / "out" / "eps-curves.png").read_bytes()[:4] == b"\x89PNG"
    monkeypatch.setattr(render, "ROOT", str(tmp_path))  # the README's block: the same table from the JSON
    assert render.RENDERERS["study-robustness"](["out/summary.json"]) == study_report.robustness_markdown(r)


def test_stage2_is_sized_by_stage1s_paired_sd_and_tested_on_its_own_pairs(tmp_path, monkeypatch):
    n = _finished_pilot(tmp_path, monkeypatch)
    diffs = [(-1) ** s * 0.8 - 0.1 for s in range(n)]
    for s, d in enumerate(diffs[:-1]):
        _fake_run(tmp_path, study.Run("control", s), 10.0, 10.0)
        _fake_run(tmp_path, study.Run("anl", s), 10.0 + d, 10.0)
    assert study.design2(str(tmp_path)) is None  # the last primary pair has not finished
    assert dict(study.stages(str(tmp_path)))["stage2"] is None
    _fake_run(tmp_path, study.Run("control", n - 1), 10.0, 10.0)
    _fake_run(tmp_path, study.Run("anl", n - 1), 10.0 + diffs[-1], 10.0)
    d2 = study.design2(str(tmp_path))
    sd = stats.summary(diffs)["std"]
    assert d2["stage1_paired_sd_pp"] == pytest.approx(sd)
    assert d2["n_stage2"] == stats.seeds_for_power(0.27, sd, low=3, high=study.STAGE2_MAX_SEEDS)
    runs = dict(study.stages(str(tmp_path)))["stage2"]
    assert runs[:2] == [study.Run("anl", 200), study.Run("control", 200)] and len(runs) == 2 * d2["n_stage2"]
    for r in runs[:4]:  # two of the replication's pairs: ANL 0.5 pp better on each
        _fake_run(tmp_path, r, 9.5 if r.arm == "anl" else 10.0, 10.0)
    s = study_report.analyse(str(tmp_path))
    t = s["stage2"]["test"]
    assert t["seeds"] == [200, 201] and t["mean"] == pytest.approx(-0.5) and not t["complete"]
    assert "interim: 2 of" in t["verdict"]
    assert s["stage2"]["pooled_description"]["n"] == n + 2
    assert s["primary"]["n"] == n and s["primary"]["complete"]  # stage 2 never enters the primary test
    md = study_report.markdown(s)
    assert "Stage 2, the replication" in md and "anl (plateau, stage 2)" in md


def test_output_into_a_closed_pipe_ends_without_a_traceback(tmp_path):
    """`anl-fused study plan | head`: the reader has gone; the command exits 141 (SIGPIPE's code), no traceback."""
    read, write = os.pipe()
    os.close(read)  # closed before the command writes: its first flush meets a broken pipe
    cmd = [sys.executable, "-m", "anl_fused.cli", "study", "plan", "--runs-dir", str(tmp_path)]
    proc = subprocess.run(cmd, stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(write)
    assert (proc.returncode, proc.stderr) == (141, "")


def test_the_retired_table1_command_says_what_replaces_it(capsys):
    from anl_fused import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["table1", "--seeds", "3"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "'table1' was retired" in err and "anl-fused study" in err


def test_eps_curves_name_an_arm_drawn_over_an_equal_one(tmp_path, monkeypatch):
    results = {f"{arm}-0": {"arm": arm, "seed": 0, **_battery(90.0, 10.0)} for arm in ("baseline", "control")}
    results["anl-0"] = {"arm": "anl", "seed": 0, **_battery(90.0, 12.0)}
    results["anl-0"]["curve"]["8/255"]["fgsm"] += 1.0
    figures = []
    monkeypatch.setattr(study_report, "save_figure", lambda fig, path: figures.append(fig))
    study_report.plot_eps_curves(study_report.robustness(results), str(tmp_path / "eps.png"))
    labels = [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()]
    assert labels == [
        "anl PGD20",
        "anl FGSM",
        "baseline PGD20",
        "baseline FGSM",
        "control PGD20 (= baseline)",
        "control FGSM (= baseline)",
    ]


def test_paired_figure_marks_interim_rows_and_keeps_its_legend_off_the_rows(tmp_path, monkeypatch):
    def comparison(values, complete):
        return {
            "values": values,
            "mean": sum(values) / len(values),
            "ci": [-1.0, 1.0],
            "n": len(values),
            "complete": complete,
        }

    s = {"primary": comparison([0.1, -0.2, 0.3], True), "secondary": {"sam - control": comparison([0.5, 0.1], False)}}
    figures = []
    monkeypatch.setattr(study_report, "save_figure", lambda fig, path: figures.append(fig))
    assert study_report.plot_paired({**s, "cosine": None}, str(tmp_path / "paired.png"))
    ax = figures[0].axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["anl - control", "sam - control, interim (n 2)"]
    figures[0].canvas.draw()
    legend, axes = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.y1 <= axes.y0  # below the axes, over no comparison's row
