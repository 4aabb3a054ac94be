"""The benchmark runner (``anl-fused bench``) end to end at toy size: every method runs, the JSON has
the machine details, the medians, the ratios and their spread over the rounds; nothing is written
without ``--out``. (Benchmarks are not tests: nothing here looks at time.)"""

import json
import os

import pytest

from anl_fused.benchmarks import step
from anl_fused.cli import main


def test_bench_writes_json_with_all_methods(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert (
        main(["bench", "--models", "vgg_tiny", "--batch", "4", "--size", "8", "--repeats", "3", "--out", str(out)]) == 0
    )
    report = json.loads(out.read_text())
    assert {"torch", "device", "date", "cpu_count", "git_commit"} <= set(report["machine"])
    (steps,) = report["steps"]
    assert set(steps["median_s"]) == {"plain", "naive", "reference", "tworound", "tworound-bf16probe"}
    assert all(len(t) == 3 for t in steps["times_s"].values())
    assert {"tworound/plain", "naive/tworound", "tworound-bf16probe/plain", "tworound-bf16probe/tworound"} <= set(
        steps["ratios"]
    )
    for k, st in steps["ratio_stats"].items():
        assert st["min"] <= st["median"] <= st["max"] and st["spread"] == st["max"] / st["min"], k
    (mem,) = report["noise_memory"]
    assert mem["held_bytes"]["float32"] == 2 * mem["held_bytes"]["bfloat16"] > 0
    printed = capsys.readouterr().out
    assert "| vgg_tiny | 4 | fp32 |" in printed and "TwoRound/plain [min, max]" in printed


def test_bench_writes_nothing_without_out(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            ["bench", "--models", "vgg_tiny", "--batch", "2", "--size", "8", "--repeats", "1", "--methods", "tworound"]
        )
        == 0
    )
    assert os.listdir(tmp_path) == []
    captured = capsys.readouterr()
    assert "| vgg_tiny |" in captured.out and "wrote" not in captured.out
    assert "1 round(s) cannot show the spread" in captured.err


def test_ratio_stats_and_the_spread_warning():
    times = {"plain": [1.0, 1.0, 2.0, 1.0], "tworound": [1.7, 1.6, 1.8, 3.9], "naive": [2.0, 2.1, 4.0, 2.0]}
    stats = step.ratio_stats(times, [("tworound", "plain"), ("naive", "tworound")])
    assert stats["tworound/plain"] == {"min": 0.9, "median": 1.65, "max": 3.9, "spread": 3.9 / 0.9}
    result = {"model": "m", "times_s": times, "ratio_stats": stats}
    first, second = step.spread_warnings([result])
    assert "naive/tworound varied from 0.51x to 2.22x" in second
    assert first.startswith("warning: m tworound/plain varied from 0.90x to 3.90x over 4 rounds (median 1.65x)")
    calm = {"plain": [1.0, 1.1, 0.9], "tworound": [1.7, 1.8, 1.6]}
    assert (
        step.spread_warnings(
            [{"model": "m", "times_s": calm, "ratio_stats": step.ratio_stats(calm, [("tworound", "plain")])}]
        )
        == []
    )


def test_bench_aot_runs_the_aot_report_with_bench_options(tmp_path, monkeypatch, capsys):
    """``--aot`` hands --models / --batch / --size / --aot-dtypes to aot_report and writes its files into
    ``--out`` (one directory per model when there are several); without --out it prints the markdown."""
    from anl_fused.benchmarks import aot_report

    seen = []

    def fake_make_report(args):
        seen.append(args)
        return {"model": args.model}

    monkeypatch.setattr(aot_report, "make_report", fake_make_report)
    monkeypatch.setattr(aot_report, "markdown", lambda report: f"# AOT report: {report['model']}\n")
    assert (
        main(
            [
                "bench",
                "--aot",
                "--models",
                "vgg_tiny",
                "lenet5",
                "--batch",
                "3",
                "--size",
                "8",
                "--aot-dtypes",
                "bf16",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert [(a.model, a.batch, a.size, a.step_batch, a.dtypes) for a in seen] == [
        ("vgg_tiny", 3, 8, 3, ["bf16"]),
        ("lenet5", 3, 8, 3, ["bf16"]),
    ]
    for name in ("vgg_tiny", "lenet5"):
        assert json.loads((tmp_path / name / "aot-report.json").read_text()) == {"model": name}
        assert (tmp_path / name / "aot-report.md").read_text() == f"# AOT report: {name}\n"
    seen.clear()
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "empty")
    assert main(["bench", "--aot", "--models", "vgg_tiny"]) == 0
    assert seen[0].batch == 64 and seen[0].step_batch == 4 and seen[0].dtypes == ["fp32", "bf16", "fp16"]
    assert "# AOT report: vgg_tiny" in capsys.readouterr().out
    assert os.listdir(".") == []  # nothing written without --out


def test_bench_rejects_an_unknown_model(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--aot", "--models", "nosuch"])
    assert e.value.code == 2 and "invalid choice: 'nosuch'" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_aot_end_to_end(tmp_path):
    """The real AOT report of a small model in one dtype (record under the interpreter, compile for
    sm_80 / sm_90 on this CPU): ~15 s of CPU."""
    assert (
        main(
            [
                "bench",
                "--aot",
                "--models",
                "vgg_tiny",
                "--batch",
                "4",
                "--size",
                "8",
                "--aot-dtypes",
                "fp32",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "aot-report.json").read_text())
    assert report["model"] == "vgg_tiny" and report["batch"] == 4 and list(report["dtypes"]) == ["fp32"]
    assert report["dtypes"]["fp32"]["replay_matches_step"] and report["dtypes"]["fp32"]["counts"]["layers"] > 0
    assert (tmp_path / "aot-report.md").read_text().startswith("# AOT report: vgg_tiny, batch 4, 8x8")
