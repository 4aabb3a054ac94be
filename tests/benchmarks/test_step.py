"""The benchmark runner (``anl-fused bench``) end to end at toy size: every method runs, the JSON has
the machine details, the medians, the ratios and their spread over the rounds; nothing is written
without ``--out``. (Benchmarks are not tests: nothing here looks at time.)"""

import json
import os

from anl_fused.benchmarks import step
from anl_fused.cli import main


def test_bench_writes_json_with_all_methods(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", "--models", "vgg_tiny", "--batch", "4", "--size", "8", "--repeats", "3",
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert {"torch", "device", "date", "cpu_count", "git_commit"} <= set(report["machine"])
    (steps,) = report["steps"]
    assert set(steps["median_s"]) == {"plain", "naive", "reference", "tworound", "tworound-bf16probe"}
    assert all(len(t) == 3 for t in steps["times_s"].values())
    assert {"tworound/plain", "naive/tworound", "tworound-bf16probe/plain", "tworound-bf16probe/tworound"} \
        <= set(steps["ratios"])
    for k, st in steps["ratio_stats"].items():
        assert st["min"] <= st["median"] <= st["max"] and st["spread"] == st["max"] / st["min"], k
    (mem,) = report["noise_memory"]
    assert mem["held_bytes"]["float32"] == 2 * mem["held_bytes"]["bfloat16"] > 0
    printed = capsys.readouterr().out
    assert "| vgg_tiny | 4 | fp32 |" in printed and "TwoRound/plain [min, max]" in printed


def test_bench_writes_nothing_without_out(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--models", "vgg_tiny", "--batch", "2", "--size", "8", "--repeats", "1",
                 "--methods", "tworound"]) == 0
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
    assert step.spread_warnings([{"model": "m", "times_s": calm,
                                  "ratio_stats": step.ratio_stats(calm, [("tworound", "plain")])}]) == []
