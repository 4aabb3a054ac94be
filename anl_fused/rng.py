"""Capture and restore the global random-number state (one place for the engine and the experiments).

The engine replays round 1's state in round 2 (same dropout masks); the training loop saves it in
checkpoints for an exact resume. ``capture(host_libraries=True)`` adds NumPy's and Python's
generators, as plain tensors / numbers / tuples so that the result loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from typing import Any

import torch

__all__ = ["capture", "restore"]


def capture(*, host_libraries: bool = False) -> dict[str, Any]:
    """The global RNG state of the CPU and of every initialized CUDA device (and, with
    ``host_libraries``, of ``numpy.random`` and ``random``)."""
    cuda = torch.cuda.is_initialized() and torch.cuda.is_available()  # the cheap test first
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if cuda else []}
    if host_libraries:
        import numpy as np

        name, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        }
        state["python"] = random.getstate()
    return state


def restore(state: dict[str, Any]) -> None:
    """Set the generators captured by :func:`capture` back to ``state``."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        n = state["numpy"]
        np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "python" in state:
        random.setstate(_as_tuple(state["python"]))


def _as_tuple(x):
    """``random.setstate`` wants the nested tuples back that a checkpoint round trip made lists."""
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
