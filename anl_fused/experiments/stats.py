"""Statistics of seed sweeps: summaries over seeds, paired differences (the paired t-test with its CI and a BCa
bootstrap CI, ``scipy.stats``), diverged runs, Holm's correction and the power of a paired t-test. Differences are
``arm - reference`` per seed; errors are in percent."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

DIVERGED = 80.0  # a final test error (%) at or above this is a diverged run (10 classes: chance is 90%)


def diverged(test_err_pct: float, train_loss: float = 0.0) -> bool:
    """A run stuck at chance (or whose training loss is not finite): marked, left out of the paired differences."""
    return test_err_pct >= DIVERGED or not math.isfinite(train_loss)


def summary(values: Sequence[float]) -> dict:
    """``{"n", "mean", "std", "min", "max", "values"}``; the std of fewer than two values is None (not 0)."""
    values = [float(v) for v in values]
    return {
        "n": len(values),
        "mean": statistics.fmean(values) if values else None,
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "min": min(values, default=None),
        "max": max(values, default=None),
        "values": values,
    }


def spread(st: dict, one: str = " (1 seed)") -> str:
    """A :func:`summary` as ``mean ± std``, or its one value and ``one``: no standard deviation of one value."""
    return f"{st['mean']:.2f}" + (f" ± {st['std']:.2f}" if st["n"] > 1 else one)


def differences(diffs: Sequence[float]) -> dict:
    """:func:`summary` of per-seed differences with the standard error of their mean and the number of seeds where
    the arm was better (< 0), the same and worse."""
    s = summary(diffs)
    d = s["values"]
    return {
        **s,
        "se": s["std"] / math.sqrt(s["n"]) if s["std"] is not None else None,
        "better": sum(x < 0 for x in d),
        "same": sum(x == 0 for x in d),
        "worse": sum(x > 0 for x in d),
    }


def pair(arm: Mapping[int, float], ref: Mapping[int, float]) -> tuple[list[int], list[float]]:
    """The seeds both have where neither run diverged, and the differences ``arm - ref`` on them (a diverged run's
    difference says nothing more)."""
    seeds = sorted(s for s in arm if s in ref and not diverged(arm[s]) and not diverged(ref[s]))
    return seeds, [arm[s] - ref[s] for s in seeds]


def paired(diffs: Sequence[float], *, confidence: float = 0.95, resamples: int = 10_000, seed: int = 0) -> dict:
    """:func:`differences` with the t-test (two-sided ``p``, the ``confidence`` CI ``ci``) and a BCa bootstrap CI of
    the mean (``bootstrap_ci``; ``resamples``, seeded) as a check. Needs at least two differences."""
    from scipy import stats

    r = differences(diffs)
    d, n, mean, sd = r["values"], r["n"], r["mean"], r["std"]
    if n < 2:
        raise ValueError(f"a paired test needs at least 2 seeds, got {n}")
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * r["se"]
    if sd > 0:
        p = float(stats.ttest_1samp(d, 0.0).pvalue)
        boot = stats.bootstrap(
            (d,), statistics.fmean, confidence_level=confidence, n_resamples=resamples, method="BCa", random_state=seed
        )
        boot_ci = [float(boot.confidence_interval.low), float(boot.confidence_interval.high)]
    else:  # every seed gave the same difference: no spread to test against
        p, boot_ci = (1.0 if mean == 0 else 0.0), [mean, mean]
    return {**r, "ci": [mean - half, mean + half], "p": p, "bootstrap_ci": boot_ci}


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjusted p-values (family-wise error), by name."""
    order = sorted(pvalues, key=pvalues.get)
    m, running, out = len(order), 0.0, {}
    for i, name in enumerate(order):
        running = max(running, min(1.0, (m - i) * pvalues[name]))
        out[name] = running
    return out


def power(n: int, effect: float, sd: float, alpha: float = 0.05) -> float:
    """Power of a two-sided paired t-test with ``n`` seeds to detect a mean difference ``effect`` when the
    differences' standard deviation is ``sd`` (noncentral t)."""
    from scipy import stats

    if n < 2:
        return 0.0
    if sd <= 0:
        return 1.0
    df, nc = n - 1, abs(effect) * math.sqrt(n) / sd
    t = stats.t.ppf(1 - alpha / 2, df)
    return float(1 - stats.nct.cdf(t, df, nc) + stats.nct.cdf(-t, df, nc))


def seeds_for_power(effect: float, sd: float, *, target: float = 0.8, low: int = 2, high: int = 1000) -> int:
    """The smallest ``n`` in ``[low, high]`` whose :func:`power` reaches ``target`` (``high`` if none does)."""
    for n in range(max(low, 2), high + 1):
        if power(n, effect, sd) >= target:
            return n
    return high
