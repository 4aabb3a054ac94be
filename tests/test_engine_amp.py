"""Mixed precision: round 1's loss scaling (``TwoRound(probe_loss_scale=...)``), float16 autocast
noise against float32, GradScaler, and the README's AMP block."""

import copy

import pytest
import torch
import torch.nn.functional as F

import anl_fused
from anl_fused.reference import two_round_step

from . import _readme
from ._nets import recorded_noise, small_vgg

B = 32
LAYERS = 3  # small_vgg's BatchNorm2d
# A loss this small makes round 1's float16 activation gradients underflow without a scale: it
# stands for a weighted loss term, a large batch's mean, or confidently classified samples (p_y ~ 1).
SMALL = 1e-4


@pytest.fixture
def etas():
    """The noise of every ``ops.add_noise`` call, ``alpha * scale[b] * g_b`` flattened per sample, in float64
    (``g``'s non-finite entries count as 0, as in ``add_noise``)."""
    with recorded_noise() as seen:
        yield seen


def setup(seed=0):
    torch.manual_seed(seed)
    model = anl_fused.insert_anl(small_vgg(dropout=False), 0.1)
    x, y = torch.randn(B, 3, 16, 16), torch.randint(0, 10, (B,))
    return model, x, y


def noise_of(etas, model, x, y, *, amp: bool, weight: float = 1.0, **engine_kwargs):
    etas.clear()
    engine = anl_fused.TwoRound(copy.deepcopy(model), torch.Generator().manual_seed(0), **engine_kwargs)
    net = engine.model
    with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
        engine.step(lambda: weight * F.cross_entropy(net(x), y))
    assert len(etas) == LAYERS
    return list(etas), engine


def assert_same_directions(got, ref):
    """Per sample: the float16 noise points where the float32 one does (cosine >= 0.98, mean >= 0.995;
    measured over 6 seeds: min 0.991, means 0.999 to 0.9999) and has its size.

    Not elementwise: float16 flips a few ReLU masks and max-pool choices near ties, which moves single
    elements of the gradient by up to its maximum; the mean elementwise difference is about 1e-3.
    Round-1 gradients that partly underflow give cosines near 0.92, fully underflowed ones 0."""
    for layer, (a, b) in enumerate(zip(got, ref)):
        on = b.norm(dim=1) > 0  # r_b can be clipped to 0: no noise in either
        assert on.sum() >= B // 2
        cos = F.cosine_similarity(a[on], b[on], dim=1)
        assert cos.min() >= 0.98 and cos.mean() >= 0.995, f"layer {layer}: cosines {cos.min():.4f}, {cos.mean():.4f}"
        size = a[on].abs().amax(1) / b[on].abs().amax(1)  # r_b * std(h): std of the float16 h
        torch.testing.assert_close(size, torch.ones_like(size), rtol=0, atol=2e-2)


@pytest.mark.parametrize("weight", [1.0, SMALL])
def test_float16_autocast_noise_has_float32_directions(etas, weight):
    model, x, y = setup()
    ref, _ = noise_of(etas, model, x, y, amp=False, weight=weight)
    got, engine = noise_of(etas, model, x, y, amp=True, weight=weight)
    assert engine.model.__class__ is model.__class__
    assert_same_directions(got, ref)
    assert int(engine.zero_samples) == 0 and int(engine.nonfinite_samples) == 0


def test_unscaled_float16_round1_underflows_and_is_counted(etas):
    """What the default scaling prevents: every round-1 gradient underflows, no sample gets noise."""
    model, x, y = setup()
    got, engine = noise_of(etas, model, x, y, amp=True, weight=SMALL, probe_loss_scale=1.0)
    assert int(engine.zero_samples) == LAYERS * B and int(engine.nonfinite_samples) == 0
    assert all(bool((eta == 0).all()) for eta in got)


def test_gradscaler_scale_is_round1s_scale(etas):
    model, x, y = setup()
    ref, _ = noise_of(etas, model, x, y, amp=False, weight=SMALL)
    got, engine = noise_of(etas, model, x, y, amp=True, weight=SMALL, probe_loss_scale=torch.amp.GradScaler("cpu"))
    assert_same_directions(got, ref)
    # a scale that overflows float16: round 1's gradients are inf, no noise, counted
    huge = torch.amp.GradScaler("cpu", init_scale=2.0**60)
    got, engine = noise_of(etas, model, x, y, amp=True, probe_loss_scale=huge)
    assert int(engine.nonfinite_samples) == LAYERS * B and all(bool((eta == 0).all()) for eta in got)
    assert huge.get_scale() == 2.0**60  # round 1 only reads the scaler


def test_probe_loss_scale_does_not_change_the_noise_in_float32():
    model, x, y = setup()
    grads = []
    for scale in (None, 2.0**10, 1000.0):
        net = copy.deepcopy(model)
        anl_fused.TwoRound(net, torch.Generator().manual_seed(0), probe_loss_scale=scale).step(
            lambda net=net: F.cross_entropy(net(x), y)
        )
        grads.append([p.grad for p in net.parameters()])
    for a, b, c in zip(*grads):
        torch.testing.assert_close(b, a, rtol=0, atol=0)  # a power of two scales exactly
        torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (0.0, ValueError, "0.0"),
        (-2.0, ValueError, "-2.0"),
        (float("inf"), ValueError, "inf"),
        ("auto", TypeError, "'auto'"),
        (True, TypeError, "True"),
    ],
)
def test_probe_loss_scale_is_checked(bad, error, match):
    with pytest.raises(error, match=match):
        anl_fused.TwoRound(small_vgg(), probe_loss_scale=bad)


def test_readme_amp_block_trains_as_the_oracle(monkeypatch):
    """The README's AMP loop, replayed with the reference oracle in place of TwoRound (round 1
    unscaled: this batch's gradients do not underflow), ends at the same weights within float16
    rounding; without ANL it ends elsewhere."""
    made = []

    class Recording(anl_fused.TwoRound):
        def __init__(self, model, *args, **kwargs):
            made.append((copy.deepcopy(model), self, kwargs))
            super().__init__(model, *args, **kwargs)

    monkeypatch.setattr(anl_fused, "TwoRound", Recording)
    ns = _readme.run("AMP: autocast + GradScaler")
    ((before, engine, kwargs),) = made
    assert isinstance(kwargs["probe_loss_scale"], torch.amp.GradScaler) and int(engine.zero_samples) == 0
    x, y, device = ns["x"], ns["y"], ns["device"]

    def replay(anl: bool):
        net = anl_fused.set_anl_enabled(copy.deepcopy(before), anl)
        generator = torch.Generator(device).manual_seed(0)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        scaler = torch.amp.GradScaler(device)
        for _ in range(3):
            optimizer.zero_grad()
            with torch.autocast(device, dtype=torch.float16):
                loss = two_round_step(net, lambda: F.cross_entropy(net(x), y), generator, backward=False)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        return net

    trained = ns["model"]
    oracle, plain = replay(True), replay(False)
    moved = max((a - b).abs().max().item() for a, b in zip(trained.parameters(), before.parameters()))
    for (name, a), b in zip(trained.named_parameters(), oracle.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-3 * moved, msg=lambda m, name=name: f"{name}: {m}")
    assert max((a - b).abs().max().item() for a, b in zip(trained.parameters(), plain.parameters())) > 3e-2 * moved
