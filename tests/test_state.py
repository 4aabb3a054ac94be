"""Round 1 leaves the model's state as it found it (anl_fused.state): spectral norm's power-iteration
vectors move once per step, as in the oracle and in ordinary training; any other buffer that round 1
writes is reported."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import anl_fused
from anl_fused import TwoRound, reference
from anl_fused.state import power_iteration_buffers

from ._nets import assert_buffers_equal, assert_grads_close, small_vgg, twins

SPECTRAL = {"hooks": nn.utils.spectral_norm, "parametrizations": nn.utils.parametrizations.spectral_norm}


def spectral_model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    net = small_vgg().double()
    for i in (0, 4):  # two convs, one followed by an ANL layer's BatchNorm
        SPECTRAL[kind](net[i])
    SPECTRAL[kind](net[13])  # and the classifier
    return anl_fused.insert_anl(net, 0.5, input_eps=0.1)


def data(b=6):
    g = torch.Generator().manual_seed(0)
    return torch.randn(b, 3, 8, 8, dtype=torch.float64, generator=g), torch.randint(0, 10, (b,), generator=g)


@pytest.mark.parametrize("kind", list(SPECTRAL))
def test_spectral_norm_vectors_move_once_per_step_and_the_step_equals_the_oracle(kind):
    model = spectral_model(kind)
    fast, ref, plain = twins(model, 3)
    assert len(power_iteration_buffers(fast)) == 6
    x, y = data()
    engine, ref_gen = TwoRound(fast, torch.Generator().manual_seed(1)), torch.Generator().manual_seed(1)
    for step in range(3):
        torch.manual_seed(step)
        engine.step(lambda: F.cross_entropy(fast(x), y))
        torch.manual_seed(step)
        reference.two_round_step(ref, lambda: F.cross_entropy(ref(x), y), ref_gen)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # training mode outside a step: the identity, warns
            plain(x)  # one ordinary forward: one power iteration
    assert_grads_close(fast, ref, 1e-10)
    assert_buffers_equal(fast, ref, 1e-10)
    for u, v in zip(power_iteration_buffers(fast), power_iteration_buffers(plain)):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)


def test_no_warning_for_spectral_norm_state():
    model = spectral_model("parametrizations")
    x, y = data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TwoRound(model).step(lambda: F.cross_entropy(model(x), y))


class Counter(nn.Module):
    """A module with its own state, written in every training forward (as a quantization observer does):
    ``"in_place"`` adds to a buffer, ``"reassign"`` replaces the buffer by a new tensor."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.register_buffer("seen", torch.zeros((), dtype=torch.int64))

    def forward(self, x):
        if self.training:
            if self.how == "in_place":
                self.seen += 1
            else:
                self.seen = self.seen + 1
        return x


@pytest.mark.parametrize("how", ["in_place", "reassign"])
def test_other_buffer_written_in_round1_warns_once_per_engine_naming_it(how):
    torch.manual_seed(0)
    net = small_vgg().double()
    net.insert(3, Counter(how))
    model = anl_fused.insert_anl(net, 0.5)
    x, y = data()
    for _ in range(2):
        engine = TwoRound(model)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                engine.step(lambda: F.cross_entropy(model(x), y))
        messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        assert len(messages) == 1, messages
        assert "buffer(s) 3.seen:" in messages[0] and "twice per step" in messages[0]
    assert model[3].seen.item() == 12, "written in both rounds of 6 steps"


def test_no_buffer_warning_for_batchnorm_and_untouched_state():
    torch.manual_seed(0)
    net = small_vgg().double()
    net.register_buffer("constant", torch.ones(3))
    model = anl_fused.insert_anl(net, 0.5, input_eps=0.1)
    x, y = data()
    before = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TwoRound(model).step(lambda: F.cross_entropy(model(x), y))
    assert torch.equal(model.constant, before.constant)
