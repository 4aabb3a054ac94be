"""The README's Lightning block (automatic and manual optimization, ANL phase then fine-tuning)
trains to exactly the weights of the same steps in a plain loop with the same seeds."""

import copy

import pytest
import torch
import torch.nn.functional as F

import anl_fused

from .. import _readme

L = pytest.importorskip("lightning", reason="lightning is not installed (pip install -e '.[test]')")


@pytest.fixture
def lightning_runs(monkeypatch):
    """Runs the README block; returns, per ``trainer.fit``: (module before, RNG state, loader, trained module)."""
    runs = []
    fit = L.Trainer.fit

    def recording_fit(self, model, train_dataloaders=None, *args, **kwargs):
        runs.append((copy.deepcopy(model), torch.get_rng_state(), train_dataloaders, model, self.max_epochs))
        return fit(self, model, train_dataloaders, *args, **kwargs)

    monkeypatch.setattr(L.Trainer, "fit", recording_fit)
    _readme.run("Lightning: automatic and manual optimization")
    assert len(runs) == 2
    return runs


def plain_loop(module, rng_state, loader, epochs: int, anl_epochs: int):
    """The steps Lightning should have taken, written as a plain PyTorch loop."""
    torch.set_rng_state(rng_state)
    net = module.net
    net.train()
    engine = anl_fused.TwoRound(net, torch.Generator().manual_seed(module.seed))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for epoch in range(epochs):
        anl_fused.set_anl_enabled(net, epoch < anl_epochs)
        for x, y in loader:
            optimizer.zero_grad()
            engine.step(lambda x=x, y=y: F.cross_entropy(net(x), y))
            optimizer.step()
    return net


def assert_same(a, b):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=lambda m, name=name: f"{name}: {m}")


def differ(a, b) -> float:
    return max(
        (x.double() - y.double()).abs().max().item()
        for x, y in zip(a.state_dict().values(), b.state_dict().values())
        if x.is_floating_point()
    )


def test_lightning_automatic_and_manual_optimization_equal_a_plain_loop(lightning_runs):
    kinds = []
    for before, rng_state, loader, trained, epochs in lightning_runs:
        kinds.append(trained.automatic_optimization)
        assert epochs == 2 and trained.anl_epochs == 1
        assert trained.engine.nonfinite_samples is not None  # the engine did measure noise
        plain = plain_loop(copy.deepcopy(before), rng_state, loader, epochs, anl_epochs=1)
        assert_same(trained.net, plain)
        # not vacuous: the run moved the weights, its noise mattered, and so did switching ANL off
        assert differ(trained.net, before.net) > 1e-3
        assert differ(trained.net, plain_loop(copy.deepcopy(before), rng_state, loader, epochs, 0)) > 1e-5
        assert differ(trained.net, plain_loop(copy.deepcopy(before), rng_state, loader, epochs, 2)) > 1e-5
        assert all(not layer.enabled for layer in anl_fused.anl_layers(trained.net))  # fine-tuning phase
    assert kinds == [True, False]  # automatic, then manual optimization
