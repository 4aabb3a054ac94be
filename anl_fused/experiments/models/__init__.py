"""Model zoo: the CIFAR / Fashion-MNIST architectures of the paper (Table 1, Table 2).

``build(name, num_classes=10, in_channels=3, dropout=False)`` returns a plain ``nn.Module``
(no ANL inside); put ANL in with ``anl_fused.insert_anl(model, eps, after=MODELS[name].anl_after)``
or use ``build_anl``. ``MODELS`` maps each name to a :class:`ModelSpec` with the builder, the
paper's parameter count and its eps (Table 2; Table 1 / Fig. 3 for LeNet-5).

Every model accepts inputs of any size >= 8x8 (adaptive pooling before the classifier; LeNet-5
zero-pads inputs smaller than its 28x28 to 28x28, see ``lenet.py``), and ``in_channels=1`` for grey
images (Fashion-MNIST, digits).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from . import lenet as _lenet
from . import mobilenet as _mobilenet
from . import pyramidnet as _pyramidnet
from . import resnet as _resnet
from . import vgg as _vgg
from . import wrn as _wrn


@dataclass(frozen=True)
class ModelSpec:
    """One entry of the zoo.

    builder(num_classes, in_channels, dropout) -> nn.Module
    paper_params: #Params of Table 2 (CIFAR-10 head), or None where the paper gives none.
    eps: the paper's eps for this network (Table 2; 0.03 for LeNet-5 from Table 1).
    anl_after: where insert_anl puts the layers ("batchnorm", or "conv" for nets without BN).
    dropout: what dropout=True does (Table 2 "+Dropout").
    large: too big for the fast CPU test suite.
    in_channels: input channels of the dataset the paper trains it on (1: Fashion-MNIST, 3: CIFAR);
        what ``anl-fused models`` counts with unless told otherwise.
    """

    name: str
    builder: Callable[..., nn.Module]
    paper_params: float | None
    eps: float
    anl_after: str = "batchnorm"
    dropout: str = "p=0.5 between FC layers"
    large: bool = False
    description: str = ""
    in_channels: int = 3
    aliases: tuple = field(default_factory=tuple)


MODELS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in MODELS:
        raise ValueError(f"model {spec.name!r} registered twice")
    MODELS[spec.name] = spec
    return spec


def _vgg_builder(name: str):
    def b(num_classes: int = 10, in_channels: int = 3, dropout: bool = False) -> nn.Module:
        return _vgg.vgg(name, num_classes=num_classes, in_channels=in_channels, dropout=dropout)

    b.__name__ = name
    return b


_LENET = "LeNet-5 of footnote 1 (Fig. 3, Table 1; 400 features into FC(120) on 28x28 grey images), ANL after each conv"
register(ModelSpec("lenet5", _lenet.lenet5, None, 0.03, anl_after="conv", in_channels=1, description=_LENET))
register(ModelSpec("mobilenet", _mobilenet.mobilenet, 3.2e6, 0.02, description="MobileNet v1, CIFAR strides"))
register(ModelSpec("mobilenet_v2", _mobilenet.mobilenet_v2, 2.3e6, 0.02, description="MobileNetV2, CIFAR strides"))
_TINY = "small VGG-style net with BN (not in the paper; digits demo)"
register(ModelSpec("vgg_tiny", _vgg_builder("vgg_tiny"), None, 0.02, description=_TINY))
register(ModelSpec("vgg11", _vgg_builder("vgg11"), 9.2e6, 0.05, description="VGG-11 with BN, CIFAR head"))
register(ModelSpec("vgg16", _vgg_builder("vgg16"), 14.7e6, 0.05, description="VGG-16 with BN, CIFAR head"))
register(ModelSpec("resnet18", _resnet.resnet18, 11.2e6, 0.05, description="ResNet-18, 3x3 stem"))
register(ModelSpec("resnet34", _resnet.resnet34, 21.3e6, 0.08, large=True, description="ResNet-34, 3x3 stem"))
_PYR = "PyramidNet-110, alpha={}, basic blocks"
register(ModelSpec("pyramidnet48", _pyramidnet.pyramidnet48, 1.8e6, 0.01, large=True, description=_PYR.format(48)))
register(ModelSpec("pyramidnet270", _pyramidnet.pyramidnet270, 28.4e6, 0.10, large=True, description=_PYR.format(270)))
_WRN = dict(dropout="p=0.3 between the convs of each block", large=True)
register(ModelSpec("wrn40_4", _wrn.wrn40_4, 8.9e6, 0.05, description="Wide ResNet 40-4", **_WRN))
register(ModelSpec("wrn28_10", _wrn.wrn28_10, 36.5e6, 0.10, description="Wide ResNet 28-10", **_WRN))


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


def build_anl(
    name: str,
    eps: float | None = None,
    num_classes: int = 10,
    in_channels: int = 3,
    dropout: bool = False,
    **insert_kwargs,
) -> nn.Module:
    """``build`` then ``insert_anl`` at the paper's place, with the paper's eps unless given."""
    from anl_fused import insert_anl

    spec = get_spec(name)
    model = build(name, num_classes=num_classes, in_channels=in_channels, dropout=dropout)
    insert_kwargs.setdefault("after", spec.anl_after)
    return insert_anl(model, spec.eps if eps is None else eps, **insert_kwargs)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["MODELS", "ModelSpec", "build", "build_anl", "count_params", "get_spec", "names", "register"]
