"""``eps="auto"``: the rule is the least-squares fit to the paper's Table 2, stays near every entry,
does not extrapolate, and is what ``insert_anl``, ``anl-fused train`` and ``anl-fused models`` use."""

import json
import logging
import math

import numpy as np
import pytest
from torch import nn

import anl_fused
from anl_fused import auto_eps, insert_anl
from anl_fused.cli import main
from anl_fused.eps_rule import COEFFICIENT, EXPONENT, PARAM_RANGE, TABLE2

from ._nets import small_vgg


def test_table2_is_the_papers():
    assert len(TABLE2) == 10
    assert sorted(TABLE2.values()) == sorted(
        [
            (3.20e6, 0.02),
            (2.30e6, 0.02),
            (9.20e6, 0.05),
            (14.7e6, 0.05),
            (11.2e6, 0.05),
            (21.3e6, 0.08),
            (1.80e6, 0.01),
            (28.4e6, 0.10),
            (8.90e6, 0.05),
            (36.5e6, 0.10),
        ]
    )
    assert PARAM_RANGE == (1.8e6, 36.5e6)


def test_constants_are_the_least_squares_fit_of_table2():
    params, eps = np.array(list(TABLE2.values())).T
    slope, intercept = np.polyfit(np.log(params / 1e6), np.log(eps), 1)
    assert abs(EXPONENT - slope) < 5e-4
    assert abs(COEFFICIENT / math.exp(intercept) - 1) < 1e-3


@pytest.mark.parametrize("model", list(TABLE2))
def test_rule_is_near_every_table2_entry(model):
    params, eps = TABLE2[model]
    assert auto_eps(int(params)) == pytest.approx(eps, abs=0.015)


def test_rule_is_monotone_rounded_and_clamped_with_a_warning():
    counts = np.geomspace(*PARAM_RANGE, 50).astype(int)[1:-1]
    values = [auto_eps(int(n)) for n in counts]
    assert values == sorted(values) and all(v == round(v, 3) for v in values)
    assert auto_eps(11_200_000) == 0.049
    with pytest.warns(UserWarning, match=r"0.07M trainable parameters is outside .*1.8M-36.5M.*Tune eps"):
        assert auto_eps(70_000) == auto_eps(int(PARAM_RANGE[0])) == 0.013
    with pytest.warns(UserWarning, match="outside"):
        assert auto_eps(10**9) == auto_eps(int(PARAM_RANGE[1])) == 0.114


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="'12'"):
        auto_eps("12")
    with pytest.raises(ValueError, match="0 parameters"):
        auto_eps(nn.ReLU())
    with pytest.raises(ValueError, match="'big'"):
        insert_anl(small_vgg(), eps="big")


def test_insert_anl_auto_counts_trainable_parameters_and_logs(caplog):
    wide = nn.Sequential(nn.Conv2d(3, 1000, 3), nn.BatchNorm2d(1000), nn.Conv2d(1000, 1000, 3), nn.BatchNorm2d(1000))
    n = sum(p.numel() for p in wide.parameters())
    assert PARAM_RANGE[0] < n < PARAM_RANGE[1]
    with caplog.at_level(logging.INFO, logger="anl_fused"):
        insert_anl(wide, eps="auto")
    assert {layer.eps for layer in anl_fused.anl_layers(wide)} == {auto_eps(n)} == {0.042}
    assert "9.03M trainable parameters -> eps=0.042" in caplog.text
    frozen = nn.Sequential(nn.Conv2d(3, 1000, 3), nn.BatchNorm2d(1000), nn.Conv2d(1000, 1000, 3), nn.BatchNorm2d(1000))
    frozen[2].requires_grad_(False)  # fine-tuning a part: only what trains counts
    with pytest.warns(UserWarning, match="outside"):
        insert_anl(frozen, eps="auto")
    assert anl_fused.anl_layers(frozen)[0].eps == 0.013


def test_train_cli_prints_and_uses_the_auto_eps(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "train",
        "--model",
        "resnet18",
        "--dataset",
        "digits",
        "--eps",
        "auto",
        "--epochs",
        "0",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "eps=auto: 11.2M trainable parameters -> eps=0.049" in printed
    assert json.loads((out / "config.json").read_text())["eps"] == 0.049
    with pytest.raises(SystemExit) as e:
        main(["train", "--eps", "big", "--out", str(out)])
    assert e.value.code == 2
    assert "unable to parse string as a number or Input should be 'auto', got 'big'" in capsys.readouterr().err


def test_models_cli_shows_the_rule_next_to_the_paper(capsys):
    assert main(["models", "--json", "resnet18", "vgg_tiny"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    got = [(r["eps"], r["auto_eps"], r["auto_eps_clamped"]) for r in rows]
    assert got == [(0.05, 0.049, False), (0.02, 0.013, True)]
