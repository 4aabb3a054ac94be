"""A run directory's ``config.json``: the run's settings plus where and on what it ran."""

from __future__ import annotations

import json
import os
from typing import Any

from .parts import Parts

__all__ = ["CONFIG_NAME", "write_config"]

CONFIG_NAME = "config.json"


def write_config(out_dir: str, config: dict[str, Any], parts: Parts) -> None:
    """``config.json``: ``config`` plus the device used, the number of processes and the split sizes."""
    b = parts.bundle
    with open(os.path.join(out_dir, CONFIG_NAME), "w") as f:
        json.dump({**config, "device_used": str(parts.device), "world_size": parts.world, "dataset_sizes": {
            "train": len(b.train), "val": len(b.val), "test": len(b.test)}}, f, indent=2)
