"""Final validation error and loss per eps of `anl-fused demo --variants anl` sweeps (their runs' metrics)."""

import glob
import os
import statistics
import sys

from anl_fused.experiments.train.metrics import read_metrics

for root in sys.argv[1:]:
    by_eps: dict[str, list[tuple[float, float]]] = {}
    for run in sorted(glob.glob(f"{root}/runs/anl-eps*-seed*")):
        last = read_metrics(run)[-1]
        eps = os.path.basename(run).split("-")[1].removeprefix("eps")
        by_eps.setdefault(eps, []).append((100 * (1 - last["val_acc"]), last["val_loss"]))
    for eps, rows in by_eps.items():
        errors = [round(e, 2) for e, _ in rows]
        loss = statistics.mean(loss for _, loss in rows)
        print(root, eps, errors, f"{statistics.mean(errors):.2f}", f"{loss:.4f}")
