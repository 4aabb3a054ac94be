"""``anl-fused table1``: the campaign plan, same initial weights per seed, skip / resume, the table."""

from __future__ import annotations

import json

import pytest
import torch

from anl_fused.cli import main
from anl_fused.experiments import data, sweep, table1
from anl_fused.experiments.train import TrainConfig, fit

TINY = [
    "table1",
    "--model",
    "lenet5",
    "--dataset",
    "digits",
    "--seeds",
    "1",
    "--epochs",
    "1",
    "--finetune-epochs",
    "1",
    "--batch-size",
    "256",
    "--nice",
    "0",
    "--jobs",
    "2",
]


def train_args(spec, proto, out_dir, *, data_dir, device, threads):
    """``anl-fused train`` arguments of one run in ``out_dir`` (``--resume`` when it holds the run already)."""
    settings = table1.settings(spec, proto, data_dir=data_dir, device=device)
    return sweep.command(sweep.train_job(spec.name, out_dir, settings, threads))


def test_plan_covers_every_method_per_seed_and_norm():
    specs = table1.plan([0, 1], [0.03], ["sample", "layer"])
    assert len(specs) == 2 * (1 + 1 + 1 + 2 + 2)
    names = [s.name for s in specs]
    assert len(set(names)) == len(names)
    assert names[:7] == [
        "baseline-seed0",
        "baseline-two-phase-seed0",
        "gaussian-eps0.03-seed0",
        "anl-eps0.03-sample-seed0",
        "anl-eps0.03-layer-seed0",
        "opposite-eps0.03-sample-seed0",
        "opposite-eps0.03-layer-seed0",
    ]
    specs = [s for s in specs if s.variant != "baseline-two-phase"]
    proto = table1.Protocol("lenet5", "fashion-mnist", 30, 20)
    args = dict(data_dir=None, device="cpu", threads=1)
    base = train_args(specs[0], proto, "d", **args)
    assert base[base.index("--epochs") + 1] == "50" and base[base.index("--finetune-epochs") + 1] == "0"
    assert "--norm" not in base and "--eps" not in base and "--resume" not in base  # "d" holds no run yet
    opp = train_args(specs[5], proto, "d", **args)
    assert opp[opp.index("--variant") + 1] == "opposite" and opp[opp.index("--eps") + 1] == "0.03"
    assert opp[opp.index("--norm") + 1] == "layer" and opp[opp.index("--finetune-epochs") + 1] == "20"
    two = train_args(table1.RunSpec("baseline-two-phase", 0), proto, "d", **args)
    assert two[two.index("--variant") + 1] == "plain" and two[two.index("--finetune-lr") + 1] == "floor"
    assert two[two.index("--epochs") + 1] == "30" and two[two.index("--finetune-epochs") + 1] == "20"


def test_same_seed_same_initial_weights_for_every_method():
    """The paper trains its Table 1 models 'under same initialization condition'."""
    init, bundle = {}, data.load("digits")
    for variant in ("plain", "gaussian", "anl", "opposite"):
        res = fit(
            TrainConfig(model="lenet5", variant=variant, eps=0.03, epochs=0, seed=4),
            progress=False,
            log=lambda s: None,
            bundle=bundle,
        )
        init[variant] = res["model"].state_dict()
    ref = init.pop("plain")
    for sd in init.values():
        assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref)
    other = fit(
        TrainConfig(model="lenet5", variant="plain", epochs=0, seed=5),
        progress=False,
        log=lambda s: None,
        bundle=bundle,
    )
    assert not torch.equal(other["model"].state_dict()["conv1.weight"], ref["conv1.weight"])


