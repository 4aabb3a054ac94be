"""The benchmark runner (``anl-fused bench``) end to end at toy size: every method runs, the JSON has
the machine details, the medians, the ratios and their spread over the rounds; nothing is written
without ``--out``. (Benchmarks are not tests: nothing here looks at time.)"""

import json
import os
import statistics
import tempfile

import pytest
import torch

import anl_fused
from anl_fused import ops
from anl_fused.benchmarks import step
from anl_fused.cli import main
from anl_fused.experiments import models


def test_bench_writes_json_with_all_methods(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert (
        main(["bench", "--models", "vgg_tiny", "--batch", "4", "--size", "8", "--repeats", "3", "--out", str(out)]) == 0
    )
    report = json.loads(out.read_text())
    assert {"torch", "device", "date", "cpu_count", "git_commit"} <= set(report["machine"])
    (steps,) = report["steps"]
    assert set(steps["median_s"]) == {"plain", "floor", "naive", "reference", "tworound", "tworound-bf16probe"}
    assert all(len(t) == 3 for t in steps["times_s"].values())
    assert {"tworound/plain", "tworound/floor", "floor/plain", "naive/tworound", "tworound-bf16probe/plain"} <= set(
        steps["ratios"]
    )
    for k, st in steps["ratio_stats"].items():
        assert st["min"] <= st["median"] <= st["max"] and st["spread"] == st["max"] / st["min"], k
        assert steps["ratios"][k] == st["median"], k  # the headline is the median of the paired ratios
    assert steps["threads"] == report["machine"]["threads"] and steps["backend"] == ops.backend("cpu")
    assert steps["cpu"] == report["machine"]["cpu"] != ""
    (mem,) = report["noise_memory"]
    assert mem["held_bytes"]["float32"] == 2 * mem["held_bytes"]["bfloat16"] > 0
    printed = capsys.readouterr().out
    assert "| vgg_tiny | 4 | 8 | fp32 |" in printed and "TwoRound/floor [min, max]" in printed


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


def test_headline_ratio_is_the_median_of_the_paired_ratios(monkeypatch):
    """A slow spell that hits plain in one round and TwoRound in another made the ratio of the medians
    0.51x while every paired ratio said about 1.8x."""
    times = {"plain": [1.0, 1.0, 9.0, 9.0, 1.0], "tworound": [1.8, 1.7, 16.0, 17.0, 1.9]}
    monkeypatch.setattr(step, "time_methods", lambda *a, **k: times)
    r = step.benchmark_model("vgg_tiny", 2, 8, torch.device("cpu"), ["plain", "tworound"], 5, 1, None, 0.05)
    assert r["ratios"]["tworound/plain"] == statistics.median([1.8, 1.7, 16 / 9, 17 / 9, 1.9])
    assert "| 1.80x [1.70, 1.90] |" in step.format_table([r])


def test_threads_are_set_and_printed(capsys):
    before = torch.get_num_threads()
    try:
        argv = ["bench", "--models", "vgg_tiny", "--batch", "2", "--size", "8", "--repeats", "1", "--threads", "1"]
        assert main([*argv, "--methods", "floor", "tworound"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    b = ops.backend("cpu")  # cpp where the C++ kernels build, else torch
    assert f"(1 threads, {b} backend)" in out and f"| vgg_tiny | 2 | 8 | fp32 | 1 | {b} |" in out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--device", "gpu"], "invalid choice: 'gpu'"),
        (["--size", "100000"], "--size 100000 is out of range: use 8 to 1024"),
        (["--batch", "1", "--size", "1"], "--batch 1 is out of range: use 2 to 65536"),
        (["--size", "1"], "--size 1 is out of range"),
    ],
)
def test_bad_options_are_one_line_before_any_work(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(step, "benchmark_model", lambda *a, **k: pytest.fail("benchmarked despite a bad option"))
    try:
        code = main(["bench", "--models", "vgg_tiny", *argv])
    except SystemExit as e:  # argparse's own one-line usage error
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cuda_without_a_gpu_and_a_read_only_out_fail_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(step, "benchmark_model", lambda *a, **k: pytest.fail("benchmarked despite a bad option"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "--models", "vgg_tiny", "--device", "cuda"]) == 2
    assert "--device cuda: no CUDA device is available" in capsys.readouterr().err
    assert main(["bench", "--models", "vgg_tiny", "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    locked = tmp_path / "locked"
    locked.mkdir()
    real = tempfile.TemporaryFile  # root may write anywhere: then the folder is read-only by decree

    def temporary_file(*args, dir=None, **kwargs):
        if str(dir) == str(locked):
            raise PermissionError(13, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", temporary_file)
    assert main(["bench", "--models", "vgg_tiny", "--out", str(locked / "sub" / "b.json")]) == 2
    assert (
        f"--out {locked / 'sub' / 'b.json'}: not writable (creating a file in {locked} failed: Permission denied)"
        in capsys.readouterr().err
    )
    if os.path.isdir("/proc/self"):  # a file system where nobody, root included, creates files
        assert main(["bench", "--models", "vgg_tiny", "--out", "/proc/bench.json"]) == 2
        assert "--out /proc/bench.json: not writable (creating a file in /proc failed" in capsys.readouterr().err


def test_floor_computes_the_activation_gradients_and_no_anl_op(monkeypatch):
    """The floor's round 1 asks autograd for dJ/dh at every ANL point (as TwoRound does) and runs none of
    the ANL ops; its round 2 is a plain step: the gradients equal plain training's."""
    from anl_fused import ops

    for name in ("std", "noise_scale", "add_noise"):
        monkeypatch.setattr(ops, name, lambda *a, **k: pytest.fail("the floor ran an ANL op"))
    seen = []
    real_grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda out, ins, **k: seen.append(len(ins)) or real_grad(out, ins, **k))
    torch.manual_seed(0)
    model = models.build("vgg_tiny")
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    floor, plain = (step.make_step(m, model, x, y, eps=0.3) for m in ("floor", "plain"))
    floor(), plain()
    assert seen == [len(anl_fused.anl_layers(floor.model))] and seen[0] > 0
    for p, q in zip(floor.model.parameters(), plain.model.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


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
    monkeypatch.setattr(aot_report, "make_report", lambda *a: seen.append(a) or {"model": a[0]})
    monkeypatch.setattr(aot_report, "markdown", lambda report: f"# AOT report: {report['model']}\n")
    argv = ["bench", "--aot", "--models", "vgg_tiny", "lenet5", "--batch", "3", "--size", "8", "--aot-dtypes", "bf16"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    assert seen == [("vgg_tiny", 3, 8, ["bf16"]), ("lenet5", 3, 8, ["bf16"])]
    for name in ("vgg_tiny", "lenet5"):
        assert json.loads((tmp_path / name / "aot-report.json").read_text()) == {"model": name}
        assert (tmp_path / name / "aot-report.md").read_text() == f"# AOT report: {name}\n"
    seen.clear()
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "empty")
    assert main(["bench", "--aot", "--models", "vgg_tiny"]) == 0
    assert seen == [("vgg_tiny", 64, 32, ["fp32", "bf16", "fp16"])]
    assert "# AOT report: vgg_tiny" in capsys.readouterr().out
    assert os.listdir(".") == []  # nothing written without --out


def test_bench_rejects_an_unknown_model(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--aot", "--models", "nosuch"])
    assert e.value.code == 2 and "invalid choice: 'nosuch'" in capsys.readouterr().err


def test_anl_shapes_are_the_active_layers_inputs():
    """The one source of the ANL layers' shapes (the AOT report, the kernel benchmark, the held memory)."""
    assert step.anl_shapes("lenet5", 28) == [(6, 28, 28), (16, 10, 10)]
    shapes = step.anl_shapes("vgg16", 32)
    assert len(shapes) == 13 and shapes[0] == (64, 32, 32) and shapes[-1] == (512, 2, 2)


@pytest.mark.slow
def test_bench_aot_end_to_end(tmp_path):
    """The real AOT report of a small model in one dtype (launches recorded, compiled for sm_80 / sm_90 on this
    CPU): every ANL layer has its three kernels, none spills, each moves at least the minimum bytes."""
    argv = ["bench", "--aot", "--models", "vgg_tiny", "--batch", "4", "--size", "8", "--aot-dtypes", "fp32"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "aot-report.json").read_text())
    assert report["model"] == "vgg_tiny" and report["batch"] == 4 and list(report["dtypes"]) == ["fp32"]
    layers = report["dtypes"]["fp32"]["layers"]
    assert [tuple(e["shape"][1:]) for e in layers] == step.anl_shapes("vgg_tiny", 8)
    for e in layers:
        assert [k["kernel"] for k in e["kernels"]] == ["std", "noise_scale", "add_noise"]
        assert 0 < e["min_bytes"] <= e["bytes"]
    for k in report["kernels"].values():
        assert k["80"]["spill_stores"] == k["90"]["spill_stores"] == 0 and k["90"]["registers"] > 0
    assert (tmp_path / "aot-report.md").read_text().startswith("# AOT report: vgg_tiny, batch 4, 8x8")
