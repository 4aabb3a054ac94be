"""Pools the paired TwoRound/floor ratios of before/after bench files:
``python pool.py "lenet5-b32-t1-cpp-kept-r81-{side}-{i}.json" 1,2,3`` (median, bootstrap 95% interval)."""

import json
import random
import statistics
import sys

pattern, runs = sys.argv[1], sys.argv[2].split(",")
for side in ("before", "after"):
    ratios, diffs = [], []
    for i in runs:
        with open(pattern.format(side=side, i=i)) as f:
            times = json.load(f)["steps"][0]["times_s"]
        ratios += [a / b for a, b in zip(times["tworound"], times["floor"])]
        diffs += [a - b for a, b in zip(times["tworound"], times["floor"])]
    random.seed(0)
    boots = sorted(statistics.median(random.choices(ratios, k=len(ratios))) for _ in range(2000))
    print(
        f"{side:6s} n={len(ratios)} median TwoRound/floor {statistics.median(ratios):.4f} "
        f"(bootstrap 95% [{boots[50]:.4f}, {boots[1950]:.4f}]), "
        f"median TwoRound - floor {statistics.median(diffs) * 1e3:.3f} ms"
    )
