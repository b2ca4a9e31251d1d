"""Statistics of the ablation grid: intervals over images, paired tests, and a seed-level gate.

Two questions, two replicate units:

- "Do these two cells' images differ?" The per-image metric of the same prompt (the same
  conditioning tile, the same sampling noise) and the same seed rank in both cells is paired;
  Wilcoxon signed-rank test (two-sided, `scipy.stats.wilcoxon`) on the paired differences; the
  p-values of all cell-vs-baseline comparisons of one grid are Holm-corrected together (family-wise
  error 5 %). With many images this detects any real difference between two trained models, and two
  training seeds of one cell are two different models: per-image pairing alone flags a seed change.
- "Does the cell differ beyond training noise?" Here the replicate is the training seed: per cell
  and metric the per-seed means m_{c,s}; the within-cell seed variance s^2 pooled over all cells
  with two or more seeds (df = sum(n_c - 1), as in a one-way ANOVA); cell vs baseline
  t = (mean_c - mean_b) / (s * sqrt(1/n_c + 1/n_b)), two-sided p from Student's t(df).

A difference is "outside the noise" when its Holm-corrected per-image p < 0.05 AND its seed-level
p < 0.05. With one seed per cell (df = 0) training noise cannot be estimated: the verdict rests on
the images alone and the table says so.

- Bootstrap 95 % interval of a cell's mean per-image metric: images resampled with replacement
  (percentile interval, fixed seed), pooled over the cell's seeds.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

ALPHA = 0.05
TEST_NAME = "Wilcoxon signed-rank (two-sided), paired over prompt x seed, Holm-corrected"
SEED_TEST_NAME = "t-test on per-seed means, within-cell seed variance pooled over the grid's cells"
ONE_SEED_NOTE = "training noise not estimated (one seed): differences are judged on the images alone"


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


def pooled_seed_sd(seed_means: Mapping[str, Sequence[float]]) -> tuple[float, int]:
    """(s, df): the within-cell sd of per-seed means, pooled over cells with >= 2 seeds; (nan, 0) if none."""
    squares, df = 0.0, 0
    for values in seed_means.values():
        x = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
        if len(x) >= 2:
            squares += float(((x - x.mean()) ** 2).sum())
            df += len(x) - 1
    return (math.sqrt(squares / df), df) if df else (math.nan, 0)


def seed_level_test(cell: Sequence[float], base: Sequence[float], sd: float, df: int) -> dict:
    """Cell vs baseline on per-seed means with the pooled seed sd: t, df, two-sided p (nan when df = 0)."""
    from scipy.stats import t as student_t

    cell = np.asarray([v for v in cell if not math.isnan(v)], dtype=float)
    base = np.asarray([v for v in base if not math.isnan(v)], dtype=float)
    diff = float(cell.mean() - base.mean()) if len(cell) and len(base) else math.nan
    out = {"seed_diff": diff, "seed_sd": sd, "seed_df": int(df)}
    if df == 0 or math.isnan(diff) or math.isnan(sd):
        return {**out, "seed_t": math.nan, "seed_p": math.nan}
    se = sd * math.sqrt(1 / len(cell) + 1 / len(base))
    if se == 0:   # every seed of every cell gave the same mean: any difference is exact
        return {**out, "seed_t": math.inf if diff else 0.0, "seed_p": 0.0 if diff else 1.0}
    t = diff / se
    return {**out, "seed_t": float(t), "seed_p": float(2 * student_t.sf(abs(t), df))}


def outside_noise(p_holm: float, seed_p: float) -> bool:
    """Holm p < 0.05 and, where training noise was estimated (seed_p not nan), seed-level p < 0.05."""
    if not p_holm < ALPHA:
        return False
    return math.isnan(seed_p) or seed_p < ALPHA
