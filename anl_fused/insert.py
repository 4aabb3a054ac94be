"""Put ANL layers into any CNN and take them out again, without changing its ``state_dict`` keys.

``insert_anl`` attaches an :class:`~anl_fused.ANL2d` as a child named ``anl`` of every
``BatchNorm2d`` (or ``Conv2d``) and applies it with a forward hook, so no module moves and no
``nn.Sequential`` index shifts. Input ANL is a child ``anl_input`` of the model, applied by a forward
pre-hook to the model's first argument (an ``nn.Sequential`` model gets it as its first child
instead, under a new key, so the other keys do not change). ANL layers hold no parameters or buffers.

Norms fused with their activation (timm's ``BatchNormAct2d`` and ``SyncBatchNormAct``: a
``BatchNorm2d`` subclass whose ``forward`` normalizes and then runs its children ``drop`` and
``act``) get their ANL between the norm and the activation, where the paper puts it (BN, ANL,
ReLU; Figure 1, and ``CONV-ANL-RELU`` for LeNet): it is applied by a forward pre-hook on the
module's ``drop`` child. A hook after the whole module would add the noise after the activation,
where ``std(h)`` and ``dJ/dh`` are those of a different tensor (for ReLU: half zeros). Every other
model (torchvision, the zoo, timm's ``resnet18``) has ``BatchNorm2d`` and activation as separate
modules, and the hook after the norm is already in that place.
"""

from __future__ import annotations

import inspect

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from .eps_rule import auto_eps
from .layer import ANL2d, check_eps

__all__ = ["anl_layers", "insert_anl", "restore_hooks", "set_anl_enabled", "strip_anl"]

_PLACES = {"batchnorm": (nn.BatchNorm2d, nn.SyncBatchNorm), "conv": (nn.Conv2d,)}
_CHILD = "anl"
_INPUT_CHILD = "anl_input"


def _apply_child_anl(module: nn.Module, args, output):
    layer = getattr(module, _CHILD)
    return layer(output) if layer.active else None  # inactive: no work at all (None keeps the output)


def _apply_input_anl(module: nn.Module, args, kwargs=None):
    """Input ANL on the model's first argument, passed by position or by keyword (``model(x=x)``)."""
    layer = getattr(module, _INPUT_CHILD)
    if not layer.active:  # eval, disabled or eps == 0: no work at all, whatever the arguments
        return None
    if args:
        args = (layer(args[0]),) + tuple(args[1:])
        return args if kwargs is None else (args, kwargs)
    name = next(iter(inspect.signature(module.forward).parameters), None)
    if kwargs is None or name not in kwargs:
        raise TypeError(
            f"input ANL applies to the first argument of {type(module).__name__}.forward"
            f"{'' if name is None else f' ({name!r})'}, which this call does not pass"
        )
    return args, {**kwargs, name: layer(kwargs[name])}


class _BeforeAct:
    """Forward pre-hook on a fused norm-activation module's ``drop`` child: applies the module's ANL
    layer to the normalized ``h``, before ``drop`` and ``act`` (a class, not a closure, so that
    models with ANL still pickle and ``deepcopy``)."""

    def __init__(self, layer: ANL2d):
        self.layer = layer

    def __call__(self, module: nn.Module, args):
        if not self.layer.active:  # inactive: no work at all
            return None
        return (self.layer(args[0]),) + tuple(args[1:])


def fused_act_entry(module: nn.Module) -> nn.Module | None:
    """The ``drop`` child of a norm fused with its activation (timm's ``*NormAct*``: ``forward``
    normalizes, then calls ``self.drop`` and ``self.act``); ``None`` for any other module."""
    drop, act = getattr(module, "drop", None), getattr(module, "act", None)
    return drop if isinstance(drop, nn.Module) and isinstance(act, nn.Module) else None


def _before_act_hooks(module: nn.Module) -> list:
    return [k for k, fn in module._forward_pre_hooks.items() if isinstance(fn, _BeforeAct)]


