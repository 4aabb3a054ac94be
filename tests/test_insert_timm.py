"""insert_anl on timm models: ANL between a fused norm and its activation (BatchNormAct2d), the
two-round step against the oracle, hooks through deepcopy / pickling / SyncBatchNorm conversion,
the error for models without BatchNorm, and the README's timm block."""

import copy
import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import anl_fused
from anl_fused import ANL2d, TwoRound, anl_layers, insert_anl, strip_anl
from anl_fused.insert import restore_hooks
from anl_fused.reference import two_round_step

from . import _readme
from ._nets import assert_grads_close

timm = pytest.importorskip("timm", reason="timm is not installed (pip install -e '.[test]')")
from timm.layers import BatchNormAct2d  # noqa: E402

NAMES = ["resnet18", "efficientnet_b0", "regnetx_002"]


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=10)


def owner_of(model: nn.Module) -> dict[ANL2d, nn.Module]:
    return {m.anl: m for m in model.modules() if isinstance(getattr(m, "anl", None), ANL2d)}


@pytest.mark.parametrize("name", NAMES)
def test_timm_models_get_anl_between_norm_and_activation(name):
    plain = build(name)
    model = insert_anl(copy.deepcopy(plain), eps=0.05)
    fused = sum(isinstance(m, BatchNormAct2d) for m in plain.modules())
    assert fused > 0 if name != "resnet18" else fused == 0
    assert len(anl_layers(model)) == sum(isinstance(m, nn.BatchNorm2d) for m in plain.modules()) > 0
    assert list(model.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(model.state_dict(), strict=True)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    torch.testing.assert_close(model.eval()(x), plain.eval()(x), rtol=0, atol=0)  # eval: ANL is the identity
    model.train()

    # What each ANL layer sees in round 1: exactly its norm's output, before the activation.
    owners = owner_of(model)
    norm_in, anl_in = {}, {}

    def record(into, key):  # a pre-hook that returns None (a returned value would replace the module's input)
        def hook(module, args):
            into.setdefault(key, args[0].detach().clone())

        return hook

    for layer, norm in owners.items():
        norm.register_forward_pre_hook(record(norm_in, norm))
        layer.register_forward_pre_hook(record(anl_in, layer))
    TwoRound(model).step(lambda: F.cross_entropy(model(x), y))
    assert set(anl_in) == set(owners)
    negative = 0
    for layer, norm in owners.items():
        expected = F.batch_norm(norm_in[norm], None, None, norm.weight, norm.bias, True, 0.0, norm.eps)
        torch.testing.assert_close(anl_in[layer], expected, rtol=1e-5, atol=1e-5)
        negative += int(isinstance(norm, BatchNormAct2d) and bool((anl_in[layer] < -1).any()))
    # after ReLU / SiLU nothing is below -0.28: these inputs are pre-activation
    assert negative > 0 if fused else negative == 0


@pytest.mark.parametrize("name", NAMES)
def test_timm_two_round_step_equals_the_oracle(name):
    """In float64 (1e-10, as tests/test_reference.py): these untrained nets, at 32x32 with 4 samples (1x1 maps
    at the end), amplify float32 rounding to 1e-3 of the gradients (efficientnet_b0)."""
    model = insert_anl(build(name), eps=0.1).double()
    oracle = copy.deepcopy(model)
    x, y = torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.tensor([1, 2, 3, 4])
    TwoRound(model, torch.Generator().manual_seed(0)).step(lambda: F.cross_entropy(model(x), y))
    two_round_step(oracle, lambda: F.cross_entropy(oracle(x), y), torch.Generator().manual_seed(0))
    assert_grads_close(model, oracle, rtol=1e-10)


def test_copies_strip_and_sync_batchnorm_conversion_keep_one_hook_per_layer():
    model = insert_anl(build("efficientnet_b0"), eps=0.05)
    n = len(anl_layers(model))

    def calls(m: nn.Module) -> dict[ANL2d, int]:
        counts = {layer: 0 for layer in anl_layers(m)}
        handles = [
            layer.register_forward_hook(lambda mod, a, o: counts.__setitem__(mod, counts[mod] + 1)) for layer in counts
        ]
        with warnings.catch_warnings():  # active layers (inactive ones do no hook work), outside a step:
            warnings.simplefilter("ignore")  # the identity, with a warning
            m.train()(torch.randn(2, 3, 32, 32))
        for h in handles:
            h.remove()
        return counts

    twin = copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for m in (model, twin, loaded):  # each copy's hooks call that copy's own layers, once each
        assert list(calls(m).values()) == [1] * n
    converted = restore_hooks(timm.layers.convert_sync_batchnorm(copy.deepcopy(model)))
    assert list(calls(converted).values()) == [1] * n
    with pytest.raises(ValueError, match=r"BatchNormAct2d.*timm.layers.convert_sync_batchnorm"):
        anl_fused.distributed.convert_sync_batchnorm(copy.deepcopy(model))  # torch's would drop the act
    resnet = insert_anl(build("resnet18"), eps=0.05)
    converted = timm.layers.convert_sync_batchnorm(resnet)  # plain BatchNorm2d: the hooks are lost ...
    assert sum(calls(converted).values()) == 0
    assert list(calls(restore_hooks(converted)).values()) == [1] * 20  # ... and restored
    strip_anl(model)
    assert anl_layers(model) == []
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_models_without_batchnorm_get_one_error_that_says_what_to_pass():
    convnext = timm.create_model("convnext_atto", pretrained=False)
    with pytest.raises(ValueError, match=r"ConvNeXt has no BatchNorm2d.*LayerNorm2d.*Pass after='conv'"):
        insert_anl(convnext, 0.05)
    assert len(anl_layers(insert_anl(convnext, 0.05, after="conv"))) == 40
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.LayerNorm(4))
    with pytest.raises(ValueError, match=r"Sequential has no BatchNorm2d.*LayerNorm.*no Conv2d either.*ANL2d\(eps\)"):
        insert_anl(mlp, 0.05)
    with pytest.raises(ValueError, match=r"has no Conv2d .*Pass after='batchnorm'"):
        insert_anl(nn.Sequential(nn.BatchNorm2d(3)), 0.05, after="conv")


def test_readme_timm_block(capsys):
    ns = _readme.run("timm")
    model = ns["model"]
    eps = anl_fused.auto_eps(model)
    assert eps == 0.024 and {layer.eps for layer in anl_layers(model)} == {eps}
    assert isinstance(model.bn1, BatchNormAct2d) and model.bn1.anl in anl_layers(model)
    out = capsys.readouterr().out
    assert "(anl): ANL2d(eps=0.024)" in out and "Pass after='conv'" in out
    assert all(p.grad is not None for p in model.parameters())


def test_inactive_layers_between_norm_and_activation_do_no_hook_work(monkeypatch):
    model = insert_anl(build("efficientnet_b0"), eps=0.05)
    calls = []
    monkeypatch.setattr(ANL2d, "forward", lambda self, h: calls.append(self) or h)
    model.eval()(torch.randn(1, 3, 32, 32))
    anl_fused.set_anl_enabled(model.train(), False)
    model(torch.randn(2, 3, 32, 32))
    assert calls == []
