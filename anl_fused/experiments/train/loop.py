"""``fit``: the epoch / step loop of a training run.

Phase 1 runs ``epochs`` epochs with the variant's noise on; phase 2 runs ``finetune_epochs`` more with ANL disabled
(``set_anl_enabled(model, False)``), at the floor learning rate (``finetune_lr="floor"``) or continuing the schedule
(``"continue"``). Each epoch ends with evaluation, the schedule's step, a line of ``metrics.jsonl`` and a checkpoint;
with ``checkpoint_every`` also every K steps, and on Ctrl-C at the next step boundary. The loop never reads a device
value per step: metrics are accumulated on the device and read once per epoch.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import data as data_mod
from .. import launch
from . import checkpointing, rundir
from .checkpointing import CHECKPOINT_NAME, Position
from .config import NOISE_VARIANTS, TrainConfig, auto_eps_of, check_device, noise_note
from .metrics import EpochMeter, MetricsFile, all_ranks, evaluate, format_record
from .parts import Parts, build_parts, process_group

__all__ = ["fit"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _GracefulInterrupt:
    """First Ctrl-C: finish the current step, save a checkpoint, stop. Second: KeyboardInterrupt."""

    requested = False

    def __enter__(self):
        main = threading.current_thread() is threading.main_thread()
        self._old = signal.signal(signal.SIGINT, self._handler) if main else None
        return self

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupt: stopping after this step and saving a checkpoint (Ctrl-C again to abort)", file=sys.stderr)

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


class _Loop:
    """The epochs of one run from ``pos`` on; ``run()`` returns why it stopped early (or ``None``)."""

    def __init__(self, parts: Parts, config: dict, pos: Position, meter: EpochMeter, out_dir: str | None, **how):
        """``how``: ``checkpoint_every`` (K steps, 0: epoch ends only), ``stop_after_steps``, ``progress``, ``log``."""
        self.parts, self.cfg, self.config, self.pos, self.meter = parts, parts.cfg, config, pos, meter
        self.ckpt_path = os.path.join(out_dir, CHECKPOINT_NAME) if out_dir else None
        self.metrics = MetricsFile(out_dir) if out_dir and parts.rank == 0 else None
        self.checkpoint_every, self.stop_after_steps = how.get("checkpoint_every", 0), how.get("stop_after_steps")
        self.progress, self.log = how.get("progress", False), how.get("log", lambda s: None)
        self.total_epochs = self.cfg.epochs + self.cfg.finetune_epochs
        self.stopped: str | None = None
        self._t0 = 0.0

    @classmethod
    def bare(cls, parts: Parts) -> _Loop:
        """A loop over ``parts`` from the start that writes nothing and logs nothing (to time or test its step)."""
        return cls(parts, {}, Position(), EpochMeter(parts.device), None)

    def run(self) -> str | None:
        if self.pos.epoch >= self.total_epochs:
            self.log(
                f"the run is finished ({self.pos.epoch} of {self.total_epochs} epochs): nothing to train "
                "(--resume with more --epochs or --finetune-epochs extends it)"
            )
        self.parts.model.train()
        with _GracefulInterrupt() as self.interrupt:
            while self.pos.epoch < self.total_epochs and self.stopped is None:
                in_anl_phase = self._start_epoch()
                if not self._train_epoch():
                    break  # stopped mid-epoch, checkpoint written
                self._end_epoch(in_anl_phase)
        return self.stopped

    def save(self) -> None:
        if self.ckpt_path:
            checkpointing.save(self.ckpt_path, self.parts, self.meter, self.pos, self.config)

    def _clock(self) -> None:
        """Add the time since the last call to the epoch's training time."""
        _sync(self.parts.device)
        now = time.perf_counter()
        self.meter.train_time += now - self._t0
        self._t0 = now

    def _start_epoch(self) -> bool:
        """ANL on or off and the phase-2 learning rate; returns whether this epoch is in phase 1."""
        from ... import set_anl_enabled

        in_anl_phase = self.pos.epoch < self.cfg.epochs
        if self.parts.noisy:
            set_anl_enabled(self.parts.model, in_anl_phase)
        if not in_anl_phase and self.cfg.finetune_lr == "floor":
            self.parts.scheduler.to_floor()
        self.parts.model.train()
        return in_anl_phase

    def _train_epoch(self) -> bool:
        """The epoch's remaining steps; returns whether the epoch is complete."""
        from tqdm.auto import tqdm

        p, pos = self.parts, self.pos
        desc = f"{self.cfg.model}/{self.cfg.variant} epoch {pos.epoch + 1}/{self.total_epochs}"
        show = dict(disable=not self.progress, leave=False, file=sys.stderr, desc=desc, dynamic_ncols=True)
        bar = tqdm(total=len(p.train_batches), initial=pos.step, **show)
        _sync(p.device)
        self._t0 = time.perf_counter()
        for x, y in p.train_batches.epoch(pos.epoch, start=pos.step):
            self._step(x, y, in_anl_phase=pos.epoch < self.cfg.epochs)
            bar.update(1)
            self._stop_or_checkpoint()
            if self.stopped and pos.step < len(p.train_batches):
                break
        bar.close()
        if pos.step < len(p.train_batches):
            return False
        self._clock()
        return True

    def _step(self, x: Tensor, y: Tensor, in_anl_phase: bool) -> None:
        held: dict[str, Tensor] = {}

        def closure() -> Tensor:
            out = self.parts.run_model(x)
            held["out"] = out
            return F.cross_entropy(out, y)

        optimizer = self.parts.optimizer
        optimizer.zero_grad(set_to_none=True)
        if self.parts.noisy:
            loss = self.parts.engine.step(closure)
        else:  # plain / dropout / sam: no ANL layer, an ordinary backward
            loss = closure()
            loss.backward()
        if self.cfg.variant != "sam":
            optimizer.step()
        elif in_anl_phase:  # SAM's second pass at the perturbed weights (BatchNorm statistics updated once)
            from pytorch_optimizer.optimizer.utils import disable_running_stats, enable_running_stats

            optimizer.first_step(zero_grad=True)
            disable_running_stats(self.parts.model)
            F.cross_entropy(self.parts.run_model(x), y).backward()  # the meter keeps the first pass's outputs
            enable_running_stats(self.parts.model)
            optimizer.second_step()
        else:  # fine-tuning phase: the base optimizer alone
            optimizer.base_optimizer.step()
        stds = self.parts.engine.last_stds if (self.parts.noisy and in_anl_phase) else None
        self.meter.update(loss, held["out"], y, stds)
        self.pos.step += 1
        self.pos.global_step += 1

    def _stop_or_checkpoint(self) -> None:
        """After a step: stop on Ctrl-C (on any rank) or ``stop_after_steps``; checkpoint every K steps
        and when stopping mid-epoch (an epoch's end checkpoints anyway)."""
        p, pos = self.parts, self.pos
        boundary = self.checkpoint_every and pos.global_step % self.checkpoint_every == 0
        requested = self.interrupt.requested if p.world == 1 else launch.any_rank(self.interrupt.requested, p.flags)
        if requested or (self.stop_after_steps is not None and pos.global_step >= self.stop_after_steps):
            self.stopped = "interrupt" if requested else "stop_after_steps"
        if (boundary or self.stopped) and pos.step < len(p.train_batches):
            self._clock()
            self.save()
            self._t0 = time.perf_counter()

    def _end_epoch(self, in_anl_phase: bool) -> None:
        """Evaluate, step the schedule, record, checkpoint."""
        p, pos = self.parts, self.pos
        summary = (self.meter if p.world == 1 else all_ranks(self.meter)).summary()
        if p.world > 1:
            launch.broadcast_buffers(p.model)  # every rank evaluates rank 0's model
        val = evaluate(p.eval_model, p.val_batches, all_reduce=p.world > 1)
        _, test_acc = evaluate(p.eval_model, p.test_batches, all_reduce=p.world > 1)
        lr_used = p.optimizer.param_groups[0]["lr"]
        if in_anl_phase or self.cfg.finetune_lr == "continue":
            p.scheduler.step(val[0])
        phase = ("anl" if p.noisy else "sam" if self.cfg.variant == "sam" else "train") if in_anl_phase else "finetune"
        m, anl = self.meter, bool(p.noisy and in_anl_phase)  # one line of metrics.jsonl:
        record = dict(epoch=pos.epoch + 1, phase=phase, anl_enabled=anl, global_step=pos.global_step, **summary)
        record |= dict(val_loss=val[0], val_acc=val[1], test_acc=test_acc, test_err=1.0 - test_acc, lr=lr_used)
        record |= dict(steps=m.steps, epoch_train_time_s=m.train_time, time_per_step_s=m.train_time / max(m.steps, 1))
        pos.history.append(record)
        if self.metrics:
            self.metrics.append(record)
        self.log(format_record(record, self.total_epochs))
        if not math.isfinite(record["train_loss"]) and all(math.isfinite(r["train_loss"]) for r in pos.history[:-1]):
            self.log(
                f"warning: the training loss of epoch {record['epoch']} is not finite: the run has diverged (a "
                "smaller --lr or --eps may train); it goes on to its last epoch, and the study / figures mark it"
            )
        pos.epoch += 1
        pos.step = 0
        self.meter = EpochMeter(p.device)
        self.save()


