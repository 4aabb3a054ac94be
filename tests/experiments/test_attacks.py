"""FGSM / IFGSM (anl_fused.experiments.attacks, torchattacks inside) against the formulas written out by hand, their
invariants, and the transfer matrix."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import torchattacks
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from anl_fused.experiments.attacks import (
    PAPER_FGSM,
    PAPER_IFGSM,
    accuracy,
    evaluate_transfer,
    fgsm,
    ifgsm,
    paper_attacks,
    plot_transfer_heatmap,
    transfer_markdown,
)

EPS = PAPER_FGSM["eps"]
MEAN3, STD3 = [0.45, 0.5, 0.55], [0.2, 0.25, 0.3]


def small_cnn(in_channels: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),
    )


def _randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics, so that train-mode BN would give other images."""
    g = torch.Generator().manual_seed(123)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    return model


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    return x, y


@pytest.fixture(scope="module")
def random_data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(24, 3, 8, 8, generator=g)
    y = torch.randint(0, 10, (24,), generator=g)
    return x, y


def _case(name, digits, random_data):
    """(model, x, y) for a named data case: random 3-channel images or 16 digits rows (1x8x8)."""
    if name == "random":
        x, y = random_data
        return _randomize_bn(small_cnn(3, seed=1)), x, y
    x, y = digits
    return _randomize_bn(small_cnn(1, seed=2)), x[:16], y[:16]


DATA = ["random", "digits"]


# ------------------------------------------------------------------------------------------
# the oracle: the formulas by hand, independent of torchattacks
# ------------------------------------------------------------------------------------------


def _input_grad(model, x, y, mean=None, std=None):
    """``grad_x J`` with ``J`` the mean cross-entropy of ``model((x - mean) / std)`` (eval mode)."""
    model.eval()
    x = x.detach().clone().requires_grad_(True)
    z = x
    if mean is not None:
        c = x.shape[1]
        z = (x - torch.tensor(mean).reshape(1, c, 1, 1)) / torch.tensor(std).reshape(1, c, 1, 1)
    return torch.autograd.grad(F.cross_entropy(model(z), y), x)[0]


def oracle_fgsm(model, x, y, eps, mean=None, std=None):
    """``clip_[0,1](x + eps sign(grad_x J(x, y)))``."""
    return (x + eps * _input_grad(model, x, y, mean, std).sign()).clamp(0, 1)


def oracle_ifgsm(model, x, y, eps, alpha, steps, mean=None, std=None):
    """``x_{k+1} = clip_[0,1](clip_{x,eps}(x_k + alpha sign(grad J(x_k, y))))`` from ``x_0 = x``."""
    adv = x
    for _ in range(steps):
        adv = adv + alpha * _input_grad(model, adv, y, mean, std).sign()
        adv = torch.minimum(torch.maximum(adv, x - eps), x + eps).clamp(0, 1)
    return adv


# ------------------------------------------------------------------------------------------
# the same images as the oracle (the same arithmetic: bit for bit)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", DATA)
def test_fgsm_matches_oracle(data, digits, random_data):
    model, x, y = _case(data, digits, random_data)
    got = fgsm(model, x, y, EPS)
    assert torch.equal(got, oracle_fgsm(model, x, y, EPS))
    assert not torch.equal(got, x)


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize("eps,alpha,steps", [(16 / 255, 1 / 255, 16), (8 / 255, 2 / 255, 7), (0.3, 0.1, 3)])
def test_ifgsm_matches_oracle(data, eps, alpha, steps, digits, random_data):
    model, x, y = _case(data, digits, random_data)
    got = ifgsm(model, x, y, eps, alpha, steps)
    assert torch.equal(got, oracle_ifgsm(model, x, y, eps, alpha, steps))
    assert not torch.equal(got, x)


