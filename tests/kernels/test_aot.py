"""The kernels as a GPU would run them, checked on this CPU machine: every kernel compiles for sm_80
(A100) and sm_90 (H100 / H200) without spills and with 16-byte global loads and stores on aligned
contiguous float32 / bfloat16 / float16 data, and a step dispatches nothing beyond the exact floor but
each layer kind's ANL work (at most 3 launches per layer).

Compiling needs the real ``JITFunction`` (a process without ``TRITON_INTERPRET``): it runs once per
session in a subprocess (``anl_fused.kernels.aot``), over the launches the ops make on
representative shapes (recorded, not run). A change that adds a launch or loses vectorization fails
here, without a GPU.
"""

import collections
import os

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

if not torch.cuda.is_available():  # as tests/conftest.py: before triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

import anl_fused
from anl_fused import kernels
from anl_fused.benchmarks.step import floor_step
from anl_fused.kernels import aot

from .._nets import small_vgg
from ._helpers import kernel_device

ARCHS = (80, 90)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ESIZE = {"float32": 4, "bfloat16": 2, "float16": 2}
# the tensors each kernel streams: (load or store, pointer argument)
STREAMS = {
    "std": [("ld", "h_ptr")],
    "noise_scale": [("ld", "g_ptr")],
    "add_noise": [("ld", "h_ptr"), ("ld", "g_ptr"), ("st", "out_ptr")],
}


def representative_launches() -> list[dict]:
    """The launches of the ops at VGG/ResNet-like shapes, for every dtype and the engine's options:
    std with both block sizes, noise_scale per sample and per layer with stats, add_noise with g in
    h's dtype and in bfloat16 (``noise_dtype``). Recorded, not run (any size is quick)."""
    launches = []
    with aot.record(execute=False) as rec:
        for dtype in DTYPES.values():
            big = torch.empty(64, 64, 32, 32, dtype=dtype)  # 4M elements: the large std block
            h = torch.empty(16, 64, 16, 16, dtype=dtype).contiguous(memory_format=torch.channels_last)
            z, s = torch.empty(16), torch.empty(())
            stats = torch.zeros(2, dtype=torch.int64)
            kernels.std(big)
            kernels.std(h)
            kernels.noise_scale(h, z, s, 0.1, stats=stats)
            kernels.noise_scale(h, z, s, 0.1, layer_norm=True, stats=stats)
            kernels.add_noise(h, h, z)
            kernels.add_noise(h, h.to(torch.bfloat16), z)
        launches += rec
    return launches


@pytest.fixture(scope="session")
def compiled():
    launches = representative_launches()
    results = aot.compile_in_subprocess(launches, archs=ARCHS)
    return [(launch, results[aot.launch_key(launch)]) for launch in launches]


def test_every_kernel_and_dtype_is_compiled(compiled):
    kinds = {(launch["kernel"], launch["args"][STREAMS[launch["kernel"]][0][1]]["dtype"]) for launch, _ in compiled}
    assert kinds == {(k, d) for k in STREAMS for d in ("float32", "bfloat16", "float16")}
    for _, per_arch in compiled:
        assert sorted(per_arch) == [str(a) for a in ARCHS]
        for arch, info in per_arch.items():
            assert info["target"].startswith(f"sm_{arch}")


def test_no_spills(compiled):
    for launch, per_arch in compiled:
        for arch, info in per_arch.items():
            what = f"{launch['kernel']} {launch['constexprs']} sm_{arch}"
            assert info["registers"] and info["registers"] <= 255, what
            assert info["spill_stores"] == 0 and info["spill_loads"] == 0, f"{what}: {info}"
            assert info["cubin_local"] == 0 and info["cubin_stack"] == 0, f"{what}: {info}"


def _sixteen_byte(info: dict, kind: str) -> int:
    """16-byte global accesses of the PTX, not counting L2-only (``.cg``) reads of the partials."""
    n = 0
    for ins, count in info["vectors"]["instructions"].items():
        if ins.startswith(f"{kind}.global") and ".cg" not in ins:
            parts = ins.split(".")
            if ("v4" in parts and ("b32" in parts or "f32" in parts)) or ("v2" in parts and "b64" in parts):
                n += count
    return n


