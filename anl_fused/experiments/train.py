"""``anl-fused train``: the paper's training protocol (sec. 4.2.1) with exact resume.

Protocol: SGD (momentum 0.9, weight decay 5e-4), learning rate 0.1 halved by
``ReduceLROnPlateau(factor=0.5, patience=5)`` on the validation loss, floor 1e-3. Phase 1 runs
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
device and read once per epoch.

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
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from .. import distributed, rng
from ..layer import NORMS
from . import checkpoint as ckpt
from . import data as data_mod
from . import launch
from .files import atomic_write, resolve_device
from .models import MODELS, build, get_spec

VARIANTS = ("plain", "dropout", "gaussian", "anl", "opposite", "input")
NOISE_VARIANTS = ("gaussian", "anl", "opposite", "input")
CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
CONFIG_NAME = "config.json"

# config fields that must match when resuming (others, such as epochs or device, may change)
_IDENTITY = ("model", "dataset", "variant", "eps", "input_eps", "input_sign", "scale_by_std", "norm", "batch_size",
             "lr", "momentum", "weight_decay", "lr_factor", "patience", "cooldown", "min_lr", "val_size", "seed",
             "drop_last")


@dataclass
class TrainConfig:
    model: str = "vgg_tiny"
    dataset: str = "digits"
    data_dir: str = "./data"
    download: bool = False
    variant: str = "anl"
    eps: float | None = None  # None: the paper's eps for the model (Table 2)
    input_eps: float = 0.0
    input_sign: bool = False
    scale_by_std: bool = True
    norm: str = "sample"  # ||g||_inf per sample (the authors' code) or over the whole layer (Algorithm 1)
    epochs: int = 10
    finetune_epochs: int = 0
    finetune_lr: str = "auto"  # auto | floor | continue
    batch_size: int = 128
    eval_batch_size: int = 500
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_factor: float = 0.5
    patience: int = 5
    cooldown: int = 0
    min_lr: float = 1e-3
    val_size: int | None = None
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    channels_last: bool = False
    drop_last: bool = True  # a tiny last batch wrecks BatchNorm statistics (897 digits / 64 = 14 r 1)
    std_over: str = "local"  # under torchrun: std(h) of each process's batch, or "global" (all processes)
    sync_bn: bool = False  # under torchrun: SyncBatchNorm (GPUs only)

    def resolved(self) -> "TrainConfig":
        """Check the values and fill in defaults (eps from the model's spec, opposite -> -|eps|)."""
        c = dataclasses.replace(self)
        get_spec(c.model)
        c.model = get_spec(c.model).name
        c.dataset = data_mod.canonical_name(c.dataset)
        if c.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {c.variant!r}")
        if c.finetune_lr not in ("auto", "floor", "continue"):
            raise ValueError(f"finetune_lr must be auto, floor or continue, got {c.finetune_lr!r}")
        if c.finetune_lr == "auto":
            c.finetune_lr = "floor" if c.variant in NOISE_VARIANTS else "continue"
        for k in ("epochs", "finetune_epochs"):
            if getattr(c, k) < 0:
                raise ValueError(f"{k} must be >= 0, got {getattr(c, k)}")
        if c.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {c.batch_size}")
        if c.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {c.norm!r}")
        if c.std_over not in distributed.STD_OVER:
            raise ValueError(f"std_over must be one of {distributed.STD_OVER}, got {c.std_over!r}")
        if c.variant in ("plain", "dropout", "gaussian"):
            c.norm = "sample"  # no gradient, no norm: one identity for these runs
        if c.variant in ("plain", "dropout"):
            c.eps, c.input_eps, c.input_sign = 0.0, 0.0, False
        else:
            eps = MODELS[c.model].eps if c.eps is None else float(c.eps)
            if not math.isfinite(eps):
                raise ValueError(f"eps must be finite, got {eps}")
            c.eps = -abs(eps) if c.variant == "opposite" else eps
            if c.variant == "input":
                if c.input_eps == 0.0:
                    raise ValueError("variant 'input' needs --input-eps (the input layer's eps, Table 3)")
            else:
                c.input_eps, c.input_sign = 0.0, False
        return c


# ----------------------------------------------------------------------------------------------
# building blocks shared with the demo


def make_model(cfg: TrainConfig, in_channels: int, num_classes: int) -> nn.Module:
    """The zoo model with the variant's ANL (``cfg`` must be resolved)."""
    from .. import insert_anl

    model = build(cfg.model, num_classes=num_classes, in_channels=in_channels, dropout=cfg.variant == "dropout")
    if cfg.variant in NOISE_VARIANTS:
        insert_anl(model, cfg.eps, input_eps=cfg.input_eps, input_sign=cfg.input_sign,
                   after=MODELS[cfg.model].anl_after,
                   noise="gaussian" if cfg.variant == "gaussian" else "adversarial",
                   scale_by_std=cfg.scale_by_std, norm=cfg.norm)
    return model


@torch.no_grad()
def evaluate(model: nn.Module, batches: data_mod.Batches, all_reduce: bool = False) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over ``batches`` (eval mode, one host read); ``all_reduce``:
    over the batches of every process (each holding its part of the split)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=batches.device)
    correct = torch.zeros((), dtype=torch.int64, device=batches.device)
    n = 0
    for x, y in batches.epoch(0):
        out = model(x)
        loss_sum += F.cross_entropy(out.float(), y, reduction="sum").double()
        correct += (out.argmax(1) == y).sum()
        n += y.numel()
    model.train(was_training)
    totals = torch.stack([loss_sum, correct.double(), torch.full_like(loss_sum, n)])
    if all_reduce:
        torch.distributed.all_reduce(totals)
    loss, right, n = totals.tolist()
    return loss / max(n, 1), right / max(n, 1)


