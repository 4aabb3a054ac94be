"""torch.compile(fullgraph=True) of a model with ANL layers: every mode traces and gives the eager
result. On CPU the layers use the torch backend (anl_fused/ops.py); the compiled Triton path is in the
GPU-marked tests of the kernel files."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

import anl_fused

from ._nets import assert_f32_grads_close, small_vgg


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def models(**kw):
    torch.manual_seed(0)
    eager = anl_fused.insert_anl(small_vgg(dropout=False), 0.5, **kw)
    return eager, copy.deepcopy(eager)


@pytest.mark.parametrize("kw", [{}, {"input_eps": 0.1}, {"noise": "gaussian"}], ids=["anl", "input", "gaussian"])
def test_tworound_with_compiled_model_equals_eager(kw):
    eager, compiled_copy = models(**kw)
    compiled = torch.compile(compiled_copy, fullgraph=True, backend="aot_eager")
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 10, (6,))
    for model, net in ((eager, eager), (compiled_copy, compiled)):
        engine = anl_fused.TwoRound(model, torch.Generator().manual_seed(0))
        for _ in range(2):
            engine.step(lambda: F.cross_entropy(net(x), y))
    assert_f32_grads_close(compiled_copy, eager)


def test_eval_and_disabled_compile_fullgraph_and_equal_eager():
    eager, compiled_copy = models(input_eps=0.1)
    compiled = torch.compile(compiled_copy, fullgraph=True, backend="aot_eager")
    x = torch.randn(4, 3, 8, 8)
    eager.eval(), compiled_copy.eval()
    torch.testing.assert_close(compiled(x), eager(x))
    eager.train(), compiled_copy.train()
    anl_fused.set_anl_enabled(eager, False), anl_fused.set_anl_enabled(compiled_copy, False)
    torch.testing.assert_close(compiled(x), eager(x))


def test_training_outside_tworound_compiles_as_identity():
    eager, compiled_copy = models()
    compiled = torch.compile(compiled_copy, fullgraph=True, backend="aot_eager")
    x = torch.randn(4, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.testing.assert_close(compiled(x), eager(x))


@pytest.mark.slow
def test_inductor_backend():
    eager, compiled_copy = models()
    compiled = torch.compile(compiled_copy, fullgraph=True)
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 10, (6,))
    for model, net in ((eager, eager), (compiled_copy, compiled)):
        anl_fused.TwoRound(model, torch.Generator().manual_seed(0)).step(lambda: F.cross_entropy(net(x), y))
    assert_f32_grads_close(compiled_copy, eager)
