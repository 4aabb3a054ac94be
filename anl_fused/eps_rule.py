"""``eps="auto"`` (:func:`auto_eps`): the paper's choice of eps from the number of trainable parameters (Table 2).

Table 2 of the paper lists one eps per network, "based on the amount of parameters of the network"
(CIFAR-10 / CIFAR-100, ANL after every BatchNorm). Its ten points are in :data:`TABLE2`. The rule is
a power law fitted to them by least squares on ``log eps`` against ``log params`` (so that it
minimizes relative error; ``numpy.polyfit(log P, log eps, 1)`` gives slope 0.7099 and intercept
``log 0.008890``, rounded here to three digits)::

    eps = 0.00889 * (params / 1e6) ** 0.710,   params clamped to [1.8M, 36.5M]

On the ten points it is within 0.015 of the paper's value (largest misses: 0.114 for WRN-28-10's
0.10, 0.060 for VGG-16's 0.05; relatively: 0.013 for PyramidNet-48's 0.01). The paper's own values
lie on a coarse grid (0.01, 0.02, 0.05, 0.08, 0.10), so a closer fit would only fit the grid.

Limits: the rule is only as good as Table 2. It was chosen for six architecture families on
32x32 CIFAR images; the paper gives no eps for other datasets, input sizes or placements, nor any
reason why eps should follow the parameter count. Outside 1.8M-36.5M parameters the rule does not
extrapolate: it returns the value at the nearer end (0.013 or 0.114) and warns. Treat ``"auto"``
as the starting point of an eps sweep, not as a tuned value.
"""

from __future__ import annotations

import logging
import numbers
import warnings

from torch import nn

__all__ = ["COEFFICIENT", "EXPONENT", "PARAM_RANGE", "TABLE2", "auto_eps", "count_trainable"]

#: Table 2 of the paper: ``model: (trainable parameters, eps)``.
TABLE2: dict[str, tuple[float, float]] = {
    "MobileNet": (3.20e6, 0.02),
    "MobileNet v2": (2.30e6, 0.02),
    "VGG-11": (9.20e6, 0.05),
    "VGG-16": (14.7e6, 0.05),
    "ResNet-18": (11.2e6, 0.05),
    "ResNet-34": (21.3e6, 0.08),
    "PyramidNet-48": (1.80e6, 0.01),
    "PyramidNet-270": (28.4e6, 0.10),
    "WRN-40-4": (8.90e6, 0.05),
    "WRN-28-10": (36.5e6, 0.10),
}

#: ``eps = COEFFICIENT * (params / 1e6) ** EXPONENT`` (least squares in log-log space on TABLE2).
COEFFICIENT = 0.00889
EXPONENT = 0.710
#: the parameter counts the rule was fitted on; outside, the nearer end's eps.
PARAM_RANGE = (min(p for p, _ in TABLE2.values()), max(p for p, _ in TABLE2.values()))

logger = logging.getLogger("anl_fused")


def count_trainable(model: nn.Module) -> int:
    """Number of trainable parameters (``requires_grad``), each shared tensor counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def auto_eps(model_or_params: nn.Module | int) -> float:
    """The eps that the rule fitted to the paper's Table 2 gives a model of this size.

    Args:
        model_or_params: a model (its trainable parameters are counted; count it without ANL or
            with, ANL layers hold no parameters) or the number of trainable parameters.

    Returns eps rounded to three decimals. Warns when the count is outside the fitted range (then
    the nearer end's eps is returned).
    """
    if isinstance(model_or_params, nn.Module):
        params = count_trainable(model_or_params)
    elif isinstance(model_or_params, numbers.Integral) and not isinstance(model_or_params, bool):
        params = int(model_or_params)
    else:
        raise TypeError(f"auto_eps needs an nn.Module or a parameter count, got {model_or_params!r}")
    if params <= 0:
        raise ValueError(f"auto_eps needs a model with trainable parameters, got {params} parameters")
    lo, hi = PARAM_RANGE
    if not lo <= params <= hi:
        warnings.warn(
            f"eps='auto': {params / 1e6:.3g}M trainable parameters is outside the range the rule was "
            f"fitted on (the paper's Table 2, {lo / 1e6:g}M-{hi / 1e6:g}M); using the eps of "
            f"{(lo if params < lo else hi) / 1e6:g}M. Tune eps for this model.",
            stacklevel=2,
        )
    clamped = min(max(params, lo), hi)
    eps = round(COEFFICIENT * (clamped / 1e6) ** EXPONENT, 3)
    logger.info("eps='auto': %.3gM trainable parameters -> eps=%g (fit to the paper's Table 2)", params / 1e6, eps)
    return eps
