"""Model zoo: the CIFAR / Fashion-MNIST architectures of the paper (Table 1, Table 2).

``build(name, num_classes=10, in_channels=3, dropout=False)`` returns a plain ``nn.Module`` (no ANL inside; put it in
with ``anl_fused.insert_anl(model, MODELS[name].eps, after=MODELS[name].anl_after)``). ``MODELS`` maps each
name to a :class:`ModelSpec`. Every model accepts inputs >= 8x8 and ``in_channels=1`` (Fashion-MNIST, digits).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from torch import nn

from . import lenet as _lenet
from . import mobilenet as _mobilenet
from . import pyramidnet as _pyramidnet
from . import resnet as _resnet
from . import vgg as _vgg
from . import wrn as _wrn


@dataclass(frozen=True)
class ModelSpec:
    """One entry of the zoo: ``builder(num_classes, in_channels, dropout)``, the paper's #Params (Table 2, CIFAR-10
    head; None where it gives none) and eps (Table 2; LeNet-5: Table 1), where ANL goes (``anl_after``: "batchnorm",
    or "conv" without BN), what ``dropout=True`` does, ``large`` (too big for the CPU tests) and the input channels of
    the paper's dataset (what ``anl-fused models`` counts with)."""

    name: str
    builder: Callable[..., nn.Module]
    paper_params: float | None
    eps: float
    anl_after: str = "batchnorm"
    dropout: str = "p=0.5 between FC layers"
    large: bool = False
    description: str = ""
    in_channels: int = 3


MODELS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in MODELS:
        raise ValueError(f"model {spec.name!r} registered twice")
    MODELS[spec.name] = spec
    return spec


_LENET = "LeNet-5 of footnote 1 (Fig. 3, Table 1; 400 features into FC(120) on 28x28 grey images), ANL after each conv"
register(ModelSpec("lenet5", _lenet.LeNet5, None, 0.03, anl_after="conv", in_channels=1, description=_LENET))
register(ModelSpec("mobilenet", _mobilenet.MobileNet, 3.2e6, 0.02, description="MobileNet v1, CIFAR strides"))
register(ModelSpec("mobilenet_v2", _mobilenet.MobileNetV2, 2.3e6, 0.02, description="MobileNetV2, CIFAR strides"))
_TINY = "small VGG-style net with BN (not in the paper; digits demo)"
_VGG = {name: partial(_vgg.VGG, cfg) for name, cfg in _vgg.CFG.items()}
register(ModelSpec("vgg_tiny", _VGG["vgg_tiny"], None, 0.02, description=_TINY))
register(ModelSpec("vgg11", _VGG["vgg11"], 9.2e6, 0.05, description="VGG-11 with BN, CIFAR head"))
register(ModelSpec("vgg16", _VGG["vgg16"], 14.7e6, 0.05, description="VGG-16 with BN, CIFAR head"))
_RESNET = partial(_resnet.ResNet, _resnet.BasicBlock)
register(ModelSpec("resnet18", partial(_RESNET, [2, 2, 2, 2]), 11.2e6, 0.05, description="ResNet-18, 3x3 stem"))
_R34 = dict(large=True, description="ResNet-34, 3x3 stem")
register(ModelSpec("resnet34", partial(_RESNET, [3, 4, 6, 3]), 21.3e6, 0.08, **_R34))
for _alpha, _n, _eps in ((48, 1.8e6, 0.01), (270, 28.4e6, 0.10)):
    _PYR = dict(large=True, description=f"PyramidNet-110, alpha={_alpha}, basic blocks")
    register(ModelSpec(f"pyramidnet{_alpha}", partial(_pyramidnet.PyramidNet, 110, _alpha), _n, _eps, **_PYR))
_WRN = dict(dropout="p=0.3 between the convs of each block", large=True)
register(ModelSpec("wrn40_4", partial(_wrn.WideResNet, 40, 4), 8.9e6, 0.05, description="Wide ResNet 40-4", **_WRN))
register(ModelSpec("wrn28_10", partial(_wrn.WideResNet, 28, 10), 36.5e6, 0.10, description="Wide ResNet 28-10", **_WRN))


def names() -> list[str]:
    return list(MODELS)


def get_spec(name: str) -> ModelSpec:
    key = name.lower().replace("-", "_")
    if key not in MODELS:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    return MODELS[key]


def build(name: str, num_classes: int = 10, in_channels: int = 3, dropout: bool = False) -> nn.Module:
    """Build model ``name`` (plain, without ANL). ``dropout=True``: the Table 2 "+Dropout" variant."""
    spec = get_spec(name)
    return spec.builder(num_classes=num_classes, in_channels=in_channels, dropout=dropout)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["MODELS", "ModelSpec", "build", "count_params", "get_spec", "names", "register"]