class EpochMeter:
    """Per-epoch training metrics, accumulated on the device (no host sync per step)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.count = 0
        self.steps = 0
        self.train_time = 0.0
        self.std_names: list[str] = []
        self.std_sum: Tensor | None = None
        self.std_steps = 0

    def update(self, loss: Tensor, out: Tensor, y: Tensor, stds: dict[str, Tensor] | None) -> None:
        self.loss_sum += loss.detach().double() * y.numel()
        self.correct += (out.detach().argmax(1) == y).sum()
        self.count += y.numel()
        self.steps += 1
        if stds:
            if self.std_sum is None:
                self.std_names = list(stds)
                self.std_sum = torch.zeros(len(stds), dtype=torch.float64, device=self.device)
            if list(stds) == self.std_names:
                self.std_sum += torch.stack([s.detach().double().reshape(()) for s in stds.values()])
                self.std_steps += 1

    def summary(self) -> dict[str, Any]:
        parts = [self.loss_sum, self.correct.double()] + ([self.std_sum] if self.std_sum is not None else [])
        flat = torch.cat([p.reshape(-1) for p in parts]).tolist()  # the one host read of the epoch
        n = max(self.count, 1)
        out = {"train_loss": flat[0] / n, "train_acc": flat[1] / n}
        if self.std_sum is not None and self.std_steps:
            out["anl_std"] = {k: v / self.std_steps for k, v in zip(self.std_names, flat[2:])}
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"loss_sum": self.loss_sum.cpu(), "correct": self.correct.cpu(), "count": self.count,
                "steps": self.steps, "train_time": self.train_time, "std_names": list(self.std_names),
                "std_sum": None if self.std_sum is None else self.std_sum.cpu(), "std_steps": self.std_steps}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.loss_sum = s["loss_sum"].to(self.device)
        self.correct = s["correct"].to(self.device)
        self.count, self.steps, self.train_time = int(s["count"]), int(s["steps"]), float(s["train_time"])
        self.std_names = list(s["std_names"])
        self.std_sum = None if s["std_sum"] is None else s["std_sum"].to(self.device)
        self.std_steps = int(s["std_steps"])


def _all_ranks(meter: EpochMeter) -> EpochMeter:
    """The meter of every process together: sums all-reduced (one collective, one host read);
    steps and time are this process's."""
    out = EpochMeter(meter.device)
    out.steps, out.train_time, out.std_names = meter.steps, meter.train_time, list(meter.std_names)
    head = torch.stack([meter.loss_sum, meter.correct.double(), torch.full_like(meter.loss_sum, meter.count),
                        torch.full_like(meter.loss_sum, meter.std_steps)])
    vec = head if meter.std_sum is None else torch.cat([head, meter.std_sum])
    torch.distributed.all_reduce(vec)
    count, std_steps = vec[2:4].tolist()
    out.loss_sum, out.correct = vec[0], vec[1].round().long()
    out.count, out.std_steps = int(count), int(std_steps)
    out.std_sum = None if meter.std_sum is None else vec[4:]
    return out


