"""Where a result was measured: the one description of the machine that every experiment and benchmark records."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import subprocess
import sys

import torch

__all__ = ["cpu_model", "machine_info"]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _triton() -> str | None:
    try:
        import triton
    except ModuleNotFoundError:
        return None
    except Exception as e:  # an install that does not import
        return f"import failed: {type(e).__name__}: {e}"
    return triton.__version__


def _git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=here, timeout=30)
    except (OSError, subprocess.SubprocessError):
        out = None
    return out.stdout.strip() if out is not None and out.returncode == 0 else os.environ.get("ANL_FUSED_COMMIT")


def machine_info(device: torch.device | str = "cpu") -> dict:
    """The date (UTC), the device, the CPU model and count, torch's intra-op threads, the versions of Python, torch,
    CUDA and Triton, the platform and the git commit (on CUDA also the GPU's name). Cheap: no kernel is built."""
    device = torch.device(device)
    info = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": _triton(),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
    }
    if device.type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
