"""The model zoo: shapes, parameter counts (Table 2), ANL placement, dropout variant, TwoRound."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from anl_fused import TwoRound, anl_layers, insert_anl, set_anl_enabled, strip_anl
from anl_fused.experiments.models import MODELS, build, count_params, get_spec
from anl_fused.experiments.models import cli as models_cli
from anl_fused.experiments.models.pool import MaxPool2d

SMALL = [n for n, s in MODELS.items() if not s.large]
LARGE = [n for n, s in MODELS.items() if s.large]
ALL = [pytest.param(n, marks=pytest.mark.slow) if MODELS[n].large else n for n in MODELS]

PAPER_MODELS = {
    "lenet5",
    "vgg11",
    "vgg16",
    "resnet18",
    "resnet34",
    "mobilenet",
    "mobilenet_v2",
    "pyramidnet48",
    "pyramidnet270",
    "wrn40_4",
    "wrn28_10",
}


def test_registry_has_the_paper_models():
    assert set(MODELS) >= PAPER_MODELS
    for name, spec in MODELS.items():
        assert spec.name == name
        assert spec.eps > 0
        assert spec.anl_after in ("batchnorm", "conv")
    assert MODELS["lenet5"].anl_after == "conv"
    assert get_spec("WRN40-4".lower().replace("wrn40-4", "wrn40_4")).name == "wrn40_4"
    with pytest.raises(KeyError, match="unknown model"):
        build("alexnet")


@pytest.mark.parametrize("name", [n for n in MODELS if MODELS[n].paper_params])
def test_param_count_within_10_percent_of_table_2(name):
    with torch.device("meta"):  # no weight initialization work
        n = count_params(build(name, num_classes=10, in_channels=3))
    paper = MODELS[name].paper_params
    assert abs(n - paper) / paper < 0.10, f"{name}: {n / 1e6:.2f}M vs paper {paper / 1e6:.2f}M"


@pytest.mark.parametrize("name", ALL)
def test_forward_backward_under_two_round_tiny(name):
    torch.manual_seed(0)
    model = build(name, num_classes=10, in_channels=3)
    insert_anl(model, MODELS[name].eps, after=MODELS[name].anl_after)
    assert len(anl_layers(model)) >= 2
    model.train()
    engine = TwoRound(model, generator=torch.Generator().manual_seed(0))
    x, y = torch.randn(2, 3, 16, 16), torch.tensor([1, 7])
    loss = engine.step(lambda: F.cross_entropy(model(x), y))
    assert loss.dim() == 0 and torch.isfinite(loss)
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert engine.last_stds and all(torch.isfinite(s) for s in engine.last_stds.values())
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 10)


@pytest.mark.parametrize("name", ALL)
def test_small_grey_inputs_and_class_count(name):
    """Every model takes 8x8 single-channel inputs (adaptive pooling) and any class count."""
    torch.manual_seed(0)
    model = build(name, num_classes=7, in_channels=1).eval()
    with torch.no_grad():
        for size in (8, 11, 28):
            assert model(torch.randn(2, 1, size, size)).shape == (2, 7)


def test_anl_after_every_batchnorm():
    for name in ("vgg11", "resnet18", "mobilenet_v2"):
        model = build(name)
        n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        insert_anl(model, 0.05)
        assert len(anl_layers(model)) == n_bn


def test_lenet5_is_conv_anl_relu_pool():
    """Footnote 1: CONV-ANL-RELU-POOL-CONV-ANL-RELU-POOL-FC-RELU-FC-RELU-FC."""
    spec = MODELS["lenet5"]  # ANL at the paper's place with the paper's eps
    model = insert_anl(build("lenet5", in_channels=1), spec.eps, after=spec.anl_after)
    assert MODELS["lenet5"].eps == 0.03
    layers = anl_layers(model)
    assert len(layers) == 2 and all(layer.eps == 0.03 for layer in layers)
    assert model.conv1.anl is layers[0] and model.conv2.anl is layers[1]
    fcs = [m for m in model.classifier if isinstance(m, nn.Linear)]
    assert [f.out_features for f in fcs] == [120, 84, 10]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def _footnote_1_lenet(in_channels: int = 1) -> nn.Sequential:
    """The paper's LeNet-5 written out literally: CONV(6, 5x5, pad 2)-RELU-POOL-CONV(16, 5x5)-RELU-POOL-
    FC(120)-RELU-FC(84)-RELU-FC(10) for 28x28 inputs (ANL layers are the identity at inference)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(400, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, 10),
    )


