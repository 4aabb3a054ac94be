"""FGSM / IFGSM adversarial examples and the white-box / black-box transfer matrix (paper section 4.3).

Images live in pixel space ``[0, 1]``; the paper's 0-255 settings map to :data:`PAPER_FGSM` (``delta = 16``) and
:data:`PAPER_IFGSM` (``delta = 16, alpha = 1, k = 16``). FGSM is ``clip_[0,1](x + eps sign(grad_x J))``; IFGSM
(BIM, no random start) repeats ``alpha``-steps clipped to the ``eps`` ball and ``[0, 1]``: the images of
``torchattacks.FGSM`` / ``torchattacks.BIM`` (the tests compare them bit for bit). ``J`` is the cross-entropy
averaged over the whole input, so ``batch_size`` chunks give the same images.

Every attack runs the model in eval mode and restores each module's flag afterwards, takes gradients with respect
to the input only (parameter ``.grad`` untouched) and attacks ``model((x - mean) / std)`` when given ``mean`` /
``std``. :func:`evaluate_transfer` builds Table 3; :func:`transfer_markdown` and :func:`plot_transfer_heatmap`
render it.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .files import md_table, save_figure

PAPER_FGSM: dict[str, float] = dict(eps=16 / 255)
PAPER_IFGSM: dict[str, float | int] = dict(eps=16 / 255, alpha=1 / 255, steps=16)
_NEEDS = {"fgsm": ("eps",), "ifgsm": ("eps", "alpha", "steps")}


def _number(name: str, value: Any, kind: type = float, low: float = 0) -> float | int:
    """``value`` as a finite ``kind`` ``>= low``: ``TypeError`` for another type, ``ValueError`` out of range."""
    if isinstance(value, Tensor) and value.numel() == 1 and kind is float:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral if kind is int else numbers.Real):
        raise TypeError(f"{name} must be {'an int' if kind is int else 'a real number'}, got {value!r}")
    if not math.isfinite(value) or value < low:
        raise ValueError(f"{name} must be {f'>= {low}' if math.isfinite(value) else 'a finite number'}, got {value!r}")
    return kind(value)


def _check_inputs(x: Tensor, y: Tensor) -> None:
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor of images in [0, 1], got dtype {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"x must have a batch dimension and at least one more, got shape {tuple(x.shape)}")
    if y.dim() < 1 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"x and y disagree on the batch size: x has shape {tuple(x.shape)}, y has shape {tuple(y.shape)}"
        )
    if y.dim() != 1:
        raise ValueError(f"y must be a 1-D tensor of class indices, got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"y must hold integer class indices, got dtype {y.dtype}")
    if x.numel():
        lo, hi = (v.item() for v in torch.aminmax(x.detach()))
        if not (lo >= 0.0 and hi <= 1.0):  # also false for NaN
            raise ValueError(f"x must hold images in [0, 1], got values in [{lo!r}, {hi!r}]")


def _channel_stat(name: str, value: Any, x: Tensor, device: torch.device) -> Tensor:
    t = torch.as_tensor(value, dtype=x.dtype, device=device).flatten()
    c = x.shape[1]
    if t.numel() not in (1, c):
        raise ValueError(
            f"{name} must have one value or one per channel ({c} for x of shape {tuple(x.shape)}), "
            f"got {t.numel()} values: {value!r}"
        )
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite, got {value!r}")
    if name == "std" and not (t > 0).all():
        raise ValueError(f"std must be > 0, got {value!r}")
    return t.expand(c).reshape((1, c) + (1,) * (x.dim() - 2))


class _Setup:
    """A checked call: the model on its device (normalization inside), the chunks, the input gradient."""

    def __init__(self, model, x, y, mean=None, std=None, batch_size=None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if (mean is None) != (std is None):
            raise ValueError(f"give both mean and std or neither, got mean={mean!r}, std={std!r}")
        _check_inputs(x, y)
        self.step = x.shape[0] if batch_size is None else _number("batch_size", batch_size, int, 1)
        self.model, self.n = model, x.shape[0]
        self.device = next(iter([*model.parameters(), *model.buffers()]), x).device
        self.norm = (
            None
            if mean is None
            else tuple(_channel_stat(k, v, x, self.device) for k, v in (("mean", mean), ("std", std)))
        )

    def logits(self, xb: Tensor) -> Tensor:
        return self.model(xb if self.norm is None else (xb - self.norm[0]) / self.norm[1])

    def input_grad(self, xb: Tensor, yb: Tensor) -> Tensor:
        """``d J / d xb``; the cross-entropy summed / n gives each sample the gradient of the mean over all n."""
        xb = xb.detach().requires_grad_(True)
        loss = F.cross_entropy(self.logits(xb), yb.long(), reduction="sum") / self.n
        return torch.autograd.grad(loss, xb)[0]

    @contextlib.contextmanager
    def eval_mode(self) -> Iterator[None]:
        flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        try:
            yield
        finally:
            for m, was_training in flags:
                m.training = was_training

    def chunks(self, x: Tensor, y: Tensor) -> Iterator[tuple[slice, Tensor, Tensor]]:
        for a in range(0, self.n, max(self.step, 1)):
            s = slice(a, min(a + self.step, self.n))
            yield s, x[s].detach().to(self.device).clone(), y[s].detach().to(self.device)

    def run(self, x: Tensor, y: Tensor, attack: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        with torch.inference_mode(False), torch.enable_grad(), self.eval_mode():
            out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
            for s, xb, yb in self.chunks(x, y):
                out[s] = attack(xb, yb).to(out.device)
        return out

    @torch.no_grad()
    def correct(self, x: Tensor, y: Tensor) -> int:
        with self.eval_mode():
            return sum(int((self.logits(xb).argmax(dim=1) == yb).sum()) for _, xb, yb in self.chunks(x, y))


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, mean=None, std=None, batch_size=None):
    """FGSM: ``clip_[0,1](x + eps * sign(grad_x J(x, y)))``, same shape, dtype and device as ``x``, detached."""
    eps = _number("eps", eps)
    s = _Setup(model, x, y, mean, std, batch_size)
    return s.run(x, y, lambda xb, yb: (xb + eps * s.input_grad(xb, yb).sign()).clamp(0, 1).detach())


def ifgsm(model: nn.Module, x, y, eps: float, alpha: float, steps: int, *, mean=None, std=None, batch_size=None):
    """IFGSM / BIM: ``steps`` steps ``x_{k+1} = clip_[0,1](clip_{x,eps}(x_k + alpha sign(grad J(x_k, y))))``
    from ``x_0 = x`` (the paper asks ``steps >= eps / alpha``). Other arguments as :func:`fgsm`."""
    eps, alpha, steps = _number("eps", eps), _number("alpha", alpha), _number("steps", steps, int, 1)
    s = _Setup(model, x, y, mean, std, batch_size)

    def attack(xb: Tensor, yb: Tensor) -> Tensor:
        adv = xb
        for _ in range(steps):
            adv = adv.detach() + alpha * s.input_grad(adv, yb).sign()
            adv = torch.minimum(torch.maximum(adv, xb - eps), xb + eps).clamp(min=0, max=1)
        return adv.detach()

    return s.run(x, y, attack)


def accuracy(model: nn.Module, x: Tensor, y: Tensor, *, mean=None, std=None, batch_size=None) -> float:
    """Top-1 accuracy (a fraction) of ``model`` in eval mode on images ``x`` in ``[0, 1]``."""
    s = _Setup(model, x, y, mean, std, batch_size)
    if s.n == 0:
        raise ValueError("x holds no images: accuracy is undefined")
    return s.correct(x, y) / s.n


def paper_attacks() -> dict[str, dict[str, Any]]:
    """The paper's two attacks as :func:`evaluate_transfer` specs (names as in Table 3)."""
    return {"FGSM δ=16": {"method": "fgsm", **PAPER_FGSM}, "IFGSM δ=16, k=16, α=1": {"method": "ifgsm", **PAPER_IFGSM}}


