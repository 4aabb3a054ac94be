"""Training checkpoints: written atomically, read with ``torch.load(..., weights_only=True)``.

A checkpoint is a plain dict (tensors, numbers, strings, lists, dicts) tagged with ``{"format": FORMAT, "version":
VERSION}``. ``save`` writes to a temporary file in the same directory, flushes it to disk and ``os.replace`` s it over
the target, so a crash never leaves a half-written checkpoint behind. ``load`` raises :class:`CheckpointError` naming
the file when it is missing, unreadable (truncated, corrupted, not a torch file, needs unsafe unpickling) or foreign
(not written by ``anl-fused train``, or by an incompatible version).
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch

from .files import atomic_write

__all__ = ["FORMAT", "READABLE", "VERSION", "CheckpointError", "load", "save"]

FORMAT = "anl-fused-train"
VERSION = 2  # 2: the sec. 4.2.1 learning-rate schedule (train.schedule.PlateauSchedule); 1: ReduceLROnPlateau
READABLE = (1, 2)  # versions whose model weights load (resuming a run needs VERSION)


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used; the message names the file."""


def _load_error(path: str, e: Exception) -> str:
    """One line on why ``torch.load(path, weights_only=True)`` failed (torch's own message is long,
    and advises ``weights_only=False``, which would run whatever code the file holds)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)", text)  # torch < 2.14, 2.14
    if found:
        return (
            f"checkpoint file {path!r} is not an anl-fused training checkpoint: it holds a Python object "
            f"({found.group(1)}) that torch.load(weights_only=True) does not unpickle, and anl-fused reads "
            "weights-only checkpoints alone"
        )
    found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    reason = f"unreadable pickle data: {found.group(1).strip()}" if found else re.split(r"\.\s|\n", text.strip())[0]
    return f"checkpoint file {path!r} is corrupted or not a PyTorch checkpoint ({type(e).__name__}: {reason})"


def save(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Atomically write ``state`` (plus the format tag) to ``path``; a failed write (a full disk) raises
    ``OSError`` and leaves the previous file as it was."""
    payload = {"format": FORMAT, "version": VERSION, **state}

    def write(f) -> None:
        try:
            torch.save(payload, f)
        except RuntimeError as e:  # torch's zip writer reports a failed write (a full disk) as a RuntimeError
            raise OSError(f"writing checkpoint file {os.fspath(path)!r} failed ({e}); the previous one stays") from e

    atomic_write(path, write)


def load(
    path: str | os.PathLike,
    map_location: Any = "cpu",
    *,
    required: tuple[str, ...] = (),
    versions: tuple[int, ...] = READABLE,
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save`; ``required``: keys that must be present;
    ``versions``: the format versions accepted (resuming a run accepts only :data:`VERSION`)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint file {path!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated / corrupted zip, random bytes, pickles that are not weights-only
        raise CheckpointError(_load_error(path, e)) from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        what = f"a dict with format={state.get('format')!r}" if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"checkpoint file {path!r} is not an anl-fused training checkpoint (found {what}, "
            f"expected format={FORMAT!r})"
        )
    version = state.get("version")
    if version not in versions:
        what = f"versions {', '.join(map(str, versions))}" if len(versions) > 1 else f"version {versions[0]}"
        older = (
            " (an older anl-fused: its learning-rate schedule and state differ, so the run cannot continue "
            "exactly; its weights still load, e.g. in anl-fused attack)"
            if version in READABLE
            else ""
        )
        raise CheckpointError(f"checkpoint file {path!r} has version {version!r}{older}; this needs {what}")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint file {path!r} lacks the entries {missing}")
    return state