def _resume(
    parts: Parts, config: dict[str, Any], meter: EpochMeter, out_dir: str | None, log: Callable[[str], None]
) -> Position:
    """The position to continue from: the checkpoint's, restored into ``parts`` and ``meter``, or the
    start. Settings changed against the checkpoint's are checked and recorded in ``Position.changes``."""
    if not out_dir:
        raise ValueError("resume needs an output directory")
    path = os.path.join(out_dir, CHECKPOINT_NAME)
    state = checkpointing.read(path, parts.world)
    if state is None:
        log(f"no checkpoint at {path}; starting from scratch")
        return Position()
    changed = checkpointing.resume_changes(state["config"], config, state["epoch"], state["step"], path)
    pos = checkpointing.restore(state, parts, meter, path, log)
    log(f"resumed from {path} at epoch {pos.epoch + 1}, step {pos.step} (global step {pos.global_step})")
    if changed:
        now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        pos.changes.append(dict(epoch=pos.epoch, step=pos.step, global_step=pos.global_step, time=now, changed=changed))
        what = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
        log(f"changed on resume (recorded in config.json): {what}")
    return pos


def _eps_auto(given: TrainConfig, cfg: TrainConfig, out_dir: str, resume: bool) -> dict[str, Any] | None:
    """Where the run's eps came from when it was ``"auto"`` (the rule and its input), for config.json:
    ``{"rule", "trainable_params", "eps"}``, kept on resume (whose settings hold the resolved eps); None
    otherwise. Not a setting: the run's identity (``IDENTITY``) is the resolved eps."""
    if given.eps == "auto" and cfg.variant in NOISE_VARIANTS:
        return {"rule": "anl_fused.auto_eps", "trainable_params": auto_eps_of(given)[0], "eps": cfg.eps}
    stored = rundir.local_config(out_dir) if resume else None
    return (stored or {}).get("eps_auto")