def _attack_spec(name: Any, spec: Any) -> tuple[Callable[..., Tensor], dict[str, Any]]:
    """``(attack(model, x, y, **normalization) -> x_adv, JSON description)`` of one entry of ``attacks``, checked."""
    if not isinstance(name, str) or not isinstance(spec, Mapping):
        raise TypeError(
            f"attack {name!r} must be named by a str and be a spec dict like {{'method': 'fgsm', 'eps': 0.1}}"
        )
    params = dict(spec)
    method = params.pop("method", None)
    if method not in _NEEDS:
        raise ValueError(f"attack {name!r}: 'method' must be one of {tuple(_NEEDS)}, got {method!r}")
    missing = [k for k in _NEEDS[method] if k not in params]
    unknown = sorted(set(params) - {*_NEEDS[method], "batch_size"})
    if missing or unknown:
        raise ValueError(f"attack {name!r} ({method}): missing {missing}, unknown {unknown} in {spec!r}")
    desc = {
        "method": method,
        **{k: _number(k, params[k], int if k == "steps" else float, int(k == "steps")) for k in _NEEDS[method]},
    }
    fn = fgsm if method == "fgsm" else ifgsm
    return (lambda m, x, y, **norm: fn(m, x, y, **{**norm, **params})), desc


def evaluate_transfer(
    models: Mapping[str, nn.Module],
    x: Tensor,
    y: Tensor,
    attacks=None,
    *,
    mean=None,
    std=None,
    batch_size=None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Paper Table 3: for every attack and source model, the accuracy of every target model on the source's
    adversarial images (the diagonal is white-box), plus clean accuracy. ``attacks``: name -> spec
    (``{"method": "fgsm", "eps": ...}``, ``{"method": "ifgsm", "eps", "alpha", "steps"}``); default
    :func:`paper_attacks`. ``progress`` is called after each unit of work.
    Returns a JSON-serializable ``{"models", "attacks", "n", "clean", "transfer": {attack: {source: {target}}}}``
    of fractions."""
    if not isinstance(models, Mapping) or not models:
        raise ValueError(f"models must be a non-empty dict name -> nn.Module, got {models!r}")
    attacks = paper_attacks() if attacks is None else attacks
    if not isinstance(attacks, Mapping) or not attacks:
        raise ValueError(f"attacks must be a non-empty dict name -> spec, got {attacks!r}")
    setups = {}
    for name, model in models.items():
        if not isinstance(name, str):
            raise TypeError(f"model names must be str, got {name!r}")
        setups[name] = _Setup(model, x, y, mean, std, batch_size)
    if not len(y):
        raise ValueError("x holds no images: accuracy is undefined")
    prepared = {name: _attack_spec(name, spec) for name, spec in attacks.items()}
    done = progress or (lambda what: None)
    acc = lambda xs: {t: s.correct(xs, y) / len(y) for t, s in setups.items()}
    result = {"models": list(models), "attacks": {a: d for a, (_, d) in prepared.items()}, "n": len(y)}
    result["clean"] = acc(x)
    done("clean accuracy")
    result["transfer"] = {a: {} for a in prepared}
    for aname, (attack, _) in prepared.items():
        for sname, source in models.items():
            x_adv = attack(source, x, y, mean=mean, std=std, batch_size=batch_size)
            result["transfer"][aname][sname] = acc(x_adv)
            done(f"{aname} from {sname}")
    return result


def transfer_markdown(result: Mapping[str, Any], *, digits: int = 1) -> str:
    """:func:`evaluate_transfer`'s result as Table 3 (accuracy %): rows are sources, columns targets grouped by
    attack, then clean accuracy; white-box cells underlined, the best clean accuracy bold."""
    names, attacks = list(result["models"]), list(result["transfer"])
    pct = lambda v: f"{100.0 * v:.{int(digits)}f}"
    best = max(result["clean"][m] for m in names)
    rows = [
        [s]
        + [
            f"<u>{pct(result['transfer'][a][s][t])}</u>" if s == t else pct(result["transfer"][a][s][t])
            for a in attacks
            for t in names
        ]
        + [f"**{pct(result['clean'][s])}**" if result["clean"][s] == best else pct(result["clean"][s])]
        for s in names
    ]
    header = ["S \\ T", *(f"{a}: {t}" for a in attacks for t in names), "clean"]
    intro = (
        f"Test accuracy (%) of target models T on adversarial images made on source models S ({result['n']} images). "
        "Underlined: white-box (S = T); the rest: black-box."
    )
    return "\n".join([intro, "", *md_table(header, rows, align=[":---"] + ["---:"] * (len(header) - 1))]) + "\n"


def plot_transfer_heatmap(result: Mapping[str, Any], path, *, dpi: int = 120):
    """Write (atomically) a PNG heatmap of :func:`evaluate_transfer`'s result: a panel per attack (rows: source,
    columns: target, the white-box diagonal outlined) and a clean-accuracy column. Returns ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    names, attacks = list(result["models"]), list(result["transfer"])
    k = len(names)
    cell = 0.55 + 0.05 * max((len(n) for n in names), default=0)
    fig = Figure(figsize=(max(3.0, 0.9 + cell * k) * len(attacks) + 1.6, 1.6 + cell * k), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(attacks) + 1, width_ratios=[k] * len(attacks) + [1], squeeze=False)[0]
    panels = [(a, [[result["transfer"][a][s][t] for t in names] for s in names]) for a in attacks]
    for ax, (title, values) in zip(axes, [*panels, ("clean", [[result["clean"][s]] for s in names])]):
        values = [[100.0 * v for v in row] for row in values]
        image = ax.imshow(values, vmin=0, vmax=100, cmap="viridis")
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=8, color="white" if v < 50 else "black")
        ax.set_title(title, fontsize=9)
        ax.set_yticks(range(k), names, fontsize=8)
        if title == "clean":
            ax.set_xticks([])
            continue
        for i in range(k):
            ax.add_patch(Rectangle((i - 0.45, i - 0.45), 0.9, 0.9, fill=False, edgecolor="red", linewidth=2))
        ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=8)
        ax.set_xlabel("target (T)")
        ax.set_ylabel("source (S)")
    fig.colorbar(image, ax=list(axes), label="accuracy (%)", shrink=0.8)
    fig.suptitle(f"Accuracy on adversarial images ({result['n']} images); red: white-box", fontsize=10)
    save_figure(fig, path, dpi=dpi, format="png")
    return path
