"""``anl-fused figures``: each figure command writes a non-empty PNG from real (tiny) runs."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest
import torch
from torch import nn

from anl_fused.cli import main
from anl_fused.experiments import figures
from anl_fused.experiments.train import TrainConfig, fit

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny LeNet-5 runs on digits: plain, Gaussian, ANL at two eps (two seeds at one), opposite."""
    root = tmp_path_factory.mktemp("runs")
    specs = [
        ("plain", 0.0, 0),
        ("gaussian", 0.03, 0),
        ("anl", 0.03, 0),
        ("anl", 0.03, 1),
        ("anl", 0.1, 0),
        ("opposite", 0.03, 0),
    ]
    for variant, eps, seed in specs:
        fit(
            TrainConfig(model="lenet5", variant=variant, eps=eps, epochs=2, batch_size=64, lr=0.05, seed=seed),
            str(root / f"{variant}-{eps}-{seed}"),
            progress=False,
            log=lambda s: None,
        )
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
    panel = "lenet5 on digits, 2 epochs, batch 64 | norm=sample, 2 + 0 epochs"
    assert f"{panel} | eps=0.03: test error" in text and "over 2 seeds (0, 1)" in text
    assert f"{panel} | eps=0:" in text and "eps=-0.03" in text and "eps=0.1" in text


def _copy_run(src, dst, **config):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(config)
    (dst / "config.json").write_text(json.dumps(cfg))


