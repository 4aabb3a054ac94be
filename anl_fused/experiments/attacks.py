"""FGSM / IFGSM (``torchattacks``) and the white-box / black-box transfer matrix of the paper's section 4.3.

Images ``x`` (N, C, H, W) are pixels in ``[0, 1]``; the paper's 0-255 settings are :data:`PAPER_FGSM` (``delta =
16``) and :data:`PAPER_IFGSM` (``delta = 16, alpha = 1, k = 16``). Every attack runs the model in eval mode (each
module's flag restored after), differentiates with respect to the input only (parameter ``.grad`` untouched) and
attacks ``model((x - mean) / std)`` when given ``mean`` / ``std``. ``batch_size`` chunks give the same images
(``sign(grad)`` does not see the loss's ``1 / n``). :func:`evaluate_transfer` builds Table 3.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Annotated, Any, Literal

import pydantic
import torch
from annotated_types import Ge, Gt, MinLen
from torch import Tensor, nn
from typing_extensions import TypedDict

from .files import md_table, save_figure
from .robustness import Normalized

PAPER_FGSM: dict[str, float] = dict(eps=16 / 255)
PAPER_IFGSM: dict[str, float | int] = dict(eps=16 / 255, alpha=1 / 255, steps=16)

_Real = Annotated[float, pydantic.Strict(), Ge(0)]  # strict: "0.1" is no float, 2.0 and True no int
_Count = Annotated[int, pydantic.Strict(), Ge(1)]
_Batch = _Count | None
_Stats = tuple[float, ...] | None
_Std = tuple[Annotated[float, Gt(0)], ...] | None
_forbid = pydantic.with_config(pydantic.ConfigDict(extra="forbid"))  # a spec's unknown key is an error
_FGSM = _forbid(TypedDict("_FGSM", {"method": Literal["fgsm"], "eps": _Real}))
_IFGSM = _forbid(TypedDict("_IFGSM", {"method": Literal["ifgsm"], "eps": _Real, "alpha": _Real, "steps": _Count}))
_Spec = Annotated[_FGSM | _IFGSM, pydantic.Field(discriminator="method")]


def _checked(fn: Callable) -> Callable:
    """``fn`` with its arguments checked against their annotations by pydantic (numbers finite): a ``ValueError``
    names each bad argument, what it must be and its value."""
    check = pydantic.validate_call(config=pydantic.ConfigDict(arbitrary_types_allowed=True, allow_inf_nan=False))(fn)
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def checked(*args, **kwargs):
        try:
            return check(**signature.bind(*args, **kwargs).arguments)  # by name: pydantic names keywords only
        except pydantic.ValidationError as e:
            bad = [f"{'.'.join(map(str, r['loc']))}: {r['msg']}, got {r['input']!r:.80}" for r in e.errors()]
            raise ValueError(f"{fn.__name__}: {'; '.join(bad)}") from None

    return checked


def _check(x: Tensor, y: Tensor, mean: _Stats, std: _Std) -> None:
    """``ValueError`` naming the input that is not float images in ``[0, 1]``, integer labels or per-channel stats."""
    if not x.is_floating_point() or x.dim() != 4:
        raise ValueError(f"x must be float images (N, C, H, W) in [0, 1], got {x.dtype} of shape {tuple(x.shape)}")
    if y.shape != x.shape[:1] or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(
            f"y must be a class index per image: x has shape {tuple(x.shape)}, y {tuple(y.shape)} {y.dtype}"
        )
    lo, hi = torch.stack(torch.aminmax(x.detach())).tolist() if x.numel() else (0, 0)
    if not (lo >= 0 and hi <= 1):  # also false for NaN
        raise ValueError(f"x must hold images in [0, 1] (divide 0-255 images by 255), got values in [{lo}, {hi}]")
    if (mean is None) != (std is None) or (mean is not None and {len(mean), len(std)} - {1, x.shape[1]}):
        raise ValueError(
            f"give mean and std (1 or {x.shape[1]} values each, one per channel) or neither; got {mean}, {std}"
        )


@contextlib.contextmanager
def _attacked(model: nn.Module, x: Tensor, mean: _Stats, std: _Std) -> Iterator[nn.Module]:
    """``model((x - mean) / std)`` in eval mode with gradients on; every module's training flag restored after."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        with torch.inference_mode(False), torch.enable_grad():
            with torch.device(next(model.parameters(), x).device):  # Normalized(...).to() would move the model
                net = model.eval() if mean is None else Normalized(model, mean, std)
            yield net
    finally:
        for m, training in flags:
            m.training = training