def _hook(target: nn.Module) -> None:
    """Apply ``target``'s ANL child after ``target``, or between norm and activation if fused."""
    layer = getattr(target, _CHILD)
    entry = fused_act_entry(target)
    if entry is None:
        target.register_forward_hook(_apply_child_anl)
        return
    if _before_act_hooks(entry):
        raise ValueError(
            f"the 'drop' child of {type(target).__name__} already applies an ANL layer "
            "(is it shared by several norm layers?)"
        )
    entry.register_forward_pre_hook(_BeforeAct(layer))


def _is_hooked(target: nn.Module) -> bool:
    layer = getattr(target, _CHILD, None)
    entry = fused_act_entry(target)
    if entry is None:
        return _apply_child_anl in target._forward_hooks.values()
    return any(fn.layer is layer for fn in entry._forward_pre_hooks.values() if isinstance(fn, _BeforeAct))


_NORMS = tuple(
    t
    for t in (_NormBase, nn.LayerNorm, nn.GroupNorm, getattr(nn, "RMSNorm", None), nn.LocalResponseNorm)
    if t is not None
)


def _nothing_to_hook(model: nn.Module, after: str) -> str:
    """The one error message for a model without a module of ``after``'s kind: what to pass instead."""
    other = "conv" if after == "batchnorm" else "batchnorm"
    kinds = " or ".join(t.__name__ for t in _PLACES[after])
    msg = f"{type(model).__name__} has no {kinds} to put ANL after (after={after!r})"
    norms = sorted({type(m).__name__ for m in model.modules() if isinstance(m, _NORMS)})
    if norms:
        msg += f"; its norms are {', '.join(norms)}, and the paper defines ANL after BatchNorm or conv only"
    n_other = sum(isinstance(m, _PLACES[other]) for m in model.modules())
    if n_other:
        return msg + f". Pass after={other!r} to put ANL after each of its {n_other} {_PLACES[other][0].__name__}"
    return msg + (
        f" and no {' or '.join(t.__name__ for t in _PLACES[other])} either. ANL needs 4-D (N, C, H, W) "
        "activations: put anl_fused.ANL2d(eps) modules into the model by hand where the noise should go"
    )


def anl_layers(model: nn.Module, modules: list[nn.Module] | None = None) -> list[ANL2d]:
    """Every ANL layer of ``model``: the input layer first, then the others in module order.

    This order is the RNG contract: one noise draw per layer per step, in this order. ``modules``:
    ``list(model.modules())`` when the caller has it already (one walk over the model instead of two).
    """
    inp = model._modules.get(_INPUT_CHILD)
    rest = [m for m in (model.modules() if modules is None else modules) if isinstance(m, ANL2d) and m is not inp]
    return ([inp] if isinstance(inp, ANL2d) else []) + rest


