"""The study's robustness battery (pre-registered in ``benchmarks/results/study/prereg.md``), with ``torchattacks``.

Pixel-space L∞ attacks on images in [0, 1]; the model's input normalization is part of the attacked function
(:class:`Normalized`). For each model: clean accuracy, FGSM, PGD-20 and PGD-100 (step 2.5 eps / steps, ``restarts``
random starts, an image counts as robust only if it survives every restart), APGD-CE, an eps curve (FGSM and
PGD-20 with one start) and black-box transfer (PGD-20 images crafted on a ``source`` model), plus the sanity checks
that rule out gradient masking. Every random start is seeded: the same call gives the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["CURVE_EPS", "ENDPOINT_EPS", "Normalized", "battery", "sanity"]

ENDPOINT_EPS = 16 / 255  # Fig. 5's delta 16
CURVE_EPS = tuple(k / 255 for k in (1, 2, 4, 8, 16, 32, 64, 128))


class Normalized(nn.Module):
    """``model((x - mean) / std)`` per channel: the model as a function of pixels in [0, 1], always in eval mode
    (``train()`` keeps it there: torchattacks puts a model that was in training mode back into it after each
    attack, which would evaluate BatchNorm / Dropout models in training mode)."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        c = len(mean)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1))
        self.eval()

    def train(self, mode: bool = True) -> Normalized:
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.model((x - self.mean) / self.std)


def _robust(model: nn.Module, make: Callable[[], Callable], x: Tensor, y: Tensor, restarts: int, seed: int) -> Tensor:
    """Per image: correctly classified after every one of ``restarts`` seeded runs of the attack ``make()``."""
    ok = torch.ones(len(y), dtype=torch.bool)
    for r in range(restarts):
        torch.manual_seed(seed + r)  # torchattacks draws its random start from the global generator
        adv = make()(x, y)
        with torch.no_grad():
            ok &= model(adv).argmax(1) == y
    return ok


def _acc(ok: Tensor) -> float:
    return ok.double().mean().item() * 100


def battery(
    model: nn.Module, x: Tensor, y: Tensor, *, source: nn.Module | None = None, restarts: int = 5, seed: int = 0
) -> dict:
    """The whole battery on ``model`` (a :class:`Normalized` model) and pixels ``x`` in [0, 1]; accuracies in %."""
    import torchattacks

    eps = ENDPOINT_EPS
    with torch.no_grad():
        clean = model(x).argmax(1) == y

    def pgd(steps: int, e: float = eps, target: nn.Module = model):
        return lambda: torchattacks.PGD(target, eps=e, alpha=2.5 * e / steps, steps=steps, random_start=True)

    out = {
        "n": len(y),
        "eps": eps,
        "clean": _acc(clean),
        "fgsm": _acc(_robust(model, lambda: torchattacks.FGSM(model, eps=eps), x, y, 1, seed)),
        "pgd20": _acc(_robust(model, pgd(20), x, y, restarts, seed)),
        "pgd100": _acc(_robust(model, pgd(100), x, y, restarts, seed)),
        "apgd_ce": _acc(
            _robust(model, lambda: torchattacks.APGD(model, eps=eps, steps=100, loss="ce", seed=seed), x, y, 1, seed)
        ),
        "curve": {
            f"{e * 255:g}/255": {
                "fgsm": _acc(_robust(model, lambda e=e: torchattacks.FGSM(model, eps=e), x, y, 1, seed)),
                "pgd20": _acc(_robust(model, pgd(20, e), x, y, 1, seed)),
            }
            for e in CURVE_EPS
        },
    }
    if source is not None:  # black box: images crafted on the source, classified by the model
        torch.manual_seed(seed)
        adv = pgd(20, eps, source)()(x, y)
        with torch.no_grad():
            out["transfer_pgd20"] = _acc(model(adv).argmax(1) == y)
    out["sanity"] = sanity(out)
    return out


def sanity(r: dict) -> dict:
    """The four checks that rule out gradient masking (each True when it holds) and ``all``."""
    largest = r["curve"][max(r["curve"], key=lambda k: float(k.split("/")[0]))]
    checks = {
        "pgd_le_fgsm": r["pgd20"] <= r["fgsm"] and r["pgd100"] <= r["fgsm"],
        "more_steps_never_help": r["pgd100"] <= r["pgd20"],
        "zero_at_large_eps": largest["pgd20"] <= 5.0,
        "transfer_ge_whitebox": r.get("transfer_pgd20", float("inf")) >= r["pgd20"],
    }
    return {**checks, "all": all(checks.values())}
