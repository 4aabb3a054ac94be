"""The seed sweep: arguments from settings, a run's state and the arguments that continue it; runs in parallel child
processes, skipped when finished, resumed exactly; the same seed gives every variant the same initial weights."""

from __future__ import annotations

import json
import pathlib
import sys

import pytest
import torch

from anl_fused.cli import main
from anl_fused.experiments import data, sweep
from anl_fused.experiments.train import TrainConfig, fit
from anl_fused.experiments.train.metrics import read_metrics


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


def _job(root: pathlib.Path, variant: str) -> sweep.Job:
    """LeNet-5 on digits, 2 epochs of batch 256: plain in one phase, ANL 1 + 1."""
    phases = {"epochs": 2, "finetune_epochs": 0} if variant == "plain" else {"epochs": 1, "finetune_epochs": 1}
    settings = {"model": "lenet5", "dataset": "digits", "variant": variant, "batch_size": 256, "seed": 0, **phases}
    return sweep.train_job(variant, str(root / variant), {**settings, "eps": 0.03 if variant == "anl" else None}, 1)


@pytest.mark.slow
def test_runs_in_parallel_skips_finished_runs_and_resumes_exactly(tmp_path):
    """Two runs in parallel child processes; a second sweep trains nothing; an interrupted run (stopped after 3
    steps, as Ctrl-C would) is resumed to the same result as an uninterrupted one."""
    jobs, logs = [_job(tmp_path / "a", v) for v in ("plain", "anl")], []
    assert sweep.run(jobs, parallel=2, log=logs.append) == []
    assert [s.split()[0] for s in logs].count("started") == 2 and [s.split()[0] for s in logs].count("finished") == 2
    assert [sweep.state(j) for j in jobs] == ["finished", "finished"]
    err_anl = read_metrics(jobs[1].run_dir)[-1]["test_err"]
    logs.clear()
    assert sweep.run(jobs, parallel=2, log=logs.append) == [] and logs == []  # nothing is trained again

    cut = _job(tmp_path / "b", "anl")
    assert main([*sweep.command(cut), "--stop-after-steps", "3"]) == 0
    assert sweep.state(cut) == "partial" and sweep.command(cut)[-1] == "--resume"
    assert sweep.run([cut], log=logs.append) == []
    assert "resumed from" in (pathlib.Path(cut.run_dir) / sweep.LOG_NAME).read_text()
    assert read_metrics(cut.run_dir)[-1]["test_err"] == err_anl  # exact resume


def test_same_seed_same_initial_weights_for_every_method():
    """The paper trains its Table 1 models 'under same initialization condition': the sweeps pair runs by seed."""
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


@pytest.mark.skipif(sys.version_info < (3, 11), reason="PYTHONSAFEPATH needs Python 3.11")
def test_children_import_the_installed_package_not_the_working_directorys(tmp_path, monkeypatch):
    """A sweep started where an ``anl_fused/`` directory lies (a checkout's root next to a non-editable install, whose
    ``anl_fused/`` has no kernels) still trains with the package the driver's interpreter imports."""
    shadow = tmp_path / "anl_fused"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('the working directory shadowed the installed package')\n")
    monkeypatch.chdir(tmp_path)
    settings = {"model": "lenet5", "dataset": "digits", "variant": "plain", "epochs": 1, "finetune_epochs": 0}
    job = sweep.train_job("plain", str(tmp_path / "run"), {**settings, "batch_size": 512, "seed": 0}, 1)
    assert sweep.run([job]) == []
    assert sweep.state(job) == "finished"
