"""The README's Accelerate block trains to exactly the weights of the same steps in a plain loop with
the same seeds."""

import copy

import pytest
import torch
import torch.nn.functional as F

import anl_fused

from .. import _readme

accelerate = pytest.importorskip("accelerate", reason="accelerate is not installed (pip install -e '.[test]')")


def test_accelerate_loop_equals_a_plain_loop(monkeypatch):
    seen = []
    prepare = accelerate.Accelerator.prepare

    def recording_prepare(self, *args, **kwargs):
        seen.append((copy.deepcopy(args[0]), torch.get_rng_state(), args[2]))
        return prepare(self, *args, **kwargs)

    monkeypatch.setattr(accelerate.Accelerator, "prepare", recording_prepare)
    ns = _readme.run("Accelerate")
    ((before, rng_state, loader),) = seen
    assert ns["accelerator"].scaler is None and ns["engine"].probe_loss_scale is None
    assert ns["engine"].nonfinite_samples is not None  # the engine did measure noise

    def plain(anl: bool):
        net = copy.deepcopy(before)
        anl_fused.set_anl_enabled(net, anl)
        torch.set_rng_state(rng_state)
        engine = anl_fused.TwoRound(net, torch.Generator().manual_seed(0))
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        for _ in range(2):
            for x, y in loader:
                optimizer.zero_grad()
                engine.step(lambda x=x, y=y: F.cross_entropy(net(x), y))
                optimizer.step()
        return net

    trained = ns["accelerator"].unwrap_model(ns["model"])
    reference = plain(anl=True)
    for (name, x), y in zip(trained.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=lambda m, name=name: f"{name}: {m}")
    # not vacuous: without ANL the same loop ends elsewhere
    without = plain(anl=False)
    assert max((a - b).abs().max().item() for a, b in zip(trained.parameters(), without.parameters())) > 1e-5