def _chunks(x: Tensor, y: Tensor, batch_size: int | None) -> Iterator[tuple[Tensor, Tensor]]:
    n = batch_size or max(len(x), 1)
    return zip(x.split(n), y.long().split(n))


def _adversarial(spec: Mapping[str, Any], model, x, y, mean, std, batch_size) -> Tensor:
    import torchattacks

    make = {"fgsm": torchattacks.FGSM, "ifgsm": torchattacks.BIM}[spec["method"]]
    with _attacked(model, x, mean, std) as net:
        attack = make(net, **{k: v for k, v in spec.items() if k != "method"})
        return torch.cat([attack(xb, yb).to(x.device) for xb, yb in _chunks(x, y, batch_size)])


def _accuracy(model: nn.Module, x: Tensor, y: Tensor, mean, std, batch_size) -> float:
    if not len(y):
        raise ValueError("x holds no images: accuracy is undefined")
    with _attacked(model, x, mean, std) as net, torch.no_grad():
        dev = next(net.parameters(), x).device
        hits = [(net(xb.to(dev)).argmax(1) == yb.to(dev)).sum() for xb, yb in _chunks(x, y, batch_size)]
    return torch.stack(hits).sum().item() / len(y)


@_checked
def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: _Real, *, mean: _Stats = None, std: _Std = None,
         batch_size: _Batch = None) -> Tensor:  # fmt: skip
    """FGSM: ``clip_[0,1](x + eps sign(grad_x J(x, y)))``; same shape, dtype and device as ``x``, detached."""
    _check(x, y, mean, std)
    return _adversarial(dict(method="fgsm", eps=eps), model, x, y, mean, std, batch_size)


@_checked
def ifgsm(model: nn.Module, x: Tensor, y: Tensor, eps: _Real, alpha: _Real, steps: _Count, *, mean: _Stats = None,
          std: _Std = None, batch_size: _Batch = None) -> Tensor:  # fmt: skip
    """IFGSM / BIM: ``steps`` steps ``x_{k+1} = clip_[0,1](clip_{x,eps}(x_k + alpha sign(grad J(x_k, y))))``
    from ``x_0 = x`` (the paper asks ``steps >= eps / alpha``). Other arguments as :func:`fgsm`."""
    _check(x, y, mean, std)
    return _adversarial(dict(method="ifgsm", eps=eps, alpha=alpha, steps=steps), model, x, y, mean, std, batch_size)


@_checked
def accuracy(model: nn.Module, x: Tensor, y: Tensor, *, mean: _Stats = None, std: _Std = None,
             batch_size: _Batch = None) -> float:  # fmt: skip
    """Top-1 accuracy (a fraction) of ``model`` in eval mode on images ``x`` in ``[0, 1]``."""
    _check(x, y, mean, std)
    return _accuracy(model, x, y, mean, std, batch_size)


def paper_attacks() -> dict[str, dict[str, Any]]:
    """The paper's two attacks as :func:`evaluate_transfer` specs (names as in Table 3)."""
    return {"FGSM δ=16": {"method": "fgsm", **PAPER_FGSM}, "IFGSM δ=16, k=16, α=1": {"method": "ifgsm", **PAPER_IFGSM}}