def fit(
    cfg: TrainConfig,
    out_dir: str | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    checkpoint_every: int = 0,
    stop_after_steps: int | None = None,
    progress: bool = True,
    bundle: data_mod.DataBundle | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` (see :mod:`anl_fused.experiments.train`). Returns ``{"config", "history", "stopped",
    "global_step", "model", "epoch", "step"}``; with ``out_dir``, writes config, metrics and checkpoints there.

    ``out_dir`` is held for the run (:mod:`.rundir`): another process that holds it, or a run already
    in it, is refused (:class:`~.rundir.RunDirError`) unless ``resume`` (continue it; settings may
    change only as :func:`~.checkpointing.resume_changes` allows) or ``overwrite`` (delete it first).
    ``stop_after_steps``: stop (with a checkpoint) once this many optimizer steps have been taken in
    total, as an interruption would. ``bundle``: preloaded data (the demo reuses one)."""
    from tqdm.auto import tqdm

    given, cfg = cfg, cfg.resolved()
    check_device(cfg.device)  # before the directory is held: a refused run writes nothing
    rank, world = process_group()
    if rank:  # under torchrun only rank 0 logs and writes
        log, progress = (lambda s: None), False
    log = log or (lambda s: tqdm.write(s, file=sys.stderr))
    with rundir.claimed(out_dir, resume=resume, overwrite=overwrite, world=world, log=log):
        parts, config, meter, pos = _start(given, cfg, out_dir, resume, bundle, rank, log)
        how = dict(checkpoint_every=checkpoint_every, stop_after_steps=stop_after_steps, progress=progress, log=log)
        loop = _Loop(parts, config, pos, meter, out_dir, **how)
        stopped = loop.run()
    if stopped == "interrupt" and out_dir:
        log(f"stopped at epoch {pos.epoch + 1}, step {pos.step}; checkpoint {loop.ckpt_path}; continue with --resume")
    result = {"config": config, "history": pos.history, "stopped": stopped, "global_step": pos.global_step}
    return {**result, "model": parts.model, "epoch": pos.epoch, "step": pos.step}


def _start(given: TrainConfig, cfg: TrainConfig, out_dir, resume: bool, bundle, rank: int, log):
    """``(parts, config dict, meter, position)`` of a claimed run: built, resumed, its config.json written."""
    parts = build_parts(cfg, bundle)
    if parts.bundle.source:
        log(f"{parts.bundle.info.description}: read from {parts.bundle.source}")
    config = dataclasses.asdict(cfg)
    meter = EpochMeter(parts.device)
    pos = _resume(parts, config, meter, out_dir, log) if resume else Position()
    if noise_note(given, cfg):  # once the run is accepted
        log(noise_note(given, cfg))
    if out_dir and rank == 0:
        rundir.write_config(out_dir, config, parts, pos.changes, eps_auto=_eps_auto(given, cfg, out_dir, resume))
        MetricsFile(out_dir).rewrite(pos.history)
    return parts, config, meter, pos
