"""``anl-fused figures``: each figure command writes a non-empty PNG from real (tiny) runs."""

from __future__ import annotations

import pytest

from anl_fused.cli import main
from anl_fused.experiments.train import TrainConfig, fit

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny LeNet-5 runs on digits: plain, Gaussian, ANL at two eps (two seeds at one), opposite."""
    root = tmp_path_factory.mktemp("runs")
    specs = [("plain", 0.0, 0), ("gaussian", 0.03, 0), ("anl", 0.03, 0), ("anl", 0.03, 1), ("anl", 0.1, 0),
             ("opposite", 0.03, 0)]
    for variant, eps, seed in specs:
        fit(TrainConfig(model="lenet5", variant=variant, eps=eps, epochs=2, batch_size=256, lr=0.01, seed=seed),
            str(root / f"{variant}-{eps}-{seed}"), progress=False, log=lambda s: None)
    return root


def _png(path):
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 5000
    return data


def test_eps_sweep(runs, tmp_path, capsys):
    out = tmp_path / "sweep.png"
    assert main(["figures", "eps-sweep", "--runs", str(runs), "--out", str(out)]) == 0
    _png(out)
    text = capsys.readouterr().out
    assert "lenet5 eps=0.03: test error" in text and "over 2 run(s)" in text
    assert "eps=0:" in text and "eps=-0.03" in text and "eps=0.1" in text


def test_layer_std(runs, tmp_path):
    out = tmp_path / "std.png"
    assert main(["figures", "layer-std", "--runs", str(runs / "anl-0.03-0"), str(runs / "gaussian-0.03-0"),
                 "--out", str(out)]) == 0
    _png(out)


def test_layer_std_without_anl_is_an_error(runs, tmp_path, capsys):
    assert main(["figures", "layer-std", "--runs", str(runs / "plain-0.0-0"), "--out", str(tmp_path / "x.png")]) == 2
    assert "no anl_std" in capsys.readouterr().err


def test_feature_maps(runs, tmp_path):
    out = tmp_path / "fm.png"
    order = ["plain-0.0-0", "gaussian-0.03-0", "anl-0.03-0", "opposite-0.03-0"]
    assert main(["figures", "feature-maps", "--runs", *[str(runs / r) for r in order], "--out", str(out),
                 "--image-index", "3"]) == 0
    _png(out)


def test_missing_runs_are_reported(tmp_path, capsys):
    assert main(["figures", "eps-sweep", "--runs", str(tmp_path / "nope"), "--out", str(tmp_path / "x.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
