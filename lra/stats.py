"""The statistics of the report: intervals over seeds, differences from the baseline, Holm.

Accuracies are in %. A cell is one (task, model): its accuracies over seeds. Intervals are 95%
Student t (scipy.stats); a difference from the baseline is a paired t-test on the per-seed
differences when both cells hold the same seeds (at least two), else Welch's t-test; the
p-values of one model are Holm–Bonferroni-adjusted across the tasks of the table.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats

CONFIDENCE = 0.95
ALPHA = 0.05
MIN_SEEDS = 3  # fewer seeds on either side: no verdict


@dataclass(frozen=True)
class Interval:
    mean: float
    std: float  # sample std (ddof=1); 0 for one value
    n: int
    lo: float  # nan below two values
    hi: float


def interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean, sample std, n and the Student t interval of the mean."""
    n = len(values)
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if n > 1 else 0.0
    if n < 2:
        return Interval(mean, std, n, math.nan, math.nan)
    half = stats.t.ppf((1 + confidence) / 2, n - 1) * std / math.sqrt(n)
    return Interval(mean, std, n, mean - half, mean + half)


@dataclass(frozen=True)
class Difference:
    diff: float  # mean(model) - mean(baseline)
    lo: float
    hi: float
    p: float  # two-sided; nan where no test is possible
    test: str  # paired | welch | none


def difference(model: Mapping[int, float], baseline: Mapping[int, float]) -> Difference:
    """model - baseline, accuracies by seed: paired by seed when both hold the same seeds."""
    a, b = list(model.values()), list(baseline.values())
    diff = statistics.fmean(a) - statistics.fmean(b)
    if set(model) == set(baseline) and len(model) >= 2:
        seeds = sorted(model)
        result = stats.ttest_rel([model[s] for s in seeds], [baseline[s] for s in seeds])
        test = "paired"
    elif len(a) >= 2 and len(b) >= 2:
        result = stats.ttest_ind(a, b, equal_var=False)
        test = "welch"
    else:
        return Difference(diff, math.nan, math.nan, math.nan, "none")
    ci = result.confidence_interval(CONFIDENCE)
    p = float(result.pvalue)
    if math.isnan(p):  # every paired difference equal (zero variance): no test is meaningful
        return Difference(diff, float(ci.low), float(ci.high), math.nan, test)
    return Difference(diff, float(ci.low), float(ci.high), p, test)


def holm(pvalues: Mapping[str, float]) -> dict[str, float]:
    """Holm–Bonferroni: the k-th smallest of m p-values times (m - k + 1), kept monotone and at
    most 1; nan (no test) is left out and stays nan."""
    tested = sorted((p, key) for key, p in pvalues.items() if not math.isnan(p))
    m, running, out = len(tested), 0.0, {key: math.nan for key in pvalues}
    for k, (p, key) in enumerate(tested):
        running = max(running, min(1.0, (m - k) * p))
        out[key] = running
    return out


def verdict(d: Difference, p_adjusted: float, n_model: int, n_baseline: int) -> str:
    if min(n_model, n_baseline) < MIN_SEEDS:
        return "too few seeds"
    if math.isnan(p_adjusted) or p_adjusted >= ALPHA:
        return "no significant difference"
    return "better" if d.diff > 0 else "worse"


def average_interval(cells: Sequence[Mapping[int, float]]) -> Interval:
    """The average over tasks of the task means, with its interval: over the per-seed averages
    when every task holds the same seeds, else from the tasks' standard errors with Welch–
    Satterthwaite degrees of freedom."""
    k = len(cells)
    seeds = set(cells[0])
    if all(set(c) == seeds for c in cells) and len(seeds) >= 2:
        return interval([statistics.fmean(c[s] for c in cells) for s in sorted(seeds)])
    means = [statistics.fmean(c.values()) for c in cells]
    mean = statistics.fmean(means)
    if any(len(c) < 2 for c in cells):
        return Interval(mean, math.nan, min(len(c) for c in cells), math.nan, math.nan)
    v = [statistics.variance(c.values()) / len(c) for c in cells]  # squared standard errors
    se = math.sqrt(sum(v)) / k
    df = sum(v) ** 2 / sum(vi**2 / (len(c) - 1) for vi, c in zip(v, cells, strict=True))
    half = stats.t.ppf((1 + CONFIDENCE) / 2, df) * se
    return Interval(mean, math.nan, min(len(c) for c in cells), mean - half, mean + half)
