"""experiments.files: the directory lock (one writer at a time, holder named, no stale locks) and the
clean-up of temporary files that killed writers leave."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

from anl_fused.experiments import checkpoint
from anl_fused.experiments.files import (
    DirLock,
    DirLockedError,
    LockFileError,
    atomic_write,
    clean_temp_files,
)

HOLD = """
import sys, time
from anl_fused.experiments.files import DirLock
DirLock(sys.argv[1], "x.lock").acquire()
print("locked", flush=True)
time.sleep(120)
"""


def _holder(directory):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_locker_is_refused_with_the_holders_pid_and_the_lock_goes_with_its_process(tmp_path):
    d = tmp_path / "run"
    proc = _holder(d)
    try:
        with pytest.raises(DirLockedError, match=rf"{d}.* pid {proc.pid} on .*x\.lock"):
            DirLock(d, "x.lock").acquire()
    finally:
        proc.send_signal(signal.SIGKILL)  # a crash: no clean-up ran
        proc.wait()
    assert (d / "x.lock").exists()  # the kernel dropped the lock: it is taken again
    with DirLock(d, "x.lock") as lock:
        # flock: a second open file in the same process conflicts too
        with pytest.raises(DirLockedError, match=f"pid {os.getpid()}") as e:
            DirLock(d, "x.lock").acquire()
        assert f"pid {os.getpid()}" in e.value.holder
    assert not (d / "x.lock").exists()  # released: deleted
    lock.release()  # twice is harmless


def test_clean_temp_files_takes_only_atomic_writes_leftovers(tmp_path):
    keep = ["notes.tmp", "a.b.tmp", "checkpoint.pt", "x.ABCDEFGH.tmp", "other_app.q1w2e3r4.tmp", "x.pt.abcdefgh.tmp"]
    orphans = ["checkpoint.pt.k2_x9abq.tmp", "metrics.jsonl.0a1b2c3d.tmp"]
    for name in keep + orphans:
        (tmp_path / name).write_text("x")
    own = ("checkpoint.pt", "metrics.jsonl", "x.pt.abcdefgh")  # another program's names are never taken
    assert clean_temp_files(tmp_path, own) == sorted(orphans)
    assert sorted(os.listdir(tmp_path)) == sorted(keep)
    assert clean_temp_files(tmp_path / "missing", own) == []


def test_a_lock_file_that_is_a_symlink_is_refused_and_its_target_untouched(tmp_path):
    """Issue #18: train.lock through a symbolic link overwrote (then unlinked) the link's target."""
    (tmp_path / "lk").mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("important\n")
    os.symlink("../victim.txt", tmp_path / "lk" / "train.lock")
    with pytest.raises(LockFileError, match="not a regular file"):
        DirLock(tmp_path / "lk", "train.lock").acquire()
    assert victim.read_text() == "important\n" and os.path.islink(tmp_path / "lk" / "train.lock")


def test_a_lock_file_that_is_a_fifo_is_refused_at_once(tmp_path):
    """Issue #18: a FIFO at train.lock blocked the open forever."""
    os.mkfifo(tmp_path / "train.lock")

    def hung(signum, frame):
        raise TimeoutError("opening the lock file blocked")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        with pytest.raises(LockFileError, match="not a regular file"):
            DirLock(tmp_path, "train.lock").acquire()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_a_killed_writer_leaves_a_temp_file_that_clean_temp_files_removes(tmp_path):
    code = (
        "import sys, time; from anl_fused.experiments.files import atomic_write\n"
        "def slow(f):\n    f.write(b'half'); f.flush(); print('writing', flush=True); time.sleep(120)\n"
        "atomic_write(sys.argv[1], slow)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "checkpoint.pt")], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (left,) = os.listdir(tmp_path)
    assert left.startswith("checkpoint.pt.") and left.endswith(".tmp")
    assert clean_temp_files(tmp_path, ["checkpoint.pt"]) == [left] and not os.listdir(tmp_path)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_files_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        atomic_write(tmp_path / "a.json", "{}")
        checkpoint.save(tmp_path / "c.pt", {"w": torch.ones(1)})
        with DirLock(tmp_path / "d", "x.lock"):
            lock_mode = os.stat(tmp_path / "d" / "x.lock").st_mode & 0o777
        assert os.umask(mask) == mask  # reading the umask did not change it
    finally:
        os.umask(old)
    for name in ("a.json", "c.pt"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o666 & ~mask, name
    assert lock_mode == 0o666 & ~mask


def _partial_then_fail(fig, target, **kwargs):
    """A ``savefig`` that dies mid-write (a full disk, a kill): some bytes, then an error."""
    if hasattr(target, "write"):
        target.write(b"partial")
    else:
        with open(target, "wb") as f:
            f.write(b"partial")
    raise OSError("disk full")


def test_save_figure_never_leaves_a_half_written_image(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.figure
    import matplotlib.pyplot as plt

    from anl_fused.experiments import figures
    from anl_fused.experiments.files import save_figure

    fig = plt.figure()
    out = tmp_path / "deep" / "f.png"
    save_figure(fig, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    save_figure(fig, tmp_path / "f.svg")
    assert b"<svg" in (tmp_path / "f.svg").read_bytes()
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", _partial_then_fail)
    for save in (save_figure, figures._save):
        out.write_bytes(b"old")
        with pytest.raises(OSError, match="disk full"):
            save(plt.figure(), str(out))
        assert out.read_bytes() == b"old"
        assert sorted(os.listdir(out.parent)) == ["f.png"]  # no temporary file left either


def test_result_files_are_written_atomically():
    """Every result file of the experiments and the benchmarks goes through atomic_write / save_figure:
    no ``open(..., "w")`` and no ``savefig`` on a path outside files.py (and run.py's stand-in for a broken
    install)."""
    import ast
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2]
    offenders = []
    # run.py's stand-in writer (temp file + rename) serves when the package itself fails to import
    allowed = {("run.py", "_write_replacing")}
    for path in [*(root / "anl_fused" / "experiments").rglob("*.py"), *(root / "benchmarks").glob("*.py")]:
        if path.name == "files.py":
            continue
        tree = ast.parse(path.read_text())
        skip = {
            id(n)
            for f in ast.walk(tree)
            if isinstance(f, ast.FunctionDef) and (path.name, f.name) in allowed
            for n in ast.walk(f)
        }
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr == "savefig":
                offenders.append(f"{path.relative_to(root)}:{node.lineno} savefig")
            if isinstance(func, ast.Name) and func.id == "open":
                modes = [a for a in node.args[1:2]] + [k.value for k in node.keywords if k.arg == "mode"]
                if any(isinstance(m, ast.Constant) and set(str(m.value)) & set("wx") for m in modes):
                    offenders.append(f"{path.relative_to(root)}:{node.lineno} open for writing")
    assert offenders == []