def test_lenet5_is_the_footnote_1_network_on_28x28():
    torch.manual_seed(0)
    model = build("lenet5", in_channels=1).eval()
    assert count_params(model) == 61_706
    ref = _footnote_1_lenet().eval()
    assert count_params(ref) == 61_706
    ref.load_state_dict(dict(zip(ref.state_dict(), model.state_dict().values())))  # same order, same shapes
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)
    assert model.classifier[0].in_features == 400 and model.conv2.padding == (0, 0)


def test_lenet5_pads_small_inputs_to_28x28():
    """Documented: inputs smaller than 28x28 (8x8 digits) are zero-padded, centred, to 28x28."""
    torch.manual_seed(0)
    model = build("lenet5", in_channels=1).eval()
    x = torch.randn(3, 1, 8, 8)
    padded = torch.zeros(3, 1, 28, 28)
    padded[..., 10:18, 10:18] = x
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(padded), rtol=0, atol=0)
        assert model(torch.randn(2, 1, 27, 9)).shape == (2, 10)


def test_models_cli_counts_lenet5_on_grey_28x28(capsys):
    from anl_fused.cli import main

    assert main(["models", "lenet5"]) == 0
    out = capsys.readouterr().out
    assert "61,706" in out and " 1 " in out
    row = models_cli.rows(["lenet5"])[0]
    assert row["params"] == 61_706 and row["in_channels"] == 1
    assert models_cli.rows(["lenet5"], in_channels=3)[0]["params"] == 61_706 + 2 * 6 * 25


def test_insert_keeps_state_dict_keys():
    plain = build("resnet18")
    keys = list(plain.state_dict())
    model = insert_anl(build("resnet18"), 0.05)
    assert list(model.state_dict()) == keys
    model.load_state_dict(plain.state_dict(), strict=True)
    assert list(strip_anl(model).state_dict()) == keys


@pytest.mark.parametrize("name", list(MODELS))
def test_dropout_variant(name):
    with torch.device("meta"):
        plain, drop = build(name), build(name, dropout=True)
    assert not any(isinstance(m, nn.Dropout) for m in plain.modules())
    ps = [m.p for m in drop.modules() if isinstance(m, nn.Dropout)]
    assert ps, name
    if name.startswith("wrn"):  # between convs, p=0.3 (Zagoruyko & Komodakis), no extra parameters
        assert set(ps) == {0.3}
        assert count_params(drop) == count_params(plain)
    else:  # between FC layers, p=0.5
        assert set(ps) == {0.5}
        seq = [m for m in drop.modules() if isinstance(m, nn.Sequential) and any(isinstance(c, nn.Dropout) for c in m)]
        for s in seq:  # every dropout sits between two Linear layers
            kinds = [type(c) for c in s]
            for i, k in enumerate(kinds):
                if k is nn.Dropout:
                    assert nn.Linear in kinds[:i] or i == 0
                    assert nn.Linear in kinds[i + 1 :]


def test_dropout_masks_replayed_and_anl_disable_is_plain():
    torch.manual_seed(0)
    model = insert_anl(build("vgg11", dropout=True), 0.05)
    engine = TwoRound(model, generator=torch.Generator().manual_seed(1))
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    loss = engine.step(lambda: F.cross_entropy(model(x), y))
    assert torch.isfinite(loss)
    set_anl_enabled(model, False)
    model.zero_grad()
    engine.step(lambda: F.cross_entropy(model(x), y))
    assert all(p.grad is not None for p in model.parameters())


