"""TwoRound: each rule of the semantics (docs/semantics.md) has a test here that fails when the rule is
broken; then the engine's argument, closure and layer errors and noise_dtype."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import anl_fused
from anl_fused import ANL2d, TwoRound, insert_anl, reference

from ._nets import assert_buffers_equal, assert_grads_close, flat_grads, small_vgg, twins
from ._sync import VARIANTS, NoHostSync


def data(b=6, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 8, 8, dtype=dtype, generator=g), torch.randint(0, 10, (b,), generator=g)


def anl_model(eps=0.5, dtype=torch.float64, **kw):
    torch.manual_seed(0)
    return anl_fused.insert_anl(small_vgg(**kw).to(dtype), eps=eps)


def test_round1_never_touches_parameter_grad_and_accumulation_works():
    model = anl_model()
    fast, ref = twins(model)
    engine, ref_gen = anl_fused.TwoRound(fast, torch.Generator().manual_seed(1)), torch.Generator().manual_seed(1)
    for i, (x, y) in enumerate([data(6, seed=1), data(4, seed=2)]):  # two micro-batches, no zero_grad between
        torch.manual_seed(i)
        engine.step(lambda: F.cross_entropy(fast(x), y))
        torch.manual_seed(i)
        reference.two_round_step(ref, lambda: F.cross_entropy(ref(x), y), ref_gen)
    assert_grads_close(fast, ref, 1e-10)

    sentinel = [torch.full_like(p, 7.0) for p in fast.parameters()]
    for p, s in zip(fast.parameters(), sentinel):
        p.grad = s.clone()
    x, y = data()
    loss = engine.step(lambda: F.cross_entropy(fast(x), y), backward=False)
    assert loss.requires_grad
    for p, s in zip(fast.parameters(), sentinel):
        assert torch.equal(p.grad, s), "round 1 (or step with backward=False) changed a parameter's .grad"


def test_batchnorm_statistics_move_once_per_step():
    model = anl_model()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    x, y = data()
    plain = copy.deepcopy(model)
    anl_fused.TwoRound(model).step(lambda: F.cross_entropy(model(x), y))
    for bn in bns:
        assert bn.num_batches_tracked.item() == 1
        assert bn.track_running_stats  # restored after round 1
    # Zero noise: round 2 is the plain forward, so the statistics equal one plain forward's.
    zero = copy.deepcopy(plain)
    for layer in anl_fused.anl_layers(zero):
        layer.eps = 1e-300  # active, but the noise underflows to nothing
    anl_fused.TwoRound(zero).step(lambda: F.cross_entropy(zero(x), y))
    with pytest.warns(UserWarning, match="outside a two-round step"):
        F.cross_entropy(plain(x), y)
    assert_buffers_equal(zero, plain, 1e-12)


def test_round2_replays_dropout_masks():
    model = anl_model()
    masks = []
    dropout = next(m for m in model.modules() if isinstance(m, nn.Dropout))
    dropout.register_forward_hook(lambda m, i, o: masks.append((i[0] != 0, o == 0)))
    x, y = data()
    anl_fused.TwoRound(model).step(lambda: F.cross_entropy(model(x), y))
    assert len(masks) == 2
    (live1, dropped1), (live2, dropped2) = masks
    live = live1 & live2  # where the input is 0 a dropped unit cannot be told from a kept one
    assert live.sum() > 20 and (dropped1 & live).any()
    assert torch.equal(dropped1 & live, dropped2 & live)


def test_inplace_relu_after_anl_gives_the_out_of_place_result():
    torch.manual_seed(0)
    inplace = anl_fused.insert_anl(small_vgg(inplace=True).double(), eps=0.5)
    outplace = anl_fused.insert_anl(small_vgg(inplace=False).double(), eps=0.5)
    outplace.load_state_dict(inplace.state_dict())
    x, y = data()
    for model in (inplace, outplace):
        torch.manual_seed(3)
        anl_fused.TwoRound(model, torch.Generator().manual_seed(5)).step(lambda: F.cross_entropy(model(x), y))
    assert_grads_close(inplace, outplace, 1e-12)


def test_batch_size_may_change_between_steps():
    fast, ref = twins(anl_model())
    engine, ref_gen = anl_fused.TwoRound(fast, torch.Generator().manual_seed(2)), torch.Generator().manual_seed(2)
    for b in (6, 3, 1, 5):
        x, y = data(b, seed=b)
        for m in (fast, ref):
            m.zero_grad()
        torch.manual_seed(b)
        engine.step(lambda: F.cross_entropy(fast(x), y))
        torch.manual_seed(b)
        reference.two_round_step(ref, lambda: F.cross_entropy(ref(x), y), ref_gen)
        assert_grads_close(fast, ref, 1e-10)


@pytest.mark.parametrize("how", ["eval", "disabled", "eps0"])
def test_inactive_anl_is_one_plain_step(how):
    model = anl_model(dropout=False)
    if how == "eval":
        model.eval()
    elif how == "disabled":
        anl_fused.set_anl_enabled(model, False)
    else:
        for layer in anl_fused.anl_layers(model):
            layer.eps = 0.0
    fast, plain = twins(model)
    calls = []
    x, y = data()
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        anl_fused.TwoRound(fast, gen).step(lambda: calls.append(1) or F.cross_entropy(fast(x), y))
    assert len([w for w in caught if "ordinary training without noise" in str(w.message)]) == (how != "disabled")
    F.cross_entropy(plain(x), y).backward()
    assert calls == [1], "an inactive model must run one forward"
    assert torch.equal(flat_grads(fast), flat_grads(plain))
    assert torch.equal(gen.get_state(), state), "no noise may be drawn"


def test_eval_forward_is_identity_and_returns_the_same_tensor():
    layer = anl_fused.ANL2d(0.1).eval()
    x = torch.randn(2, 3, 4, 4)
    assert layer(x) is x


def test_training_outside_tworound_is_identity_and_warns_once():
    layer = anl_fused.ANL2d(0.1)
    x = torch.randn(2, 3, 4, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert layer(x) is x
        assert layer(x) is x
    assert len([w for w in caught if "outside a two-round step" in str(w.message)]) == 1


def test_same_generator_seed_same_noise_other_seed_other_noise():
    results = []
    for seed in (4, 4, 5):
        model = anl_model(dropout=False)
        x, y = data()
        anl_fused.TwoRound(model, torch.Generator().manual_seed(seed)).step(lambda: F.cross_entropy(model(x), y))
        results.append(flat_grads(model))
    assert torch.equal(results[0], results[1])
    assert not torch.allclose(results[0], results[2])


def test_nonfinite_round1_gradient_gives_zero_noise_for_that_sample_and_is_counted():
    class PoisonFirstBackward(torch.autograd.Function):
        calls = 0

        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            PoisonFirstBackward.calls += 1
            if PoisonFirstBackward.calls == 1:  # round 1 only: sample 0 gets a NaN gradient
                g = g.clone()
                g[0] = float("nan")
            return g

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = small_vgg(dropout=False).double()

        def forward(self, x):
            h = self.body[:2](x)
            return self.body[2:](PoisonFirstBackward.apply(h))

    torch.manual_seed(0)
    model = anl_fused.insert_anl(Net(), eps=0.5)
    x, y = data()
    outputs = []
    model.body[1].register_forward_hook(lambda m, i, o: outputs.append(o.detach().clone()))
    engine = anl_fused.TwoRound(model)
    loss = engine.step(lambda: F.cross_entropy(model(x), y))
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert engine.nonfinite_samples.item() == 1
    round1, round2 = outputs
    assert torch.equal(round1[0], round2[0]), "the poisoned sample must get zero noise"
    assert not torch.equal(round1[1], round2[1]), "the other samples get noise"


def test_zero_round1_gradient_gives_zero_noise_and_is_counted():
    """A sample whose round-1 gradient is exactly zero (as an underflowed float16 gradient would be) gets
    no noise and is counted in zero_samples, not in nonfinite_samples."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = small_vgg(dropout=False).double()
            self.register_buffer("mask", torch.tensor([0.0, 1, 1, 1, 1, 1], dtype=torch.float64).view(6, 1, 1, 1))

        def forward(self, x):
            return self.body[2:](self.body[:2](x) * self.mask)  # sample 0 no longer reaches the loss

    torch.manual_seed(0)
    model = anl_fused.insert_anl(Net(), eps=0.5)
    engine = anl_fused.TwoRound(model)
    x, y = data()
    for _step in range(2):
        engine.step(lambda: F.cross_entropy(model(x), y))
    assert engine.zero_samples.item() == 2 and engine.nonfinite_samples.item() == 0


