"""ANL2d: argument validation, shapes, repr."""

import math
import re

import pytest
import torch

from anl_fused import ANL2d, insert_anl

from ._nets import small_vgg


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -math.inf])
def test_nonfinite_eps_is_an_error_naming_the_value(bad):
    with pytest.raises(ValueError, match="finite"):
        ANL2d(bad)
    with pytest.raises(ValueError, match="eps"):
        insert_anl(small_vgg(), eps=bad)
    with pytest.raises(ValueError, match="input_eps"):
        insert_anl(small_vgg(), eps=0.1, input_eps=bad)
    layer = ANL2d(0.1)
    with pytest.raises(ValueError):
        layer.eps = bad


@pytest.mark.parametrize("bad", [1e300, -1e300, 1001.0, -5e3])
def test_huge_eps_is_refused_at_construction_naming_the_bound(bad):
    """``ANL2d(1e300)`` used to pass validation and fail at step 1 (its noise overflows)."""
    with pytest.raises(ValueError, match=r"at most 1000.*std\(h\)"):
        ANL2d(bad)
    with pytest.raises(ValueError, match="input_eps"):
        insert_anl(small_vgg(), eps=0.1, input_eps=bad)
    with pytest.raises(ValueError, match="at most 1000"):
        ANL2d(0.1).eps = bad
    assert ANL2d(1000.0).eps == 1000.0 and ANL2d(-1000).eps == -1000.0  # the bound itself is allowed


@pytest.mark.parametrize("bad", [True, "0.1", None, torch.tensor(0.1)])
def test_eps_must_be_a_real_number(bad):
    with pytest.raises(TypeError, match="eps must be a real number"):
        ANL2d(bad)


def test_bad_options():
    with pytest.raises(ValueError, match="'uniform'"):
        ANL2d(0.1, noise="uniform")
    with pytest.raises(ValueError, match="sign=True"):
        ANL2d(0.1, noise="gaussian", sign=True)
    with pytest.raises(ValueError, match="'linear'"):
        insert_anl(small_vgg(), 0.1, after="linear")
    with pytest.raises(TypeError, match=r"nn\.Module"):
        insert_anl("model", 0.1)


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 4), (1, 2, 3, 4, 5)])
def test_non_4d_input_is_an_error_when_active_and_passes_through_when_inactive(shape):
    """Active (training mode, enabled) the layer needs (N, C, H, W); inactive it is the identity for any
    input, so a model that takes unbatched images keeps taking them in eval mode."""
    layer = ANL2d(0.1)
    with pytest.raises(ValueError, match=r"4-D .*" + re.escape(str(shape))):
        layer.train()(torch.randn(shape))
    x = torch.randn(shape)
    assert layer.eval()(x) is x
    layer.train().enabled = False
    assert layer(x) is x


def test_negative_eps_is_allowed_and_repr_names_options():
    layer = ANL2d(-0.05, noise="gaussian", scale_by_std=False)
    assert layer.eps == -0.05
    assert repr(layer) == "ANL2d(eps=-0.05, noise='gaussian', scale_by_std=False)"
    assert repr(ANL2d(0.1, sign=True)) == "ANL2d(eps=0.1, sign=True)"