def _merged_meter_state(states: list[dict[str, Any]]) -> dict[str, Any]:
    """One meter state holding the sums of several processes' (resuming with another process count)."""
    out = dict(states[0])
    for k in ("loss_sum", "correct", "count", "std_steps"):
        out[k] = sum(s[k] for s in states[1:]) + states[0][k]
    if out["std_sum"] is not None:
        out["std_sum"] = sum((s["std_sum"] for s in states[1:] if s["std_sum"] is not None), states[0]["std_sum"])
    return out


class _RankBatches(data_mod.Batches):
    """This process's part of the batches under torchrun: for training, its part of every global
    batch of ``batch_size`` (``launch.shard_batches``: same number of steps on every process,
    order independent of the process count); for evaluation (``train=False``), its contiguous
    block of the split (``launch.shard_block``), whose sums are all-reduced."""

    def __init__(self, split: data_mod.Split, batch_size: int, *, train: bool, rank: int, world: int, **kw):
        self.train, self.rank, self.world, self.global_batch = train, rank, world, batch_size
        super().__init__(split, batch_size // world if train else batch_size, **kw)

    def __len__(self) -> int:
        n = len(self.split)
        if self.train:
            return n // self.global_batch if self.drop_last else -(-n // self.global_batch)
        block = (self.rank + 1) * n // self.world - self.rank * n // self.world
        return -(-block // self.batch_size)

    def order(self, epoch: int) -> Tensor:
        order = super().order(epoch)
        if self.train:
            return launch.shard_batches(order, self.global_batch, self.rank, self.world)
        return launch.shard_block(order, self.rank, self.world)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _GracefulInterrupt:
    """First Ctrl-C: finish the current step, save a checkpoint, stop. Second: KeyboardInterrupt."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupt: stopping after this step and saving a checkpoint (Ctrl-C again to abort)",
              file=sys.stderr)

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


def _read_checkpoint(path: str, world: int) -> dict[str, Any] | None:
    """The checkpoint to resume from (``None``: there is none). Under torchrun rank 0 reads it and
    broadcasts it, or its error, to the others: only rank 0's file system needs it."""
    found: tuple[str, Any] = ("none", None)
    if world == 1 or dist.get_rank() == 0:
        try:
            if os.path.exists(path):
                found = ("ok", ckpt.load(path, map_location="cpu", required=(
                    "config", "model", "optimizer", "scheduler", "generator", "rng", "epoch", "step",
                    "global_step", "meter", "history")))
        except ckpt.CheckpointError as e:
            found = ("error", str(e))
    if world > 1:
        box = [found]
        dist.broadcast_object_list(box, src=0)
        found = box[0]
    if found[0] == "error":
        raise ckpt.CheckpointError(found[1])
    return found[1]


# ----------------------------------------------------------------------------------------------


def fit(cfg: TrainConfig, out_dir: str | None = None, *, resume: bool = False, checkpoint_every: int = 0,
        stop_after_steps: int | None = None, progress: bool = True, bundle: data_mod.DataBundle | None = None,
        log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train ``cfg`` (see module docstring). Returns ``{"config", "history", "stopped", "global_step",
    "model"}``; with ``out_dir``, writes config, metrics and checkpoints there.

    ``stop_after_steps``: stop (with a checkpoint) once this many optimizer steps have been taken in
    total, as an interruption would. ``bundle``: preloaded data (the demo reuses one)."""
    from tqdm.auto import tqdm

    from .. import TwoRound, set_anl_enabled

    cfg = cfg.resolved()
    # under torchrun (run() initialized the group): DDP, this process's part of the data, rank 0 writes
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed.is_distributed() else (0, 1)
    if rank:
        log, progress = (lambda s: None), False
    log = log or (lambda s: tqdm.write(s, file=sys.stderr))
    device = resolve_device(cfg.device)
    if world > 1:
        if cfg.batch_size % world:
            raise ValueError(f"--batch-size {cfg.batch_size} is the global batch: it must be a multiple of the "
                             f"number of processes {world}")
        if device.type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device())  # GPU LOCAL_RANK (launch.init_from_env)
        elif cfg.sync_bn:
            raise ValueError("--sync-bn needs GPUs: SyncBatchNorm does not run on CPU")
    # with --download under torchrun, the first process of each node downloads while the others wait
    first_on_node = world == 1 or not cfg.download or launch.local_rank() == 0
    if not first_on_node:
        dist.barrier()
    bundle = bundle or data_mod.load(cfg.dataset, cfg.data_dir, val_size=cfg.val_size, download=cfg.download)
    if world > 1 and cfg.download and first_on_node:
        dist.barrier()
    info = bundle.info

    torch.manual_seed(cfg.seed)  # same seed, same initial weights for every variant
    model = make_model(cfg, bundle.in_channels, bundle.num_classes).to(device)
    if cfg.sync_bn and world > 1:
        model = distributed.convert_sync_batchnorm(model)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_model = model
    if world > 1:
        if rank:
            torch.manual_seed(data_mod.derive_seed(cfg.seed, 4, rank))  # own dropout masks; rank 0 as one process
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    run_model = torch.compile(train_model) if cfg.compile else train_model
    eval_model = run_model
    if world > 1:  # evaluate the module itself: a DDP forward is a collective (buffer broadcast)
        eval_model = torch.compile(model) if cfg.compile else model
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.patience, cooldown=cfg.cooldown, min_lr=cfg.min_lr)
    generator = torch.Generator(device=device).manual_seed((data_mod.derive_seed(cfg.seed, 3) + rank) % 2**63)
    engine = TwoRound(train_model, generator=generator, std_over=cfg.std_over if world > 1 else "local")
    flags = launch.cpu_group() if world > 1 else None  # where the ranks agree to stop on Ctrl-C

    kw = dict(mean=info.mean, std=info.std, device=device, channels_last=cfg.channels_last)

    def batches(split: data_mod.Split, size: int, train: bool, **more) -> data_mod.Batches:
        if world == 1:
            return data_mod.Batches(split, size, **more, **kw)
        return _RankBatches(split, size, train=train, rank=rank, world=world, **more, **kw)

    train_b = batches(bundle.train, cfg.batch_size, True, shuffle=True, augment=info.augment, seed=cfg.seed,
                      drop_last=cfg.drop_last and len(bundle.train) >= cfg.batch_size)
    val_b = batches(bundle.val, cfg.eval_batch_size, False, shuffle=False)
    test_b = batches(bundle.test, cfg.eval_batch_size, False, shuffle=False)

    total_epochs = cfg.epochs + cfg.finetune_epochs
    epoch, step, global_step, history = 0, 0, 0, []
    meter = EpochMeter(device)
    ckpt_path = os.path.join(out_dir, CHECKPOINT_NAME) if out_dir else None
    cfg_dict = dataclasses.asdict(cfg)

    if out_dir and rank == 0:
        os.makedirs(out_dir, exist_ok=True)
    if resume:
        if not ckpt_path:
            raise ValueError("resume needs an output directory")
        state = _read_checkpoint(ckpt_path, world)
        if state is not None:
            diff = {k: (state["config"].get(k), cfg_dict[k]) for k in _IDENTITY if state["config"].get(k) != cfg_dict[k]}
            if diff:
                raise ckpt.CheckpointError(
                    f"checkpoint file {ckpt_path!r} belongs to a different run; differing settings "
                    + ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items()))
            try:
                model.load_state_dict(state["model"])
                optimizer.load_state_dict(state["optimizer"])
            except (RuntimeError, ValueError, KeyError) as e:
                raise ckpt.CheckpointError(f"checkpoint file {ckpt_path!r} does not fit this model: {e}") from e
            scheduler.load_state_dict(state["scheduler"])
            saved = state.get("ranks") or [{k: state[k] for k in ("generator", "rng", "meter")}]
            if rank < len(saved):  # a rank the checkpoint does not know keeps its fresh noise and RNG seeds
                generator.set_state(saved[rank]["generator"])
                rng.restore(saved[rank]["rng"])
            epoch, step, global_step = int(state["epoch"]), int(state["step"]), int(state["global_step"])
            if len(saved) == world:
                meter.load_state_dict(saved[rank]["meter"])
            else:
                log(f"the checkpoint was written by {len(saved)} process(es), now {world}: same data order, "
                    "other noise draws and dropout masks from here on")
                if rank == 0:  # the epoch's partial sums of all old processes; the others start at 0
                    meter.load_state_dict(_merged_meter_state([r["meter"] for r in saved]))
            history = list(state["history"])
            log(f"resumed from {ckpt_path} at epoch {epoch + 1}, step {step} (global step {global_step})")
        else:
            log(f"no checkpoint at {ckpt_path}; starting from scratch")
    if out_dir and rank == 0:
        with open(os.path.join(out_dir, CONFIG_NAME), "w") as f:
            json.dump({**cfg_dict, "device_used": str(device), "world_size": world, "dataset_sizes": {
                "train": len(bundle.train), "val": len(bundle.val), "test": len(bundle.test)}}, f, indent=2)
        atomic_write(os.path.join(out_dir, METRICS_NAME), "".join(json.dumps(r) + "\n" for r in history))  # drop lines past the checkpoint

    def save() -> None:
        if not ckpt_path:
            return
        mine = {"generator": generator.get_state(), "rng": rng.capture(host_libraries=True), "meter": meter.state_dict()}
        ranks = None
        if world > 1:  # every rank's streams and partial sums go to rank 0, which writes
            ranks = [None] * world if rank == 0 else None
            dist.gather_object(mine, ranks, dst=0)
            if rank:
                return
        ckpt.save(ckpt_path, {
            "config": cfg_dict, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), **mine,
            "epoch": epoch, "step": step, "global_step": global_step,
            "history": history, "num_classes": bundle.num_classes, "in_channels": bundle.in_channels,
            **({"ranks": ranks} if ranks else {}),
        })

    noisy = cfg.variant in NOISE_VARIANTS
    stopped = None
    model.train()
    with _GracefulInterrupt() as interrupt:
        while epoch < total_epochs and stopped is None:
            in_anl_phase = epoch < cfg.epochs
            if noisy:
                set_anl_enabled(model, in_anl_phase)
            if not in_anl_phase and cfg.finetune_lr == "floor":
                for g in optimizer.param_groups:
                    g["lr"] = cfg.min_lr
            model.train()
            bar = tqdm(total=len(train_b), initial=step, disable=not progress, leave=False, file=sys.stderr,
                       desc=f"{cfg.model}/{cfg.variant} epoch {epoch + 1}/{total_epochs}", dynamic_ncols=True)
            _sync(device)
            t0 = time.perf_counter()
            for x, y in train_b.epoch(epoch, start=step):
                held: dict[str, Tensor] = {}

                def closure(x=x, y=y, held=held) -> Tensor:
                    out = run_model(x)
                    held["out"] = out
                    return F.cross_entropy(out, y)

                optimizer.zero_grad(set_to_none=True)
                loss = engine.step(closure)
                optimizer.step()
                meter.update(loss, held["out"], y, engine.last_stds if (noisy and in_anl_phase) else None)
                step += 1
                global_step += 1
                bar.update(1)
                boundary = (checkpoint_every and global_step % checkpoint_every == 0)
                requested = interrupt.requested if world == 1 else launch.any_rank(interrupt.requested, flags)
                if requested or (stop_after_steps is not None and global_step >= stop_after_steps):
                    stopped = "interrupt" if requested else "stop_after_steps"
                if (boundary or stopped) and step < len(train_b):
                    _sync(device)
                    meter.train_time += time.perf_counter() - t0
                    save()
                    t0 = time.perf_counter()
                if stopped and step < len(train_b):
                    break
            bar.close()
            if step < len(train_b):
                break  # stopped mid-epoch, checkpoint written above
            _sync(device)
            meter.train_time += time.perf_counter() - t0

            # end of epoch: evaluate, schedule, record, checkpoint
            summary = (meter if world == 1 else _all_ranks(meter)).summary()
            if world > 1:
                launch.broadcast_buffers(model)  # every rank evaluates rank 0's model
            val_loss, val_acc = evaluate(eval_model, val_b, all_reduce=world > 1)
            _, test_acc = evaluate(eval_model, test_b, all_reduce=world > 1)
            lr_used = optimizer.param_groups[0]["lr"]
            if in_anl_phase or cfg.finetune_lr == "continue":
                scheduler.step(val_loss)
            record = {
                "epoch": epoch + 1, "phase": ("anl" if noisy else "train") if in_anl_phase else "finetune",
                "anl_enabled": bool(noisy and in_anl_phase), "global_step": global_step,
                "train_loss": summary["train_loss"], "train_acc": summary["train_acc"],
                "val_loss": val_loss, "val_acc": val_acc, "test_acc": test_acc, "test_err": 1.0 - test_acc,
                "lr": lr_used, "steps": meter.steps, "epoch_train_time_s": meter.train_time,
                "time_per_step_s": meter.train_time / max(meter.steps, 1),
            }
            if "anl_std" in summary:
                record["anl_std"] = summary["anl_std"]
            history.append(record)
            if out_dir and rank == 0:
                with open(os.path.join(out_dir, METRICS_NAME), "a") as f:
                    f.write(json.dumps(record) + "\n")
            log(f"epoch {epoch + 1}/{total_epochs} [{record['phase']}] train loss {record['train_loss']:.4f} "
                f"acc {record['train_acc']:.4f} | val loss {val_loss:.4f} acc {val_acc:.4f} | test err "
                f"{record['test_err'] * 100:.2f}% | lr {lr_used:.4g} | {record['time_per_step_s'] * 1e3:.1f} ms/step")
            epoch += 1
            step = 0
            meter = EpochMeter(device)
            save()
    if stopped == "interrupt" and ckpt_path:
        log(f"stopped at epoch {epoch + 1}, step {step}; checkpoint {ckpt_path}; continue with --resume")
    return {"config": cfg_dict, "history": history, "stopped": stopped, "global_step": global_step, "model": model,
            "epoch": epoch, "step": step}


# ----------------------------------------------------------------------------------------------
# CLI


def configure(parser: argparse.ArgumentParser) -> None:
    p = parser
    p.add_argument("--model", default="vgg_tiny", help=f"zoo model ({', '.join(MODELS)}); default vgg_tiny")
    p.add_argument("--dataset", default="digits", help=f"{', '.join(data_mod.DATASETS)} (default digits, offline)")
    p.add_argument("--data-dir", default="./data", help="where the torchvision dataset files are (default ./data)")
    p.add_argument("--download", action="store_true", help="let torchvision download missing datasets")
    p.add_argument("--val-size", type=int, default=None, help="training images held out for validation")
    p.add_argument("--variant", default="anl", choices=VARIANTS, help="what to train (default anl)")
    p.add_argument("--eps", type=float, default=None, help="ANL eps (default: the paper's eps for the model)")
    p.add_argument("--input-eps", type=float, default=0.0, help="input ANL eps (variant input)")
    p.add_argument("--input-sign", action="store_true", help="input noise eps*sign(g) (Eq. 8, variant input)")
    p.add_argument("--no-scale-by-std", dest="scale_by_std", action="store_false", help="paper Eq. 4 instead of 5")
    p.add_argument("--norm", default="sample", choices=NORMS,
                   help="||g||_inf per sample (default, the authors' code) or over the whole layer (Algorithm 1)")
    p.add_argument("--epochs", type=int, default=10, help="epochs with ANL on (phase 1)")
    p.add_argument("--finetune-epochs", type=int, default=0, help="epochs with ANL off after phase 1 (phase 2)")
    p.add_argument("--finetune-lr", default="auto", choices=("auto", "floor", "continue"),
                   help="phase 2 learning rate: floor (min lr) or continue the schedule; auto: floor for noise "
                        "variants, continue for plain/dropout")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--eval-batch-size", type=int, default=500)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--lr-factor", type=float, default=0.5, help="ReduceLROnPlateau factor (0.5)")
    p.add_argument("--patience", type=int, default=5, help="ReduceLROnPlateau patience in epochs (5)")
    p.add_argument("--cooldown", type=int, default=0, help="ReduceLROnPlateau cooldown in epochs (0)")
    p.add_argument("--min-lr", type=float, default=1e-3, help="learning-rate floor (1e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    p.add_argument("--keep-last-batch", dest="drop_last", action="store_false",
                   help="also train on the last, smaller batch of each epoch (dropped by default: a tiny "
                        "batch wrecks BatchNorm statistics)")
    p.add_argument("--std-over", default="local", choices=distributed.STD_OVER,
                   help="under torchrun: std(h) of the noise over each process's batch (local) or the global "
                        "batch (global, one all-reduce a step)")
    p.add_argument("--sync-bn", action="store_true", help="under torchrun: SyncBatchNorm (GPUs only)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's choice; 1 is fastest for tiny models)")
    p.add_argument("--out", required=True, help="output directory (config.json, metrics.jsonl, checkpoint.pt)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if it exists")
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="K",
                   help="also checkpoint every K optimizer steps (always at epoch ends)")
    p.add_argument("--stop-after-steps", type=int, default=None, metavar="K",
                   help="stop with a checkpoint after K optimizer steps in total (simulates an interruption)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names})


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    started = False  # the process group, under torchrun
    try:
        started = launch.init_from_env(args.device)
        rank = dist.get_rank() if started else 0
        cfg = config_from_args(args)
        result = fit(cfg, args.out, resume=args.resume, checkpoint_every=args.checkpoint_every,
                     stop_after_steps=args.stop_after_steps, progress=not args.no_progress)
        if started:
            dist.barrier()  # nobody leaves while rank 0 still receives the last checkpoint's states
    except (ckpt.CheckpointError, data_mod.DatasetNotFoundError, ValueError, KeyError) as e:
        print(f"anl-fused train: error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        return 2
    finally:
        if started:
            dist.destroy_process_group()
    if result["stopped"] == "interrupt":
        return 130
    hist = result["history"]
    if hist and rank == 0:
        last = hist[-1]
        print(json.dumps({"out": args.out, "epochs": last["epoch"], "test_err": last["test_err"],
                          "test_acc": last["test_acc"], "val_loss": last["val_loss"],
                          "time_per_step_s": last["time_per_step_s"], "stopped": result["stopped"]}))
    return 0
