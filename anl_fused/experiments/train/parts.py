"""The parts of a training run, built from its config: model (DDP under torchrun), optimizer,
schedule, the engine with its noise generator, and this process's batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ... import distributed
from .. import data as data_mod
from .. import launch
from ..files import resolve_device
from ..models import MODELS, build
from .config import NOISE_VARIANTS, PROBE_DTYPES, TrainConfig, input_layer_eps
from .schedule import make_schedule

__all__ = ["Parts", "build_parts", "make_model", "process_group"]


def make_model(cfg: TrainConfig, in_channels: int, num_classes: int) -> nn.Module:
    """The zoo model with the variant's ANL (``cfg`` must be resolved; the input layer's eps is
    :func:`~.config.input_layer_eps`: ``input_eps`` in pixel units with ``input_sign``)."""
    from ... import insert_anl

    model = build(cfg.model, num_classes=num_classes, in_channels=in_channels, dropout=cfg.variant == "dropout")
    if cfg.variant in NOISE_VARIANTS:
        noise = "gaussian" if cfg.variant == "gaussian" else "adversarial"
        kw = dict(input_sign=cfg.input_sign, after=MODELS[cfg.model].anl_after, scale_by_std=cfg.scale_by_std)
        insert_anl(model, cfg.eps, input_eps=input_layer_eps(cfg), noise=noise, norm=cfg.norm, **kw)
    return model


def process_group() -> tuple[int, int]:
    """``(rank, world size)``: of the process group under torchrun (``run`` initialized it), else ``(0, 1)``."""
    return (dist.get_rank(), dist.get_world_size()) if distributed.is_distributed() else (0, 1)


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


@dataclass
class Parts:
    """Everything a run trains with (see :func:`build_parts`)."""

    cfg: TrainConfig
    rank: int
    world: int
    device: torch.device
    bundle: data_mod.DataBundle
    model: nn.Module  # the module itself (what checkpoints hold)
    run_model: nn.Module  # what training calls: DDP and/or compiled
    eval_model: nn.Module  # what evaluation calls (never DDP: its forward is a collective)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    generator: torch.Generator
    engine: Any
    train_batches: data_mod.Batches
    val_batches: data_mod.Batches
    test_batches: data_mod.Batches
    flags: Any  # under torchrun: the gloo group where the ranks agree to stop on Ctrl-C

    @property
    def noisy(self) -> bool:
        return self.cfg.variant in NOISE_VARIANTS


def _device(cfg: TrainConfig, world: int) -> torch.device:
    device = resolve_device(cfg.device)
    if world > 1:
        if cfg.batch_size % world:
            n = f"the number of processes {world}"
            raise ValueError(f"--batch-size {cfg.batch_size} is the global batch: it must be a multiple of {n}")
        if device.type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device())  # GPU LOCAL_RANK (launch.init_from_env)
        elif cfg.sync_bn:
            raise ValueError("--sync-bn needs GPUs: SyncBatchNorm does not run on CPU")
    return device


def _data(cfg: TrainConfig, world: int, bundle: data_mod.DataBundle | None) -> data_mod.DataBundle:
    """The dataset; with ``--download`` under torchrun, the first process of each node downloads while
    the others wait."""
    first_on_node = world == 1 or not cfg.download or launch.local_rank() == 0
    if not first_on_node:
        dist.barrier()
    bundle = bundle or data_mod.load(cfg.dataset, cfg.data_dir, val_size=cfg.val_size, download=cfg.download)
    if world > 1 and cfg.download and first_on_node:
        dist.barrier()
    return bundle


def _models(cfg: TrainConfig, bundle: data_mod.DataBundle, device: torch.device, rank: int, world: int):
    """``(model, train_model, run_model, eval_model)``: same seed, same initial weights for every variant."""
    torch.manual_seed(cfg.seed)
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
    return model, train_model, run_model, eval_model


def _batches(cfg: TrainConfig, bundle: data_mod.DataBundle, device: torch.device, rank: int, world: int):
    """This process's training, validation and test batches."""
    info = bundle.info
    kw = dict(mean=info.mean, std=info.std, device=device, channels_last=cfg.channels_last)

    def batches(split: data_mod.Split, size: int, train: bool, **more) -> data_mod.Batches:
        if world == 1:
            return data_mod.Batches(split, size, **more, **kw)
        return _RankBatches(split, size, train=train, rank=rank, world=world, **more, **kw)

    drop_last = cfg.drop_last and len(bundle.train) >= cfg.batch_size
    train = dict(shuffle=True, augment=info.augment, seed=cfg.seed, drop_last=drop_last)
    train_b = batches(bundle.train, cfg.batch_size, True, **train)
    val_b = batches(bundle.val, cfg.eval_batch_size, False, shuffle=False)
    test_b = batches(bundle.test, cfg.eval_batch_size, False, shuffle=False)
    return train_b, val_b, test_b


def _optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum and weight decay; for variant ``sam``, pytorch-optimizer's SAM around it (``sam_rho``)."""
    sgd = dict(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.variant == "sam":
        from pytorch_optimizer import SAM

        return SAM(model.parameters(), torch.optim.SGD, rho=cfg.sam_rho, **sgd)
    return torch.optim.SGD(model.parameters(), **sgd)


def build_parts(cfg: TrainConfig, bundle: data_mod.DataBundle | None = None) -> Parts:
    """The run's parts for this process (``cfg`` resolved)."""
    from ... import TwoRound

    rank, world = process_group()
    device = _device(cfg, world)
    bundle = _data(cfg, world, bundle)
    model, train_model, run_model, eval_model = _models(cfg, bundle, device, rank, world)
    optimizer = _optimizer(cfg, model)
    scheduler = make_schedule(optimizer, cfg)
    generator = torch.Generator(device=device).manual_seed((data_mod.derive_seed(cfg.seed, 3) + rank) % 2**63)
    std_over, probe_dtype = cfg.std_over if world > 1 else "local", PROBE_DTYPES[cfg.probe_dtype]
    engine = TwoRound(train_model, generator=generator, std_over=std_over, probe_dtype=probe_dtype)
    parts = (cfg, rank, world, device, bundle, model, run_model, eval_model, optimizer, scheduler, generator, engine)
    return Parts(*parts, *_batches(cfg, bundle, device, rank, world), launch.cpu_group() if world > 1 else None)