class _Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        c = len(mean)
        self.register_buffer("mean", torch.tensor(mean).reshape(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(std).reshape(1, c, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def _norm_stats(data):
    return (MEAN3, STD3) if data == "random" else ([0.3], [0.35])


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize("method", ["fgsm", "ifgsm"])
def test_normalization_matches_oracle(data, method, digits, random_data):
    model, x, y = _case(data, digits, random_data)
    mean, std = _norm_stats(data)
    if method == "fgsm":
        make = lambda m: torchattacks.FGSM(m, eps=EPS)
        oracle = lambda m, **kw: oracle_fgsm(m, x, y, EPS, **kw)
        ours = fgsm(model, x, y, EPS, mean=mean, std=std)
    else:
        make = lambda m: torchattacks.BIM(m, **PAPER_IFGSM)
        oracle = lambda m, **kw: oracle_ifgsm(m, x, y, **PAPER_IFGSM, **kw)
        ours = ifgsm(model, x, y, **PAPER_IFGSM, mean=mean, std=std)

    # 1. the oracle attacking model((x - mean) / std), or the model with the normalization inside it: bit-identical.
    assert torch.equal(ours, oracle(model, mean=mean, std=std))
    assert torch.equal(ours, oracle(nn.Sequential(_Normalize(mean, std), model)))

    # 2. torchattacks' own set_normalization_used: in 3.5 it takes *normalized* images and
    #    returns normalized ones (it inverts the normalization around the attack), so the
    #    comparison is in pixel space up to the round trip's rounding.
    atk = make(model)
    atk.set_normalization_used(mean=mean, std=std)
    m = torch.tensor(mean).reshape(1, -1, 1, 1)
    s = torch.tensor(std).reshape(1, -1, 1, 1)
    theirs = atk((x - m) / s, y) * s + m
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)

    # and the normalization matters: without it the images differ
    plain = fgsm(model, x, y, EPS) if method == "fgsm" else ifgsm(model, x, y, **PAPER_IFGSM)
    assert not torch.equal(ours, plain)


# ------------------------------------------------------------------------------------------
# invariants
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", DATA)
def test_eps_zero_returns_clean_images(data, digits, random_data):
    model, x, y = _case(data, digits, random_data)
    assert torch.equal(fgsm(model, x, y, 0.0), x)
    assert torch.equal(ifgsm(model, x, y, 0.0, 1 / 255, 5), x)
    assert torch.equal(ifgsm(model, x, y, 0, 0.1, 2, mean=MEAN3[:1] * x.shape[1], std=STD3[:1] * x.shape[1]), x)


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize("eps,alpha,steps", [(16 / 255, 1 / 255, 16), (0.1, 0.05, 6), (0.5, 0.3, 3)])
def test_bounds(data, eps, alpha, steps, digits, random_data):
    model, x, y = _case(data, digits, random_data)
    tol = 1e-6  # (x + eps) - x is eps up to float32 rounding
    for adv in (fgsm(model, x, y, eps), ifgsm(model, x, y, eps, alpha, steps)):
        assert adv.shape == x.shape and adv.dtype == x.dtype
        assert adv.min() >= 0 and adv.max() <= 1
        assert (adv - x).abs().max() <= eps + tol
        assert not adv.requires_grad
    # FGSM moves every pixel by exactly eps unless [0, 1] clips it
    adv = fgsm(model, x, y, eps)
    inside = ((x - eps) >= 0) & ((x + eps) <= 1)
    torch.testing.assert_close((adv - x).abs()[inside], torch.full_like(x[inside], eps), rtol=0, atol=tol)


@settings(max_examples=25, deadline=None)
@given(
    eps=st.floats(0, 1),
    alpha=st.floats(0, 0.5),
    steps=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_bounds_property(eps, alpha, steps, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(5, 3, 8, 8, generator=g)
    x[0] = 0.0  # images at the edges of [0, 1]
    x[1] = 1.0
    y = torch.randint(0, 10, (5,), generator=g)
    model = _PROPERTY_MODEL
    pairs = [(fgsm(model, x, y, eps), oracle_fgsm(model, x, y, eps))]
    pairs.append((ifgsm(model, x, y, eps, alpha, steps), oracle_ifgsm(model, x, y, eps, alpha, steps)))
    for adv, expected in pairs:
        assert torch.equal(adv, expected)  # random images, a random model: the oracle's images
        assert adv.min() >= 0 and adv.max() <= 1
        assert (adv - x).abs().max() <= eps + 1e-6


_PROPERTY_MODEL = small_cnn(3, seed=7)


def test_ifgsm_one_full_step_is_fgsm(random_data, digits):
    model, x, y = _case("random", digits, random_data)
    assert torch.equal(ifgsm(model, x, y, EPS, EPS, 1), fgsm(model, x, y, EPS))


@pytest.mark.parametrize("data", DATA)
def test_deterministic_and_batch_size_invariant(data, digits, random_data):
    model, x, y = _case(data, digits, random_data)
    a = ifgsm(model, x, y, **PAPER_IFGSM)
    assert torch.equal(a, ifgsm(model, x, y, **PAPER_IFGSM))
    assert torch.equal(a, ifgsm(model, x, y, **PAPER_IFGSM, batch_size=5))
    f = fgsm(model, x, y, EPS)
    assert torch.equal(f, fgsm(model, x, y, EPS))
    assert torch.equal(f, fgsm(model, x, y, EPS, batch_size=1))
    assert torch.equal(f, fgsm(model, x, y, EPS, batch_size=1000))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("attack", ["fgsm", "ifgsm"])
def test_model_mode_and_grads_untouched(attack, random_data, digits):
    model, x, y = _case("random", digits, random_data)
    run = (
        (lambda **kw: fgsm(model, x, y, EPS, **kw))
        if attack == "fgsm"
        else (lambda **kw: ifgsm(model, x, y, 8 / 255, 2 / 255, 4, **kw))
    )
    model.eval()
    reference = run()

    # train mode, with one module deliberately in eval: every flag comes back as it was
    model.train()
    model[1].eval()
    flags = [m.training for m in model.modules()]
    state = _state(model)
    # no .grad on some parameters, a given .grad on others
    params = list(model.parameters())
    for p in params[::2]:
        p.grad = torch.full_like(p, 7.0)
    grads = [None if p.grad is None else p.grad.clone() for p in params]

    adv = run(mean=None, std=None)
    assert [m.training for m in model.modules()] == flags
    for p, g in zip(params, grads):
        if g is None:
            assert p.grad is None
        else:
            assert torch.equal(p.grad, g)
    for k, v in model.state_dict().items():  # BN running stats not updated: it ran in eval mode
        assert torch.equal(v, state[k]), k
    assert torch.equal(adv, reference)  # dropout and batch-stat BN were off
    model.eval()
    run()
    assert not any(m.training for m in model.modules())


def test_works_under_no_grad_and_inference_mode(random_data, digits):
    model, x, y = _case("random", digits, random_data)
    expected = ifgsm(model, x, y, 8 / 255, 2 / 255, 3)
    with torch.no_grad():
        assert torch.equal(ifgsm(model, x, y, 8 / 255, 2 / 255, 3), expected)
    with torch.inference_mode():
        assert torch.equal(ifgsm(model, x, y, 8 / 255, 2 / 255, 3), expected)


def test_input_not_modified_and_grad_input_ok(random_data, digits):
    model, x, y = _case("random", digits, random_data)
    x = x.clone().requires_grad_(True)
    before = x.detach().clone()
    adv = fgsm(model, x, y, EPS)
    assert torch.equal(x.detach(), before) and x.grad is None
    assert not adv.requires_grad


def test_paper_constants():
    assert PAPER_FGSM == {"eps": 16 / 255}
    assert PAPER_IFGSM == {"eps": 16 / 255, "alpha": 1 / 255, "steps": 16}
    # the paper asks k >= delta / alpha
    assert PAPER_IFGSM["steps"] >= PAPER_IFGSM["eps"] / PAPER_IFGSM["alpha"] - 1e-9


@pytest.mark.parametrize(
    "kwargs,match",
    [  # (pydantic) the function, the argument, what it must be, the value
        (dict(eps=-0.1), r"ifgsm: eps: Input should be greater than or equal to 0, got -0\.1$"),
        (dict(eps=float("nan")), r"eps: Input should be a finite number, got nan"),
        (dict(eps="0.1"), r"eps: Input should be a valid number, got '0\.1'"),
        (dict(alpha=-1 / 255), r"alpha: Input should be greater than or equal to 0, got -0\.0039"),
        (dict(steps=0), r"steps: Input should be greater than or equal to 1, got 0"),
        (dict(steps=2.0), r"steps: Input should be a valid integer, got 2\.0"),
        (dict(steps=True), r"steps: Input should be a valid integer, got True"),
        (dict(batch_size=0), r"batch_size: Input should be greater than or equal to 1, got 0"),
        (dict(mean=[0.5, 0.5, 0.5]), r"give mean and std .* or neither; got \(0\.5, 0\.5, 0\.5\), None"),
        (dict(mean=[0.5, 0.5], std=[0.2, 0.2]), r"mean and std \(1 or 3 values each, one per channel\)"),
        (dict(mean=[0.5] * 3, std=[0.2, 0.0, 0.2]), r"std\.1: Input should be greater than 0, got 0\.0"),
        (dict(mean=[0.5, float("inf"), 0.5], std=[0.2] * 3), r"mean\.1: Input should be a finite number, got inf"),
    ],
)
def test_ifgsm_argument_errors(kwargs, match, random_data, digits):
    model, x, y = _case("random", digits, random_data)
    args = dict(eps=0.1, alpha=0.01, steps=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ifgsm(model, x, y, **args)


def test_input_errors(random_data, digits):
    model, x, y = _case("random", digits, random_data)
    with pytest.raises(ValueError, match=r"fgsm: eps: Input should be greater than or equal to 0, got -0\.5"):
        fgsm(model, x, y, -0.5)
    scaled = x * 255
    scaled[0, 0, 0, 0] = 255.0
    with pytest.raises(ValueError, match=r"x must hold images in \[0, 1\] .*got values in \[.*, 255\.0\]"):
        fgsm(model, scaled, y, EPS)
    with pytest.raises(ValueError, match=r"got values in \[-0\.49"):
        ifgsm(model, x - 0.5, y, EPS, 0.01, 2)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"x must hold images in \[0, 1\]"):
        fgsm(model, bad, y, EPS)
    with pytest.raises(ValueError, match=r"x must hold images in \[0, 1\]"):
        accuracy(model, scaled, y)
    with pytest.raises(ValueError, match=r"x has shape \(24, 3, 8, 8\), y \(23,\) torch\.int64"):
        fgsm(model, x, y[:-1], EPS)
    with pytest.raises(ValueError, match=r"x has shape \(24, 3, 8, 8\), y \(25,\) torch\.int64"):
        ifgsm(model, x, torch.cat([y, y[:1]]), EPS, 0.01, 2)
    with pytest.raises(ValueError, match=r"y must be a class index per image: .*, y \(24, 1\) torch\.int64"):
        fgsm(model, x, y[:, None], EPS)
    with pytest.raises(ValueError, match=r"y must be a class index per image: .*, y \(24,\) torch\.float32"):
        fgsm(model, x, y.float(), EPS)
    with pytest.raises(ValueError, match=r"x must be float images \(N, C, H, W\) in \[0, 1\], got torch\.uint8"):
        fgsm(model, (x * 255).to(torch.uint8), y, EPS)
    with pytest.raises(ValueError, match=r"x must be float images \(N, C, H, W\) .* of shape \(24, 192\)"):
        fgsm(model, x.flatten(1), y, EPS)
    with pytest.raises(ValueError, match=r"fgsm: model: Input should be an instance of Module, got <function"):
        fgsm(lambda t: t, x, y, EPS)
    with pytest.raises(
        ValueError, match=r"fgsm: x: Input should be an instance of Tensor, got array\(\[\[\[\[0\.4962566 , "
    ):
        fgsm(model, x.numpy(), y, EPS)
    with pytest.raises(ValueError, match=r"x holds no images: accuracy is undefined"):
        accuracy(model, x[:0], y[:0])


# ------------------------------------------------------------------------------------------
# transfer matrix
# ------------------------------------------------------------------------------------------


def _train(model: nn.Module, x, y, epochs: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(epochs):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model


@pytest.fixture(scope="module")
def two_models(digits):
    x, y = digits
    xtr, ytr = x[:1200], y[:1200]
    torch.manual_seed(3)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    models = {"cnn": _train(small_cnn(1, seed=4), xtr, ytr, 40, 5), "mlp": _train(mlp, xtr, ytr, 80, 6)}
    return models, x[1200:1400], y[1200:1400]


@pytest.fixture(scope="module")
def transfer(two_models):
    models, x, y = two_models
    return evaluate_transfer(models, x, y, paper_attacks(), batch_size=64)


def test_transfer_shape_and_json(transfer, two_models):
    models, x, _ = two_models
    names = list(models)
    assert transfer["models"] == names
    assert transfer["n"] == x.shape[0]
    assert list(transfer["transfer"]) == list(paper_attacks())
    for _a, rows in transfer["transfer"].items():
        assert list(rows) == names
        for s in names:
            assert list(rows[s]) == names
            assert all(0.0 <= v <= 1.0 for v in rows[s].values())
    assert transfer["attacks"]["IFGSM δ=16, k=16, α=1"] == {"method": "ifgsm", **PAPER_IFGSM}
    assert json.loads(json.dumps(transfer)) == transfer


def test_transfer_diagonal_is_white_box(transfer, two_models):
    models, x, y = two_models
    for name, model in models.items():
        assert transfer["clean"][name] == accuracy(model, x, y)
        assert transfer["clean"][name] > 0.85  # the tiny models did learn digits
        wb_fgsm = accuracy(model, fgsm(model, x, y, **PAPER_FGSM), y)
        wb_ifgsm = accuracy(model, ifgsm(model, x, y, **PAPER_IFGSM), y)
        assert transfer["transfer"]["FGSM δ=16"][name][name] == wb_fgsm
        assert transfer["transfer"]["IFGSM δ=16, k=16, α=1"][name][name] == wb_ifgsm
        # the attacks work, and the iterative one at least as well as the single step
        assert wb_ifgsm <= wb_fgsm < transfer["clean"][name]
    # black-box: the other model's images hurt less than the model's own (white-box) ones
    for a, rows in transfer["transfer"].items():
        for t in models:
            for s in models:
                if s != t:
                    assert rows[s][t] >= rows[t][t], (a, s, t)


def test_transfer_with_normalization(two_models):
    models, x, y = two_models
    x, y = x[:40], y[:40]
    mean, std = [0.3], [0.4]
    r = evaluate_transfer(models, x, y, {"spec": {"method": "fgsm", "eps": 0.1}}, mean=mean, std=std)
    json.dumps(r)
    cnn = models["cnn"]
    assert r["clean"]["cnn"] == accuracy(cnn, x, y, mean=mean, std=std)
    adv = fgsm(cnn, x, y, 0.1, mean=mean, std=std)
    assert r["transfer"]["spec"]["cnn"]["cnn"] == accuracy(cnn, adv, y, mean=mean, std=std)


def test_transfer_argument_errors(two_models):
    models, x, y = two_models
    with pytest.raises(
        ValueError, match=r"attacks\.a: Input tag 'pgd' .* expected tags: 'fgsm', 'ifgsm', got \{'method': 'pgd'"
    ):
        evaluate_transfer(models, x, y, {"a": {"method": "pgd", "eps": 0.1}})
    with pytest.raises(
        ValueError, match=r"attacks\.a\.ifgsm\.alpha: Field required, .*; attacks\.a\.ifgsm\.steps: Field required"
    ):
        evaluate_transfer(models, x, y, {"a": {"method": "ifgsm", "eps": 0.1}})
    with pytest.raises(ValueError, match=r"attacks\.a\.fgsm\.steps: Extra inputs are not permitted, got 2"):
        evaluate_transfer(models, x, y, {"a": {"method": "fgsm", "eps": 0.1, "steps": 2}})
    with pytest.raises(
        ValueError, match=r"attacks\.a\.ifgsm\.steps: Input should be greater than or equal to 1, got 0"
    ):
        evaluate_transfer(models, x, y, {"a": {"method": "ifgsm", "eps": 0.1, "alpha": 0.1, "steps": 0}})
    with pytest.raises(ValueError, match=r"attacks: Dictionary should have at least 1 item"):
        evaluate_transfer(models, x, y, {})
    with pytest.raises(ValueError, match=r"evaluate_transfer: models: Dictionary should have at least 1 item"):
        evaluate_transfer({}, x, y)
    with pytest.raises(ValueError, match=r"models\.mlp: Input should be an instance of Module, got 'not a model'"):
        evaluate_transfer({**models, "mlp": "not a model"}, x, y)
    with pytest.raises(ValueError, match=r"y \(3,\) torch\.int64"):
        evaluate_transfer(models, x, y[:3])
    with pytest.raises(ValueError, match=r"x holds no images"):
        evaluate_transfer(models, x[:0], y[:0])


def test_transfer_markdown(transfer):
    md = transfer_markdown(transfer)
    for name in transfer["models"]:
        assert name in md
    for attack in transfer["transfer"]:
        assert attack in md
    k, a = len(transfer["models"]), len(transfer["transfer"])
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table) == 2 + k  # header, alignment, one row per source
    assert all(line.count("|") == a * k + 3 for line in table)
    assert md.count("<u>") == a * k  # white-box diagonal underlined
    cnn_row = next(line for line in table if line.startswith("| cnn "))
    wb = 100 * transfer["transfer"]["FGSM δ=16"]["cnn"]["cnn"]
    assert f"<u>{wb:.1f}</u>" in cnn_row
    assert md.count("**") == 2 * sum(v == max(transfer["clean"].values()) for v in transfer["clean"].values())


def test_transfer_markdown_escapes_pipes():
    r = {
        "models": ["a|b", "c"],
        "attacks": {"x": {"method": "fgsm", "eps": 0.1}},
        "n": 1,
        "clean": {"a|b": 1.0, "c": 0.0},
        "transfer": {"x": {"a|b": {"a|b": 0.0, "c": 1.0}, "c": {"a|b": 1.0, "c": 0.0}}},
    }
    md = transfer_markdown(r)
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert all(line.replace("\\|", "").count("|") == 5 for line in table)


def test_plot_transfer_heatmap(transfer, tmp_path):
    path = tmp_path / "transfer.png"
    assert plot_transfer_heatmap(transfer, path) == path
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
