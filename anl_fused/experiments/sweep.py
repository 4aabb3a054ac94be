"""Seed sweeps: runs of ``anl-fused train`` in child processes, ``parallel`` at a time, resumable.

A :class:`Job` is one run: its directory, its ``anl-fused train`` arguments and its length in epochs (configs x
seeds: :func:`train_job` makes one from a run's settings). :func:`run` skips a finished run (the last line of its
``metrics.jsonl`` is its last epoch), resumes a partial one (``train --resume``: the directory holds a run) and starts
a new one without it; with ``overwrite`` every run starts over (``--overwrite``). Each child runs under ``nice``, its
output appended to the run's ``train.log``. Ctrl-C, or SIGTERM to the sweep, asks every running child to checkpoint
and stop and re-raises ``KeyboardInterrupt``: the next sweep continues every run where it stopped, bitwise.
``demo`` and ``study`` run their trainings this way.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from .train.metrics import read_metrics
from .train.rundir import describe_run

__all__ = ["LOG_NAME", "Job", "command", "finished", "run", "state", "train_args", "train_job"]

LOG_NAME = "train.log"  # each child's output, appended, after a line with its command


@dataclass(frozen=True)
class Job:
    """One run: ``args`` are its ``anl-fused`` arguments without ``--resume`` / ``--overwrite``."""

    name: str
    run_dir: str
    args: tuple[str, ...]
    epochs: int


def train_args(settings: Mapping[str, Any], run_dir: str, threads: int) -> list[str]:
    """``anl-fused train`` arguments: ``--name value`` per setting (None: left out; True: the flag alone), then
    ``--threads``, ``--out`` and ``--no-progress``."""
    args = ["train"]
    for key, value in settings.items():
        if value is not None and value is not False:
            args += [f"--{key.replace('_', '-')}", *([] if value is True else [str(value)])]
    return args + ["--threads", str(threads), "--out", run_dir, "--no-progress"]


def train_job(name: str, run_dir: str, settings: Mapping[str, Any], threads: int) -> Job:
    """The run of ``anl-fused train`` with ``settings`` (``epochs`` + ``finetune_epochs`` long) in ``run_dir``."""
    epochs = settings["epochs"] + (settings.get("finetune_epochs") or 0)
    return Job(name, run_dir, tuple(train_args(settings, run_dir, threads)), epochs)


def finished(run_dir: str, epochs: int) -> bool:
    """Whether the run in ``run_dir`` trained its ``epochs`` (``ValueError`` for a corrupted ``metrics.jsonl``)."""
    hist = read_metrics(run_dir)
    return bool(hist) and hist[-1].get("epoch") == epochs


def state(job: Job) -> str:
    """``finished``, ``partial`` (its directory holds a run: resumed) or ``new``."""
    if finished(job.run_dir, job.epochs):
        return "finished"
    return "partial" if describe_run(job.run_dir) is not None else "new"


def command(job: Job, overwrite: bool = False) -> list[str]:
    """The job's ``anl-fused`` arguments: ``--overwrite`` when asked, else ``--resume`` for a run that has started."""
    if overwrite:
        return [*job.args, "--overwrite"]
    return [*job.args, *(["--resume"] if describe_run(job.run_dir) is not None else [])]


def _interrupt(signum, frame):
    raise KeyboardInterrupt


class _Children:
    """The running children; :meth:`one` runs a job to its end, :meth:`stop` asks them all to checkpoint and stop."""

    def __init__(self, nice: int, overwrite: bool, log: Callable[[str], None], on_exit):
        self.nice, self.overwrite, self.log, self.on_exit = nice, overwrite, log, on_exit
        self.lock, self.stopping = threading.Lock(), False
        self.running: dict[int, subprocess.Popen] = {}
        self.failed: list[tuple[Job, int]] = []

    def _start(self, job: Job):
        os.makedirs(job.run_dir, exist_ok=True)
        args = command(job, self.overwrite)
        logf = open(os.path.join(job.run_dir, LOG_NAME), "a")  # noqa: SIM115 - closed when the child ends
        logf.write(f"# {dt.datetime.now().isoformat(timespec='seconds')} anl-fused {' '.join(args)}\n")
        logf.flush()
        argv = [*(["nice", "-n", str(self.nice)] if self.nice else []), sys.executable, "-m", "anl_fused.cli", *args]
        # PYTHONSAFEPATH (3.11+): the child imports the anl_fused this interpreter has installed, never an anl_fused/
        # in the working directory (`-m` puts it first: a checkout's root would shadow a non-editable install, and
        # its anl_fused/ has no kernels subpackage, so the C++ kernels would silently not load)
        env = {**os.environ, "PYTHONSAFEPATH": "1"}
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, env=env)
        self.running[proc.pid] = proc
        return proc, logf

    def one(self, job: Job) -> None:
        with self.lock:  # no child starts after stop()
            if self.stopping:
                return
            proc, logf = self._start(job)
        self.log(f"started  {job.name} (pid {proc.pid})")
        t0 = time.time()
        with logf:
            rc = proc.wait()
        wall = time.time() - t0
        with self.lock:
            del self.running[proc.pid]
        if self.on_exit:
            self.on_exit(job, rc, wall)
        try:
            hist = read_metrics(job.run_dir)
        except ValueError:
            hist = []
        err = f"test err {hist[-1]['test_err'] * 100:.2f}% at epoch {hist[-1]['epoch']}" if hist else "no epoch"
        if self.stopping:  # checkpointed on the interrupt (exit 130): the next sweep resumes it
            self.log(f"stopped  {job.name} (exit {rc}, {err})")
        elif rc:
            self.failed.append((job, rc))
            self.log(f"FAILED   {job.name} (exit {rc}, {err}); see {os.path.join(job.run_dir, LOG_NAME)}")
        else:
            self.log(f"finished {job.name} in {wall / 60:.1f} min, {err}")

    def stop(self) -> None:
        self.log("interrupt: asking the running trainings to checkpoint and stop (run again to resume)")
        with self.lock:
            self.stopping = True
            for proc in self.running.values():
                proc.send_signal(signal.SIGINT)


def run(
    jobs: list[Job],
    *,
    parallel: int = 1,
    nice: int = 0,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    on_exit: Callable[[Job, int, float], None] | None = None,
) -> list[tuple[Job, int]]:
    """Runs the jobs that have not finished (every job with ``overwrite``), ``parallel`` at a time, in order; returns
    the failed ones with their exit codes. ``on_exit(job, exit code, wall seconds)`` follows each child's end.
    Ctrl-C / SIGTERM: every running child checkpoints and stops, no other starts, ``KeyboardInterrupt`` is raised."""
    children = _Children(nice, overwrite, log, on_exit)
    todo = [j for j in jobs if overwrite or state(j) != "finished"]
    old = signal.signal(signal.SIGTERM, _interrupt)  # kill PID (a nohup'ed sweep ignores SIGINT) stops like Ctrl-C
    try:
        with ThreadPoolExecutor(max(1, parallel)) as pool:
            try:
                for future in as_completed([pool.submit(children.one, j) for j in todo]):
                    future.result()
            except KeyboardInterrupt:
                children.stop()  # the pool's exit waits for the children to checkpoint
                raise
    finally:
        signal.signal(signal.SIGTERM, old)
    return children.failed
