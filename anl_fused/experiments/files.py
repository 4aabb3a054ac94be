"""Writing result files so that a crash never leaves a half-written one: one function for all of them.

``atomic_write(path, data)`` writes to a temporary file in the target's directory, flushes it to
disk and renames it over ``path`` (``os.replace`` is atomic on POSIX and Windows). The file gets the
permissions any new file would get (the process umask), not ``mkstemp``'s private 0600.
"""

from __future__ import annotations

import os
import tempfile
from typing import IO, Callable

__all__ = ["atomic_write", "resolve_device"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, data: str | bytes | Callable[[IO[bytes]], None]) -> None:
    """Atomically replace ``path`` by ``data``: text (UTF-8), bytes, or a function that writes to a
    binary file object (e.g. ``lambda f: torch.save(obj, f)``). Creates missing parent directories."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def resolve_device(device: str):
    """``"auto"``: CUDA when available, else the CPU; anything else as ``torch.device(device)``."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