@_checked
def evaluate_transfer(
    models: Annotated[dict[str, nn.Module], MinLen(1)], x: Tensor, y: Tensor,
    attacks: Annotated[dict[str, _Spec], MinLen(1)] | None = None, *, mean: _Stats = None, std: _Std = None,
    batch_size: _Batch = None, progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Paper Table 3: for every attack and source model, the accuracy of every target model on the source's
    adversarial images (the diagonal is white-box), plus clean accuracy. ``attacks``: name -> spec
    (``{"method": "fgsm", "eps"}``, ``{"method": "ifgsm", "eps", "alpha", "steps"}``), default
    :func:`paper_attacks`; ``progress(what)`` is called after each unit of work. Returns a JSON-serializable
    ``{"models", "attacks", "n", "clean", "transfer": {attack: {source: {target: fraction}}}}``."""
    attacks = attacks or paper_attacks()
    _check(x, y, mean, std)
    done = progress or (lambda what: None)
    acc = lambda xs: {t: _accuracy(m, xs, y, mean, std, batch_size) for t, m in models.items()}
    result = {"models": list(models), "attacks": attacks, "n": len(y), "clean": acc(x), "transfer": {}}
    done("clean accuracy")
    for a, spec in attacks.items():
        for s, source in models.items():
            result["transfer"].setdefault(a, {})[s] = acc(_adversarial(spec, source, x, y, mean, std, batch_size))
            done(f"{a} from {s}")
    return result


def transfer_markdown(result: Mapping[str, Any], *, digits: int = 1) -> str:
    """:func:`evaluate_transfer`'s result as Table 3 (accuracy %): rows are sources, columns targets grouped by
    attack, then clean accuracy; white-box cells underlined, the best clean accuracy bold."""
    names, transfer, clean = list(result["models"]), result["transfer"], result["clean"]
    pct = lambda v, mark: f"{mark}{100.0 * v:.{int(digits)}f}{mark.replace('<', '</')}"  # <u>..</u>, **..**
    rows = [
        [s, *(pct(transfer[a][s][t], "<u>" * (s == t)) for a in transfer for t in names)]
        + [pct(clean[s], "**" * (clean[s] == max(clean.values())))]
        for s in names
    ]
    header = ["S \\ T", *(f"{a}: {t}" for a in transfer for t in names), "clean"]
    intro = (
        f"Test accuracy (%) of target models T on adversarial images made on source models S ({result['n']} images). "
        "Underlined: white-box (S = T); the rest: black-box."
    )
    return "\n".join([intro, "", *md_table(header, rows, align=[":---"] + ["---:"] * (len(header) - 1))]) + "\n"


def plot_transfer_heatmap(result: Mapping[str, Any], path, *, dpi: int = 120):
    """Write (atomically) a PNG heatmap of :func:`evaluate_transfer`'s result: a panel per attack (rows: source,
    columns: target, the white-box diagonal outlined) and a clean-accuracy column. Returns ``path``."""
    import numpy as np
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    names, a = list(result["models"]), len(result["transfer"])
    k, cell = len(names), 0.55 + 0.05 * max(map(len, names))
    fig = Figure(figsize=(max(3.0, 0.9 + cell * k) * a + 1.6, 1.6 + cell * k), layout="constrained")
    axes = fig.subplots(1, a + 1, width_ratios=[k] * a + [1], squeeze=False)[0]
    panels = [(t, [[rows[s][u] for u in names] for s in names]) for t, rows in result["transfer"].items()]
    for i, (ax, (title, values)) in enumerate(zip(axes, [*panels, ("clean", [[result["clean"][s]] for s in names])])):
        values = 100.0 * np.array(values)
        image = ax.imshow(values, vmin=0, vmax=100, cmap="viridis")
        for (r, c), v in np.ndenumerate(values):
            ax.text(c, r, f"{v:.1f}", ha="center", va="center", fontsize=8, color="white" if v < 50 else "black")
        ax.set_title(title, fontsize=9)
        ax.set_yticks(range(k), names, fontsize=8)
        if i == a:  # the clean column
            ax.set_xticks([])
            continue
        for d in range(k):
            ax.add_patch(Rectangle((d - 0.45, d - 0.45), 0.9, 0.9, fill=False, edgecolor="red", linewidth=2))
        ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=8)
        ax.set(xlabel="target (T)", ylabel="source (S)")
    fig.colorbar(image, ax=list(axes), label="accuracy (%)", shrink=0.8)
    fig.suptitle(f"Accuracy on adversarial images ({result['n']} images); red: white-box", fontsize=10)
    save_figure(fig, path, dpi=dpi, format="png")
    return path
