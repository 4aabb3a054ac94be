"""``anl-fused demo``: trains (``--quick``), prints the table from its results.json, refuses bad numbers."""

from __future__ import annotations

import json
import re

import pytest
import torch

from anl_fused.cli import main
from anl_fused.experiments import demo, sweep, train
from anl_fused.experiments.models import MODELS


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)  # the demo sets its own thread count


def test_demo_quick(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for label in ("plain", "ANL eps=0.2", "opposite eps=-0.2", "ms/step", "test error", "total wall time"):
        assert label in text
    png = (out / "demo.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    res = json.loads((out / "results.json").read_text())
    assert set(res["summary"]) == {"plain", "anl", "opposite"}
    for v in res["summary"].values():
        assert v["test_err"]["n"] == 2 and 0 <= v["test_err"]["mean"] <= 100 and v["time_per_step_ms"] > 0
        assert v["time_ratio_vs_plain"] == pytest.approx(
            v["time_per_step_ms"] / res["summary"]["plain"]["time_per_step_ms"]
        )
    for key in ("anl", "opposite"):
        d = res["summary"][key]["paired_diff_vs_plain"]
        assert d["better"] + d["same"] + d["worse"] == 2
    assert (out / "runs" / "anl-seed1" / "metrics.jsonl").exists()
    # what was printed is format_table of the JSON: the README's renderer prints the same
    assert demo.format_table(res) in text
    assert (out / "results.txt").read_text() == demo.format_table(res) + "\n"
    m, p = res["machine"], res["protocol"]
    assert m["command"] == f"anl-fused demo --quick --out {out}" and m["threads"] == 1
    assert m["torch"] == torch.__version__ and m["cpu"] and m["date"] and "triton" in m
    # the header names the sec. 4.2.1 schedule with the run's numbers, why eps 0.2, and train's default eps
    lines = text.splitlines()
    assert (
        "schedule (sec. 4.2.1): lr x0.5 when the last 5 epochs found no new best val loss, each rate kept >= 5 "
        "epochs, floor 0.001"
    ) in lines
    assert "eps 0.2: chosen on this split's validation images (lowest mean final validation error over 5 " in text
    assert "seeds, docs/demo.md), never on test error;" in text
    assert f"`anl-fused train` defaults to eps {MODELS['vgg_tiny'].eps:g} for vgg_tiny (`anl-fused models`)." in lines
    res["protocol"]["eps"] = [0.05]
    assert "eps 0.05 (--eps); `anl-fused train` defaults to eps 0.02 for vgg_tiny" in demo.format_table(res)
    defaults = train.TrainConfig()
    assert (p["patience"], p["hold_epochs"], p["min_lr"], p["lr_factor"], p["epochs"], p["finetune_epochs"]) == (
        defaults.patience,
        defaults.hold_epochs,
        defaults.min_lr,
        defaults.lr_factor,
        1,
        1,
    )


def test_help_says_what_runs(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "SGD + ReduceLROnPlateau" not in demo.__doc__
    assert "PlateauSchedule" in demo.__doc__
    assert "none of the last 5 epochs found a new best validation loss" in text and "floor 0.001" in text
    assert "chosen on this split's validation images" in text and "never on test error" in text
    assert "`anl-fused train` defaults to the model's eps" in text
    assert "vgg_tiny: 0.02" in text


def test_demo_rejects_unknown_variant(tmp_path, capsys):
    assert main(["demo", "--quick", "--variants", "plain,mixup", "--out", str(tmp_path)]) == 2
    assert "mixup" in capsys.readouterr().err


BAD = [
    ("--seeds", "0"),
    ("--seeds", "-1"),
    ("--seeds", "1.5"),
    ("--epochs", "0"),
    ("--epochs", "-2"),
    ("--finetune-epochs", "-1"),
    ("--batch-size", "0"),
    ("--batch-size", "898"),
    ("--threads", "0"),
    ("--threads", "-2"),
    ("--lr", "0"),
    ("--lr", "-0.1"),
    ("--lr", "0.0001"),
    ("--lr", "nan"),
    ("--eps", "0.1,abc"),
    ("--eps", "-0.1"),
    ("--eps", "nan"),
    ("--eps", "0"),
    ("--eps", "0.1,,0.2"),
    ("--eps", "inf"),
    ("--eps", ""),
]


@pytest.mark.parametrize("flag,value", BAD)
def test_demo_rejects_bad_numbers_before_training(flag, value, tmp_path, capsys, monkeypatch):
    """A usage error (exit code 2) whose error line names the option and the value; nothing trains or is written."""
    monkeypatch.setattr(sweep, "run", lambda *a, **k: pytest.fail("trained despite a bad argument"))
    out = tmp_path / "out"
    try:
        code = main(
            ["demo", flag, value, "--seeds", "2", "--out", str(out)]
            if flag != "--seeds"
            else ["demo", flag, value, "--out", str(out)]
        )
    except SystemExit as e:
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith(f"anl-fused demo: error: argument {flag}: "), err
    assert re.search(rf"got '?{re.escape(value)}'?$", errors[0]), errors[0]
    assert not out.exists()


def test_the_largest_batch_is_the_training_set(tmp_path, monkeypatch):
    """--batch-size 897 (the digits training set) passes the check and reaches training."""
    calls = []

    def run(jobs, **k):
        calls.append(jobs)
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "run", run)
    with pytest.raises(KeyboardInterrupt):
        main(["demo", "--batch-size", "897", "--out", str(tmp_path / "out")])
    args = calls[0][0].args
    assert calls and args[args.index("--batch-size") + 1] == "897"
