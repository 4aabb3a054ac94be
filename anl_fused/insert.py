"""Put ANL layers into any CNN and take them out again, without changing its ``state_dict`` keys.

``insert_anl`` attaches an :class:`~anl_fused.ANL2d` as a child named ``anl`` of every
``BatchNorm2d`` (or ``Conv2d``) and applies it with a forward hook, so no module moves and no
``nn.Sequential`` index shifts. Input ANL is a child ``anl_input`` of the model, applied by a forward
pre-hook to the model's first argument (an ``nn.Sequential`` model gets it as its first child
instead, under a new key, so the other keys do not change). ANL layers hold no parameters or buffers.
"""

from __future__ import annotations

from torch import nn

from .layer import ANL2d, check_eps

__all__ = ["anl_layers", "insert_anl", "restore_hooks", "set_anl_enabled", "strip_anl"]

_PLACES = {"batchnorm": (nn.BatchNorm2d, nn.SyncBatchNorm), "conv": (nn.Conv2d,)}
_CHILD = "anl"
_INPUT_CHILD = "anl_input"


def _apply_child_anl(module: nn.Module, args, output):
    return getattr(module, _CHILD)(output)


def _apply_input_anl(module: nn.Module, args):
    return (getattr(module, _INPUT_CHILD)(args[0]),) + tuple(args[1:])


def anl_layers(model: nn.Module) -> list[ANL2d]:
    """Every ANL layer of ``model``: the input layer first, then the others in module order.

    This order is the RNG contract: one noise draw per layer per step, in this order.
    """
    inp = model._modules.get(_INPUT_CHILD)
    rest = [m for m in model.modules() if isinstance(m, ANL2d) and m is not inp]
    return ([inp] if isinstance(inp, ANL2d) else []) + rest


def insert_anl(model: nn.Module, eps: float, *, input_eps: float = 0.0, input_sign: bool = False,
               after: str = "batchnorm", noise: str = "adversarial", scale_by_std: bool = True,
               norm: str = "sample") -> nn.Module:
    """Add ANL after every ``BatchNorm2d`` or ``SyncBatchNorm`` (``after="conv"``: every ``Conv2d``) and, with
    ``input_eps != 0`` or ``input_sign``, on the model's input. Never after ``Linear``.

    Returns ``model`` (changed in place). Its parameters and buffers keep their names, so a
    ``state_dict`` loads with ``strict=True`` into the plain model and back.

    Args:
        eps: noise magnitude of the hidden layers (Table 2 of the paper lists one per model).
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
    eps = check_eps(eps)
    input_eps = check_eps(input_eps, "input_eps")
    if anl_layers(model):
        raise ValueError("model already has ANL layers; call strip_anl(model) first")
    ANL2d(eps, noise=noise, scale_by_std=scale_by_std, norm=norm)  # validates the options before any change
    targets = [m for m in model.modules() if isinstance(m, _PLACES[after])]
    if not targets:
        raise ValueError(f"model has no {_PLACES[after][0].__name__} to put ANL after (after={after!r}); "
                         f"try after={'conv' if after == 'batchnorm' else 'batchnorm'!r}")
    for target in targets:
        if hasattr(target, _CHILD):
            raise ValueError(f"{type(target).__name__} already has an attribute {_CHILD!r}")
        target.add_module(_CHILD, ANL2d(eps, noise=noise, scale_by_std=scale_by_std, norm=norm))
        target.register_forward_hook(_apply_child_anl)
    if input_eps != 0.0 or input_sign:
        layer = ANL2d(input_eps, sign=input_sign)
        if isinstance(model, nn.Sequential):  # a Sequential runs its children in order: put it first
            model._modules = {_INPUT_CHILD: layer, **model._modules}
        else:
            model.add_module(_INPUT_CHILD, layer)
            model.register_forward_pre_hook(_apply_input_anl)
    return model


def strip_anl(model: nn.Module) -> nn.Module:
    """Remove every ANL layer: the hooked ones of ``insert_anl`` and any ``ANL2d`` placed by hand
    (replaced by ``nn.Identity`` so that ``nn.Sequential`` indices stay). Returns ``model``."""
    for module in list(model.modules()):
        for name, child in list(module._modules.items()):
            if not isinstance(child, ANL2d):
                continue
            hooks, hook = ((module._forward_pre_hooks, _apply_input_anl) if name == _INPUT_CHILD
                           else (module._forward_hooks, _apply_child_anl))
            hooked = [k for k, fn in hooks.items() if fn is hook]
            for k in hooked:
                del hooks[k]
            if hooked or name == _INPUT_CHILD:
                del module._modules[name]
            else:
                module._modules[name] = nn.Identity()
    return model


def restore_hooks(model: nn.Module) -> nn.Module:
    """Re-register the forward hook that applies each ``insert_anl`` layer where a module still holds
    its ANL child but lost the hook (module converters such as ``SyncBatchNorm.convert_sync_batchnorm``
    copy children, not hooks). Returns ``model``."""
    for module in model.modules():
        if isinstance(getattr(module, _CHILD, None), ANL2d) and _apply_child_anl not in module._forward_hooks.values():
            module.register_forward_hook(_apply_child_anl)
    return model


def set_anl_enabled(model: nn.Module, enabled: bool) -> nn.Module:
    """Turn every ANL layer of ``model`` on or off (off: the identity, as in the fine-tuning phase)."""
    for layer in anl_layers(model):
        layer.enabled = bool(enabled)
    return model
