"""Fuzzing the three per-layer ops against the oracle: ``anl_fused.ops.std / noise_scale / add_noise`` on the
torch backend, on the C++ CPU kernels (``ANL_FUSED_BACKEND=cpp``: fails, not falls back, where they cannot be
built) and on the Triton kernels (interpreted on CPU here, ``TRITON_INTERPRET=1`` from tests/conftest.py),
composed as the engine composes them (``functional.noise_terms``), against
``anl_fused.reference.std / eta`` (float64, sample by sample, written independently).

Hypothesis draws: every dtype of ``h`` (and a lower-precision or float32 ``g`` as with ``noise_dtype``),
batch 1 to 6 and odd sizes, 1 to 4 dimensions, contiguous / channels_last / strided (non-contiguous)
layouts, every variant (per-sample and per-layer norm, Eq. 4, the sign form, Gaussian noise), positive
and negative ``eps``, ``z`` at and beyond the clamp bounds, constant ``h`` (``s = 0``), and per sample
gradients of extreme size (1e-30 to 1e30 in float32, 1e-200 to 1e200 in float64), exactly zero, or holding
NaN / +inf / -inf. ``test_fuzz_fast`` runs a few dozen cases in the default suite, ``test_fuzz_many``
(``-m slow``) 1000.

Tolerances, per dtype of ``h`` (the result is rounded once to it; both backends compute ``h + scale * g``
in the accumulation dtype): ``|out - (h + eta)| <= U * (|h| + |eta|) + ACC * mag + TINY * |eps| S / n_b``, where
``U`` is two ulps of ``h``'s dtype, ``mag = |eps| S |g'| / n_b`` bounds the noise of the element (``S = s``
or 1; Gaussian: ``|eps|/4 S |z|``; sign form: ``|eps|``), ``ACC`` covers the float32 accumulation of ``s``
(<= 1e-5 relative: both backends accumulate shifted / Welford statistics, exact to a few float32 ulps even
for a mean 1000 standard deviations off zero, as drawn here) and the few float32 roundings of
``r_b s / n_b`` (float64 data: float64 throughout), and ``TINY * (|eps| S / n_b + |g'| + 2)`` is the error of
``g``, ``scale`` or their product rounded to a subnormal of ``h``'s dtype (spacing ``TINY`` near zero: 6e-8
for float16, negligible for the others; a bound kept from when the torch backend multiplied in ``h``'s
dtype: both backends now round once, in ``add_noise``'s ``.to(h.dtype)``). Which samples get zero noise must agree
exactly.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anl_fused import ops, reference
from anl_fused.functional import noise_terms

pytest.importorskip("triton")
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy in the interpreter, on inf/NaN

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
U = {torch.float64: 2.0**-51, torch.float32: 2.0**-22, torch.float16: 2.0**-9, torch.bfloat16: 2.0**-6}
ACC = {torch.float64: 1e-12, torch.float32: 2e-5}  # by accumulation dtype (ops.acc_dtype)
STD_RTOL = {torch.float64: 1e-12, torch.float32: 1e-5}
TINY = {dt: torch.finfo(dt).smallest_normal * torch.finfo(dt).eps for dt in DTYPES}
# log10 of a sample's largest |g|, per dtype of g (float16 down to its subnormals), and for a float16 h. Both
# backends compute scale * g in float32 and round once (issue #9 item 3). Below ~1e-37 a float32 scale
# r s / n would overflow and is clamped to the largest float32 (documented in ops.noise_scale), so the noise
# is smaller than the formula's there: not fuzzed.
G_EXP = {torch.float64: (-200, 200), torch.float32: (-36, 30), torch.bfloat16: (-36, 30), torch.float16: (-7, 4)}
F16_H_G_EXP = (-36, 30)
VARIANTS = ("sample", "layer", "eq4", "sign", "gaussian")
KINDS = ("normal", "normal", "normal", "zero", "nan", "inf", "-inf", "nan_inf")
Z_SPECIAL = (None, None, None, -2.0, -7.5, 6.0, 0.0)


@st.composite
def cases(draw):
    dtype = draw(st.sampled_from(DTYPES))
    g_dtype = dtype if dtype == torch.float64 else draw(st.sampled_from([dtype, torch.float32, torch.bfloat16]))
    B = draw(st.integers(1, 6))
    rest = draw(st.lists(st.integers(1, 13), min_size=0, max_size=3))
    shape = (B, *rest)
    layouts = ["contiguous", "strided"] + (["channels_last"] if len(shape) == 4 else [])
    lo, hi = G_EXP[g_dtype]
    if dtype == torch.float16:
        lo, hi = max(lo, F16_H_G_EXP[0]), min(hi, F16_H_G_EXP[1])
    return dict(
        dtype=dtype,
        g_dtype=g_dtype,
        shape=shape,
        h_layout=draw(st.sampled_from(layouts)),
        g_layout=draw(st.sampled_from(layouts)),
        h_std=draw(st.sampled_from([0.0, 1e-2, 1.0, 1e2])),
        h_mean=draw(st.sampled_from([0.0, 1.0, -10.0])),
        g_exps=draw(st.lists(st.integers(lo, hi), min_size=B, max_size=B)),
        kinds=draw(st.lists(st.sampled_from(KINDS), min_size=B, max_size=B)),
        z_special=draw(st.lists(st.sampled_from(Z_SPECIAL), min_size=B, max_size=B)),
        eps=draw(
            st.sampled_from([0.05, -0.05, 1.0, -2.0])
            | st.builds(lambda m, sign: sign * m, st.floats(1e-3, 2), st.sampled_from([1, -1]))
        ),
        variant=draw(st.sampled_from(VARIANTS)),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def layout(t: torch.Tensor, how: str) -> torch.Tensor:
    if how == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if how == "strided":  # the same values in a non-contiguous view (every other element of the last dim)
        big = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        big[..., ::2] = t
        view = big[..., ::2]
        assert torch.equal(view, t) or t.isnan().any()
        return view
    return t


def make(case):
    gen = torch.Generator().manual_seed(case["seed"])
    shape, dtype, B = case["shape"], case["dtype"], case["shape"][0]
    mean = case["h_mean"] * max(case["h_std"], 1.0)  # up to 1000 standard deviations off zero (std 0.01)
    h = (torch.randn(shape, generator=gen, dtype=torch.float64) * case["h_std"] + mean).to(dtype)
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    g = g / g.reshape(B, -1).abs().amax(1).clamp_min(1e-300).view(-1, *[1] * (len(shape) - 1))  # max|g_b| = 1
    g = g * torch.tensor([10.0**e for e in case["g_exps"]], dtype=torch.float64).view(-1, *[1] * (len(shape) - 1))
    g = g.to(case["g_dtype"])
    flat = g.view(B, -1)
    for b, kind in enumerate(case["kinds"]):
        i = int(torch.randint(flat.shape[1], (1,), generator=gen))
        if kind == "zero":
            flat[b] = 0
        elif kind in ("nan", "nan_inf"):
            flat[b, i] = float("nan")
        if kind in ("inf", "-inf", "nan_inf"):
            flat[b, (i + 1) % flat.shape[1] if kind == "nan_inf" else i] = float("-inf" if kind == "-inf" else "inf")
    acc = ops.acc_dtype(dtype)
    if case["variant"] == "gaussian":
        z = torch.randn(shape, generator=gen, dtype=acc)
    elif case["variant"] == "sign":
        z = None
    else:
        z = torch.randn(B, generator=gen, dtype=acc) * 3
        for b, special in enumerate(case["z_special"]):
            if special is not None:
                z[b] = special
    return layout(h, case["h_layout"]), layout(g, case["g_layout"]), z


def fast_path(h, g, z, eps, variant):
    """The engine's composition of the ops for one layer: ``(s, out, direction, scale)``."""
    s = ops.std(h)
    noise = "gaussian" if variant == "gaussian" else "adversarial"
    direction, scale, alpha = noise_terms(
        noise, variant == "sign", eps, g, z, None if variant in ("eq4", "sign") else s, layer_norm=variant == "layer"
    )
    out = ops.add_noise(h, direction, scale, alpha=alpha)
    per_sample = torch.ones(h.shape[0], dtype=torch.float64) if scale is None else scale.double().expand(h.shape[0])
    return s, out, direction, alpha * per_sample