def test_models_cli_table(capsys):
    from anl_fused.cli import main

    assert main(["models", "lenet5", "vgg16", "wrn28_10"]) == 0
    out = capsys.readouterr().out
    assert "vgg16" in out and "14.73M" in out and "14.70M" in out and "0.05" in out
    assert "wrn28_10" in out and "36.50M" in out and "0.10" in out
    assert main(["models", "--json", "resnet18"]) == 0
    import json

    row = json.loads(capsys.readouterr().out.strip())
    assert row["model"] == "resnet18" and abs(row["ratio"] - 1) < 0.1 and row["eps"] == 0.05
    assert main(["models", "nonet"]) == 2


def test_models_rows_all():
    rows = models_cli.rows()
    assert {r["model"] for r in rows} == set(MODELS)


def _aten_pools(model: nn.Module) -> nn.Module:
    """The model with every zoo MaxPool2d replaced by torch's own nn.MaxPool2d of the same arguments."""
    for name, child in model.named_children():
        if isinstance(child, MaxPool2d):
            setattr(model, name, nn.MaxPool2d(child.kernel_size, child.stride, ceil_mode=child.ceil_mode))
        else:
            _aten_pools(child)
    return model


@pytest.mark.parametrize(("name", "in_channels", "size"), [("lenet5", 1, 28), ("vgg_tiny", 3, 16)])
def test_zoo_pool_trains_the_same_bits_as_torchs(name, in_channels, size):
    """Five TwoRound + SGD steps with the C++ pool (asserted to run) and with nn.MaxPool2d: equal weights."""
    weights = []
    for fast in (True, False):
        torch.manual_seed(0)
        model = insert_anl(build(name, in_channels=in_channels), MODELS[name].eps, after=MODELS[name].anl_after)
        if not fast:
            _aten_pools(model)
        engine = TwoRound(model, generator=torch.Generator().manual_seed(0))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        data = torch.Generator().manual_seed(1)
        for _ in range(5):
            x = torch.randn(8, in_channels, size, size, generator=data)
            y = torch.randint(0, 10, (8,), generator=data)
            opt.zero_grad()
            engine.step(lambda: F.cross_entropy(model(x), y))
            opt.step()
        pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
        out = pools[0](torch.randn(2, 3, 8, 8, requires_grad=True))
        assert ("MaxPool2x2" in type(out.grad_fn).__name__ or "MaxPool2x2" in out.grad_fn.name()) == fast
        weights.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights))


@pytest.mark.parametrize(
    ("pool", "x"),
    [
        (MaxPool2d(2, 2), torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)),
        (MaxPool2d(2, 2), torch.randn(2, 3, 8, 8).transpose(-1, -2)),
        (MaxPool2d(2, 2), torch.randn(3, 8, 8)),
        (MaxPool2d(3, 2), torch.randn(2, 3, 9, 9)),
        (MaxPool2d(2, 2, padding=1), torch.randn(2, 3, 8, 8)),
        (MaxPool2d(2, 2, ceil_mode=True), torch.randn(2, 3, 7, 8)),
    ],
)
def test_zoo_pool_leaves_other_cases_to_torch(pool, x):
    out = pool(x.requires_grad_())
    assert "MaxPool2DWithIndices" in out.grad_fn.name()
    assert torch.equal(out, F.max_pool2d(x, pool.kernel_size, pool.stride, pool.padding, ceil_mode=pool.ceil_mode))


def test_zoo_pool_too_small_input_gets_torchs_error():
    with pytest.raises(RuntimeError, match="Output size is too small"):
        MaxPool2d(2, 2)(torch.randn(2, 3, 1, 8))