def insert_anl(
    model: nn.Module,
    eps: float | str,
    *,
    input_eps: float = 0.0,
    input_sign: bool = False,
    after: str = "batchnorm",
    noise: str = "adversarial",
    scale_by_std: bool = True,
    norm: str = "sample",
) -> nn.Module:
    """Add ANL after every ``BatchNorm2d`` or ``SyncBatchNorm`` (``after="conv"``: every ``Conv2d``) and, with
    ``input_eps != 0`` or ``input_sign``, on the model's input. Never after ``Linear``. A norm fused with
    its activation (timm's ``BatchNormAct2d``) gets its ANL between norm and activation.

    Returns ``model`` (changed in place). Its parameters and buffers keep their names, so a
    ``state_dict`` loads with ``strict=True`` into the plain model and back.

    Args:
        eps: noise magnitude of the hidden layers (Table 2 of the paper lists one per model), or
            ``"auto"``: :func:`anl_fused.auto_eps` of the model's trainable parameter count, a rule
            fitted to Table 2 (logged to the ``anl_fused`` logger; read it back as
            ``anl_layers(model)[-1].eps``).
        input_eps: noise magnitude on the input image (Table 3); 0 adds no input layer.
        input_sign: input noise ``input_eps * sign(g)`` (Eq. 8, adversarial training).
        after: ``"batchnorm"`` (the paper's placement) or ``"conv"`` (for models without BN).
        noise, scale_by_std, norm: passed to every hidden :class:`ANL2d` (``norm="layer"``: one
            ``max|g|`` per layer, Algorithm 1's reading; ``"sample"``: per sample, the authors' code).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if after not in _PLACES:
        raise ValueError(f"after must be one of {tuple(_PLACES)}, got {after!r}")
    input_eps = check_eps(input_eps, "input_eps")
    if anl_layers(model):
        raise ValueError("model already has ANL layers; call strip_anl(model) first")
    if isinstance(eps, str) and eps != "auto":
        raise ValueError(f"eps must be a number or 'auto', got {eps!r}")
    # validates the options before any change
    ANL2d(0.0 if eps == "auto" else eps, noise=noise, scale_by_std=scale_by_std, norm=norm)
    targets = [m for m in model.modules() if isinstance(m, _PLACES[after])]
    if not targets:
        raise ValueError(_nothing_to_hook(model, after))
    if eps == "auto":
        eps = auto_eps(model)
    for target in targets:
        if hasattr(target, _CHILD):
            raise ValueError(f"{type(target).__name__} already has an attribute {_CHILD!r}")
        target.add_module(_CHILD, ANL2d(eps, noise=noise, scale_by_std=scale_by_std, norm=norm))
        _hook(target)
    if input_eps != 0.0 or input_sign:
        layer = ANL2d(input_eps, sign=input_sign)
        if isinstance(model, nn.Sequential):  # a Sequential runs its children in order: put it first
            model._modules = {_INPUT_CHILD: layer, **model._modules}
        else:
            model.add_module(_INPUT_CHILD, layer)
            model.register_forward_pre_hook(_apply_input_anl, with_kwargs=True)
    return model


def strip_anl(model: nn.Module) -> nn.Module:
    """Remove every ANL layer: the hooked ones of ``insert_anl`` and any ``ANL2d`` placed by hand
    (replaced by ``nn.Identity`` so that ``nn.Sequential`` indices stay). Returns ``model``."""
    layers = set(anl_layers(model))
    before_act = set()
    for module in model.modules():
        for k in _before_act_hooks(module):
            if module._forward_pre_hooks[k].layer in layers:
                before_act.add(module._forward_pre_hooks.pop(k).layer)
    for module in list(model.modules()):
        for name, child in list(module._modules.items()):
            if not isinstance(child, ANL2d):
                continue
            hooks, hook = (
                (module._forward_pre_hooks, _apply_input_anl)
                if name == _INPUT_CHILD
                else (module._forward_hooks, _apply_child_anl)
            )
            hooked = [k for k, fn in hooks.items() if fn is hook]
            for k in hooked:
                del hooks[k]
                module._forward_pre_hooks_with_kwargs.pop(k, None)
            applied_by_insert = bool(hooked) or (name == _CHILD and child in before_act)
            if applied_by_insert or name == _INPUT_CHILD:
                del module._modules[name]
            else:
                module._modules[name] = nn.Identity()
    return model


def restore_hooks(model: nn.Module) -> nn.Module:
    """Re-register the forward hook that applies each ``insert_anl`` layer where a module still holds
    its ANL child but lost the hook (module converters such as ``SyncBatchNorm.convert_sync_batchnorm``
    or timm's ``convert_sync_batchnorm`` copy children, not hooks). Returns ``model``."""
    for module in model.modules():
        if isinstance(getattr(module, _CHILD, None), ANL2d) and not _is_hooked(module):
            entry = fused_act_entry(module)
            if entry is not None:  # a stale hook of another (replaced) ANL layer
                for k in _before_act_hooks(entry):
                    del entry._forward_pre_hooks[k]
            _hook(module)
    return model


def set_anl_enabled(model: nn.Module, enabled: bool) -> nn.Module:
    """Turn every ANL layer of ``model`` on or off (off: the identity, as in the fine-tuning phase)."""
    for layer in anl_layers(model):
        layer.enabled = bool(enabled)
    return model