def test_protocol_errors_are_one_line(tmp_path, capsys):
    """(Bad numbers are usage errors at parse time: tests/experiments/test_cli_types.py.)"""
    for extra, msg in (
        (["--preset", "paper", "--epochs", "3"], "not both"),
        ([], "--preset paper or --epochs"),
        (["--epochs", "3", "--model", "alexnet"], "unknown model 'alexnet'"),
    ):
        argv = ["table1", "--dataset", "digits", "--runs-dir", str(tmp_path), "--out", str(tmp_path), *extra]
        if "--seeds" not in extra:
            argv += ["--seeds", "1"]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("anl-fused table1: error:") and msg in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_campaign_runs_skips_and_resumes(tmp_path, capsys):
    """Two runs in parallel child processes; a second call trains nothing; an interrupted run
    (stopped after 3 steps, as Ctrl-C would) is resumed to the same result as an uninterrupted one."""
    runs, out = tmp_path / "runs", tmp_path / "out"
    argv = TINY + ["--variants", "plain", "anl", "--runs-dir", str(runs), "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert text.count("started ") == 2 and text.count("finished ") == 2
    tag = "lenet5-digits-e1f1-b256"
    result = json.loads((out / f"{tag}.json").read_text())
    assert result["finished"] == result["planned"] == 2
    assert set(result["rows"]) == {"baseline", "anl-eps0.03-sample"}
    err_anl = result["rows"]["anl-eps0.03-sample"]["test_err"]["values"][0]
    md = (out / f"{tag}.md").read_text()
    assert "| baseline |" in md and "norm=sample" in md and "Protocol:" in md and "Seeds 0" in md

    assert main(argv) == 0  # everything finished: nothing is trained again
    assert "started " not in capsys.readouterr().out

    spec = table1.RunSpec("anl", 0, 0.03, "sample")
    proto = table1.Protocol("lenet5", "digits", 1, 1, batch_size=256)
    other = tmp_path / "runs2"
    cut = other / tag / spec.name
    assert (
        main(train_args(spec, proto, str(cut), data_dir=None, device="cpu", threads=1) + ["--stop-after-steps", "3"])
        == 0
    )
    capsys.readouterr()
    assert main(TINY + ["--variants", "anl", "--runs-dir", str(other), "--out", str(out), "--dry-run"]) == 0
    assert "partial " in capsys.readouterr().out
    assert main(TINY + ["--variants", "anl", "--runs-dir", str(other), "--out", str(out)]) == 0
    assert "resumed from" in (cut / "train.log").read_text()
    again = json.loads((out / f"{tag}.json").read_text())
    assert again["rows"]["anl-eps0.03-sample"]["test_err"]["values"] == [err_anl]  # exact resume


def test_markdown_has_paper_numbers_and_paired_differences():
    rows = {
        "baseline": {
            "variant": "plain",
            "eps": 0.0,
            "norm": "sample",
            "seeds": [0, 1],
            "test_err": {"mean": 9.5, "std": 0.1, "n": 2, "values": [9.4, 9.6]},
        },
        "anl-eps0.03-layer": {
            "variant": "anl",
            "eps": 0.03,
            "norm": "layer",
            "seeds": [0, 1],
            "test_err": {"mean": 9.3, "std": 0.1, "n": 2, "values": [9.2, 9.4]},
            "vs_baseline": {"mean": -0.2, "std": 0.0, "n": 2, "values": [-0.2, -0.2], "better": 2, "worse": 0},
        },
        "opposite-eps0.03-sample": {
            "variant": "opposite",
            "eps": 0.03,
            "norm": "sample",
            "seeds": [0],
            "test_err": {"mean": 12.5, "std": 0.0, "n": 1, "values": [12.5]},
        },
    }
    result = {
        "protocol": {
            "model": "lenet5",
            "dataset": "fashion-mnist",
            "epochs": 30,
            "finetune_epochs": 30,
            "batch_size": 128,
            "lr": 0.1,
        },
        "rows": rows,
        "seeds": [0, 1],
        "planned": 6,
        "finished": 5,
        "dataset_sizes": "train 55,000 / val 5,000 / test 10,000",
    }
    md = table1.render_markdown(result)
    assert "| baseline | 9.44 | 9.50 ± 0.10 | 2 | 9.40, 9.60 | - |" in md
    assert "| +ANL eps=0.03, norm=layer | 9.17 | 9.30 ± 0.10 | 2 | 9.20, 9.40 | -0.20 ± 0.00 (2/0) |" in md
    assert "| +ANL eps=-0.03 (opposite), norm=sample | 12.00 |" in md
    assert md.index("baseline") < md.index("norm=layer") < md.index("opposite")
    assert "scaled by 0.3" in md and "5 of 6 runs finished" in md


def _fake_run(root, spec, proto, errs):
    """A run directory whose metrics.jsonl holds one line per epoch with these test errors (%)."""
    d = root / proto.tag / spec.name
    d.mkdir(parents=True)
    lines = [
        {
            "epoch": i + 1,
            "test_err": e / 100,
            "train_acc": 0.99,
            "val_loss": 1.0,
            "lr": 0.1,
            "time_per_step_s": 0.01,
            "epoch_train_time_s": 1.0,
        }
        for i, e in enumerate(errs)
    ]
    (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_report_counts_finished_runs_only_and_pairs_by_seed(tmp_path, capsys):
    proto = table1.Protocol("lenet5", "fashion-mnist", 2, 1)
    specs = table1.plan([0, 1, 2], [0.03], ["sample"], variants=("plain", "baseline-two-phase", "anl"))
    final = {
        ("plain", 0): 10.0,
        ("plain", 1): 11.0,
        ("plain", 2): 12.0,
        ("anl", 0): 9.5,
        ("anl", 1): 11.5,
        ("baseline-two-phase", 0): 9.0,
        ("baseline-two-phase", 1): 12.0,
        ("baseline-two-phase", 2): 90.0,
    }
    for spec in specs:
        if (spec.variant, spec.seed) in final:
            _fake_run(tmp_path, spec, proto, [50.0, 30.0, final[spec.variant, spec.seed]])
        else:  # anl seed 2 was interrupted after 2 of 3 epochs: not in the table
            _fake_run(tmp_path, spec, proto, [50.0, 1.0])
    base, result = table1.report(specs, proto, str(tmp_path), str(tmp_path / "out"), [0, 1, 2], "cmd")
    assert result["finished"] == 8 and result["planned"] == 9
    anl = result["rows"]["anl-eps0.03-sample"]
    assert anl["seeds"] == [0, 1] and anl["test_err"]["values"] == [9.5, 11.5]
    vs = anl["vs_baseline"]
    assert vs["values"] == [-0.5, 0.5] and (vs["better"], vs["worse"]) == (1, 1)
    vs2 = anl["vs_two_phase"]
    assert vs2["values"] == [0.5, -0.5] and "vs_two_phase" not in result["rows"]["baseline-two-phase"]
    assert result["rows"]["baseline"]["vs_two_phase"]["values"] == [1.0, -1.0]  # seed 2's control diverged
    two = result["rows"]["baseline-two-phase"]
    assert two["diverged_seeds"] == [2] and two["test_err_without_diverged"]["values"] == [9.0, 12.0]
    assert result["rows"]["baseline"]["test_err"]["mean"] == 11.0
    with open(base + ".md") as f:
        md = f.read()
    assert "8 of 9 runs finished" in md and "| baseline | 9.44 | 11.00 ± 1.00 | 3 |" in md
    assert (
        "| baseline, two phases (control) | - | 37.00 ± 45.92; without the 1 diverged: 10.50 ± 2.12 | 3 | "
        "9.00, 12.00, 90.00 (diverged) |"
        in md
        and "two-phase baseline" in md
    )
    assert "Diverged (final test error >= 80%, a network stuck at chance): baseline, two phases (control) seed 2" in md
    with open(base + ".json") as f:
        assert json.load(f)["command"] == "cmd"
    argv = [
        "table1",
        "--dataset",
        "fashion-mnist",
        "--seeds",
        "3",
        "--epochs",
        "2",
        "--finetune-epochs",
        "1",
        "--variants",
        "plain",
        "baseline-two-phase",
        "anl",
        "--runs-dir",
        str(tmp_path),
        "--out",
        str(tmp_path / "o2"),
    ]
    assert main(argv + ["--dry-run"]) == 0
    states = capsys.readouterr().out.split()
    assert states.count("finished") == 8 and states.count("partial") == 1
    assert main(argv + ["--report-only"]) == 0
    assert "started" not in capsys.readouterr().out


def test_readme_renderer_writes_the_table_from_the_json(tmp_path, monkeypatch):
    from anl_fused.benchmarks import render

    proto = table1.Protocol("lenet5", "fashion-mnist", 2, 1)
    specs = table1.plan([0], [0.03], ["sample"], variants=("plain", "anl"))
    for spec, err in zip(specs, (10.0, 9.0)):
        _fake_run(tmp_path, spec, proto, [50.0, 30.0, err])
    _, result = table1.report(specs, proto, str(tmp_path), str(tmp_path / "out"), [0], "cmd")
    monkeypatch.setattr(render, "ROOT", str(tmp_path))
    doc = tmp_path / "doc.md"
    doc.write_text(f"<!-- render:table1 out/{proto.tag}.json -->\nold\n<!-- /render -->\n")
    assert render.main([str(doc)]) == 0
    text = doc.read_text()
    assert table1.render_markdown(result) in text and "old" not in text
    assert "| +ANL eps=0.03, norm=sample | 9.17 | 9.00 (1 seed) | 1 | 9.00 | -1.00 (1/0) |" in text


def test_methods_and_the_preset_are_train_configs(tmp_path, capsys):
    """The methods are anl-fused train's variants and the control; the two-phase ones train E then F epochs, the
    others E + F in one; --preset paper is train's (100 + 100)."""
    from anl_fused.experiments.train import config

    assert set(table1.VARIANTS) - {table1.CONTROL} <= set(config.VARIANTS)
    proto, where = table1.Protocol("lenet5", "digits", 3, 2), dict(data_dir=None, device="cpu", threads=1)
    for variant, phases in (("sam", ["3", "2"]), ("dropout", ["5", "0"]), ("gaussian", ["3", "2"])):
        (spec,) = table1.plan([0], [0.05], ["layer"], variants=(variant,))
        args = train_args(spec, proto, "d", **where)
        assert [args[args.index(f) + 1] for f in ("--variant", "--epochs", "--finetune-epochs")] == [variant, *phases]
        assert ("--eps" in args) == (variant == "gaussian") and "--norm" not in args
    argv = ["table1", "--preset", "paper", "--dataset", "digits", "--seeds", "1", "--variants", "plain", "sam"]
    assert main([*argv, "--runs-dir", str(tmp_path), "--dry-run"]) == 0
    assert capsys.readouterr().out.split() == [
        "new",
        str(tmp_path / "lenet5-digits-e100f100-b128" / "baseline-seed0"),
        "new",
        str(tmp_path / "lenet5-digits-e100f100-b128" / "sam-seed0"),
    ]
