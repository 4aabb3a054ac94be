"""A run directory is never lost: one writer at a time, never overwritten by accident, and its ``config.json``.

:func:`claimed` holds a run's directory for its life (under torchrun rank 0 decides and holds the lock). It refuses
(:class:`RunDirError`, nothing changed) a directory whose ``train.lock`` another process holds (named: pid, host,
start, command line) or that holds a run (``config.json``, ``metrics.jsonl`` or ``checkpoint.pt``) unless
``resume`` or ``overwrite``; else it takes the lock (a crash drops it with the process), removes temporary files a
killed writer left and, with ``overwrite``, deletes the old run's three files before anything new is written.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

from .. import checkpoint as ckpt
from .. import launch
from ..files import DirLock, DirLockedError, LockFileError, atomic_write, check_out_dir, clean_temp_files
from .checkpointing import CHECKPOINT_NAME
from .config import config_from_dict, input_layer_eps, upgrade_stored
from .metrics import METRICS_NAME, read_metrics
from .parts import Parts

CONFIG_NAME = "config.json"
LOCK_NAME = "train.lock"
RUN_FILES = (CONFIG_NAME, METRICS_NAME, CHECKPOINT_NAME)


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked; the message names it and says what to do."""


def describe_run(out_dir: str) -> str | None:
    """What run ``out_dir`` holds ("finished: 12 of 12 epochs", "interrupted after 3 of 45 epochs"), or ``None``."""
    present = [n for n in RUN_FILES if os.path.exists(os.path.join(out_dir, n))]
    if not present:
        return None
    config = local_config(out_dir) or {}
    total = int(config.get("epochs", 0) or 0) + int(config.get("finetune_epochs", 0) or 0)
    try:
        done = len(read_metrics(out_dir))
    except (OSError, ValueError):  # unreadable, or a corrupted line (said where the run is read)
        done = 0
    if total and done >= total:
        return f"finished: {done} of {total} epochs"
    return f"interrupted after {done} of {total or '?'} epochs ({', '.join(present)})"


def _claim(out_dir: str, resume: bool, overwrite: bool, log: Callable[[str], None]) -> DirLock:
    try:
        check_out_dir(out_dir)
        lock = DirLock(out_dir, LOCK_NAME).acquire()
    except DirLockedError as e:
        raise RunDirError(
            f"run directory {out_dir!r} is in use by a running anl-fused train ({e.holder}); wait for "
            "it to end or stop it (Ctrl-C saves a checkpoint), or use another --out"
        ) from None
    except (ValueError, LockFileError) as e:
        raise RunDirError(f"run directory {out_dir!r}: {e}") from None
    run = describe_run(out_dir)
    if run and not resume and not overwrite:
        lock.release()  # as it was: the lock file deleted again
        raise RunDirError(
            f"run directory {out_dir!r} already holds a run ({run}); continue it with --resume, or "
            f"start over with --overwrite (deletes its {', '.join(RUN_FILES)}), or use another --out"
        )
    removed = clean_temp_files(out_dir, RUN_FILES)
    if removed:
        log(f"removed temporary files a killed writer left in {out_dir}: {', '.join(removed)}")
    if overwrite and run:
        for name in RUN_FILES:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(out_dir, name))
        log(f"--overwrite: deleted the previous run in {out_dir} ({run})")
    return lock


@contextlib.contextmanager
def claimed(
    out_dir: str | None, *, resume: bool, overwrite: bool, world: int, log: Callable[[str], None]
) -> Iterator[None]:
    """Hold ``out_dir`` for a run (see the module docstring); ``None``: no directory, nothing to hold."""
    if out_dir is None:
        yield
        return
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: continue the run, or start over")
    held: list[DirLock] = []
    created = not os.path.exists(out_dir)
    launch.on_rank0(lambda: held.append(_claim(out_dir, resume, overwrite, log)), world)
    try:
        yield
    finally:
        for lock in held:
            lock.release()
            if created:  # a run refused before it wrote anything leaves no empty directory behind
                with contextlib.suppress(OSError):
                    os.rmdir(out_dir)


def local_config(out_dir: str) -> dict[str, Any] | None:
    """``out_dir/config.json`` as this process sees it (``None``: missing, unreadable or not an object)."""
    try:
        with open(os.path.join(out_dir, CONFIG_NAME)) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def stored_config(out_dir: str, world: int) -> dict[str, Any] | None:
    """The settings of the run in ``out_dir`` (its ``config.json``, else its checkpoint's copy), or
    ``None`` when it holds no run. Under torchrun rank 0 reads and broadcasts them."""

    def read() -> dict[str, Any] | None:
        config, source = local_config(out_dir), os.path.join(out_dir, CONFIG_NAME)
        path = os.path.join(out_dir, CHECKPOINT_NAME)
        if not isinstance(config, dict) and os.path.exists(path):
            config, source = ckpt.load(path, required=("config",))["config"], f"the config in {path}"
        if not isinstance(config, dict):
            return None
        config_from_dict(config, source)  # its values have their fields' types, else StoredConfigError
        return upgrade_stored(config)

    return launch.on_rank0(read, world)


def write_config(
    out_dir: str,
    config: dict[str, Any],
    parts: Parts,
    changes: list[dict[str, Any]],
    eps_auto: dict[str, Any] | None = None,
) -> None:
    """``config.json`` (atomically): ``config`` plus the device used, the number of processes, the split sizes, the
    augmentation, the input ANL layer's eps on the normalized input, the settings changed on resume, where the data was
    read from and, for ``eps="auto"``, the rule's input and result (``eps_auto``)."""
    b, cfg = parts.bundle, parts.cfg
    sizes = {"train": len(b.train), "val": len(b.val), "test": len(b.test)}
    where = {"device_used": str(parts.device), "world_size": parts.world, "augment": b.info.augment}
    eps = {"input_layer_eps": input_layer_eps(cfg) if cfg.variant == "input" else None, "dataset_sizes": sizes}
    made = {"data_source": b.source or None, "resume_changes": changes, "eps_auto": eps_auto}
    atomic_write(os.path.join(out_dir, CONFIG_NAME), json.dumps({**config, **where, **eps, **made}, indent=2))