def test_streams_use_16_byte_accesses(compiled):
    """Each thread moves its elements of every streamed tensor in 16-byte instructions
    (``ld.global.v4.b32``: 4 floats or 8 halves): as many as its bytes / 16."""
    for launch, per_arch in compiled:
        threads = 32 * launch["num_warps"]
        per_thread = launch["constexprs"]["BLOCK"] // threads
        want = {"ld": 0, "st": 0}
        for kind, ptr in STREAMS[launch["kernel"]]:
            nbytes = per_thread * ESIZE[launch["args"][ptr]["dtype"]]
            assert nbytes >= 16 and nbytes % 16 == 0, (launch["kernel"], nbytes)
            want[kind] += nbytes // 16
        for arch, info in per_arch.items():
            what = f"{launch['kernel']} {launch['args']} sm_{arch}: {info['vectors']['instructions']}"
            for kind in ("ld", "st"):
                assert _sixteen_byte(info, kind) >= want[kind], what


VARIANTS = {
    "adversarial": dict(eps=0.5),
    "input_layer": dict(eps=0.5, input_eps=0.1),
    "sign_input": dict(eps=0.5, input_eps=0.1, input_sign=True),
    "gaussian": dict(eps=0.5, noise="gaussian"),
    "no_std": dict(eps=-0.3, scale_by_std=False),
}

# Every op a TwoRound step dispatches beyond the exact floor (benchmarks/step.py: floor_step, a plain step
# plus round 1's forward and activation-gradient backward), per layer kind; "launch:K" is a launch of the
# Triton kernel K. The three kernels are the layer's work; the rest are their output allocations, the
# views of the step's one draw, and what a kind needs on top.
ADVERSARIAL = {
    "launch:std": 1,  # round 1: s = std(h)
    "launch:noise_scale": 1,  # round 1, after the backward: r_b s / ||g_b||_inf
    "launch:add_noise": 1,  # round 2: h + scale[b] * g
    "aten.empty": 3,  # the outputs of std (1) and noise_scale (scale, norm)
    "aten.empty_like": 1,  # add_noise's output
    "aten.slice": 1,  # its z: a view of the step's one draw
    "aten.view": 1,
}
PER_KIND = {
    "adversarial": ADVERSARIAL,
    "no_std": ADVERSARIAL,  # std still measured (last_stds), not used
    "gaussian": {  # no noise_scale, no round-1 backward: direction = z
        "launch:std": 1,
        "launch:add_noise": 1,
        "aten.empty": 1,
        "aten.empty_like": 1,
        "aten.slice": 1,
        "aten.view": 1,
    },
    "input": {**ADVERSARIAL, "aten.clone": 1},  # the model input: a leaf for round 1, and a copy goes on
    "sign_input": {  # eta = eps sign(g): no draw; the sign and the per-sample mask (norm_b < inf) are torch ops
        **{k: v for k, v in ADVERSARIAL.items() if k not in ("aten.slice", "aten.view")},
        "aten.clone": 1,
        "aten.sign": 1,
        "aten.lt": 1,
        "aten._to_copy": 1,
    },
}
PER_STEP = {"aten.randn": 1}  # all draws of a step in one call (none when every layer is the sign form)
NOISE_DTYPE = {"aten._to_copy": 1}  # per layer: the kept direction cast to noise_dtype


