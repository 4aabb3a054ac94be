"""The kernels as a GPU would run them, checked on this CPU machine: every kernel compiles for sm_80
(A100) and sm_90 (H100 / H200) without spills and with 16-byte global loads and stores on aligned
contiguous float32 / bfloat16 / float16 data, and an ANL layer costs at most 3 launches per step.

Compiling needs the real ``JITFunction`` (a process without ``TRITON_INTERPRET``): it runs once per
session in a subprocess (``anl_fused.kernels.aot``), over the launches the ops make on
representative shapes (recorded, not run). A change that adds a launch or loses vectorization fails
here, without a GPU.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():  # as tests/conftest.py: before triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

import anl_fused
from anl_fused import kernels
from anl_fused.benchmarks import aot_report
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


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_at_most_three_launches_per_layer(monkeypatch, variant):
    """One TwoRound step of a small model on the Triton backend: every kernel launch of the step,
    plus every torch op that does work inside the ops, per ANL layer. std, noise_scale and
    add_noise are one launch each (Gaussian noise needs no noise_scale)."""
    monkeypatch.setenv("ANL_FUSED_BACKEND", "triton")
    dev = kernel_device()
    torch.manual_seed(0)
    model = anl_fused.insert_anl(small_vgg(), **VARIANTS[variant]).to(dev)
    x, y = torch.randn(3, 3, 8, 8, device=dev), torch.randint(0, 10, (3,), device=dev)
    step = aot_report.record_step(model, x, y)
    counts = aot_report.per_layer_counts(step)
    layers = counts["layers"]
    assert layers == (4 if "input_eps" in VARIANTS[variant] else 3)
    # the ops were seen (a wrapper that misses them would count nothing): one call per layer each
    want_calls = {"std": layers, "add_noise": layers}
    if variant != "gaussian":
        want_calls["noise_scale"] = layers
    assert counts["op_calls"] == want_calls, counts
    assert counts["by_kernel"] == want_calls, counts
    assert counts["torch_ops_in_ops"] == 0, counts["torch_ops"]
    assert counts["per_layer"]["total"] <= 3, counts


def test_counter_catches_extra_work(monkeypatch):
    """The count is not vacuous: a torch op added inside an op is counted."""
    monkeypatch.setenv("ANL_FUSED_BACKEND", "triton")
    from anl_fused import ops

    real = ops._triton

    class Extra:
        def __getattr__(self, name):
            fn = getattr(real(), name)
            return (lambda *a, **k: fn(*a, **k) * 1) if name == "std" else fn

    monkeypatch.setattr(ops, "_triton", lambda: Extra())
    dev = kernel_device()
    model = anl_fused.insert_anl(small_vgg(), eps=0.5).to(dev)
    x, y = torch.randn(2, 3, 8, 8, device=dev), torch.randint(0, 10, (2,), device=dev)
    counts = aot_report.per_layer_counts(aot_report.record_step(model, x, y))
    assert counts["torch_ops_in_ops"] == counts["layers"] and counts["per_layer"]["total"] == 4
