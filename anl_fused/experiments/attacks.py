"""FGSM / IFGSM adversarial examples and the white-box / black-box transfer matrix (paper section 4.3).

Images live in pixel space ``[0, 1]``; the paper's 0-255 settings map to

* FGSM (Goodfellow et al.): ``x_adv = clip_[0,1](x + eps * sign(grad_x J(x, y)))``,
  paper ``delta = 16`` -> :data:`PAPER_FGSM` ``= dict(eps=16/255)``;
* IFGSM / BIM (Kurakin et al.), no random start:
  ``x_0 = x``, ``x_{k+1} = clip_[0,1](clip_{x,eps}(x_k + alpha * sign(grad J(x_k, y))))``,
  paper ``delta = 16, alpha = 1, k = 16`` -> :data:`PAPER_IFGSM`
  ``= dict(eps=16/255, alpha=1/255, steps=16)`` (the paper asks ``k >= delta / alpha``).

``J`` is the cross-entropy averaged over the whole input (``loss_fn`` replaces it; only the sign
of its gradient is used). These are exactly the images of ``torchattacks.FGSM(model, eps)`` and
``torchattacks.BIM(model, eps, alpha, steps)`` on the same model and batch.

Every attack runs the model in eval mode and restores each module's train/eval flag afterwards;
gradients are taken with ``torch.autograd.grad`` with respect to the input only, so parameter
``.grad`` is never touched. Models that expect normalized input get ``mean``/``std``: the attacked
function is ``model((x - mean) / std)`` per channel, the perturbation stays in pixel space.
``batch_size`` splits large inputs into chunks that are moved to the model's device; the result is
returned on ``x``'s device and dtype. Nothing is random: the same call gives the same images.

:func:`evaluate_transfer` builds the paper's Table 3 (source x target accuracy on adversarial
images, diagonal = white-box, plus clean accuracy); :func:`transfer_markdown` and
:func:`plot_transfer_heatmap` render it.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .files import save_figure

__all__ = [
    "PAPER_FGSM",
    "PAPER_IFGSM",
    "accuracy",
    "evaluate_transfer",
    "fgsm",
    "ifgsm",
    "paper_attacks",
    "plot_transfer_heatmap",
    "transfer_markdown",
]

#: Paper FGSM setting (delta = 16 on the 0-255 scale).
PAPER_FGSM: dict[str, float] = dict(eps=16 / 255)
#: Paper IFGSM setting (delta = 16, alpha = 1, k = 16 on the 0-255 scale).
PAPER_IFGSM: dict[str, float | int] = dict(eps=16 / 255, alpha=1 / 255, steps=16)

LossFn = Callable[[Tensor, Tensor], Tensor]

_METHODS = ("fgsm", "ifgsm")


# --------------------------------------------------------------------------------------------
# argument checking and shared machinery
# --------------------------------------------------------------------------------------------


def _check_number(name: str, value: Any, *, allow_zero: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if isinstance(value, Tensor) and value.numel() == 1:
            value = value.item()
        else:
            raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return value


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def _check_batch_size(batch_size: int | None) -> int | None:
    return None if batch_size is None else _check_int("batch_size", batch_size, 1)


def _check_inputs(x: Tensor, y: Tensor, *, integer_labels: bool) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor of images in [0, 1], got dtype {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"x must have a batch dimension and at least one more, got shape {tuple(x.shape)}")
    if y.dim() < 1 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"x and y disagree on the batch size: x has shape {tuple(x.shape)}, y has shape {tuple(y.shape)}"
        )
    if integer_labels:
        if y.dim() != 1:
            raise ValueError(f"y must be a 1-D tensor of class indices, got shape {tuple(y.shape)}")
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise TypeError(f"y must hold integer class indices, got dtype {y.dtype}")
    if x.numel():
        lo, hi = torch.aminmax(x.detach())
        lo, hi = lo.item(), hi.item()
        if not (lo >= 0.0 and hi <= 1.0):  # also false for NaN
            raise ValueError(f"x must hold images in [0, 1], got values in [{lo!r}, {hi!r}]")


def _as_channel_stat(name: str, value: Any, x: Tensor, device: torch.device) -> Tensor | None:
    if value is None:
        return None
    t = torch.as_tensor(value, dtype=x.dtype, device=device).flatten()
    channels = x.shape[1]
    if t.numel() not in (1, channels):
        raise ValueError(
            f"{name} must have one value or one per channel ({channels} for x of shape {tuple(x.shape)}), "
            f"got {t.numel()} values: {value!r}"
        )
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite, got {value!r}")
    if name == "std" and not (t > 0).all():
        raise ValueError(f"std must be > 0, got {value!r}")
    return t.expand(channels).reshape((1, channels) + (1,) * (x.dim() - 2))


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return fallback


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every module in eval mode; restore each module's own flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, was_training in flags:
            m.training = was_training


def _chunks(n: int, batch_size: int | None) -> Iterator[tuple[int, int]]:
    step = n if batch_size is None else batch_size
    for start in range(0, n, max(step, 1)):
        yield start, min(start + step, n)


class _Setup:
    """What every attack needs: the device, the normalization, the loss and the chunks."""

    def __init__(self, model, x, y, mean, std, loss_fn, batch_size):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable or None, got {loss_fn!r}")
        if (mean is None) != (std is None):
            raise ValueError(f"give both mean and std or neither, got mean={mean!r}, std={std!r}")
        _check_inputs(x, y, integer_labels=loss_fn is None)
        self.batch_size = _check_batch_size(batch_size)
        self.model = model
        self.device = _model_device(model, x.device)
        self.mean = _as_channel_stat("mean", mean, x, self.device)
        self.std = _as_channel_stat("std", std, x, self.device)
        self.loss_fn = loss_fn
        self.n = x.shape[0]

    def logits(self, xb: Tensor) -> Tensor:
        if self.mean is not None:
            xb = (xb - self.mean) / self.std
        return self.model(xb)

    def input_grad(self, xb: Tensor, yb: Tensor) -> Tensor:
        """``d J / d xb`` with ``J`` the cross-entropy averaged over all ``n`` inputs (or ``loss_fn``)."""
        xb = xb.detach().requires_grad_(True)
        out = self.logits(xb)
        if self.loss_fn is None:
            # sum / n gives every sample the same gradient as a mean over the whole input, so the
            # chunking (batch_size) does not change the images.
            loss = F.cross_entropy(out, yb.long(), reduction="sum") / self.n
        else:
            loss = self.loss_fn(out, yb)
            if not isinstance(loss, Tensor):
                raise TypeError(f"loss_fn must return a tensor, got {type(loss).__name__}")
            if loss.dim() > 0:
                loss = loss.sum()
        (grad,) = torch.autograd.grad(loss, xb)
        return grad

    def run(self, x: Tensor, y: Tensor, step: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode(False))
            stack.enter_context(torch.enable_grad())
            stack.enter_context(_eval_mode(self.model))
            out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
            for a, b in _chunks(self.n, self.batch_size):
                xb = x[a:b].detach().to(self.device).clone()
                yb = y[a:b].detach().to(self.device)
                out[a:b] = step(xb, yb).to(out.device)
        return out


# --------------------------------------------------------------------------------------------
# the attacks
# --------------------------------------------------------------------------------------------


def fgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    mean: Sequence[float] | Tensor | None = None,
    std: Sequence[float] | Tensor | None = None,
    loss_fn: LossFn | None = None,
    batch_size: int | None = None,
) -> Tensor:
    """Fast Gradient Sign Method: ``clip_[0,1](x + eps * sign(grad_x J(x, y)))``.

    Args:
        model: the classifier; run in eval mode, its train/eval flags are restored afterwards.
        x: images in ``[0, 1]``, shape ``[N, C, ...]``.
        y: labels, shape ``[N]`` (class indices unless ``loss_fn`` says otherwise).
        eps: step size in pixel units (``16/255`` in the paper, :data:`PAPER_FGSM`), ``>= 0``.
        mean, std: per-channel normalization applied inside the model call, ``(x - mean) / std``.
        loss_fn: ``loss_fn(logits, y) -> loss`` (a scalar, or per-sample losses that get summed);
            default: cross-entropy. Only the sign of its gradient matters.
        batch_size: process at most this many images at a time (default: all at once).

    Returns:
        Adversarial images, same shape, dtype and device as ``x``, detached.
    """
    eps = _check_number("eps", eps)
    s = _Setup(model, x, y, mean, std, loss_fn, batch_size)

    def step(xb: Tensor, yb: Tensor) -> Tensor:
        grad = s.input_grad(xb, yb)
        return torch.clamp(xb + eps * grad.sign(), min=0, max=1).detach()

    return s.run(x, y, step)


def ifgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    alpha: float,
    steps: int,
    *,
    mean: Sequence[float] | Tensor | None = None,
    std: Sequence[float] | Tensor | None = None,
    loss_fn: LossFn | None = None,
    batch_size: int | None = None,
) -> Tensor:
    """Iterative FGSM / BIM (Kurakin et al.), no random start.

    ``x_0 = x``; ``x_{k+1} = clip_[0,1](clip_{[x - eps, x + eps]}(x_k + alpha * sign(grad J(x_k, y))))``
    for ``steps`` steps. The paper's setting is :data:`PAPER_IFGSM` (``eps=16/255, alpha=1/255,
    steps=16``); it asks ``steps >= eps / alpha`` so that the ball can be reached.

    Args:
        eps: radius of the L-infinity ball around ``x``, ``>= 0``.
        alpha: step size, ``>= 0``.
        steps: number of iterations, ``>= 1``.

    The other arguments are those of :func:`fgsm`.
    """
    eps = _check_number("eps", eps)
    alpha = _check_number("alpha", alpha)
    steps = _check_int("steps", steps, 1)
    s = _Setup(model, x, y, mean, std, loss_fn, batch_size)

    def step(xb: Tensor, yb: Tensor) -> Tensor:
        lo, hi = xb - eps, xb + eps
        adv = xb
        for _ in range(steps):
            grad = s.input_grad(adv, yb)
            adv = adv.detach() + alpha * grad.sign()
            adv = torch.minimum(torch.maximum(adv, lo), hi).clamp(min=0, max=1)
        return adv.detach()

    return s.run(x, y, step)


# --------------------------------------------------------------------------------------------
# transfer matrix (paper Table 3)
# --------------------------------------------------------------------------------------------


def paper_attacks() -> dict[str, dict[str, Any]]:
    """The paper's two attacks as :func:`evaluate_transfer` specs (names as in Table 3)."""
    return {
        "FGSM δ=16": {"method": "fgsm", **PAPER_FGSM},
        "IFGSM δ=16, k=16, α=1": {"method": "ifgsm", **PAPER_IFGSM},
    }