def test_eps_sweep_groups_like_runs_skips_unfinished_and_counts_seeds_truthfully(runs, tmp_path, capsys):
    """Issue #9: unlike runs (another model, another epoch count) were averaged, an interrupted run
    counted, and three seed-0 runs were called "3 seeds"."""
    extra = tmp_path / "extra"
    extra.mkdir()
    _copy_run(runs / "anl-0.03-0", extra / "dup1")  # same settings, same seed
    _copy_run(runs / "anl-0.03-0", extra / "dup2")
    _copy_run(runs / "anl-0.03-0", extra / "other-model", model="vgg_tiny")
    _copy_run(runs / "anl-0.03-0", extra / "interrupted", finetune_epochs=3)  # 2 of 5 epochs done
    _copy_run(runs / "anl-0.03-0", extra / "layer-norm", norm="layer")
    _copy_run(runs / "anl-0.03-1", extra / "two-phase-anl", epochs=1, finetune_epochs=1)
    _copy_run(runs / "plain-0.0-0", extra / "two-phase-plain", epochs=1, finetune_epochs=1, finetune_lr="floor")
    _copy_run(runs / "anl-0.1-0", extra / "diverged", norm="layer")
    lines = (extra / "diverged" / "metrics.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])
    last["test_err"] = 0.9
    (extra / "diverged" / "metrics.jsonl").write_text("\n".join(lines[:-1] + [json.dumps(last)]) + "\n")
    table = figures.eps_sweep(
        figures.find_runs([str(runs / "anl-0.03-0"), str(runs / "plain-0.0-0"), str(extra)]), str(tmp_path / "s.png")
    )
    assert capsys.readouterr().err == f"warning: skipping unfinished run {extra / 'interrupted'} (2 of 5 epochs)\n"
    assert set(table) == {"lenet5 on digits, 2 epochs, batch 64", "vgg_tiny on digits, 2 epochs, batch 64"}
    lenet = table["lenet5 on digits, 2 epochs, batch 64"]
    assert set(lenet) == {
        "norm=sample, 2 + 0 epochs",
        "norm=layer, 2 + 0 epochs",
        "norm=sample, 1 + 1 epochs",
        "baseline, one schedule",
    }
    # the eps = 0 point of a two-phase series is the plain run trained in the same two phases
    two_phase_err = json.loads((extra / "two-phase-plain" / "metrics.jsonl").read_text().splitlines()[-1])["test_err"]
    assert lenet["norm=sample, 1 + 1 epochs"][0.0] == [(0, two_phase_err * 100)]
    assert lenet["norm=sample, 2 + 0 epochs"][0.0] == lenet["baseline, one schedule"][0.0]
    assert [s for s, _ in lenet["norm=sample, 2 + 0 epochs"][0.03]] == [0, 0, 0]
    assert [s for s, _ in lenet["norm=layer, 2 + 0 epochs"][0.03]] == [0]
    assert 0.0 in lenet["norm=layer, 2 + 0 epochs"]  # the baseline is every series' eps = 0 point
    assert 0.0 not in table["vgg_tiny on digits, 2 epochs, batch 64"]["norm=sample, 2 + 0 epochs"]
    assert figures._seeds_label([0, 0, 0]) == "3 runs, 1 seed (0, 0, 0)"
    assert figures._seeds_label([2, 0, 1]) == "3 seeds (0, 1, 2)"
    assert main(["figures", "eps-sweep", "--runs", str(extra), "--out", str(tmp_path / "t.png")]) == 0
    captured = capsys.readouterr()
    assert "3 runs" not in captured.out and "2 runs, 1 seed (0, 0)" in captured.out
    assert "norm=layer, 2 + 0 epochs | eps=0.1: test error - over 1 seed (0), 1 diverged (not averaged)" in captured.out
    assert "skipping unfinished run" in captured.err


def test_layer_std(runs, tmp_path):
    out = tmp_path / "std.png"
    assert (
        main(
            [
                "figures",
                "layer-std",
                "--runs",
                str(runs / "anl-0.03-0"),
                str(runs / "gaussian-0.03-0"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    _png(out)


def test_layer_std_without_anl_is_an_error(runs, tmp_path, capsys):
    assert main(["figures", "layer-std", "--runs", str(runs / "plain-0.0-0"), "--out", str(tmp_path / "x.png")]) == 2
    assert "no anl_std" in capsys.readouterr().err


def test_feature_maps(runs, tmp_path):
    out = tmp_path / "fm.png"
    order = ["plain-0.0-0", "gaussian-0.03-0", "anl-0.03-0", "opposite-0.03-0"]
    assert (
        main(
            [
                "figures",
                "feature-maps",
                "--runs",
                *[str(runs / r) for r in order],
                "--out",
                str(out),
                "--image-index",
                "3",
            ]
        )
        == 0
    )
    _png(out)
    rows = figures.feature_maps([str(runs / r) for r in order], str(out), image_index=3)
    for _, _, maps in rows:  # sigmoid(conv): negative pre-activations show as values below 0.5
        assert maps.shape[0] == 6 and (maps < 0.5).any() and (maps > 0.5).any()


def test_first_conv_output_is_the_conv_not_what_an_inplace_relu_made_of_it():
    """Fig. 3 plotted sigmoid(ReLU(conv)): the hook kept a view of the conv's output, which
    LeNet's ReLU(inplace=True) then overwrote."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.LazyLinear(3))
    x = torch.randn(2, 1, 8, 8)
    model(x)  # materialize the lazy layer
    got = figures.first_conv_output(model.train(), x)
    with torch.no_grad():
        want = model[0](x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert (got < 0).float().mean() > 0.2  # negative pre-activations reach the figure
    assert model.training  # mode restored


def test_missing_runs_are_reported(tmp_path, capsys):
    assert main(["figures", "eps-sweep", "--runs", str(tmp_path / "nope"), "--out", str(tmp_path / "x.png")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("figure", ["eps-sweep", "layer-std", "feature-maps"])
def test_a_run_without_a_finished_epoch_is_skipped_with_a_warning(runs, tmp_path, capsys, figure):
    """A run that has started (config.json, an empty metrics.jsonl) is unfinished, not an error: `figures
    eps-sweep --runs runs/*` stopped with "'r4/metrics.jsonl' is empty"."""
    started = tmp_path / "started"
    _copy_run(runs / "anl-0.03-1", started)
    (started / "metrics.jsonl").write_text("")
    out = tmp_path / "f.png"
    assert main(["figures", figure, "--runs", str(runs / "anl-0.03-0"), str(started), "--out", str(out)]) == 0
    _png(out)
    err = capsys.readouterr().err
    assert f"warning: skipping unfinished run {started}" in err and "error" not in err
    assert main(["figures", figure, "--runs", str(started), "--out", str(tmp_path / "g.png")]) == 2
    assert "anl-fused figures: error: no " in capsys.readouterr().err


@pytest.mark.parametrize("figure", ["eps-sweep", "layer-std", "feature-maps"])
def test_every_figure_command_describes_itself_and_its_options(figure, capsys):
    with pytest.raises(SystemExit) as e:
        main(["figures", figure, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "\nFig. " in text  # the description under the usage
    parser = argparse.ArgumentParser()
    figures.configure(parser)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[figure]
    assert sub.description
    for action in sub._actions:
        assert action.help, f"figures {figure} {action.option_strings}: no help text"
