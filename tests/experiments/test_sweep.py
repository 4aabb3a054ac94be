"""The seed sweep's bookkeeping (the runs themselves: test_table1's campaign, test_demo): arguments from settings,
a run's state and the arguments that continue it."""

from __future__ import annotations

import json

from anl_fused.experiments import sweep


def test_settings_become_train_arguments_and_the_state_decides_resume(tmp_path):
    d = tmp_path / "run"
    settings = {"model": "lenet5", "variant": "anl", "eps": 0.03, "norm": None, "epochs": 2, "finetune_epochs": 1}
    job = sweep.train_job("anl seed 0", str(d), {**settings, "compile": True, "download": False}, threads=3)
    want = "train --model lenet5 --variant anl --eps 0.03 --epochs 2 --finetune-epochs 1 --compile --threads 3"
    assert list(job.args) == [*want.split(" "), "--out", str(d), "--no-progress"]
    assert job.epochs == 3 and sweep.state(job) == "new" and sweep.command(job) == list(job.args)
    assert sweep.command(job, overwrite=True) == [*job.args, "--overwrite"]
    d.mkdir()
    (d / "config.json").write_text("{}")  # as Ctrl-C in a run's first seconds leaves it
    assert sweep.state(job) == "partial" and sweep.command(job)[-1] == "--resume"
    lines = [json.dumps({"epoch": e, "test_err": 0.1}) for e in (1, 2)]
    (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert sweep.state(job) == "partial" and not sweep.finished(str(d), 3)
    (d / "metrics.jsonl").write_text("\n".join(lines + [json.dumps({"epoch": 3, "test_err": 0.1})]) + "\n")
    assert sweep.state(job) == "finished"
    assert sweep.run([job]) == []  # nothing left to train: no child started
