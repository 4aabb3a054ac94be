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
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import checkpoint as ckpt
from . import data as data_mod
from .models import MODELS, build, get_spec

VARIANTS = ("plain", "dropout", "gaussian", "anl", "opposite", "input")
NOISE_VARIANTS = ("gaussian", "anl", "opposite", "input")
CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
CONFIG_NAME = "config.json"

# config fields that must match when resuming (others, such as epochs or device, may change)
_IDENTITY = ("model", "dataset", "variant", "eps", "input_eps", "input_sign", "scale_by_std", "batch_size",
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


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def make_model(cfg: TrainConfig, in_channels: int, num_classes: int) -> nn.Module:
    """The zoo model with the variant's ANL (``cfg`` must be resolved)."""
    from . import insert_anl

    model = build(cfg.model, num_classes=num_classes, in_channels=in_channels, dropout=cfg.variant == "dropout")
    if cfg.variant in NOISE_VARIANTS:
        insert_anl(model, cfg.eps, input_eps=cfg.input_eps, input_sign=cfg.input_sign,
                   after=MODELS[cfg.model].anl_after,
                   noise="gaussian" if cfg.variant == "gaussian" else "adversarial",
                   scale_by_std=cfg.scale_by_std)
    return model


def _seed_of(*parts: int) -> int:
    return data_mod._seed_of(*parts)


@torch.no_grad()
def evaluate(model: nn.Module, batches: data_mod.Batches) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over ``batches`` (eval mode, one host read)."""
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
    vals = torch.stack([loss_sum, correct.double()]).tolist()
    return vals[0] / max(n, 1), vals[1] / max(n, 1)


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "numpy": _numpy_state(),
        "python": random.getstate(),
    }


def _numpy_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate(_to_tuple(s["python"]))


def _to_tuple(x):
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


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


def _write_lines_atomic(path: str, records: list[dict]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------


def fit(cfg: TrainConfig, out_dir: str | None = None, *, resume: bool = False, checkpoint_every: int = 0,
        stop_after_steps: int | None = None, progress: bool = True, bundle: data_mod.DataBundle | None = None,
        log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train ``cfg`` (see module docstring). Returns ``{"config", "history", "stopped", "global_step",
    "model"}``; with ``out_dir``, writes config, metrics and checkpoints there.

    ``stop_after_steps``: stop (with a checkpoint) once this many optimizer steps have been taken in
    total, as an interruption would. ``bundle``: preloaded data (the demo reuses one)."""
    from tqdm.auto import tqdm

    from . import TwoRound, set_anl_enabled

    cfg = cfg.resolved()
    log = log or (lambda s: tqdm.write(s, file=sys.stderr))
    device = resolve_device(cfg.device)
    bundle = bundle or data_mod.load(cfg.dataset, cfg.data_dir, val_size=cfg.val_size, download=cfg.download)
    info = bundle.info

    torch.manual_seed(cfg.seed)  # same seed, same initial weights for every variant
    model = make_model(cfg, bundle.in_channels, bundle.num_classes).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    run_model = torch.compile(model) if cfg.compile else model
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.patience, cooldown=cfg.cooldown, min_lr=cfg.min_lr)
    generator = torch.Generator(device=device).manual_seed(_seed_of(cfg.seed, 3))
    engine = TwoRound(model, generator=generator)

    kw = dict(mean=info.mean, std=info.std, device=device, channels_last=cfg.channels_last)
    train_b = data_mod.Batches(bundle.train, cfg.batch_size, shuffle=True, augment=info.augment, seed=cfg.seed,
                               drop_last=cfg.drop_last and len(bundle.train) >= cfg.batch_size, **kw)
    val_b = data_mod.Batches(bundle.val, cfg.eval_batch_size, shuffle=False, **kw)
    test_b = data_mod.Batches(bundle.test, cfg.eval_batch_size, shuffle=False, **kw)

    total_epochs = cfg.epochs + cfg.finetune_epochs
    epoch, step, global_step, history = 0, 0, 0, []
    meter = EpochMeter(device)
    ckpt_path = os.path.join(out_dir, CHECKPOINT_NAME) if out_dir else None
    cfg_dict = dataclasses.asdict(cfg)

    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    if resume:
        if not ckpt_path:
            raise ValueError("resume needs an output directory")
        if os.path.exists(ckpt_path):
            state = ckpt.load(ckpt_path, map_location="cpu",
                              required=("config", "model", "optimizer", "scheduler", "generator", "rng",
                                        "epoch", "step", "global_step", "meter", "history"))
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
            generator.set_state(state["generator"])
            _set_rng_state(state["rng"])
            epoch, step, global_step = int(state["epoch"]), int(state["step"]), int(state["global_step"])
            meter.load_state_dict(state["meter"])
            history = list(state["history"])
            log(f"resumed from {ckpt_path} at epoch {epoch + 1}, step {step} (global step {global_step})")
        else:
            log(f"no checkpoint at {ckpt_path}; starting from scratch")
    if out_dir:
        with open(os.path.join(out_dir, CONFIG_NAME), "w") as f:
            json.dump({**cfg_dict, "device_used": str(device), "dataset_sizes": {
                "train": len(bundle.train), "val": len(bundle.val), "test": len(bundle.test)}}, f, indent=2)
        _write_lines_atomic(os.path.join(out_dir, METRICS_NAME), history)  # drop lines past the checkpoint

    def save() -> None:
        if not ckpt_path:
            return
        ckpt.save(ckpt_path, {
            "config": cfg_dict, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "generator": generator.get_state(), "rng": _rng_state(),
            "epoch": epoch, "step": step, "global_step": global_step, "meter": meter.state_dict(),
            "history": history, "num_classes": bundle.num_classes, "in_channels": bundle.in_channels,
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
                if interrupt.requested or (stop_after_steps is not None and global_step >= stop_after_steps):
                    stopped = "interrupt" if interrupt.requested else "stop_after_steps"
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
            summary = meter.summary()
            val_loss, val_acc = evaluate(run_model, val_b)
            _, test_acc = evaluate(run_model, test_b)
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
            if out_dir:
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
    try:
        cfg = config_from_args(args)
        result = fit(cfg, args.out, resume=args.resume, checkpoint_every=args.checkpoint_every,
                     stop_after_steps=args.stop_after_steps, progress=not args.no_progress)
    except (ckpt.CheckpointError, data_mod.DatasetNotFoundError, ValueError, KeyError) as e:
        print(f"anl-fused train: error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        return 2
    if result["stopped"] == "interrupt":
        return 130
    hist = result["history"]
    if hist:
        last = hist[-1]
        print(json.dumps({"out": args.out, "epochs": last["epoch"], "test_err": last["test_err"],
                          "test_acc": last["test_acc"], "val_loss": last["val_loss"],
                          "time_per_step_s": last["time_per_step_s"], "stopped": result["stopped"]}))
    return 0
