"""Numbers on the command line: every subcommand rejects non-finite and out-of-range values with
argparse's usage error (exit code 2, one ``argument --x: ...`` line), never a traceback or a silent run."""

from __future__ import annotations

import argparse
import math

import pytest

from anl_fused.cli import main
from anl_fused.experiments import cli_types
from anl_fused.experiments.train import TrainConfig


@pytest.mark.parametrize(
    "parse,text,ok",
    [
        (cli_types.finite_float, "-2.5", -2.5),
        (cli_types.finite_float, "nan", None),
        (cli_types.finite_float, "-inf", None),
        (cli_types.positive_float, "1e-3", 1e-3),
        (cli_types.positive_float, "0", None),
        (cli_types.nonneg_float, "0", 0.0),
        (cli_types.nonneg_float, "-1e-9", None),
        (cli_types.fraction, "1", 1.0),
        (cli_types.fraction, "1.01", None),
        (cli_types.positive_int, "3", 3),
        (cli_types.positive_int, "0", None),
        (cli_types.positive_int, "2.5", None),
        (cli_types.nonneg_int, "0", 0),
        (cli_types.nonneg_int, "-1", None),
        (cli_types.nonneg_int, "x", None),
    ],
)
def test_validators(parse, text, ok):
    if ok is None:
        with pytest.raises(argparse.ArgumentTypeError, match=repr(text)):
            parse(text)
    else:
        assert parse(text) == ok and type(parse(text)) is type(ok)


def test_open_and_closed_ends():
    momentum = cli_types.number(float, ge=0, lt=1)
    assert momentum("0") == 0.0 and momentum("0.99") == 0.99
    with pytest.raises(argparse.ArgumentTypeError, match=r"^Input should be less than 1, got '1'$"):
        momentum("1")


def test_parser_class_makes_every_float_option_finite():
    p = cli_types.ArgumentParser(prog="x")
    p.add_argument("--a", type=float)
    sub = p.add_subparsers(dest="cmd").add_parser("s")  # subparsers inherit the class
    sub.add_argument("--b", type=float)
    assert p.parse_args(["--a", "1e3"]).a == 1000.0
    for argv in (["--a", "nan"], ["--a", "inf"], ["s", "--b", "-inf"]):
        with pytest.raises(SystemExit) as e:
            p.parse_args(argv)
        assert e.value.code == 2


def test_train_options_come_from_the_config_schema():
    """``anl-fused train``'s settings are TrainConfig's fields (``input_eps_unit`` is no option), parsed as
    their annotations say; only the options given reach the namespace."""
    import dataclasses

    from anl_fused.experiments.train import cli

    p = cli_types.ArgumentParser(prog="x")
    cli.configure(p)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert fields - {a.dest for a in p._actions} == {"input_eps_unit"}
    args = p.parse_args(["--out", "o", "--lr", "0.5", "--keep-last-batch", "--variant", "sam", "--eps", "AUTO"])
    assert {k: v for k, v in vars(args).items() if k in fields} == {
        "lr": 0.5,
        "drop_last": False,
        "variant": "sam",
        "eps": "auto",
    }


TRAIN = ["train", "--out", "unused", "--no-progress"]


@pytest.mark.parametrize(
    "argv",
    [
        TRAIN + ["--lr", "nan"],
        TRAIN + ["--lr", "-0.1"],
        TRAIN + ["--lr", "0"],
        TRAIN + ["--momentum", "2"],
        TRAIN + ["--momentum", "1"],
        TRAIN + ["--epochs", "-1"],
        TRAIN + ["--finetune-epochs", "-3"],
        TRAIN + ["--eps", "inf"],
        TRAIN + ["--input-eps", "nan"],
        TRAIN + ["--weight-decay", "-1e-4"],
        TRAIN + ["--batch-size", "0"],
        TRAIN + ["--lr-factor", "1"],
        TRAIN + ["--min-lr", "nan"],
        TRAIN + ["--patience", "0"],
        TRAIN + ["--hold-epochs", "-1"],
        TRAIN + ["--seed", "-1"],
        TRAIN + ["--val-size", "-1"],
        TRAIN + ["--checkpoint-every", "-1"],
        TRAIN + ["--stop-after-steps", "0"],
        TRAIN + ["--threads", "0"],
        TRAIN + ["--eval-batch-size", "1.5"],
        ["attack", "--models", "a=b.pt", "--fgsm-eps", "nan"],
        ["attack", "--models", "a=b.pt", "--ifgsm-steps", "0"],
        ["attack", "--models", "a=b.pt", "--limit", "-5"],
        ["attack", "--models", "a=b.pt", "--ifgsm-alpha", "0"],
        ["attack", "--models", "a=b.pt", "--ifgsm-eps", "2"],
        ["attack", "--models", "a=b.pt", "--batch-size", "0"],
        ["bench", "--repeats", "0"],
        ["bench", "--eps", "inf"],
        ["bench", "--batch", "-1"],
        ["bench", "--inner", "0"],
        ["demo", "--lr", "nan"],
        ["demo", "--lr", "inf"],
    ],
)
def test_cli_rejects_bad_numbers_with_a_usage_error(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    flag = next(a for a in reversed(argv) if a.startswith("--"))
    assert f"argument {flag}:" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing ran, nothing written


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("lr", math.nan, r"lr NaN is not allowed \(Input should be a finite number\)"),
        ("lr", -0.1, r"lr -0.1 is not allowed \(Input should be greater than 0\)"),
        ("momentum", 1.0, "momentum"),
        ("weight_decay", -1.0, "weight_decay"),
        ("epochs", -1, "epochs -1 is not allowed .*greater than or equal to 0"),
        ("epochs", 2.5, "integer"),
        ("batch_size", 0, "batch_size"),
        ("lr_factor", 0.0, "lr_factor"),
        ("patience", 0, "patience"),
        ("min_lr", 0.5, r"min_lr .* must be <= lr"),
        ("eps", math.inf, "eps Infinity is not allowed .*finite number"),
        ("seed", -2, "seed"),
    ],
)
def test_config_rejects_bad_numbers_naming_them(field, value, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(model="lenet5", **{field: value}).resolved()


def test_val_size_zero_is_refused_because_the_schedule_needs_validation_losses(capsys, tmp_path):
    with pytest.raises(ValueError, match=r"val_size=0 .* learning-rate schedule"):
        TrainConfig(model="lenet5", dataset="cifar10", val_size=0).resolved()
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--dataset",
                "cifar10",
                "--data-dir",
                str(tmp_path),
                "--val-size",
                "0",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("anl-fused train: error: val_size=0") and "validation loss" in err[0]
    assert not out.exists()


def test_eps_takes_auto_and_finite_numbers_only(capsys):
    from anl_fused.experiments.train.config import arg_type

    eps = arg_type("eps")
    assert eps("auto") == "auto" and eps(" AUTO ") == "auto" and eps("-0.02") == -0.02
    for text, why in (
        ("inf", "should be a finite number or Input should be 'auto', got 'inf'"),
        ("nan", "should be a finite number"),
        ("big", "should be a valid number.* or Input should be 'auto', got 'big'"),
    ):
        with pytest.raises(argparse.ArgumentTypeError, match=why):
            eps(text)
    assert TrainConfig(model="resnet18", eps="auto").resolved().eps == 0.049  # the rule, not a range error