def test_no_host_sync_inside_the_step(monkeypatch):
    model = anl_fused.insert_anl(small_vgg().double(), eps=0.5, input_eps=0.1)
    x, y = data()
    engine = anl_fused.TwoRound(model)

    def forbidden(*args, **kwargs):
        raise AssertionError("host sync inside TwoRound.step")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    engine.step(lambda: F.cross_entropy(model(x), y))
    monkeypatch.undo()
    assert engine.nonfinite_samples.item() == 0


def test_last_stds_are_the_round1_stds():
    model = anl_model()
    seen = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            m.register_forward_hook(
                lambda mod, i, o, name=name: seen.setdefault(name + ".anl", o.detach().std()) and None
            )
    x, y = data()
    engine = anl_fused.TwoRound(model)
    engine.step(lambda: F.cross_entropy(model(x), y))
    assert set(engine.last_stds) == set(seen) and len(seen) == 3
    for name, s in engine.last_stds.items():
        torch.testing.assert_close(s, seen[name])


@pytest.mark.gpu
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_no_host_sync_on_cuda(variant):
    """On CUDA (Triton kernels), a step issues no device-to-host copy or synchronization: neither CUDA's
    sync debug mode nor the dispatch mode of tests/_sync.py (every variant of tests/test_engine_sync.py)
    sees one."""
    insert_kw, engine_kw = VARIANTS[variant]
    torch.manual_seed(0)
    model = anl_fused.insert_anl(small_vgg(), eps=0.5, **insert_kw).cuda()
    x, y = torch.randn(6, 3, 8, 8, device="cuda"), torch.randint(0, 10, (6,), device="cuda")
    engine = anl_fused.TwoRound(model, torch.Generator("cuda").manual_seed(0), **engine_kw)
    engine.step(lambda: F.cross_entropy(model(x), y))  # warm-up: kernel compilation, lazy CUDA init
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        engine.step(lambda: F.cross_entropy(model(x), y))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    model.zero_grad(set_to_none=True)
    with NoHostSync() as mode:
        engine.step(lambda: F.cross_entropy(model(x), y))
    assert mode.calls > 100
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize(
    "result,err,match",
    [
        (1.5, TypeError, "float"),
        (None, TypeError, "NoneType"),
        (torch.ones(3), ValueError, r"shape \(3,\)"),
    ],
)
@pytest.mark.filterwarnings("ignore:TwoRound.step. the model is in eval mode")
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
    with pytest.raises(TypeError, match=r"nn\.Module"):
        TwoRound(lambda x: x)


