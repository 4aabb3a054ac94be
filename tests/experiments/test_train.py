"""``anl-fused train``: end to end on digits, exact resume, checkpoint errors, protocol phases."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings

import pytest
import torch

from anl_fused import anl_layers
from anl_fused.cli import main
from anl_fused.experiments import checkpoint
from anl_fused.experiments.train import TrainConfig, fit, make_model
from anl_fused.experiments.train.config import preset_values

BASE = ["train", "--model", "lenet5", "--dataset", "digits", "--batch-size", "128", "--no-progress"]


def _state(path):
    return torch.load(os.path.join(path, "checkpoint.pt"), weights_only=True)


def test_train_end_to_end_one_epoch(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(BASE + ["--variant", "anl", "--eps", "0.03", "--epochs", "1", "--out", str(out)]) == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    m = json.loads(lines[0])
    for k in ("train_loss", "train_acc", "val_loss", "val_acc", "test_acc", "test_err", "lr", "time_per_step_s"):
        assert isinstance(m[k], float), k
    assert m["epoch"] == 1 and m["steps"] == 7 and m["lr"] == 0.1 and m["anl_enabled"] is True
    assert set(m["anl_std"]) == {"conv1.anl", "conv2.anl"} and all(v > 0 for v in m["anl_std"].values())
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == "lenet5" and cfg["eps"] == 0.03 and cfg["variant"] == "anl"
    state = checkpoint.load(out / "checkpoint.pt")
    assert state["epoch"] == 1 and state["step"] == 0 and state["global_step"] == 7
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["epochs"] == 1 and 0 <= summary["test_err"] <= 1


@pytest.mark.parametrize(
    "variant,stops,more",
    [
        ("anl", [5], []),
        ("dropout", [4, 7, 10], []),
        ("input", [12], []),
        ("sam", [5, 9], ["--sam-rho", "0.1"]),
        ("anl", [8], ["--schedule", "cosine"]),
    ],
)
def test_interrupted_and_resumed_run_is_bitwise_identical(tmp_path, variant, stops, more):
    """Stop after k steps (mid-epoch and at an epoch end, possibly several times) and resume:
    same weights, optimizer, scheduler, noise generator and metrics as one uninterrupted run.
    Covers the phase switch (epoch 2 is fine-tuning with ANL off at the floor lr), SAM and the cosine schedule."""
    args = (
        BASE
        + more
        + [
            "--variant",
            variant,
            "--eps",
            "0.05",
            "--epochs",
            "1",
            "--finetune-epochs",
            "1",
            "--checkpoint-every",
            "3",
        ]
    )
    if variant == "input":
        args += ["--input-eps", "0.02"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert main(args + ["--out", str(ref)]) == 0
    for i, k in enumerate(stops):  # the first start is a new run: --resume of a directory without one is refused
        resume = ["--resume"] if i else []
        assert main(args + ["--out", str(cut), *resume, "--stop-after-steps", str(k)]) == 0
        assert checkpoint.load(cut / "checkpoint.pt")["global_step"] == k
    assert main(args + ["--out", str(cut), "--resume"]) == 0
    a, b = _state(ref), _state(cut)
    assert a["global_step"] == b["global_step"] == 14  # 897 images, batches of 128, last one dropped
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(pa["momentum_buffer"], pb["momentum_buffer"])
    assert a["scheduler"] == b["scheduler"]
    assert torch.equal(a["generator"], b["generator"])
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    strip = lambda r: {k: v for k, v in r.items() if "time" not in k}
    ma = [strip(json.loads(line)) for line in (ref / "metrics.jsonl").read_text().splitlines()]
    mb = [strip(json.loads(line)) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    assert ma == mb and len(ma) == 2
    assert (ma[1]["phase"] == "finetune" and ma[1]["lr"] == 1e-3) or variant == "dropout"


def test_finetune_phase_disables_anl_at_floor_lr(tmp_path):
    res = fit(
        TrainConfig(model="lenet5", variant="opposite", eps=0.03, epochs=1, finetune_epochs=1, batch_size=256),
        progress=False,
        log=lambda s: None,
    )
    h = res["history"]
    assert [r["phase"] for r in h] == ["anl", "finetune"]
    assert res["config"]["eps"] == -0.03
    assert h[0]["anl_enabled"] and "anl_std" in h[0] and h[0]["lr"] == 0.1
    assert not h[1]["anl_enabled"] and "anl_std" not in h[1] and h[1]["lr"] == 1e-3
    assert all(not layer.enabled for layer in anl_layers(res["model"]))


def test_variants_build_the_right_model():
    def layers(variant, **kw):
        cfg = TrainConfig(model="vgg11", variant=variant, **kw).resolved()
        return cfg, make_model(cfg, 3, 10)

    cfg, m = layers("plain")
    assert cfg.eps == 0 and not anl_layers(m)
    cfg, m = layers("dropout")
    assert not anl_layers(m) and any(isinstance(x, torch.nn.Dropout) for x in m.modules())
    cfg, m = layers("anl")
    assert cfg.eps == 0.05 and {layer.eps for layer in anl_layers(m)} == {0.05}  # Table 2 default
    cfg, m = layers("opposite", eps=0.02)
    assert {layer.eps for layer in anl_layers(m)} == {-0.02}
    cfg, m = layers("gaussian", eps=0.03)
    assert {layer.noise for layer in anl_layers(m)} == {"gaussian"}
    cfg, m = layers("input", eps=0.05, input_eps=0.01, input_sign=True)  # pixel units: / digits' std 0.3759
    assert anl_layers(m)[0].eps == pytest.approx(0.01 / 0.3759) and anl_layers(m)[0].sign
    with pytest.raises(ValueError, match="input-eps"):
        TrainConfig(variant="input").resolved()
    with pytest.raises(ValueError, match="variant"):
        TrainConfig(variant="mixup").resolved()
    with pytest.raises(ValueError, match="finite"):
        TrainConfig(variant="anl", eps=float("nan")).resolved()


def _first_run(tmp_path):
    out = tmp_path / "run"
    assert main(BASE + ["--epochs", "1", "--stop-after-steps", "2", "--out", str(out)]) == 0
    return out


def test_corrupted_checkpoint_gives_clear_error(tmp_path, capsys):
    out = _first_run(tmp_path)
    path = out / "checkpoint.pt"
    good = path.read_bytes()
    for bad in (b"\x00garbage" * 100, good[: len(good) // 2]):
        path.write_bytes(bad)
        capsys.readouterr()
        assert main(BASE + ["--epochs", "1", "--out", str(out), "--resume"]) == 2
        err = capsys.readouterr().err
        assert str(path) in err and "corrupted" in err
    with pytest.raises(checkpoint.CheckpointError, match="corrupted"):
        checkpoint.load(path)


class _Foreign:
    pass


def test_foreign_checkpoint_gives_clear_error(tmp_path, capsys):
    out = _first_run(tmp_path)
    path = out / "checkpoint.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 3}, path)  # someone else's checkpoint
    assert main(BASE + ["--epochs", "1", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "not an anl-fused training checkpoint" in err
    torch.save(_Foreign(), path)  # needs unsafe unpickling: refused by weights_only=True
    with pytest.raises(checkpoint.CheckpointError, match="weights_only"):
        checkpoint.load(path)
    torch.save(torch.zeros(3), path)
    with pytest.raises(checkpoint.CheckpointError, match=str(path)):
        checkpoint.load(path)
    with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "none.pt")


def test_resume_with_other_settings_is_refused(tmp_path, capsys):
    out = _first_run(tmp_path)
    assert main(BASE + ["--epochs", "1", "--out", str(out), "--resume", "--eps", "0.07"]) == 2
    err = capsys.readouterr().err
    assert "different run" in err and "eps" in err and str(out / "checkpoint.pt") in err


def test_checkpoint_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    checkpoint.save(path, {"a": torch.ones(2)})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        checkpoint.save(path, {"a": torch.zeros(2)})
    assert torch.equal(checkpoint.load(path)["a"], torch.ones(2))  # the old file is intact
    assert os.listdir(tmp_path) == ["c.pt"]  # no temp file left behind


@pytest.mark.parametrize("variant", ["anl", "sam"])
def test_no_host_sync_per_step(monkeypatch, variant):
    """Host reads of device values (item / tolist / bool / float / int) do not grow with the number
    of steps: metrics are accumulated on the device and read once per epoch (SAM's step included)."""
    counts = {"n": 0}
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        orig = getattr(torch.Tensor, name)

        def wrapped(self, *a, _orig=orig, **k):
            counts["n"] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapped)

    def reads(batch_size):
        counts["n"] = 0
        fit(
            TrainConfig(model="lenet5", variant=variant, eps=0.03, epochs=1, batch_size=batch_size),
            progress=False,
            log=lambda s: None,
        )
        return counts["n"]

    few, many = reads(448), reads(64)  # 2 steps vs 14 steps
    assert few == many


