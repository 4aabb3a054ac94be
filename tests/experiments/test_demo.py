"""``anl-fused demo --quick``: trains, prints the table, writes the plot and results."""

from __future__ import annotations

import json

import pytest
import torch

from anl_fused.cli import main


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)  # the demo sets its own thread count


def test_demo_quick(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for label in ("plain", "ANL eps=0.1", "opposite eps=-0.1", "ms/step", "test error", "total wall time"):
        assert label in text
    png = (out / "demo.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    res = json.loads((out / "results.json").read_text())
    assert set(res["summary"]) == {"plain", "anl", "opposite"}
    for v in res["summary"].values():
        assert v["test_err"]["n"] == 2 and 0 <= v["test_err"]["mean"] <= 100 and v["time_per_step_ms"] > 0
    assert (out / "runs" / "anl-seed1" / "metrics.jsonl").exists()


def test_demo_rejects_unknown_variant(tmp_path, capsys):
    assert main(["demo", "--quick", "--variants", "plain,mixup", "--out", str(tmp_path)]) == 2
    assert "mixup" in capsys.readouterr().err


def test_demo_rejects_bad_eps(tmp_path, capsys):
    for bad in ("0.1,abc", "-0.1", "nan"):
        assert main(["demo", "--quick", "--eps", bad, "--out", str(tmp_path)]) == 2
        assert "--eps must be positive" in capsys.readouterr().err