def test_layer_called_twice_is_an_error():
    layer = ANL2d(0.3)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        layer,
        nn.Conv2d(4, 4, 1),
        nn.BatchNorm2d(4),
        layer,
        nn.Flatten(),
        nn.Linear(144, 2),
    )
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


# ---- Legal inputs: they train, or fail with an error that names the cause (issue #9) ----------------------


class SideBranch(nn.Module):
    """A VGG plus a branch (conv, BatchNorm, so an ANL layer after insert_anl) that is computed and unused."""

    def __init__(self):
        super().__init__()
        self.body = small_vgg(dropout=False)
        self.side = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))

    def forward(self, x):
        self.side(x)
        return self.body(x)


def test_layer_whose_output_does_not_reach_the_loss_gets_zero_noise_as_in_the_reference():
    torch.manual_seed(0)
    model = insert_anl(SideBranch().double(), 0.5, input_eps=0.1)
    fast, ref = twins(model)
    x, y = data()
    engine, ref_gen = TwoRound(fast, torch.Generator().manual_seed(3)), torch.Generator().manual_seed(3)
    for step in range(2):
        torch.manual_seed(step)
        engine.step(lambda: F.cross_entropy(fast(x), y))
        torch.manual_seed(step)
        reference.two_round_step(ref, lambda: F.cross_entropy(ref(x), y), ref_gen)
    assert_grads_close(fast, ref, 1e-10)
    assert_buffers_equal(fast, ref, 1e-10)
    assert engine.zero_samples.item() == 2 * 6, "the unused layer's samples count as zero-gradient samples"
    assert "side.1.anl" in engine.last_stds


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_step_with_autograd_disabled_is_a_clear_error(mode):
    model = anl_model()
    x, y = data()
    context = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with context, pytest.raises(RuntimeError, match=rf"autograd disabled \(torch.{mode}\(\)\)"):
        TwoRound(model).step(lambda: F.cross_entropy(model(x), y))
    assert all(layer._round is None for layer in anl_fused.anl_layers(model))
    TwoRound(model).step(lambda: F.cross_entropy(model(x), y))  # and the next step works