def oracle(h, g, z, eps, variant):
    """``(s, eta)`` of anl_fused.reference, float64."""
    noise = "gaussian" if variant == "gaussian" else "adversarial"
    return reference.std(h), reference.eta(
        h,
        g,
        z,
        eps,
        noise=noise,
        scale_by_std=variant not in ("eq4", "sign"),
        sign=variant == "sign",
        norm="layer" if variant == "layer" else "sample",
    )


def bound(h, g, z, eps, variant, s_ref):
    """Per element, the largest |eta| the formula can give (``mag``) and ``|eps| S / n_b`` (the scale's size)."""
    B = h.shape[0]
    view = (-1,) + (1,) * (h.dim() - 1)
    S = 1.0 if variant in ("eq4", "sign") else s_ref
    if variant == "gaussian":
        mag = abs(eps) / 4 * S * z.double().abs()
        return mag, torch.zeros(B, dtype=torch.float64).view(view)
    g64 = g.double()
    finite = torch.isfinite(g64.reshape(B, -1)).all(1)
    n = g64.reshape(B, -1).abs().amax(1)
    if variant == "layer":
        n = torch.where(finite, n, 0).amax().expand(B)
    n = torch.where(finite & (n > 0), n, math.inf).view(view)
    g_abs = torch.nan_to_num(g64, nan=0.0, posinf=0.0, neginf=0.0).abs()
    if variant == "sign":
        return torch.full_like(g_abs, abs(eps)), torch.full_like(n, abs(eps))
    return abs(eps) * S * g_abs / n, abs(eps) * S / n


