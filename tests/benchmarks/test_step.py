"""The benchmark runner (``anl-fused bench``) end to end at toy size: every method runs, the JSON has
the machine details, the medians and the ratios. (Benchmarks are not tests: nothing here looks at time.)"""

import json

from anl_fused.cli import main


def test_bench_writes_json_with_all_methods(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", "--models", "vgg_tiny", "--batch", "4", "--size", "8", "--repeats", "2",
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert {"torch", "device", "date", "cpu_count", "git_commit"} <= set(report["machine"])
    (steps,) = report["steps"]
    assert set(steps["median_s"]) == {"plain", "naive", "reference", "tworound"}
    assert all(len(t) == 2 for t in steps["times_s"].values())
    assert {"tworound/plain", "naive/tworound"} <= set(steps["ratios"])
    (mem,) = report["noise_memory"]
    assert mem["held_bytes"]["float32"] == 2 * mem["held_bytes"]["bfloat16"] > 0
    assert "| vgg_tiny | 4 | fp32 |" in capsys.readouterr().out
