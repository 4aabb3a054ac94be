"""``anl-fused attack`` on checkpoints of ``anl-fused train`` (digits, tiny budget)."""

import errno
import json
import os

import pytest
import torch

from anl_fused.cli import main
from anl_fused.experiments import attack_cli, attacks, data
from anl_fused.experiments.attack_cli import load_trained

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
    assert (
        main(
            [
                "attack",
                "--models",
                *models,
                "--dataset",
                "digits",
                "--limit",
                "64",
                "--ifgsm-steps",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
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
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["attack", "--models", f"x={bad}", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"anl-fused attack: error: checkpoint file {str(bad)!r} is not an anl-fused training checkpoint "
        "(found a dict with format=None, expected format='anl-fused-train')"
    ]
    assert os.listdir(out) == []  # --out was created first; nothing half-written, the lock is gone


class _Pickled:
    pass


@pytest.mark.parametrize("kind", ["missing", "object", "garbage"])
def test_unusable_checkpoint_is_one_line_without_unsafe_advice(tmp_path, capsys, kind):
    path = tmp_path / "c.pt"
    if kind == "object":
        torch.save(_Pickled(), path)  # needs unsafe unpickling
    elif kind == "garbage":
        path.write_bytes(b"\x00garbage" * 100)
    assert main(["attack", "--models", f"x={path}", "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"anl-fused attack: error: checkpoint file {str(path)!r}"), err
    assert {"missing": "does not exist", "object": "_Pickled", "garbage": "corrupted"}[kind] in err[0]
    assert "weights_only=False" not in err[0] and "set to `False`" not in err[0] and "\x1b" not in err[0]


def test_out_is_checked_before_any_work(tmp_path, capsys, monkeypatch, checkpoints):
    def forbidden(*a, **k):
        raise AssertionError("computed before checking --out")

    monkeypatch.setattr(attacks, "evaluate_transfer", forbidden)
    monkeypatch.setattr(attack_cli, "load_trained", forbidden)
    blocker = tmp_path / "file"
    blocker.write_text("a file where --out's parent should be")
    models = [f"{k}={v}" for k, v in checkpoints.items()]
    assert main(["attack", "--models", *models, "--out", str(blocker / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"anl-fused attack: error: cannot use --out {str(blocker / 'out')!r}")


def test_full_disk_leaves_no_half_written_file(tmp_path, capsys, monkeypatch, checkpoints):
    out = tmp_path / "out"
    out.mkdir()
    (out / "transfer.md.ab12cd34.tmp").write_text("left by a killed run")
    real_fsync = os.fsync

    def full(fd):
        if os.fstat(fd).st_size > 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    models = [f"{k}={v}" for k, v in checkpoints.items()]
    assert main(["attack", "--models", *models, "--limit", "16", "--ifgsm-steps", "1", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert (
        err[-1]
        == (f"anl-fused attack: error: writing the results to {str(out)!r} failed: [Errno 28] No space left on device")
        and "Traceback" not in captured.err
    )
    assert "5/5" in captured.err  # the progress bar: clean accuracy + 2 attacks x 2 source models
    assert os.listdir(out) == []  # no result, no temporary file (the orphan was cleaned on start)


def test_duplicate_names_and_foreign_dataset_are_one_line(checkpoints, tmp_path, capsys):
    plain = checkpoints["plain"]
    assert main(["attack", "--models", f"a={plain}", f"a={plain}", "--out", str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "anl-fused attack: error: model name 'a' is given twice in --models: each needs its own name"
    assert main(["attack", "--models", f"a={plain}", "--dataset", "cifar10", "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"anl-fused attack: error: {plain} was trained on digits, not cifar10 (--dataset)"
