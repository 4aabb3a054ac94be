"""The study's robustness battery: attacks that work, checks that catch gradient masking, seeded results."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from anl_fused.experiments import robustness
from anl_fused.experiments.data import DATASETS, load
from anl_fused.experiments.train import TrainConfig, fit

pytest.importorskip("torchattacks")


@pytest.fixture(scope="module")
def trained():
    """Two LeNet-5s trained on digits (the evaluated model and an independent source) and 120 test images."""
    info = DATASETS["digits"]
    models = [
        fit(
            TrainConfig(model="lenet5", variant="plain", epochs=6, batch_size=64, seed=s),
            progress=False,
            log=lambda m: None,
        )["model"]
        for s in (0, 1)
    ]
    test = load("digits").test
    x = test.x[:120].float() / (255.0 if test.x.dtype == torch.uint8 else 1.0)
    wrap = lambda m: robustness.Normalized(m, info.mean, info.std)
    return wrap(models[0]), wrap(models[1]), x, test.y[:120]


class _Masked(nn.Module):
    """A model whose input gradient is zero (its input goes through ``round``): white-box attacks see nothing."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 255) / 255)


def test_battery_on_a_trained_model_passes_its_checks_and_is_seeded(trained):
    model, source, x, y = trained
    r = robustness.battery(model, x, y, source=source, restarts=2)
    assert r["clean"] > 70
    assert r["pgd100"] <= r["pgd20"] <= r["fgsm"] < r["clean"]
    assert r["apgd_ce"] < r["clean"]
    curve = [v["pgd20"] for v in r["curve"].values()]
    assert curve[-1] <= 5.0 and curve[0] >= curve[-1]
    assert r["sanity"]["all"], r["sanity"]
    again = robustness.battery(model, x, y, source=source, restarts=2)
    assert again == r


def test_gradient_masking_fails_the_sanity_checks(trained):
    model, source, x, y = trained
    masked = _Masked(model)
    r = robustness.battery(masked, x, y, source=source, restarts=1)
    assert r["fgsm"] == pytest.approx(r["clean"])  # no gradient, no attack: looks perfectly "robust"
    assert not r["sanity"]["all"]
    assert not r["sanity"]["transfer_ge_whitebox"] or not r["sanity"]["zero_at_large_eps"]


def test_sanity_flags_each_violation():
    base = {"fgsm": 50.0, "pgd20": 30.0, "pgd100": 25.0, "transfer_pgd20": 60.0, "curve": {"128/255": {"pgd20": 0.0}}}
    assert robustness.sanity(base)["all"]
    for key, value, check in (
        ("pgd20", 55.0, "pgd_le_fgsm"),
        ("pgd100", 31.0, "more_steps_never_help"),
        ("transfer_pgd20", 20.0, "transfer_ge_whitebox"),
        ("curve", {"128/255": {"pgd20": 40.0}}, "zero_at_large_eps"),
    ):
        s = robustness.sanity({**base, key: value})
        assert not s[check] and not s["all"], check


def test_normalized_stays_in_eval_mode_through_an_attack(trained):
    """torchattacks restores a model's training mode after an attack: a wrapped BatchNorm / Dropout model must
    still be evaluated in eval mode (the wrapper never leaves it)."""
    import torchattacks

    model, _, x, y = trained
    bn = robustness.Normalized(nn.Sequential(model.model, nn.BatchNorm1d(10)).train(), [0.0], [1.0])
    assert not any(m.training for m in bn.modules())
    torchattacks.FGSM(bn, eps=0.03)(x[:8], y[:8])
    bn.train()
    assert not any(m.training for m in bn.modules())
    running = bn.model[1].running_mean.clone()
    with torch.no_grad():
        bn(x)
    assert torch.equal(bn.model[1].running_mean, running)  # eval mode: the statistics do not move