def check(case, backend, monkeypatch):
    h, g, z, eps, variant = *make(case), case["eps"], case["variant"]
    monkeypatch.setenv("ANL_FUSED_BACKEND", backend)
    s, out, direction, scale = fast_path(h, g, z, eps, variant)
    s_ref, eta = oracle(h, g, z, eps, variant)
    where = f"{backend} backend, case {case}"
    acc = ops.acc_dtype(h.dtype)

    assert s.dtype == acc and s.shape == ()
    assert abs(float(s) - s_ref) <= STD_RTOL[acc] * s_ref, f"std {float(s)} != {s_ref}: {where}"

    B, view = h.shape[0], (-1,) + (1,) * (h.dim() - 1)
    eta_fast = scale.double().view(view) * torch.nan_to_num(direction.double(), nan=0.0, posinf=0.0, neginf=0.0)
    zero_fast = (eta_fast.reshape(B, -1) == 0).all(1)
    zero_ref = (eta.reshape(B, -1) == 0).all(1)
    assert torch.equal(zero_fast, zero_ref), f"zero-noise samples {zero_fast.tolist()} != {zero_ref.tolist()}: {where}"

    assert out.shape == h.shape and out.dtype == h.dtype
    out64, h64 = out.double(), h.double()
    assert torch.equal(out64[zero_ref], h64[zero_ref]), f"a zero-noise sample changed: {where}"
    mag, size = bound(h, g, z, eps, variant, s_ref)
    g_abs = torch.nan_to_num(direction.double(), nan=0.0, posinf=0.0, neginf=0.0).abs()
    allowed = U[h.dtype] * (h64.abs() + eta.abs()) + ACC[acc] * mag + TINY[h.dtype] * (size + g_abs + 2)
    err = (out64 - (h64 + eta)).abs()
    assert torch.isfinite(out64).all(), f"non-finite output: {where}"
    assert (err <= allowed).all(), f"max error {(err - allowed).max().item():.3g} over the bound: {where}"


COUNT = {"cases": 0}


BACKENDS = ("torch", "cpp", "triton")


def run(case, monkeypatch):
    for backend in BACKENDS:
        check(case, backend, monkeypatch)
    COUNT["cases"] += 1


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_fuzz_fast(case):
    with pytest.MonkeyPatch.context() as mp:
        run(case, mp)


@pytest.mark.slow
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_fuzz_many(case):
    with pytest.MonkeyPatch.context() as mp:
        run(case, mp)


def test_fuzz_cases_cover_the_space():
    """The strategy reaches what the module docstring promises (a guard against a strategy that collapsed)."""
    seen = {"dtypes": set(), "variants": set(), "kinds": set(), "layouts": set(), "batch1": False, "odd": False}

    @settings(max_examples=300, deadline=None, database=None)
    @given(case=cases())
    def collect(case):
        seen["dtypes"].add(case["dtype"])
        seen["variants"].add(case["variant"])
        seen["kinds"].update(case["kinds"])
        seen["layouts"].update([case["h_layout"], case["g_layout"]])
        seen["batch1"] |= case["shape"][0] == 1
        seen["odd"] |= any(d % 2 for d in case["shape"][1:])

    collect()
    assert seen["dtypes"] == set(DTYPES) and seen["variants"] == set(VARIANTS)
    assert seen["kinds"] == set(KINDS) and seen["layouts"] == {"contiguous", "strided", "channels_last"}
    assert seen["batch1"] and seen["odd"]