class _OpCounter(TorchDispatchMode):
    """Every aten op dispatched inside, by name."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def _extra_ops(model, x, y, **engine_kwargs) -> collections.Counter:
    """The ops (and Triton launches, recorded and not run) of one TwoRound step beyond one floor step."""
    engine = anl_fused.TwoRound(model, torch.Generator(device=x.device).manual_seed(0), **engine_kwargs)
    closure = lambda: F.cross_entropy(model(x), y)
    engine.step(closure)  # warm-up: the step counters exist
    model.zero_grad(set_to_none=True)
    with aot.record(execute=False) as launches, _OpCounter() as ours:
        engine.step(closure)
    model.zero_grad(set_to_none=True)
    with _OpCounter() as floor:
        floor_step(model, closure)
    extra = ours.ops + collections.Counter(f"launch:{launch['kernel']}" for launch in launches)
    extra.subtract(floor.ops)
    return collections.Counter({k: v for k, v in extra.items() if v})


def _expected(kinds: list[str], noise_dtype: bool) -> collections.Counter:
    want = collections.Counter(PER_STEP)
    for kind in kinds:
        want.update(PER_KIND[kind])
        if noise_dtype:
            want.update(NOISE_DTYPE)
    return want


@pytest.mark.parametrize("noise_dtype", [None, torch.bfloat16])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_op_of_a_step_beyond_the_floor_per_layer_kind(monkeypatch, variant, noise_dtype):
    """One TwoRound step of a small model on the Triton backend, every dispatched op of the whole step
    (round 1, both backwards, round 2) against the exact floor's: what is left is exactly the ANL work of
    each layer kind (``PER_KIND``): an op added anywhere in the engine or the ops fails here."""
    monkeypatch.setenv("ANL_FUSED_BACKEND", "triton")
    dev = kernel_device()
    torch.manual_seed(0)
    options = VARIANTS[variant]
    model = anl_fused.insert_anl(small_vgg(dropout=False), **options).to(dev)
    x, y = torch.randn(3, 3, 8, 8, device=dev), torch.randint(0, 10, (3,), device=dev)
    body = "gaussian" if options.get("noise") == "gaussian" else "adversarial"
    kinds = [body] * 3
    if "input_eps" in options:
        kinds.insert(0, "sign_input" if options.get("input_sign") else "input")
    got = _extra_ops(model, x, y, noise_dtype=noise_dtype)
    assert got == _expected(kinds, noise_dtype is not None), (got, _expected(kinds, noise_dtype is not None))
    launches = sum(v for k, v in got.items() if k.startswith("launch:"))
    assert launches <= 3 * len(kinds)


def test_the_op_count_catches_an_op_added_in_the_engine(monkeypatch):
    """Not vacuous: one more op per layer in the engine (a copy of the direction) is counted."""
    monkeypatch.setenv("ANL_FUSED_BACKEND", "triton")
    from anl_fused import engine

    real = engine.noise_terms
    monkeypatch.setattr(engine, "noise_terms", lambda *a, **k: (lambda d, s, al: (d.clone(), s, al))(*real(*a, **k)))
    dev = kernel_device()
    torch.manual_seed(0)
    model = anl_fused.insert_anl(small_vgg(dropout=False), eps=0.5).to(dev)
    x, y = torch.randn(3, 3, 8, 8, device=dev), torch.randint(0, 10, (3,), device=dev)
    got = _extra_ops(model, x, y)
    want = _expected(["adversarial"] * 3, False)
    assert got - want == collections.Counter({"aten.clone": 3})


def test_counter_catches_extra_work(monkeypatch):
    """Not vacuous either: a torch op added inside an op (``std(h) * 1``) is counted, once per layer."""
    monkeypatch.setenv("ANL_FUSED_BACKEND", "triton")
    from anl_fused import ops

    real = ops._triton

    class Extra:
        def __getattr__(self, name):
            fn = getattr(real(), name)
            return (lambda *a, **k: fn(*a, **k) * 1) if name == "std" else fn

    monkeypatch.setattr(ops, "_triton", lambda: Extra())
    dev = kernel_device()
    torch.manual_seed(0)
    model = anl_fused.insert_anl(small_vgg(dropout=False), eps=0.5).to(dev)
    x, y = torch.randn(3, 3, 8, 8, device=dev), torch.randint(0, 10, (3,), device=dev)
    got = _extra_ops(model, x, y)
    assert got - _expected(["adversarial"] * 3, False) == collections.Counter({"aten.mul": 3})
