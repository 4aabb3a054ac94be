"""``anl-fused train``: the paper's training protocol (sec. 4.2.1) with exact resume (docs/training.md; under
torchrun: docs/distributed.md).

Modules: :mod:`.config` (TrainConfig), :mod:`.schedule` (learning rate), :mod:`.parts` (model, optimizer, engine,
batches), :mod:`.loop` (``fit``), :mod:`.checkpointing` (what a checkpoint holds, save, read, resume),
:mod:`.rundir` (one writer per run directory, ``config.json``), :mod:`.metrics` (meter, evaluation,
``metrics.jsonl``), :mod:`.cli` (``configure`` / ``run``).
"""

from .checkpointing import CHECKPOINT_NAME, load_trained
from .cli import configure, run
from .config import IDENTITY, LENGTH, NOISE_VARIANTS, PRESETS, RUNTIME, VARIANTS, TrainConfig, config_from_dict
from .loop import fit
from .metrics import METRICS_NAME, EpochMeter, evaluate
from .parts import make_model
from .rundir import CONFIG_NAME, RunDirError

__all__ = ["CHECKPOINT_NAME", "CONFIG_NAME", "IDENTITY", "LENGTH", "METRICS_NAME", "NOISE_VARIANTS", "PRESETS"]
__all__ += ["RUNTIME", "VARIANTS", "EpochMeter", "RunDirError", "TrainConfig", "config_from_dict"]
__all__ += ["configure", "evaluate", "fit", "load_trained", "make_model", "run"]
