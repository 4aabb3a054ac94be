"""Result files and output directories that a crash or a second process never spoils.

:func:`atomic_write` writes a temporary file ``NAME.XXXXXXXX.tmp`` beside the target, flushes it to disk and renames
it over the target (the umask's permissions); :func:`clean_temp_files` removes those a killed writer left.
:class:`DirLock`: one writer per output directory, an ``fcntl.flock`` held for the writer's life (the kernel drops it
when the process dies: never a stale lock) on a lock file naming the holder (pid, host, start, command line); it
never follows a symbolic link nor blocks on a FIFO. POSIX only.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import re
import secrets
import socket
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable
from typing import IO

_TEMP_TAIL = r"\.[a-z0-9_]{8}\.tmp"  # atomic_write's temporary files: NAME + 8 characters (once tempfile.mkstemp's)


def atomic_write(path: str | os.PathLike, data: str | bytes | Callable[[IO[bytes]], None]) -> None:
    """Atomically replace ``path`` by ``data``: text (UTF-8), bytes, or a function that writes to a
    binary file object (e.g. ``lambda f: torch.save(obj, f)``). Creates missing parent directories."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.{secrets.token_hex(4)}.tmp"  # a new file (O_EXCL: never through a file or link at that name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as to any new file
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def save_figure(fig, path: str | os.PathLike, *, dpi: float = 110, format: str | None = None) -> None:
    """Write the matplotlib figure ``fig`` to ``path`` atomically (never a half-written image), in
    ``format`` (default: from the file name's extension, else PNG)."""
    fmt = format or os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or "png"
    atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=dpi))


def resolve_device(device: str):
    """``"auto"``: CUDA when available, else the CPU; anything else as ``torch.device(device)``."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def clean_temp_files(directory: str | os.PathLike, names: Iterable[str]) -> list[str]:
    """Remove the temporary files that writers killed mid-write left in ``directory`` for the files ``names`` (only
    ``atomic_write``'s ``NAME.XXXXXXXX.tmp`` of those names: another program's ``*.tmp`` stays); returns their names.
    Call it while holding the directory's :class:`DirLock`, so that no live writer's file is taken."""
    own = re.compile("(?:" + "|".join(re.escape(n) for n in names) + ")" + _TEMP_TAIL)
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            if own.fullmatch(name) and os.path.isfile(path) and not os.path.islink(path):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    removed.append(name)
    return removed


def out_error(path: str, directory: bool) -> str | None:
    """Why ``--out PATH`` (a file, or with ``directory`` a folder) cannot be written, or ``None``: a temporary
    file is created and removed in the nearest existing folder (``atomic_write`` and the AOT report create
    missing ones), which also catches read-only file systems and a user who may write anywhere."""
    if not directory and os.path.isdir(path):
        return f"--out {path} is a directory; give a file name (e.g. {os.path.join(path, 'bench.json')})"
    target = path if directory and os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    while not os.path.exists(target):
        target = os.path.dirname(target)
    try:
        with tempfile.TemporaryFile(dir=target):
            pass
    except OSError as e:
        return (
            f"--out {path}: not writable (creating a file in {target} failed: {e.strerror or e}); choose another path"
        )
    return None


def check_out_dir(path: str | os.PathLike, option: str = "--out") -> None:
    """Refuse (``ValueError``) an output directory that is a file system's root (``/``): a run's
    files, lock and cleanup belong in a directory of their own."""
    real = os.path.realpath(os.fspath(path))
    if os.path.dirname(real) == real:
        raise ValueError(f"{option} {os.fspath(path)!r} is the root of the file system; give a directory of its own")


class LockFileError(OSError):
    """A lock file that is not a regular file (a symbolic link, a FIFO, a directory): never opened."""


def _open_lock(path: str, flags: int) -> int:
    """``os.open`` a lock file without following a symbolic link or blocking on a FIFO; refuses
    (:class:`LockFileError`) anything but a regular file."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):  # a link, a FIFO without reader, a directory
            raise LockFileError(f"lock file {path!r} is not a regular file ({e.strerror}); remove it") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise LockFileError(f"lock file {path!r} is not a regular file; remove it")
    os.set_blocking(fd, True)
    return fd


class DirLockedError(RuntimeError):
    """The directory is locked by another live process; the message names both, ``holder`` the process."""

    def __init__(self, message: str, holder: str):
        super().__init__(message)
        self.holder = holder


def _describe_holder(text: str) -> str:
    try:
        h = json.loads(text)
        return f"pid {h['pid']} on {h['host']}, started {h['started']}: {h['command']}"
    except (ValueError, KeyError, TypeError):
        return "another process (it has not written its details yet)"


class DirLock:
    """An exclusive lock on ``directory`` (created if missing) for as long as it is held::

    with DirLock("runs/a", "train.lock"):   # raises DirLockedError naming the holder
        ...
    """

    def __init__(self, directory: str | os.PathLike, name: str):
        self.directory, self.name = os.fspath(directory), name
        self.path = os.path.join(self.directory, name)
        self._fd: int | None = None

    def acquire(self) -> DirLock:
        import fcntl

        os.makedirs(self.directory, exist_ok=True)
        while True:
            fd = _open_lock(self.path, os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = _describe_holder(os.pread(fd, 4096, 0).decode(errors="replace"))
                os.close(fd)
                if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                    msg = f"{self.directory!r} is in use by {holder} (lock file {self.path!r})"
                    raise DirLockedError(msg, holder) from None
                raise
            if self._same_file(fd):  # not a file that its last holder unlinked while we waited for it
                break
            os.close(fd)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(sys.argv)[:300],
            "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def _same_file(self, fd: int) -> bool:
        try:
            a, b = os.fstat(fd), os.stat(self.path)
        except FileNotFoundError:
            return False
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)

    def release(self) -> None:
        """Delete the lock file, then drop the lock (in this order, so that nobody locks a deleted file)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def md_table(header: list[str], rows: Iterable[list], align: list[str] | None = None) -> list[str]:
    """The lines of a Markdown table (a ``|`` in a cell escaped, a newline made a space); ``align``: one
    separator cell per column (default ``---``)."""
    line = lambda cells: "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"
    return [line(header), "|" + "|".join(align or ["---"] * len(header)) + "|", *(line(r) for r in rows)]
