"""A run directory is never lost (issue #9): one ``anl-fused train`` per directory, no silent
overwrite, ``--resume`` with the run's own settings, changes only where safe and recorded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from anl_fused.cli import main
from anl_fused.experiments import checkpoint
from anl_fused.experiments.files import DirLock

# lenet5 on digits, 2 steps per epoch (897 training images, batches of 448)
RUN = ["train", "--model", "lenet5", "--batch-size", "448", "--eps", "0.05", "--no-progress"]


def _snapshot(d):
    """Every file of ``d`` with its bytes and modification time."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(d.iterdir())}


def _metrics(d):
    return [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]


def _strip(rows):
    return [{k: v for k, v in r.items() if "time" not in k} for r in rows]


def _error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("anl-fused train: error: "), lines
    return lines[0]


def test_a_held_run_directory_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    with DirLock(out, "train.lock"):  # as a running anl-fused train holds it
        assert main(RUN + ["--epochs", "1", "--out", str(out)]) == 2
        err = _error(capsys)
        assert str(out) in err and f"pid {os.getpid()}" in err and "in use by a running anl-fused train" in err
        assert os.listdir(out) == ["train.lock"]


@pytest.mark.slow
def test_second_train_on_the_same_out_exits_at_once_naming_the_running_process(tmp_path, capsys):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "anl_fused.cli", *RUN, "--epochs", "500", "--out", str(out)]
    first = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    try:
        for _ in range(1200):  # until it trains (its Ctrl-C handler is in place)
            if (out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text():
                break
            time.sleep(0.05)
        assert main(RUN + ["--epochs", "1", "--out", str(out)]) == 2
        err = _error(capsys)
        assert str(out) in err and f"pid {first.pid}" in err and "in use by a running anl-fused train" in err
        assert main(RUN + ["--epochs", "1", "--out", str(out), "--resume"]) == 2  # --resume too
        assert f"pid {first.pid}" in _error(capsys)
    finally:
        first.send_signal(signal.SIGINT)  # first Ctrl-C: checkpoint and stop
        _, stderr = first.communicate(timeout=120)
    assert first.returncode == 130, stderr[-2000:]
    assert not (out / "train.lock").exists()  # released
    assert checkpoint.load(out / "checkpoint.pt")["config"]["epochs"] == 500  # the first run's files, untouched


@pytest.mark.parametrize("stop", [None, 3])  # a finished run; one interrupted in epoch 2
def test_an_existing_run_is_not_overwritten_without_resume_or_overwrite(tmp_path, capsys, stop):
    out = tmp_path / "run"
    first = RUN + ["--epochs", "2", "--out", str(out)]
    assert main(first + ([] if stop is None else ["--stop-after-steps", str(stop)])) == 0
    (out / "notes.txt").write_text("mine")
    before = _snapshot(out)
    capsys.readouterr()
    assert main(RUN + ["--epochs", "3", "--lr", "0.05", "--out", str(out)]) == 2
    err = _error(capsys)
    assert str(out) in err and "--resume" in err and "--overwrite" in err
    assert ("finished: 2 of 2 epochs" if stop is None else "interrupted after 1 of 2 epochs") in err
    assert _snapshot(out) == before  # nothing in it changed
    assert main(["train", "--out", str(out), "--no-progress"]) == 2  # the defaults: still one line, no note first
    assert "already holds a run" in _error(capsys)
    assert _snapshot(out) == before
    assert main(RUN + ["--epochs", "1", "--lr", "0.05", "--out", str(out), "--overwrite"]) == 0
    assert [r["epoch"] for r in _metrics(out)] == [1]
    assert json.loads((out / "config.json").read_text())["lr"] == 0.05
    state = checkpoint.load(out / "checkpoint.pt")
    assert state["global_step"] == 2 and state["config"]["lr"] == 0.05
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own files are replaced


def test_resume_without_flags_takes_the_runs_settings_and_ends_where_it_would_have(tmp_path):
    """The issue: --resume with the flags left out ran to epoch 10 (the default) instead of 45."""
    args = RUN + ["--epochs", "3", "--finetune-epochs", "1", "--lr", "0.05", "--seed", "3", "--checkpoint-every", "1"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert main(args + ["--out", str(ref)]) == 0
    assert main(args + ["--out", str(cut), "--stop-after-steps", "3"]) == 0
    assert main(["train", "--out", str(cut), "--resume", "--no-progress"]) == 0
    assert _strip(_metrics(cut)) == _strip(_metrics(ref)) and len(_metrics(cut)) == 4
    a, b = (torch.load(d / "checkpoint.pt", weights_only=True) for d in (ref, cut))
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert b["changes"] == [] and json.loads((cut / "config.json").read_text())["resume_changes"] == []


def test_resume_may_extend_the_run_and_records_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(RUN + ["--epochs", "2", "--finetune-epochs", "1", "--out", str(out), "--stop-after-steps", "3"]) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--epochs", "3", "--device", "cpu", "--no-progress"]) == 0
    assert "changed on resume" in capsys.readouterr().err
    rows = _metrics(out)
    assert [r["phase"] for r in rows] == ["anl", "anl", "anl", "finetune"] and rows[-1]["lr"] == 1e-3
    config = json.loads((out / "config.json").read_text())
    assert config["epochs"] == 3 and config["device"] == "cpu"
    (change,) = config["resume_changes"]
    assert change["changed"] == {"epochs": [2, 3], "device": ["auto", "cpu"]}
    assert (change["epoch"], change["step"], change["global_step"]) == (1, 1, 3)
    assert checkpoint.load(out / "checkpoint.pt")["changes"] == config["resume_changes"]
    # a finished run: --resume with more fine-tuning continues it; without, there is nothing to do
    assert main(["train", "--out", str(out), "--resume", "--finetune-epochs", "2", "--no-progress"]) == 0
    assert [r["epoch"] for r in _metrics(out)] == [1, 2, 3, 4, 5]
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert "the run is finished (5 of 5 epochs)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "change,why",
    [
        (["--epochs", "1"], "--epochs 1 --finetune-epochs 1 (2 in all): the run has trained (into) 3 epoch(s)"),
        (["--epochs", "1", "--finetune-epochs", "5"], "phase 1 can change only while the run is still in it"),
        (["--epochs", "4"], "phase 1 can change only while the run is still in it"),
        (["--finetune-lr", "continue"], "the fine-tuning phase has begun"),
        (["--lr", "0.05"], "belongs to a different run; differing settings lr: checkpoint 0.1 vs now 0.05"),
        (["--variant", "plain"], "differing settings variant"),
        (["--batch-size", "128"], "differing settings batch_size"),
    ],
)
def test_resume_refuses_changes_that_rewrite_the_run_and_changes_nothing(tmp_path, capsys, change, why):
    out = tmp_path / "run"
    # stopped in epoch 3 of 2 + 1: in the fine-tuning phase
    assert main(RUN + ["--epochs", "2", "--finetune-epochs", "1", "--out", str(out), "--stop-after-steps", "5"]) == 0
    before = _snapshot(out)
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--no-progress", *change]) == 2
    err = _error(capsys)
    assert why in err and str(out / "checkpoint.pt") in err and "--finetune-epochs" in err, err
    assert _snapshot(out) == before


def test_orphan_temp_files_are_cleaned_on_the_next_start(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(RUN + ["--epochs", "2", "--out", str(out), "--stop-after-steps", "1"]) == 0
    (out / "checkpoint.pt.abc_1234.tmp").write_bytes(b"half a checkpoint")
    (out / "keep.tmp").write_text("not ours")
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert "removed temporary files" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "config.json", "keep.tmp", "metrics.jsonl"]


def test_unwritable_out_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory")
    assert main(RUN + ["--epochs", "1", "--out", str(blocker / "run")]) == 1
    err = _error(capsys)
    assert str(blocker) in err
