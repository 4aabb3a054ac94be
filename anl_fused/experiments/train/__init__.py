"""``anl-fused train``: the paper's training protocol (sec. 4.2.1) with exact resume.

Protocol: SGD (momentum 0.9, weight decay 5e-4), learning rate 0.1 halved when the last 5 epochs
found no new best validation loss, each rate kept at least 5 epochs, floor 1e-3
(:class:`~.schedule.PlateauSchedule` documents the reading of sec. 4.2.1). Phase 1 runs
``--epochs`` epochs with the variant's noise on; phase 2 runs ``--finetune-epochs`` more with ANL
disabled (``set_anl_enabled(model, False)``) at the floor learning rate. For the variants without
noise (plain, dropout) phase 2 just continues the schedule, as the paper's baseline did (it trained
200 epochs against 100 + 100 for ANL); ``--finetune-lr floor|continue`` overrides that.

Variants: ``plain``; ``dropout`` (Table 2 "+Dropout": ``build(..., dropout=True)``); ``gaussian``
(``eta = s |eps|/4 z``, Table 1); ``anl``; ``opposite`` (eps negated, Table 1); ``input`` (ANL on
hidden layers with ``--eps`` plus input ANL with ``--input-eps`` / ``--input-sign``, Table 3).

Output directory: ``config.json``; ``metrics.jsonl`` (one JSON object per epoch: train loss/acc,
val loss/acc, test acc/err, lr, time per step, per-layer mean std of ANL inputs from
``TwoRound.last_stds``); ``checkpoint.pt`` (latest; atomic, weights-only). A checkpoint holds the
model, optimizer, scheduler, the engine generator's state, the global RNG states, the epoch / step
counters, the epoch's partial metrics and the metric history; the data order and augmentation are
functions of (seed, epoch), so ``--resume`` continues bitwise where the run stopped, at step
granularity (``--checkpoint-every K`` steps, always at epoch ends, and on Ctrl-C at the next step
boundary). The training loop never reads a device value per step: metrics are accumulated on the
device and read once per epoch. A run directory holds one run, written by one process at a time
(:mod:`.rundir`); ``--resume`` takes the run's settings from its ``config.json`` and may change only
its length and where it runs (:func:`.checkpointing.resume_changes`), recorded in the run.

Several processes (``torchrun --nproc_per_node N -m anl_fused.cli train ...``, multi-node with
torchrun's usual flags): ``run`` initializes the process group from torchrun's environment (NCCL on
GPUs, one process per GPU ``LOCAL_RANK``; gloo on CPU) and ``fit`` trains ``DistributedDataParallel``
with ``TwoRound(ddp, std_over=--std-over)``. ``--batch-size`` is the global batch: every step each
process takes its ``1/N`` of the single-process batch (``launch.shard_batches``), so the data
order does not depend on N. Each process draws its own noise and dropout masks (seeds offset by the
rank). Evaluation is split across the processes (after rank 0's BatchNorm statistics are broadcast)
and its sums all-reduced, so every process sees the same metrics and learning-rate schedule. Only
rank 0 writes config, metrics and checkpoints; a checkpoint also holds every rank's generator, RNG
and partial-epoch meter, so ``--resume`` with the same N continues exactly; with another N it
continues the same epoch and data order with fresh per-rank noise streams. Rank 0 reads the
checkpoint and broadcasts it (no shared file system needed). ``--sync-bn`` converts BatchNorm to
SyncBatchNorm (GPUs only).

Modules: :mod:`.config` (TrainConfig), :mod:`.schedule` (learning rate), :mod:`.parts` (model,
optimizer, engine, batches), :mod:`.loop` (``fit``), :mod:`.checkpointing` (what a checkpoint
holds, save, read, resume), :mod:`.rundir` (one writer per run directory, no accidental
overwrite, ``config.json``), :mod:`.metrics` (meter, evaluation,
``metrics.jsonl``), :mod:`.cli` (``configure`` / ``run``).
"""

from .checkpointing import CHECKPOINT_NAME, load_trained
from .cli import config_from_args, configure, run
from .config import IDENTITY, LENGTH, NOISE_VARIANTS, PRESETS, RUNTIME, VARIANTS, TrainConfig, config_from_dict
from .loop import fit
from .metrics import METRICS_NAME, EpochMeter, evaluate
from .parts import make_model
from .rundir import CONFIG_NAME, RunDirError

__all__ = [
    "CHECKPOINT_NAME",
    "CONFIG_NAME",
    "IDENTITY",
    "LENGTH",
    "METRICS_NAME",
    "NOISE_VARIANTS",
    "PRESETS",
    "RUNTIME",
    "VARIANTS",
    "EpochMeter",
    "RunDirError",
    "TrainConfig",
    "config_from_args",
    "config_from_dict",
    "configure",
    "evaluate",
    "fit",
    "load_trained",
    "make_model",
    "run",
]
