"""anl2d, the functional twin of ANL2d."""

import pytest
import torch

from anl_fused import ANL2d, anl2d


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
    torch.testing.assert_close(
        anl2d(h, g, eps, z=z, scale_by_std=False) - h, (r / norm).nan_to_num(0, 0, 0)[:, None, None, None] * g
    )
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


def test_functional_checks_the_options_as_the_layer_does():
    """One check (``layer.check_options``) for ANL2d and anl2d: the same options are refused with the same
    message, the sign form with Gaussian noise included."""
    h, g = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    for options, says in (
        (dict(noise="uniform"), "'uniform'"),
        (dict(norm="linear"), "'linear'"),
        (dict(sign=True, noise="gaussian"), "sign=True"),
    ):
        with pytest.raises(ValueError, match=says) as from_layer:
            ANL2d(0.1, **options)
        with pytest.raises(ValueError, match=says) as from_functional:
            anl2d(h, g, 0.1, **options)
        assert str(from_layer.value) == str(from_functional.value)
