"""Statistics of the ablation grid: intervals over images, paired tests against a baseline, Holm.

- Bootstrap 95 % interval of a cell's mean per-image metric: images resampled with replacement
  (percentile interval, fixed seed), pooled over the cell's seeds.
- Paired comparison of a cell with the baseline cell: the per-image metric of the same prompt
  (the same conditioning tile, the same sampling noise) and the same seed rank in both cells;
  Wilcoxon signed-rank test (two-sided, `scipy.stats.wilcoxon`) on the paired differences; the
  p-values of all comparisons of one grid are Holm-corrected together (family-wise error 5 %).
- A difference is "outside the noise" when its Holm-corrected p < 0.05 and, when the baseline has
  two or more seeds, its median paired difference is also larger than the median |difference|
  between the baseline's own seeds (the training noise, which a per-image test alone ignores).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

ALPHA = 0.05
TEST_NAME = "Wilcoxon signed-rank (two-sided), paired over prompt x seed, Holm-corrected"


def bootstrap_ci(values: Sequence[float], n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean; (nan, nan) for fewer than two values."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if len(x) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def wilcoxon_paired(a: Sequence[float], b: Sequence[float]) -> dict:
    """Paired test of a - b: p-value, median difference, number of pairs (p = 1 when all pairs tie)."""
    from scipy.stats import wilcoxon

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = ~(np.isnan(a) | np.isnan(b))
    d = a[keep] - b[keep]
    out = {"n_pairs": int(len(d)), "median_diff": float(np.median(d)) if len(d) else math.nan,
           "mean_diff": float(d.mean()) if len(d) else math.nan}
    if len(d) < 2 or np.allclose(d, 0):
        return {**out, "statistic": math.nan, "p": 1.0}
    res = wilcoxon(d, zero_method="wilcox", alternative="two-sided")
    return {**out, "statistic": float(res.statistic), "p": float(res.pvalue)}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given)."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p)
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def outside_noise(p_holm: float, median_diff: float, seed_noise: float | None) -> bool:
    if not p_holm < ALPHA:
        return False
    return seed_noise is None or math.isnan(seed_noise) or abs(median_diff) > seed_noise