def test_layer_run_under_no_grad_inside_the_closure_is_a_clear_error():
    model = anl_model()
    x, y = data()

    def closure():
        with torch.no_grad():
            h = model[:4](x)
        return F.cross_entropy(model[4:](h), y)

    with pytest.raises(RuntimeError, match=r"ran with autograd disabled in round 1.*torch.no_grad\(\)"):
        TwoRound(model).step(closure)


class TwoNets(nn.Module):
    """One model, two disjoint sets of ANL layers."""

    def __init__(self):
        super().__init__()
        self.a = insert_anl(small_vgg(dropout=False), 0.3)
        self.b = insert_anl(small_vgg(dropout=False), 0.3)


def _nested_cases():
    x, y = data(dtype=torch.float32)
    torch.manual_seed(0)
    m = TwoNets()
    loss_a, loss_b = (lambda: F.cross_entropy(m.a(x), y)), (lambda: F.cross_entropy(m.b(x), y))
    ref = lambda net, f: lambda: reference.two_round_step(net, f, torch.Generator())
    plain = nn.Linear(3, 2)
    return m, {
        "same layers": lambda: TwoRound(m.a).step(lambda: TwoRound(m.a).step(loss_a)),
        "disjoint layers of one model": lambda: TwoRound(m.a).step(lambda: TwoRound(m.b).step(loss_b) + loss_a()),
        "whole model and a part": lambda: TwoRound(m).step(lambda: TwoRound(m.b).step(loss_b) + loss_a()),
        "reference inside the engine": lambda: TwoRound(m.a).step(lambda: ref(m.b, loss_b)() + loss_a()),
        "engine inside the reference": lambda: ref(m.a, lambda: TwoRound(m.b).step(loss_b) + loss_a())(),
        "inner engine without ANL": lambda: TwoRound(m.a).step(
            lambda: TwoRound(plain).step(lambda: plain(torch.ones(3)).sum()) + loss_a()
        ),
        "in round 2 only": lambda: TwoRound(m.a).step(_second_call_steps(lambda: TwoRound(m.b).step(loss_b), loss_a)),
    }


def _second_call_steps(inner, loss):
    calls = []
    return lambda: (calls.append(1), inner() if len(calls) == 2 else 0)[1] + loss()


@pytest.mark.parametrize(
    "case",
    [
        "same layers",
        "disjoint layers of one model",
        "whole model and a part",
        "reference inside the engine",
        "engine inside the reference",
        "inner engine without ANL",
        "in round 2 only",
    ],
)
def test_step_inside_a_step_is_refused(case):
    """A second step in the closure would drop the outer noise and move BatchNorm statistics twice; it is
    refused on any layer sets, and nothing is left attached after the error."""
    model, cases = _nested_cases()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    before = [bn.num_batches_tracked.item() for bn in bns]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the inner engine without ANL warns that it is plain training
        with pytest.raises(RuntimeError, match=r"step\(\) called inside .*step\(\): a two-round step cannot"):
            cases[case]()
    assert all(layer._round is None for layer in anl_fused.anl_layers(model))
    if case != "in round 2 only":  # the inner step was refused before the outer round 2 ran
        assert [bn.num_batches_tracked.item() for bn in bns] == before
    x, y = data(dtype=torch.float32)
    TwoRound(model.a).step(lambda: F.cross_entropy(model.a(x), y))  # the next step works


def test_steps_one_after_the_other_on_two_engines_work():
    model = TwoNets()
    x, y = data(dtype=torch.float32)
    ea, eb = TwoRound(model.a), TwoRound(model.b)
    for _ in range(2):
        ea.step(lambda: F.cross_entropy(model.a(x), y))
        eb.step(lambda: F.cross_entropy(model.b(x), y))
    assert all(p.grad is not None for p in model.parameters())


class Checkpointed(nn.Module):
    """The small VGG with its first two conv-BN-ReLU blocks (two ANL layers) under activation checkpointing."""

    def __init__(self, use_reentrant: bool | None):
        super().__init__()
        self.body = small_vgg(dropout=True)
        self.use_reentrant = use_reentrant

    def forward(self, x):
        if self.use_reentrant is None:
            return self.body(x)
        h = torch.utils.checkpoint.checkpoint(self.body[:7], x, use_reentrant=self.use_reentrant)
        return self.body[7:](h)


