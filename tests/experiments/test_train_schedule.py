"""The learning-rate schedule of sec. 4.2.1 (train.schedule.PlateauSchedule) on scripted validation losses."""

from __future__ import annotations

import json
import math

import pytest
import torch

from anl_fused.experiments.train import TrainConfig, fit
from anl_fused.experiments.train import loop as loop_mod
from anl_fused.experiments.train.schedule import PlateauSchedule


def _optimizer(*lrs: float) -> torch.optim.SGD:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0])


def _lrs_used(losses, lr=0.1, **kw) -> list[float]:
    """The rate each epoch trained with, epoch i's validation loss being ``losses[i]``."""
    opt = _optimizer(lr)
    sched = PlateauSchedule(opt, **kw)
    used = []
    for v in losses:
        used.append(opt.param_groups[0]["lr"])
        sched.step(v)
    return used


def _halvings(used: list[float]) -> list[int]:
    """The epochs (1-based) after which the rate changed."""
    return [i for i in range(1, len(used)) if used[i] != used[i - 1]]


def test_plateau_halves_after_five_epochs_without_a_new_best_then_every_five_down_to_the_floor():
    used = _lrs_used([1.0] * 45)  # the best stays epoch 1's
    assert _halvings(used) == [6, 11, 16, 21, 26, 31, 36]  # every rate stays exactly 5 epochs (the first 6)
    expected = [0.1, 0.05, 0.025, 0.0125, 0.00625, 0.003125, 0.0015625, 0.001]
    assert sorted(set(used), reverse=True) == pytest.approx(expected)
    assert used[36:] == [0.001] * 9  # the floor: never below, stays there


def test_a_new_best_in_the_last_five_epochs_keeps_the_rate():
    # improving for 10 epochs, then flat: first halving 5 epochs after the last best (epoch 10)
    losses = [1.0 - 0.01 * i for i in range(10)] + [0.95] * 11
    assert _halvings(_lrs_used(losses)) == [15, 20]
    # a new best at epoch 5 of a plateau restarts the count; equal to the best is not a new best
    losses = [1.0, 1.1, 1.2, 1.0, 0.9, 1.0, 1.0, 0.9, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert _halvings(_lrs_used(losses)) == [10]


def test_each_rate_stays_at_least_hold_epochs():
    # patience 2, hold 4: the plateau is detected after 2 stagnant epochs, but a rate is kept 4 epochs
    used = _lrs_used([1.0] * 14, patience=2, hold=4)
    assert _halvings(used) == [4, 8, 12]
    # hold 1: halve every epoch once the plateau is there
    assert _halvings(_lrs_used([1.0] * 6, patience=2, hold=1)) == [3, 4, 5]


def test_rate_below_or_at_the_floor_is_never_raised_and_groups_halve_together():
    assert _lrs_used([1.0] * 12, lr=0.0015) == [0.0015] * 6 + [0.001] * 6
    assert _lrs_used([1.0] * 12, lr=0.0005) == [0.0005] * 12
    opt = _optimizer(0.1, 0.02)
    sched = PlateauSchedule(opt)
    for _ in range(6):
        sched.step(2.0)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.01])
    sched.to_floor()
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-3]


def test_non_finite_losses_are_never_a_new_best():
    assert _halvings(_lrs_used([1.0, math.nan, math.inf, math.nan, 2.0, math.nan, 1.0])) == [6]


def test_state_dict_resumes_the_same_decisions():
    losses = [1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95, 0.8, 0.85, 0.85, 0.85, 0.85, 0.85, 0.85, 0.85]
    ref = _lrs_used(losses)
    for cut in (3, 7, 12):
        opt = _optimizer(0.1)
        sched = PlateauSchedule(opt)
        used = []
        for v in losses[:cut]:
            used.append(opt.param_groups[0]["lr"])
            sched.step(v)
        state, opt_state = sched.state_dict(), opt.state_dict()
        opt2 = _optimizer(0.1)
        opt2.load_state_dict(opt_state)
        sched2 = PlateauSchedule(opt2, patience=1, hold=9)  # the state's settings win
        sched2.load_state_dict(state)
        for v in losses[cut:]:
            used.append(opt2.param_groups[0]["lr"])
            sched2.step(v)
        assert used == ref, cut


def test_bad_settings_and_foreign_states_are_refused():
    with pytest.raises(ValueError, match="factor"):
        PlateauSchedule(_optimizer(0.1), factor=1.5)
    with pytest.raises(ValueError, match="patience"):
        PlateauSchedule(_optimizer(0.1), patience=0)
    with pytest.raises(KeyError, match="ReduceLROnPlateau"):
        PlateauSchedule(_optimizer(0.1)).load_state_dict(
            torch.optim.lr_scheduler.ReduceLROnPlateau(_optimizer(0.1)).state_dict()
        )


def test_fit_follows_the_schedule_on_scripted_validation_losses(monkeypatch, tmp_path):
    """``anl-fused train`` halves after epoch 6 of a run whose validation loss never improves
    (ReduceLROnPlateau(patience=5) halved after epoch 7), and fine-tunes at the floor."""
    real = loop_mod.evaluate
    calls = {"n": 0}

    def scripted(model, batches, all_reduce=False):
        loss, acc = real(model, batches, all_reduce)
        calls["n"] += 1
        return (1.0 if calls["n"] % 2 else loss), acc  # the validation loss (odd calls) is flat

    monkeypatch.setattr(loop_mod, "evaluate", scripted)
    res = fit(
        TrainConfig(model="lenet5", variant="anl", eps=0.03, epochs=8, finetune_epochs=1, batch_size=448),
        str(tmp_path / "run"),
        progress=False,
        log=lambda s: None,
    )
    assert [r["lr"] for r in res["history"]] == [0.1] * 6 + [0.05] * 2 + [1e-3]
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_loss"] for r in lines[:8]] == [1.0] * 8
