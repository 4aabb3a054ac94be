"""``anl-fused train``: end to end on digits, exact resume, checkpoint errors, protocol phases."""

from __future__ import annotations

import json
import os

import pytest
import torch

from anl_fused import anl_layers
from anl_fused.experiments import checkpoint
from anl_fused.cli import main
from anl_fused.experiments.train import TrainConfig, fit, make_model



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


@pytest.mark.parametrize("variant,stops", [("anl", [5]), ("dropout", [4, 7, 10]), ("input", [12])])
def test_interrupted_and_resumed_run_is_bitwise_identical(tmp_path, variant, stops):
    """Stop after k steps (mid-epoch and at an epoch end, possibly several times) and resume:
    same weights, optimizer, scheduler, noise generator and metrics as one uninterrupted run.
    Covers the phase switch (epoch 2 is fine-tuning with ANL off at the floor lr)."""
    args = BASE + ["--variant", variant, "--eps", "0.05", "--epochs", "1", "--finetune-epochs", "1",
                   "--checkpoint-every", "3"]
    if variant == "input":
        args += ["--input-eps", "0.02"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert main(args + ["--out", str(ref)]) == 0
    for k in stops:
        assert main(args + ["--out", str(cut), "--resume", "--stop-after-steps", str(k)]) == 0
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
    strip = lambda r: {k: v for k, v in r.items() if "time" not in k}  # noqa: E731
    ma = [strip(json.loads(line)) for line in (ref / "metrics.jsonl").read_text().splitlines()]
    mb = [strip(json.loads(line)) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    assert ma == mb and len(ma) == 2
    assert ma[1]["phase"] == "finetune" and ma[1]["lr"] == 1e-3 or variant == "dropout"


def test_finetune_phase_disables_anl_at_floor_lr(tmp_path):
    res = fit(TrainConfig(model="lenet5", variant="opposite", eps=0.03, epochs=1, finetune_epochs=1, batch_size=256),
              progress=False, log=lambda s: None)
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
    cfg, m = layers("input", eps=0.05, input_eps=0.01, input_sign=True)
    assert anl_layers(m)[0].eps == 0.01 and anl_layers(m)[0].sign
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


def test_no_host_sync_per_step(monkeypatch):
    """Host reads of device values (item / tolist / bool / float / int) do not grow with the number
    of steps: metrics are accumulated on the device and read once per epoch."""
    counts = {"n": 0}
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        orig = getattr(torch.Tensor, name)

        def wrapped(self, *a, _orig=orig, **k):
            counts["n"] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapped)

    def reads(batch_size):
        counts["n"] = 0
        fit(TrainConfig(model="lenet5", variant="anl", eps=0.03, epochs=1, batch_size=batch_size),
            progress=False, log=lambda s: None)
        return counts["n"]

    few, many = reads(448), reads(64)  # 2 steps vs 14 steps
    assert few == many


def test_ctrl_c_stops_at_a_step_boundary_with_a_checkpoint(tmp_path, monkeypatch):
    """The first SIGINT finishes the current step, writes a checkpoint and stops; resume completes
    the run exactly as an uninterrupted one."""
    import signal

    from anl_fused.experiments import train as train_mod

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
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


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


def test_norm_reaches_every_anl_layer(tmp_path):
    """TrainConfig.norm / --norm: "layer" (Algorithm 1's one ||g||_inf per layer) or "sample"."""
    for norm in ("sample", "layer"):
        model = make_model(TrainConfig(model="lenet5", variant="anl", norm=norm).resolved(), 1, 10)
        assert [layer.norm for layer in anl_layers(model)] == [norm, norm]
    assert TrainConfig(variant="plain", norm="layer").resolved().norm == "sample"  # no gradient, no norm
    with pytest.raises(ValueError, match="'rows'"):
        TrainConfig(norm="rows").resolved()
    out = tmp_path / "run"
    assert main(BASE + ["--variant", "opposite", "--eps", "0.03", "--norm", "layer", "--epochs", "1",
                        "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["norm"] == "layer"
