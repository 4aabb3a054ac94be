"""insert_anl / strip_anl / set_anl_enabled / anl_layers on the zoo and torchvision models."""

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from anl_fused import ANL2d, TwoRound, anl_layers, insert_anl, set_anl_enabled, strip_anl

from ._nets import small_vgg

TORCHVISION = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
    "vgg16_bn": lambda: torchvision.models.vgg16_bn(num_classes=10),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(num_classes=10),
}


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_insert_into_torchvision_models_keeps_state_dict_and_trains(name):
    torch.manual_seed(0)
    plain = TORCHVISION[name]()
    model = insert_anl(copy.deepcopy(plain), eps=0.05)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert len(anl_layers(model)) == n_bn > 0
    assert list(model.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(model.state_dict(), strict=True)
    model.load_state_dict(plain.state_dict(), strict=True)
    model.eval(), plain.eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)
    model.train()
    loss = TwoRound(model).step(lambda: F.cross_entropy(model(x), torch.tensor([1, 2])))
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())


def test_never_after_linear_and_conv_placement():
    model = small_vgg()
    insert_anl(model, 0.1)
    assert all(not any(isinstance(c, ANL2d) for c in m.children()) for m in model.modules() if isinstance(m, nn.Linear))
    convs = small_vgg()
    insert_anl(convs, 0.1, after="conv")
    assert len(anl_layers(convs)) == sum(isinstance(m, nn.Conv2d) for m in convs.modules())
    nobn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    with pytest.raises(ValueError, match="after='conv'"):
        insert_anl(nobn, 0.1)
    with pytest.raises(ValueError, match="after='batchnorm'"):
        insert_anl(nn.Sequential(nn.BatchNorm2d(3), nn.Flatten()), 0.1, after="conv")
    for after in ("batchnorm", "conv"):  # neither: one message, that does not send the user to the other option
        with pytest.raises(ValueError, match=r"has no .* either.*ANL2d\(eps\) modules into the model by hand") as err:
            insert_anl(nn.Sequential(nn.Linear(3, 4)), 0.1, after=after)
        assert "Pass after=" not in str(err.value)


def test_insert_after_syncbatchnorm():
    model = nn.SyncBatchNorm.convert_sync_batchnorm(small_vgg())
    keys = list(model.state_dict())
    insert_anl(model, 0.1)
    assert len(anl_layers(model)) == 3 and list(model.state_dict()) == keys


def test_anl_layers_order_input_first_and_twice_is_an_error():
    model = insert_anl(small_vgg(), 0.1, input_eps=0.2)
    layers = anl_layers(model)
    assert [layer.eps for layer in layers] == [0.2, 0.1, 0.1, 0.1]
    with pytest.raises(ValueError, match="strip_anl"):
        insert_anl(model, 0.1)


class Wrapped(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = small_vgg()

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("factory", [small_vgg, Wrapped], ids=["sequential", "module"])
def test_input_anl_sees_the_input_and_strip_restores_the_model(factory):
    torch.manual_seed(0)
    plain = factory()
    model = insert_anl(copy.deepcopy(plain), 0.1, input_eps=0.2)
    seen = []
    model.anl_input.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    x = torch.randn(2, 3, 8, 8)
    TwoRound(model).step(lambda: F.cross_entropy(model(x), torch.tensor([1, 2])))
    assert len(seen) == 2 and seen[0] is x and seen[1] is x  # round 1 and round 2
    model.load_state_dict(plain.state_dict())  # undo the step's BatchNorm statistics (same keys, strict)
    model.eval()
    strip_anl(model)
    assert anl_layers(model) == [] and not hasattr(model, "anl_input")
    assert str(model) == str(plain)
    assert not any(h for m in model.modules() for h in (m._forward_hooks, m._forward_pre_hooks))
    plain.eval()
    torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)


def test_strip_replaces_hand_placed_layers_by_identity():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), ANL2d(0.1), nn.ReLU(), nn.Conv2d(4, 4, 3))
    keys = list(model.state_dict())
    strip_anl(model)
    assert isinstance(model[1], nn.Identity) and list(model.state_dict()) == keys


def test_hand_placed_layer_trains_under_tworound():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), ANL2d(0.5), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    outs = []
    model[2].register_forward_hook(lambda m, i, o: outs.append((i[0].detach(), o.detach())))
    TwoRound(model).step(lambda: F.cross_entropy(model(x), y))
    (h1, o1), (h2, o2) = outs
    assert torch.equal(h1, o1) and not torch.equal(h2, o2)


def test_set_anl_enabled():
    model = insert_anl(small_vgg(), 0.1, input_eps=0.1)
    set_anl_enabled(model, False)
    assert all(not layer.enabled and not layer.active for layer in anl_layers(model))
    assert "enabled=False" in repr(anl_layers(model)[0])
    set_anl_enabled(model, True)
    assert all(layer.active for layer in anl_layers(model))


class Keyword(nn.Module):
    """A model whose first argument may come by keyword, and that takes unbatched (C, H, W) input."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x, scale=1.0):
        return self.conv(x).flatten(-3).sum(-1) * scale


def test_input_anl_when_inactive_does_no_hook_work(monkeypatch):
    """model(x=x) and an unbatched (C, H, W) input in eval mode (or with ANL disabled): the hooks do not
    call the layers at all, so neither the keyword nor the shape matters."""
    torch.manual_seed(0)
    model = insert_anl(Keyword(), 0.1, input_eps=0.1, after="conv")
    calls = []
    monkeypatch.setattr(ANL2d, "forward", lambda self, h: calls.append(self) or h)
    x = torch.randn(2, 3, 8, 8)
    for inactive in (lambda: model.eval(), lambda: set_anl_enabled(model.train(), False)):
        inactive()
        torch.testing.assert_close(model(x=x), model(x))
        torch.testing.assert_close(model(x[0]), model(x)[0])
        torch.testing.assert_close(model(x=x[0], scale=2.0), 2 * model(x)[0])
    assert calls == []


def test_inactive_layers_of_a_sequential_take_unbatched_input():
    """An nn.Sequential's input ANL is a child layer, not a hook: inactive (eval mode, or disabled), it is
    the identity for any input, an unbatched (C, H, W) image included; active, it still wants (N, C, H, W)."""
    torch.manual_seed(0)
    model = insert_anl(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), 0.1, input_eps=0.1, after="conv")
    x = torch.randn(2, 3, 8, 8)
    for inactive in (lambda: model.eval(), lambda: set_anl_enabled(model.train(), False)):
        inactive()
        torch.testing.assert_close(model(x[0]), model.eval()(x)[0])
    set_anl_enabled(model.train(), True)
    with pytest.raises(ValueError, match=r"4-D \(N, C, H, W\) input, got shape \(3, 8, 8\)"):
        TwoRound(model).step(lambda: model(x[0]).sum())


def test_input_anl_applies_to_the_first_argument_passed_by_keyword():
    torch.manual_seed(0)
    model = insert_anl(Keyword(), 0.1, input_eps=0.3, after="conv")
    x, grads = torch.randn(4, 3, 8, 8), []
    for call in (lambda: model(x, scale=2.0), lambda: model(x=x, scale=2.0)):
        model.zero_grad()
        TwoRound(model, torch.Generator().manual_seed(0)).step(lambda call=call: call().square().mean())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
    with pytest.raises(TypeError, match=r"first argument of Keyword\.forward \('x'\)"):
        TwoRound(model).step(lambda: model(scale=2.0).sum())
