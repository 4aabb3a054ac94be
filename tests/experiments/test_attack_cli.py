"""``anl-fused attack`` on checkpoints of ``anl-fused train`` (digits, tiny budget)."""

import json

import pytest
import torch

from anl_fused.experiments import attacks, data
from anl_fused.experiments.attack_cli import load_trained
from anl_fused.cli import main

TRAIN = ["train", "--model", "lenet5", "--dataset", "digits", "--batch-size", "128", "--no-progress", "--epochs", "1"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    runs = {"plain": ["--variant", "plain"], "anl": ["--variant", "anl", "--eps", "0.03"]}
    for name, extra in runs.items():
        assert main(TRAIN + extra + ["--out", str(root / name)]) == 0
    return {name: str(root / name / "checkpoint.pt") for name in runs}


def test_attack_matrix_written_and_diagonal_is_white_box(checkpoints, tmp_path, capsys):
    out = tmp_path / "attack"
    models = [f"{k}={v}" for k, v in checkpoints.items()]
    assert main(["attack", "--models", *models, "--dataset", "digits", "--limit", "64", "--ifgsm-steps", "2",
                 "--out", str(out)]) == 0
    result = json.loads((out / "transfer.json").read_text())
    assert result["models"] == ["plain", "anl"] and result["n"] == 64
    assert (out / "transfer.png").stat().st_size > 5000
    assert "plain" in (out / "transfer.md").read_text() and "<u>" in capsys.readouterr().out
    # the white-box entry equals a direct FGSM evaluation of the same model
    model, _ = load_trained(checkpoints["anl"])
    bundle = data.load("digits")
    x, y = bundle.test.x[:64].float(), bundle.test.y[:64]
    x_adv = attacks.fgsm(model, x, y, 16 / 255, mean=bundle.info.mean, std=bundle.info.std)
    acc = attacks.accuracy(model, x_adv, y, mean=bundle.info.mean, std=bundle.info.std)
    fgsm_name = next(a for a in result["attacks"] if a.startswith("FGSM"))
    assert result["transfer"][fgsm_name]["anl"]["anl"] == pytest.approx(acc)


def test_bad_model_spec_and_foreign_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["attack", "--models", "no-equals-sign"])
    bad = tmp_path / "bad.pt"
    torch.save({"hello": 1}, bad)
    with pytest.raises(Exception, match="not an anl-fused training checkpoint"):
        main(["attack", "--models", f"x={bad}"])