def test_non_reentrant_activation_checkpointing_gives_the_unchecheckpointed_step():
    """use_reentrant=False: round 1's and round 2's backward recompute the checkpointed layers (with
    the same noise in round 2); gradients equal those of the same model without checkpointing. BatchNorm
    statistics move as in ordinary training with checkpointing (the recompute in round 2's backward updates
    them again, as torch's does in plain training; round 1 and its recompute do not)."""
    torch.manual_seed(0)
    plain = insert_anl(Checkpointed(None).double(), 0.5, input_eps=0.1)
    ckpt = copy.deepcopy(plain)
    ckpt.use_reentrant = False
    x, y = data()
    for m in (plain, ckpt):
        engine = TwoRound(m, torch.Generator().manual_seed(0))
        for step in range(2):
            torch.manual_seed(step)
            engine.step(lambda m=m: F.cross_entropy(m(x), y))
    assert_grads_close(ckpt, plain, 1e-12)
    bn_counts = [m.num_batches_tracked.item() for m in ckpt.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bn_counts == [4, 4, 2], "checkpointed BatchNorms count their recompute in round 2, as in plain torch"


@pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad")
def test_reentrant_activation_checkpointing_is_refused():
    torch.manual_seed(0)
    model = insert_anl(Checkpointed(True), 0.5)
    x, y = data(dtype=torch.float32)
    with pytest.raises(RuntimeError, match=r"use_reentrant=True.*not support.*use_reentrant=False"):
        TwoRound(model).step(lambda: F.cross_entropy(model(x), y))


def test_activation_checkpointing_with_backward_false_is_refused():
    torch.manual_seed(0)
    model = insert_anl(Checkpointed(False), 0.5)
    x, y = data(dtype=torch.float32)
    with pytest.raises(RuntimeError, match=r"checkpointing needs TwoRound.step\(closure, backward=True\)"):
        TwoRound(model).step(lambda: F.cross_entropy(model(x), y), backward=False)


def test_calling_the_engine_says_to_call_step():
    model = anl_model()
    x, y = data()
    with pytest.raises(TypeError, match=r"engine.step\(closure\)"):
        TwoRound(model)(lambda: F.cross_entropy(model(x), y))


@pytest.mark.parametrize(
    "how,match", [("eval", "eval mode"), ("eps0", "eps == 0"), ("no ANL", "no ANL layer"), ("disabled", None)]
)
def test_step_without_active_layer_warns_once_per_engine(how, match):
    """Eval mode, no ANL layer, eps 0: a mistake, warned once per engine. Layers disabled on purpose
    (set_anl_enabled(model, False), the fine-tuning phase of the paper's protocol): no warning."""
    model = anl_model() if how != "no ANL" else small_vgg().double()
    if how == "eval":
        model.eval()
    elif how == "disabled":
        anl_fused.set_anl_enabled(model, False)
    elif how == "eps0":
        for layer in anl_fused.anl_layers(model):
            layer.eps = 0.0
    x, y = data()
    for engine in (TwoRound(model), TwoRound(model)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                engine.step(lambda: F.cross_entropy(model(x), y))
        messages = [str(w.message) for w in caught]
        if match is None:
            assert messages == []
        else:
            assert len(messages) == 1 and match in messages[0] and "without noise" in messages[0], messages


@pytest.mark.gpu
def test_default_generator_follows_the_model_to_the_gpu():
    """Frameworks (Lightning, Accelerate) move the model after the user built the engine: the default
    generator follows it before its first draw, with the same seed; an explicit generator does not."""
    torch.manual_seed(0)
    model = anl_fused.insert_anl(small_vgg(dropout=False), eps=0.5)
    late = TwoRound(model)
    model.cuda()
    early = TwoRound(copy.deepcopy(model))
    assert late.generator.initial_seed() == early.generator.initial_seed()
    x, y = (t.cuda() for t in data(dtype=torch.float32))
    for engine in (late, early):
        engine.model.zero_grad()
        engine.step(lambda engine=engine: F.cross_entropy(engine.model(x), y))
    assert late.generator.device.type == "cuda"
    assert torch.equal(flat_grads(late.model), flat_grads(early.model))
    with pytest.raises(ValueError, match="generator is on cpu"):
        TwoRound(model, torch.Generator()).step(lambda: F.cross_entropy(model(x), y))


# ---- Closures that break the contract (issue #18) ------------------------------------------------------------


def test_noise_dtype_float16_is_refused_and_bfloat16_noise_ignores_the_loss_scale():
    """float16 storage of the raw gradient underflowed (loss * 1e-7: all noise zero, not counted) or broke the
    noise's bound (loss * 1e-4): refused. bfloat16 has float32's range: a tiny loss scale changes nothing."""
    with pytest.raises(ValueError, match=r"noise_dtype=torch.float16 .*torch.bfloat16"):
        TwoRound(insert_anl(small_vgg(), 0.1), noise_dtype=torch.float16)
    torch.manual_seed(0)
    model = insert_anl(small_vgg(dropout=False), 0.5)
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 10, (6,))
    grads = {}
    for scale in (1.0, 2.0**-24):  # a power of two below 1e-7: scaling by it is exact in every dtype used
        m = copy.deepcopy(model)
        engine = TwoRound(m, torch.Generator().manual_seed(0), noise_dtype=torch.bfloat16)
        engine.step(lambda m=m, scale=scale: F.cross_entropy(m(x), y) * scale)
        assert int(engine.zero_samples) == 0 and int(engine.nonfinite_samples) == 0
        grads[scale] = flat_grads(m) / scale
    assert torch.allclose(grads[2.0**-24], grads[1.0], rtol=1e-5, atol=1e-8)


def test_a_tensor_instead_of_a_closure_is_a_type_error():
    model = anl_model()
    x, y = data()
    with pytest.raises(TypeError, match=r"closure .* got Tensor.*not a computed loss"):
        TwoRound(model).step(F.cross_entropy(model(x), y))


@pytest.mark.parametrize("how", ["precomputed", "other model"])
def test_a_closure_that_does_not_run_the_engines_model_is_an_error(how):
    """It trained without noise, with one warning per process as the only hint."""
    model, other = anl_model(), anl_model()
    x, y = data()
    precomputed = F.cross_entropy(model(x), y) if how == "precomputed" else None
    closure = (lambda: precomputed) if how == "precomputed" else (lambda: F.cross_entropy(other(x), y))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the layers outside a step say so
        with pytest.raises(RuntimeError, match=r"none of the 3 active ANL layer\(s\) .* ran in round 1"):
            TwoRound(model).step(closure)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("call", ["backward", "backward retained", "optimizer.step", "zero_grad"])
def test_a_closure_that_writes_grad_or_parameters_in_round_1_is_refused(call):
    model = anl_model()
    x, y = data()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    F.cross_entropy(model(x), y).backward()  # .grad exists, so that zero_grad() and step() change something

    def closure():
        loss = F.cross_entropy(model(x), y)
        if call == "backward":
            loss.backward()
        elif call == "backward retained":
            loss.backward(retain_graph=True)
        elif call == "optimizer.step":
            optimizer.step()
        else:
            optimizer.zero_grad()
        return loss

    with pytest.raises(RuntimeError, match=r"round 1 of the two-round step wrote .*backward\(\)"):
        TwoRound(model).step(closure)


def test_replay_rng_false_skips_the_rng_state_and_refuses_dropout(monkeypatch):
    """For CUDA-graph capture (no get_rng_state there): without stochastic layers the step is the same
    without the replay; with a training-mode Dropout it is refused (round 2 would draw other masks)."""
    torch.manual_seed(0)
    model = anl_fused.insert_anl(small_vgg(dropout=False).double(), eps=0.5)
    a, b = model, copy.deepcopy(model)
    x, y = data()
    TwoRound(a, torch.Generator().manual_seed(3)).step(lambda: F.cross_entropy(a(x), y))
    monkeypatch.setattr(torch, "get_rng_state", lambda: pytest.fail("the RNG state was read"))
    TwoRound(b, torch.Generator().manual_seed(3), replay_rng=False).step(lambda: F.cross_entropy(b(x), y))
    assert torch.equal(flat_grads(a), flat_grads(b))
    dropped = anl_model()  # small_vgg has dropout by default
    with pytest.raises(RuntimeError, match=r"replay_rng=False\) with Dropout"):
        TwoRound(dropped, replay_rng=False).step(lambda: F.cross_entropy(dropped(x), y))
    with pytest.raises(TypeError, match="replay_rng"):
        TwoRound(model, replay_rng=0)
