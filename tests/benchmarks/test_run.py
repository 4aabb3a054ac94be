"""The GPU campaign (``benchmarks/run.py``) end to end on a CPU at toy size (``--device cpu --smoke``): the
parts run or are skipped with their reason, a failing part does not lose the others, the time budget skips
what would start after it, and the results directory holds the few files a device call can bring back.
(Benchmarks are not tests: nothing here looks at time.)"""

import json
import os
import sys

import pytest

from anl_fused.benchmarks import run

SMOKE = ["--device", "cpu", "--smoke"]


def read(out):
    summary = json.loads((out / "summary.json").read_text())
    return summary, (out / "summary.md").read_text()


def test_campaign_smoke_runs_the_cpu_parts_and_records_why_the_others_did_not(tmp_path):
    out = tmp_path / "campaign"
    # no time budget here (a loaded machine would skip the last parts): the budget has its own test below
    assert run.main(SMOKE + ["--skip", "tests", "graphs", "aot", "--budget-s", "1e9", "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["summary.json", "summary.md"]
    summary, md = read(out)
    meta = summary["meta"]
    assert {"date", "python", "torch", "triton", "cuda", "cudnn", "device", "git_commit", "source_digest"} <= set(meta)
    parts = summary["parts"]
    assert list(parts) == list(run.PARTS)
    assert {n: p["status"] for n, p in parts.items()} == {
        "tests": "skipped",
        "steps": "ok",
        "graphs": "skipped",
        "kernels": "skipped",
        "aot": "skipped",
        "memory": "ok",
    }
    assert parts["kernels"]["reason"] == "the kernel bandwidth benchmark needs a CUDA device"
    assert parts["tests"]["reason"] == "--skip"
    (steps,) = parts["steps"]["result"]["steps"]
    assert set(steps["median_s"]) == {"plain", "naive", "tworound", "tworound-bf16probe"}
    assert {"tworound/plain", "tworound-bf16probe/plain", "tworound-bf16probe/tworound"} <= set(steps["ratios"])
    (mem,) = parts["memory"]["result"]["memory"]
    assert mem["held"]["float32"] > 0 and "needs a CUDA device" in mem["peaks"]
    assert "| steps | ok |" in md and "| vgg_tiny | 4 | 8 | fp32 |" in md and "needs a CUDA device" in md


def test_a_failing_part_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    def broken(ctx):
        raise RuntimeError("the steps part broke")

    monkeypatch.setitem(run.PART_FUNCS, "steps", broken)
    out = tmp_path / "c"
    assert run.main(SMOKE + ["--parts", "steps", "memory", "--out", str(out)]) == 1
    summary, md = read(out)
    assert summary["parts"]["steps"]["status"] == "error"
    assert summary["parts"]["steps"]["error"] == "RuntimeError: the steps part broke"
    assert "Traceback" in summary["parts"]["steps"]["traceback"]
    assert summary["parts"]["memory"]["status"] == "ok"
    assert "| steps | error: RuntimeError: the steps part broke |" in md


def _part_that_fails_to_import(tmp_path, monkeypatch):
    """A part whose module raises at import time, as one would on a torch without an API it uses."""
    (tmp_path / "anl_broken_part.py").write_text("from torch.library import no_such_api_in_this_torch\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def part(ctx):
        import anl_broken_part  # noqa: F401

    return part, "ImportError: cannot import name 'no_such_api_in_this_torch' from 'torch.library'"


def _part_that_exits(tmp_path, monkeypatch):
    """A part that calls a command-line ``main`` whose argparse rejects an argument (``SystemExit``)."""

    def part(ctx):
        run.argparse.ArgumentParser(prog="aot_report").parse_args(["--no-such-flag"])

    return part, "SystemExit: 2"


@pytest.mark.parametrize("make_part", [_part_that_fails_to_import, _part_that_exits])
def test_a_part_that_fails_to_import_or_exits_is_recorded_and_the_next_still_runs(tmp_path, monkeypatch, make_part):
    part, error = make_part(tmp_path, monkeypatch)
    monkeypatch.setitem(run.PART_FUNCS, "steps", part)
    out = tmp_path / "c"
    assert run.main(SMOKE + ["--parts", "steps", "memory", "--out", str(out)]) == 1
    summary, md = read(out)
    assert summary["parts"]["steps"]["status"] == "error"
    assert summary["parts"]["steps"]["error"].startswith(error)
    assert summary["parts"]["memory"]["status"] == "ok"
    assert "| steps | error: " + error in md


def test_a_library_that_does_not_import_is_recorded_and_every_part_still_runs(tmp_path, monkeypatch):
    """``anl_fused`` itself failing to import (e.g. a torch API missing at import time): the campaign writes its
    summary with the traceback, and each part records its own outcome."""
    monkeypatch.setitem(sys.modules, "anl_fused.experiments.files", None)  # the import run.main makes fails
    out = tmp_path / "c"
    assert run.main(SMOKE + ["--parts", "steps", "kernels", "--out", str(out)]) == 1
    summary, md = read(out)
    assert "Error: import of anl_fused.experiments.files halted" in summary["import_error"]
    assert summary["parts"]["steps"]["status"] == "ok"  # the parts do not need that module
    assert summary["parts"]["kernels"]["status"] == "skipped"
    assert "**anl_fused did not import**" in md and "| steps | ok |" in md


def test_time_budget_skips_the_parts_that_would_start_after_it(tmp_path):
    out = tmp_path / "c"
    assert run.main(SMOKE + ["--budget-s", "0", "--out", str(out)]) == 0
    summary, _ = read(out)
    assert {p["status"] for p in summary["parts"].values()} == {"skipped"}
    assert summary["parts"]["steps"]["reason"] == "time budget of 0 s spent before steps"


def test_the_command_in_the_docstring_and_the_docs_is_the_same():
    """The GPU campaign's command is documented in docs/speed.md (moved there from the README)."""
    with open(os.path.join(run.ROOT, "docs", "speed.md"), encoding="utf-8") as f:
        page = f.read()
    assert run.COMMAND in run.__doc__ and run.COMMAND in page


@pytest.mark.slow
def test_whole_smoke_campaign_with_a_failing_capture(tmp_path):
    """Every part at toy size, pytest on one small file, the AOT report of vgg_tiny; the graph part's child
    processes with an injected failure of TwoRound's capture: recorded, retried without the RNG replay in a
    fresh child, and the bf16 probe still measured (about a minute on this machine)."""
    out = tmp_path / "campaign"
    code = run.main(SMOKE + ["--pytest-args", "tests/test_layer.py", "--_fail-method", "tworound", "--out", str(out)])
    assert code == 0
    assert sorted(os.listdir(out)) == ["aot.json", "aot.md", "pytest.txt", "summary.json", "summary.md"]
    summary, md = read(out)
    parts = summary["parts"]
    assert parts["tests"]["result"]["returncode"] == 0 and "passed" in parts["tests"]["result"]["summary"]
    assert "passed" in (out / "pytest.txt").read_text()
    graphs = parts["graphs"]["result"]
    (methods,) = graphs["graphs"].values()
    assert methods["tworound"]["error"] == "RuntimeError: injected failure of tworound"
    measured = {m for m, r in methods.items() if "eager_ms" in r}
    assert {"plain", "tworound-norng", "tworound-bf16probe"} <= measured
    assert graphs["child_processes"] == 2
    assert parts["aot"]["status"] == "ok" and "# AOT report" in (out / "aot.md").read_text()
    assert "capture failed" not in md and "not measured: RuntimeError: injected failure of tworound" in md


@pytest.mark.slow
def test_a_graph_child_that_dies_is_recorded_and_the_rest_still_runs():
    """A child process killed in the middle of a capture (a segfault, the OOM killer): its job is recorded
    with the exit code, a TwoRound method is retried without the RNG replay, and the others run in a new
    child."""
    ctx = {"cfg": run.SMOKE, "device": "cpu", "cuda": False, "smoke": True, "budget_left": lambda: 300.0}
    ctx["fail_method"] = "crash:tworound"
    (methods,) = run.part_graphs(ctx)["graphs"].values()
    assert methods["tworound"]["error"].startswith("child exited 9")
    assert {"plain", "tworound-norng", "tworound-bf16probe"} <= {m for m, r in methods.items() if "eager_ms" in r}


def test_the_campaign_writer_replaces_and_never_writes_through_a_symlink(tmp_path):
    path = tmp_path / "summary.md"
    run._write_replacing(str(path), "one")
    run._write_replacing(str(path), "two")
    assert path.read_text() == "two" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.md"]
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    os.symlink(outside, f"{path}.{os.getpid()}.tmp")
    with pytest.raises(FileExistsError):
        run._write_replacing(str(path), "three")
    assert outside.read_text() == "keep" and path.read_text() == "two"