def test_ctrl_c_stops_at_a_step_boundary_with_a_checkpoint(tmp_path, monkeypatch):
    """The first SIGINT finishes the current step, writes a checkpoint and stops; resume completes
    the run exactly as an uninterrupted one."""
    import signal

    from anl_fused.experiments import train as train_mod

    before = signal.getsignal(signal.SIGINT)  # Python's default_int_handler, or SIG_IGN under nohup / a `cmd &`
    cfg = TrainConfig(model="lenet5", variant="anl", eps=0.03, epochs=2, batch_size=128, lr=0.01)
    ref = fit(cfg, str(tmp_path / "ref"), progress=False, log=lambda s: None)
    orig, calls = train_mod.EpochMeter.update, {"n": 0}

    def update(self, *a, **k):
        orig(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 4:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(train_mod.EpochMeter, "update", update)
    cut = fit(cfg, str(tmp_path / "cut"), progress=False, log=lambda s: None)
    assert cut["stopped"] == "interrupt" and cut["global_step"] == 4
    assert checkpoint.load(tmp_path / "cut" / "checkpoint.pt")["global_step"] == 4
    monkeypatch.setattr(train_mod.EpochMeter, "update", orig)
    done = fit(cfg, str(tmp_path / "cut"), resume=True, progress=False, log=lambda s: None)
    assert done["stopped"] is None and done["global_step"] == ref["global_step"]
    for k, v in ref["model"].state_dict().items():
        assert torch.equal(v, done["model"].state_dict()[k]), k
    assert signal.getsignal(signal.SIGINT) is before  # the handler the process had is restored


@pytest.mark.slow
def test_compile_option_trains(tmp_path):
    out = tmp_path / "c"
    assert main(BASE + ["--epochs", "1", "--compile", "--lr", "0.01", "--out", str(out)]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_checkpoint_of_the_old_schedule_loads_weights_but_does_not_resume(tmp_path, capsys):
    """Version 1 checkpoints (ReduceLROnPlateau) cannot continue exactly under the sec. 4.2.1 schedule:
    resuming one is refused with a clear line; its weights still load (anl-fused attack)."""
    from anl_fused.experiments.attack_cli import load_trained

    out = _first_run(tmp_path)
    path = out / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    state["version"] = 1
    torch.save(state, path)
    capsys.readouterr()
    assert main(BASE + ["--epochs", "1", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "version 1" in err and "older anl-fused" in err and "weights_only=False" not in err
    model, cfg = load_trained(str(path))
    assert cfg.model == "lenet5" and not model.training


@pytest.mark.parametrize(
    "variant,length",
    [
        ("anl", (100, 100, "floor")),
        ("input", (100, 100, "floor")),
        ("gaussian", (100, 100, "floor")),
        ("plain", (200, 0, "continue")),
        ("dropout", (200, 0, "continue")),
    ],
)
def test_paper_preset(variant, length):
    """--preset paper is sec. 4.2.1: ANL 100 epochs then 100 with ANL off at 1e-3; baselines 200 epochs."""
    cfg = TrainConfig(**preset_values("paper", variant), variant=variant, model="vgg16", input_eps=0.05)
    assert (cfg.epochs, cfg.finetune_epochs, cfg.finetune_lr) == length
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.lr_factor, cfg.patience, cfg.hold_epochs, cfg.min_lr) == (
        0.1,
        0.9,
        5e-4,
        0.5,
        5,
        5,
        1e-3,
    )
    with pytest.raises(ValueError, match="preset must be one of"):  # explicit settings win: the command-line test
        preset_values("cifar", "anl")


def test_preset_on_the_command_line_with_explicit_overrides(tmp_path, capsys):
    out = tmp_path / "p"
    assert (
        main(
            [
                "train",
                "--preset",
                "paper",
                "--model",
                "lenet5",
                "--lr",
                "0.05",
                "--out",
                str(out),
                "--stop-after-steps",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["epochs"], cfg["finetune_epochs"], cfg["finetune_lr"], cfg["lr"], cfg["weight_decay"]) == (
        100,
        100,
        "floor",
        0.05,
        5e-4,
    )
    assert cfg["augment"] == "none"  # digits: no crop / flip (CIFAR gets them)
    assert (
        main(
            [
                "train",
                "--preset",
                "paper",
                "--variant",
                "plain",
                "--model",
                "lenet5",
                "--out",
                str(out),
                "--overwrite",
                "--stop-after-steps",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["epochs"], cfg["finetune_epochs"], cfg["finetune_lr"]) == (200, 0, "continue")


def _input_noise(cfg, x_pixels, mean, std):
    """The input ANL layer's noise in a TwoRound step, in pixel units."""
    from anl_fused import TwoRound

    torch.manual_seed(0)
    model = make_model(cfg, x_pixels.shape[1], 10).train()
    seen = {}
    anl_layers(model)[0].register_forward_hook(lambda m, args, out: seen.update(eta=(out - args[0]).detach()))
    mean_t, std_t = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    x = (x_pixels - mean_t) / std_t
    y = torch.randint(0, 10, (x.shape[0],), generator=torch.Generator().manual_seed(1))
    TwoRound(model, generator=torch.Generator().manual_seed(2)).step(
        lambda: torch.nn.functional.cross_entropy(model(x), y)
    )
    return seen["eta"] * std_t  # round 2's noise, back in pixel units


def test_input_sign_eps_is_in_pixel_units():
    """--input-sign --input-eps 16/255 moves every pixel by 16/255 (digits: one channel, exact),
    not by 16/255 of the normalized input (16/255 * 0.376 in pixels)."""
    from anl_fused.experiments.data import DATASETS

    info = DATASETS["digits"]
    cfg = TrainConfig(model="lenet5", variant="input", eps=0.0, input_eps=16 / 255, input_sign=True).resolved()
    assert cfg.input_eps_unit == "pixel"
    eta = _input_noise(cfg, torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0)), info.mean, info.std)
    moved = eta.abs()[eta != 0]
    assert moved.numel() > 0.9 * eta.numel()
    torch.testing.assert_close(moved, torch.full_like(moved, 16 / 255), rtol=1e-5, atol=0)
    cifar = TrainConfig(model="vgg11", dataset="cifar10", variant="input", input_eps=8 / 255, input_sign=True)
    assert anl_layers(make_model(cifar.resolved(), 3, 10))[0].eps == pytest.approx(
        8 / 255 / (sum(DATASETS["cifar10"].std) / 3)
    )


def test_input_eps_without_sign_and_old_runs_are_used_as_they_are(tmp_path):
    from anl_fused.experiments.train.config import config_from_dict, upgrade_stored

    cfg = TrainConfig(model="lenet5", variant="input", eps=0.05, input_eps=0.1).resolved()  # Eq. 5: a fraction of std
    assert cfg.input_eps_unit is None and anl_layers(make_model(cfg, 1, 10))[0].eps == 0.1
    # a run made before the unit existed: its input-sign eps was on the normalized input, and stays so
    old = {
        k: v
        for k, v in TrainConfig(model="lenet5", variant="input", input_eps=0.2, input_sign=True)
        .resolved()
        .__dict__.items()
        if k != "input_eps_unit"
    }
    cfg = config_from_dict(upgrade_stored(old)).resolved()
    assert cfg.input_eps_unit == "normalized" and anl_layers(make_model(cfg, 1, 10))[0].eps == 0.2
    out = tmp_path / "run"
    assert (
        main(
            BASE
            + [
                "--variant",
                "input",
                "--input-eps",
                "0.0627",
                "--input-sign",
                "--epochs",
                "1",
                "--stop-after-steps",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    written = json.loads((out / "config.json").read_text())
    assert written["input_eps_unit"] == "pixel" and written["input_layer_eps"] == pytest.approx(0.0627 / 0.3759)


def test_norm_goes_to_every_hidden_layer_and_is_part_of_the_runs_identity(tmp_path, capsys):
    from anl_fused.experiments.train.checkpointing import resume_changes

    cfg = TrainConfig(model="lenet5", variant="input", input_eps=0.1, norm="layer").resolved()
    layers = anl_layers(make_model(cfg, 1, 10))
    assert [layer.norm for layer in layers[1:]] == ["layer", "layer"] and layers[0].norm == "sample"
    assert {layer.norm for layer in anl_layers(make_model(TrainConfig(model="lenet5").resolved(), 1, 10))} == {"sample"}
    with pytest.raises(ValueError, match="norm \"batch\" is not allowed \\(Input should be 'sample' or 'layer'\\)"):
        TrainConfig(norm="batch").resolved()
    out = tmp_path / "run"
    assert main(BASE + ["--norm", "layer", "--epochs", "1", "--stop-after-steps", "1", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["norm"] == "layer"
    assert main(["train", "--out", str(out), "--resume", "--norm", "sample", "--no-progress"]) == 2
    assert "differing settings norm: checkpoint 'layer' vs now 'sample'" in capsys.readouterr().err
    # a run made before the field existed used per-sample norms
    now = dict(vars(TrainConfig(model="lenet5").resolved()))
    saved = {k: v for k, v in now.items() if k not in ("norm", "input_eps_unit")}
    assert resume_changes(saved, now, 0, 1, "x.pt") == {}


def test_probe_dtype_reaches_the_engine_and_is_part_of_the_runs_identity(tmp_path, capsys):
    from anl_fused.experiments.train.checkpointing import resume_changes
    from anl_fused.experiments.train.parts import build_parts

    bf16 = TrainConfig(model="lenet5", probe_dtype="bf16").resolved()
    assert build_parts(bf16).engine.probe_dtype is torch.bfloat16
    assert build_parts(TrainConfig(model="lenet5").resolved()).engine.probe_dtype is None
    assert TrainConfig(model="lenet5", variant="plain", probe_dtype="bf16").resolved().probe_dtype == "fp32"
    with pytest.raises(ValueError, match=r"probe_dtype \"fp64\" is not allowed \(.* 'fp32', 'bf16' or 'fp16'\)"):
        TrainConfig(probe_dtype="fp64").resolved()
    out = tmp_path / "run"
    assert main(BASE + ["--probe-dtype", "bf16", "--epochs", "1", "--stop-after-steps", "1", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["probe_dtype"] == "bf16"
    assert main(["train", "--out", str(out), "--resume", "--probe-dtype", "fp32", "--no-progress"]) == 2
    assert "differing settings probe_dtype: checkpoint 'bf16' vs now 'fp32'" in capsys.readouterr().err
    # a run made before the field existed had an exact (fp32) probe
    now = dict(vars(TrainConfig(model="lenet5").resolved()))
    saved = {k: v for k, v in now.items() if k != "probe_dtype"}
    assert resume_changes(saved, now, 0, 1, "x.pt") == {}
    with pytest.raises(checkpoint.CheckpointError, match="probe_dtype: checkpoint 'fp32' vs now 'bf16'"):
        resume_changes(saved, {**now, "probe_dtype": "bf16"}, 0, 1, "x.pt")


def test_eps_auto_out_of_range_warns_in_one_line_and_config_records_the_rule(tmp_path, capsys):
    """``--eps auto`` for a model outside the rule's fitted range: one line ``anl-fused train: warning: ...``
    (not a Python warning with its source line); config.json says eps came from the rule, and keeps
    saying it on resume (whose settings hold the resolved eps: the run's identity is unchanged)."""
    out = tmp_path / "auto"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert (
            main(
                [
                    "train",
                    "--model",
                    "lenet5",
                    "--variant",
                    "anl",
                    "--eps",
                    "auto",
                    "--epochs",
                    "1",
                    "--out",
                    str(out),
                    "--stop-after-steps",
                    "1",
                    "--no-progress",
                ]
            )
            == 0
        )
    assert [str(w.message) for w in caught if "eps='auto'" in str(w.message)] == []
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if "eps='auto'" in line]
    assert len(lines) == 1 and lines[0].startswith(
        "anl-fused train: warning: eps='auto': 0.0617M trainable parameters is outside the range"
    ), captured.err
    assert "eps=auto: 0.0617M trainable parameters -> eps=0.013" in captured.out
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["eps"] == 0.013
    assert cfg["eps_auto"] == {"rule": "anl_fused.auto_eps", "trainable_params": 61706, "eps": 0.013}
    assert (
        main(["train", "--out", str(out), "--resume", "--epochs", "2", "--stop-after-steps", "2", "--no-progress"]) == 0
    )
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["eps"] == 0.013 and cfg["eps_auto"]["trainable_params"] == 61706
    assert cfg["resume_changes"][0]["changed"] == {"epochs": [1, 2]}
    assert (
        main(
            [
                "train",
                "--model",
                "lenet5",
                "--variant",
                "anl",
                "--eps",
                "0.02",
                "--epochs",
                "1",
                "--out",
                str(tmp_path / "fixed"),
                "--stop-after-steps",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "fixed" / "config.json").read_text())["eps_auto"] is None


def test_a_diverged_run_is_said_once():
    """A training loss that turns non-finite is logged as a divergence (once, at its first epoch); the run
    keeps its schedule (the study and the figures mark it diverged)."""
    logs = []
    cfg = TrainConfig(model="lenet5", variant="anl", eps=0.3, epochs=2, batch_size=64, lr=50.0, momentum=0.9)
    result = fit(cfg, None, progress=False, log=logs.append)
    assert [r["epoch"] for r in result["history"]] == [1, 2]
    warned = [line for line in logs if "is not finite: the run has diverged" in line]
    assert len(warned) == 1 and "epoch 1 " in warned[0]
    logs.clear()
    fit(dataclasses.replace(cfg, lr=0.05), None, progress=False, log=logs.append)
    assert not any("diverged" in line for line in logs)