@torch.no_grad()
def _correct(model, x, y, mean, std, batch_size) -> int:
    device = _model_device(model, x.device)
    m = _as_channel_stat("mean", mean, x, device)
    s = _as_channel_stat("std", std, x, device)
    correct = 0
    with _eval_mode(model):
        for a, b in _chunks(x.shape[0], batch_size):
            xb = x[a:b].to(device)
            if m is not None:
                xb = (xb - m) / s
            pred = model(xb).argmax(dim=1)
            correct += int((pred == y[a:b].to(device)).sum().item())
    return correct


def accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    mean: Sequence[float] | Tensor | None = None,
    std: Sequence[float] | Tensor | None = None,
    batch_size: int | None = None,
) -> float:
    """Top-1 accuracy (fraction in ``[0, 1]``) of ``model`` in eval mode on images ``x`` in ``[0, 1]``."""
    if (mean is None) != (std is None):
        raise ValueError(f"give both mean and std or neither, got mean={mean!r}, std={std!r}")
    _check_inputs(x, y, integer_labels=True)
    batch_size = _check_batch_size(batch_size)
    if x.shape[0] == 0:
        raise ValueError("x holds no images: accuracy is undefined")
    return _correct(model, x, y, mean, std, batch_size) / x.shape[0]


def _attack_spec(name: str, spec: Any) -> tuple[Callable[..., Tensor], dict[str, Any]]:
    """``(run(model, x, y) -> x_adv, JSON description)`` for one entry of ``attacks``."""
    if callable(spec):
        desc = getattr(spec, "__name__", None) or type(spec).__name__
        return spec, {"method": "callable", "repr": repr(spec) if desc == "partial" else desc}
    if not isinstance(spec, Mapping):
        raise TypeError(
            f"attack {name!r} must be a spec dict like {{'method': 'fgsm', 'eps': 16/255}} "
            f"or a callable attack(model, x, y), got {spec!r}"
        )
    params = dict(spec)
    method = params.pop("method", None)
    if method not in _METHODS:
        raise ValueError(f"attack {name!r}: 'method' must be one of {_METHODS}, got {method!r}")
    fn = fgsm if method == "fgsm" else ifgsm
    needed = ("eps",) if method == "fgsm" else ("eps", "alpha", "steps")
    allowed = set(needed) | {"loss_fn", "batch_size"}
    missing = [k for k in needed if k not in params]
    unknown = sorted(set(params) - allowed)
    if missing or unknown:
        raise ValueError(f"attack {name!r} ({method}): missing {missing}, unknown {unknown} in {spec!r}")
    # fail early, before any model runs
    _check_number("eps", params["eps"])
    if method == "ifgsm":
        _check_number("alpha", params["alpha"])
        _check_int("steps", params["steps"], 1)
    desc = {"method": method}
    for k in needed:
        desc[k] = float(params[k]) if k != "steps" else int(params[k])

    def run(model, x, y, **common):
        kwargs = {**common, **params}
        return fn(model, x, y, **kwargs)

    return run, desc


