"""ANL2d, its functional twin, insert_anl / strip_anl / set_anl_enabled / anl_layers, and errors."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from anl_fused import ANL2d, TwoRound, anl2d, anl_layers, insert_anl, set_anl_enabled, strip_anl
from _nets import small_vgg


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -math.inf])
def test_nonfinite_eps_is_an_error_naming_the_value(bad):
    with pytest.raises(ValueError, match="finite"):
        ANL2d(bad)
    with pytest.raises(ValueError, match="eps"):
        insert_anl(small_vgg(), eps=bad)
    with pytest.raises(ValueError, match="input_eps"):
        insert_anl(small_vgg(), eps=0.1, input_eps=bad)
    layer = ANL2d(0.1)
    with pytest.raises(ValueError):
        layer.eps = bad


@pytest.mark.parametrize("bad", [True, "0.1", None, torch.tensor(0.1)])
def test_eps_must_be_a_real_number(bad):
    with pytest.raises(TypeError, match="eps must be a real number"):
        ANL2d(bad)


def test_bad_options():
    with pytest.raises(ValueError, match="'uniform'"):
        ANL2d(0.1, noise="uniform")
    with pytest.raises(ValueError, match="sign=True"):
        ANL2d(0.1, noise="gaussian", sign=True)
    with pytest.raises(ValueError, match="'linear'"):
        insert_anl(small_vgg(), 0.1, after="linear")
    with pytest.raises(TypeError, match="nn.Module"):
        insert_anl("model", 0.1)


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 4), (1, 2, 3, 4, 5)])
def test_non_4d_input_is_an_error_in_every_mode(shape):
    layer = ANL2d(0.1)
    for mode in (layer.train, layer.eval):
        mode()
        with pytest.raises(ValueError, match=r"4-D .*" + re.escape(str(shape))):
            layer(torch.randn(shape))


import re  # noqa: E402  (used by the test above)


def test_negative_eps_is_allowed_and_repr_names_options():
    layer = ANL2d(-0.05, noise="gaussian", scale_by_std=False)
    assert layer.eps == -0.05
    assert repr(layer) == "ANL2d(eps=-0.05, noise='gaussian', scale_by_std=False)"
    assert repr(ANL2d(0.1, sign=True)) == "ANL2d(eps=0.1, sign=True)"


def test_functional_twin_is_the_formula():
    torch.manual_seed(0)
    h, g = torch.randn(5, 3, 4, 4, dtype=torch.float64), torch.randn(5, 3, 4, 4, dtype=torch.float64)
    g[3] = 0.0
    z = torch.randn(5, dtype=torch.float64)
    eps = 0.3
    out = anl2d(h, g, eps, z=z)
    r = (eps / 2 + eps / 4 * z).clamp(0, eps)
    norm = g.abs().amax(dim=(1, 2, 3))
    expected = h + (r * h.std() / norm).nan_to_num(0, 0, 0)[:, None, None, None] * g
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(out[3], h[3])
    # Eq. 4, sign form, gaussian, eps 0
    torch.testing.assert_close(anl2d(h, g, eps, z=z, scale_by_std=False) - h,
                               (r / norm).nan_to_num(0, 0, 0)[:, None, None, None] * g)
    torch.testing.assert_close(anl2d(h, g, eps, sign=True) - h, eps * torch.sign(g))
    zg = torch.randn_like(h)
    torch.testing.assert_close(anl2d(h, None, -eps, z=zg, noise="gaussian") - h, h.std() * eps / 4 * zg)
    assert anl2d(h, g, 0.0) is h


def test_functional_twin_passes_gradient_to_input_only():
    h = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    out = anl2d(h, g, 0.2, z=torch.randn(2, dtype=torch.float64))
    out.backward(torch.ones_like(out))
    assert torch.equal(h.grad, torch.ones_like(h))


def test_functional_draws_from_the_generator():
    h, g = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    a = anl2d(h, g, 0.2, generator=torch.Generator().manual_seed(1))
    b = anl2d(h, g, 0.2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, h)


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
    model.eval()(x)
    assert len(seen) == 1 and seen[0] is x
    assert list(model.state_dict()) == list(plain.state_dict())
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


@pytest.mark.parametrize("result,err,match", [
    (1.5, TypeError, "float"),
    (None, TypeError, "NoneType"),
    (torch.ones(3), ValueError, r"shape \(3,\)"),
])
def test_closure_must_return_a_scalar_tensor(result, err, match):
    model = insert_anl(small_vgg(), 0.1)
    for m in (model, model.eval()):
        with pytest.raises(err, match=match):
            TwoRound(m).step(lambda: (m(torch.randn(2, 3, 8, 8)), result)[1])


def test_engine_argument_errors_and_generator_device():
    model = insert_anl(small_vgg(), 0.1)
    with pytest.raises(TypeError, match="generator"):
        TwoRound(model, generator=1)
    with pytest.raises(TypeError, match="noise_dtype"):
        TwoRound(model, noise_dtype=torch.int8)
    with pytest.raises(TypeError, match="nn.Module"):
        TwoRound(lambda x: x)


def test_layer_called_twice_is_an_error():
    layer = ANL2d(0.3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), layer, nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), layer,
                          nn.Flatten(), nn.Linear(144, 2))
    with pytest.raises(RuntimeError, match="twice"):
        TwoRound(model).step(lambda: model(torch.randn(2, 3, 8, 8)).sum())


def test_noise_dtype_bfloat16_keeps_gradient_close():
    torch.manual_seed(0)
    model = insert_anl(small_vgg(dropout=False), 0.5)
    a, b = model, copy.deepcopy(model)
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 10, (6,))
    for m, dt in ((a, None), (b, torch.bfloat16)):
        TwoRound(m, torch.Generator().manual_seed(0), noise_dtype=dt).step(lambda: F.cross_entropy(m(x), y))
    ga = torch.cat([p.grad.flatten() for p in a.parameters()])
    gb = torch.cat([p.grad.flatten() for p in b.parameters()])
    assert (ga - gb).norm() <= 2e-2 * ga.norm()
