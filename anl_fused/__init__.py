"""anl-fused: Adversarial Noise Layers (You et al.) with a cheap two-round training step.

model = anl_fused.insert_anl(model, eps=0.05)   # ANL after every BatchNorm2d
engine = anl_fused.TwoRound(model)
loss = engine.step(lambda: F.cross_entropy(model(x), y))   # both rounds + backward
"""

from .engine import TwoRound
from .eps_rule import auto_eps
from .functional import anl2d
from .insert import anl_layers, insert_anl, set_anl_enabled, strip_anl
from .layer import ANL2d

__all__ = ["ANL2d", "TwoRound", "anl2d", "anl_layers", "auto_eps", "insert_anl", "set_anl_enabled", "strip_anl"]
__version__ = "0.1.0"