def evaluate_transfer(
    models: Mapping[str, nn.Module],
    x: Tensor,
    y: Tensor,
    attacks: Mapping[str, Any] | None = None,
    *,
    mean: Sequence[float] | Tensor | None = None,
    std: Sequence[float] | Tensor | None = None,
    batch_size: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """White-box / black-box transfer matrix (paper Table 3).

    For every attack and every source model, adversarial images are made on the source and every
    target model's accuracy is measured on them; the diagonal (source == target) is the white-box
    attack. Clean accuracy of every model is measured too.

    Args:
        models: name -> model, in the order of the table's rows and columns.
        x, y: images in ``[0, 1]`` and integer labels.
        attacks: name -> spec. A spec is a dict ``{"method": "fgsm", "eps": ...}`` or
            ``{"method": "ifgsm", "eps": ..., "alpha": ..., "steps": ...}`` (optionally with
            ``loss_fn`` and ``batch_size``), or a callable
            ``attack(model, x, y) -> x_adv``. Default: :func:`paper_attacks`.
        mean, std: normalization applied inside every model call (attacks and accuracy).
        batch_size: chunk size for attacks and accuracy.
        progress: called with a short description after each of the ``1 + len(attacks) * len(models)``
            units of work (clean accuracy, then every attack on every source model), e.g. to advance a bar.

    Returns:
        A JSON-serializable dict::

            {"models": [names], "attacks": {attack: {"method": ..., "eps": ..., ...}},
             "n": number of images,
             "clean": {model: accuracy},
             "transfer": {attack: {source: {target: accuracy}}}}

        Accuracies are fractions in ``[0, 1]``.
    """
    prepared, batch_size, n = _check_transfer_args(models, x, y, attacks, mean, std, batch_size)
    norm = dict(mean=mean, std=std, batch_size=batch_size)
    done = progress or (lambda what: None)
    clean = {name: _correct(m, x, y, mean, std, batch_size) / n for name, m in models.items()}
    done("clean accuracy")
    transfer: dict[str, dict[str, dict[str, float]]] = {}
    for aname, (run, desc) in prepared.items():
        rows: dict[str, dict[str, float]] = {}
        for sname, source in models.items():
            x_adv = _adversarial(aname, run, desc, source, x, y, norm)
            rows[sname] = {
                tname: _correct(target, x_adv, y, mean, std, batch_size) / n for tname, target in models.items()
            }
            done(f"{aname} from {sname}")
        transfer[aname] = rows
    return {
        "models": list(models),
        "attacks": {aname: desc for aname, (_, desc) in prepared.items()},
        "n": n,
        "clean": clean,
        "transfer": transfer,
    }


def _check_transfer_args(models, x, y, attacks, mean, std, batch_size) -> tuple[dict[str, tuple], int, int]:
    """:func:`evaluate_transfer`'s arguments checked: ``(prepared attacks {name: (run, description)},
    batch size, number of images)``."""
    if not isinstance(models, Mapping) or not models:
        raise ValueError(f"models must be a non-empty dict name -> nn.Module, got {models!r}")
    for name, model in models.items():
        if not isinstance(name, str):
            raise TypeError(f"model names must be str, got {name!r}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"models[{name!r}] must be a torch.nn.Module, got {type(model).__name__}")
    attacks = paper_attacks() if attacks is None else attacks
    if not isinstance(attacks, Mapping) or not attacks:
        raise ValueError(f"attacks must be a non-empty dict name -> spec, got {attacks!r}")
    if (mean is None) != (std is None):
        raise ValueError(f"give both mean and std or neither, got mean={mean!r}, std={std!r}")
    _check_inputs(x, y, integer_labels=True)
    batch_size = _check_batch_size(batch_size)
    n = int(x.shape[0])
    if n == 0:
        raise ValueError("x holds no images: accuracy is undefined")
    prepared = {}
    for aname, spec in attacks.items():
        if not isinstance(aname, str):
            raise TypeError(f"attack names must be str, got {aname!r}")
        prepared[aname] = _attack_spec(aname, spec)
    return prepared, batch_size, n


def _adversarial(aname: str, run: Callable, desc: dict, source: nn.Module, x: Tensor, y: Tensor, norm: dict) -> Tensor:
    """The adversarial images of attack ``aname`` made on ``source`` (a callable attack's output checked)."""
    if desc["method"] != "callable":
        return run(source, x, y, **norm)
    x_adv = run(source, x, y)
    _check_inputs(x_adv, y, integer_labels=True)
    if x_adv.shape != x.shape:
        raise ValueError(f"attack {aname!r} returned shape {tuple(x_adv.shape)} for x of shape {tuple(x.shape)}")
    return x_adv


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def transfer_markdown(result: Mapping[str, Any], *, digits: int = 1) -> str:
    """Render :func:`evaluate_transfer`'s result as the paper's Table 3 (accuracy in %).

    Rows are source models (S), columns are target models (T) grouped by attack, then clean
    accuracy. White-box cells (source == target) are underlined, the best clean accuracy is bold.
    """
    names = list(result["models"])
    attacks = list(result["transfer"])
    fmt = f"{{:.{int(digits)}f}}"
    header = ["S \\ T"]
    for a in attacks:
        header += [f"{_md_escape(a)}: {_md_escape(t)}" for t in names]
    header.append("clean")
    lines = [
        f"Test accuracy (%) of target models T on adversarial images made on source models S "
        f"({result['n']} images). Underlined: white-box (S = T); the rest: black-box.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    best_clean = max(result["clean"][m] for m in names)
    for s in names:
        row = [_md_escape(s)]
        for a in attacks:
            for t in names:
                cell = fmt.format(100.0 * result["transfer"][a][s][t])
                row.append(f"<u>{cell}</u>" if s == t else cell)
        c = result["clean"][s]
        cell = fmt.format(100.0 * c)
        row.append(f"**{cell}**" if c == best_clean else cell)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot_transfer_heatmap(result: Mapping[str, Any], path, *, dpi: int = 120):
    """Write a PNG heatmap of :func:`evaluate_transfer`'s result (atomically): one panel per attack
    (rows: source, columns: target, white-box diagonal outlined) and a clean-accuracy column.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend change). Returns ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    names = list(result["models"])
    attacks = list(result["transfer"])
    k = len(names)
    cell = 0.55 + 0.05 * max((len(n) for n in names), default=0)
    width = max(3.0, 0.9 + cell * k) * len(attacks) + 1.6
    height = 1.6 + cell * k
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(attacks) + 1, width_ratios=[k] * len(attacks) + [1], squeeze=False)[0]
    image = None

    def annotate(ax, values):
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=8, color="white" if v < 50 else "black")

    for ax, a in zip(axes[:-1], attacks):
        values = [[100.0 * result["transfer"][a][s][t] for t in names] for s in names]
        image = ax.imshow(values, vmin=0, vmax=100, cmap="viridis")
        annotate(ax, values)
        for i in range(k):
            ax.add_patch(Rectangle((i - 0.45, i - 0.45), 0.9, 0.9, fill=False, edgecolor="red", linewidth=2))
        ax.set_title(a, fontsize=9)
        ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(k), names, fontsize=8)
        ax.set_xlabel("target (T)")
        ax.set_ylabel("source (S)")
    ax = axes[-1]
    values = [[100.0 * result["clean"][s]] for s in names]
    image = ax.imshow(values, vmin=0, vmax=100, cmap="viridis")
    annotate(ax, values)
    ax.set_title("clean", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks(range(k), names, fontsize=8)
    fig.colorbar(image, ax=list(axes), label="accuracy (%)", shrink=0.8)
    fig.suptitle(f"Accuracy on adversarial images ({result['n']} images); red: white-box", fontsize=10)
    save_figure(fig, path, dpi=dpi, format="png")
    return path
