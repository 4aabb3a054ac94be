"""Statistics of paired seeds: the paired t-test with its CI, a bootstrap CI, Holm's correction and the
power of a paired t-test (``scipy.stats``). Differences are ``arm - control`` per seed."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

__all__ = ["holm", "paired", "power", "seeds_for_power", "summary"]


def summary(values: Sequence[float]) -> dict:
    """``{"n", "mean", "std", "values"}``; the std of fewer than two values is None (not 0)."""
    values = [float(v) for v in values]
    return {
        "n": len(values),
        "mean": statistics.fmean(values) if values else None,
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "values": values,
    }


def paired(diffs: Sequence[float], *, confidence: float = 0.95, resamples: int = 10_000, seed: int = 0) -> dict:
    """Paired analysis of per-seed differences: mean, std, the t-test (two-sided p, ``confidence`` CI) and a
    BCa bootstrap CI of the mean (``resamples``, seeded) as a check. Needs at least two differences."""
    from scipy import stats

    d = [float(x) for x in diffs]
    n = len(d)
    if n < 2:
        raise ValueError(f"a paired test needs at least 2 seeds, got {n}")
    mean, sd = statistics.fmean(d), statistics.stdev(d)
    se = sd / math.sqrt(n)
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * se
    if sd > 0:
        p = float(stats.ttest_1samp(d, 0.0).pvalue)
        boot = stats.bootstrap(
            (d,), statistics.fmean, confidence_level=confidence, n_resamples=resamples, method="BCa", random_state=seed
        )
        boot_ci = [float(boot.confidence_interval.low), float(boot.confidence_interval.high)]
    else:  # every seed gave the same difference: no spread to test against
        p, boot_ci = (1.0 if mean == 0 else 0.0), [mean, mean]
    return {
        "n": n,
        "mean": mean,
        "std": sd,
        "se": se,
        "ci": [mean - half, mean + half],
        "p": p,
        "bootstrap_ci": boot_ci,
        "better": sum(x < 0 for x in d),
        "same": sum(x == 0 for x in d),
        "worse": sum(x > 0 for x in d),
        "diffs": d,
    }


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
