"""Statistics of cross-validated scores, with the fold as the unit of replication.

Units that share a fold share its test speakers, so they are not independent observations:
every summary here first averages a fold's units (its seeds) into one value, then treats the
folds as the n observations. A mean gets a Student-t 95% confidence interval with df = n - 1
and a standard deviation with ddof=1; a gain (a paired difference, e.g. ``better - worse`` on
the same folds) gets a two-sided one-sample t-test of zero mean with df = n - 1 and the 95% CI
of the mean gain. A family of such tests is corrected with Holm's step-down method.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

LEVEL = 0.95  # confidence level of every interval
ALPHA = 0.05  # family-wise error rate a claim must hold at, after Holm


def fold_means(pairs: Iterable[Tuple[int, object]]) -> Tuple[List[int], np.ndarray]:
    """``(fold, value)`` pairs -> (the folds, sorted; the mean value of each fold, along the
    first axis). Two seeds scored on one fold become one observation. A value may be a vector
    (several scores of one unit), averaged element-wise."""
    by_fold: Dict[int, list] = {}
    for fold, value in pairs:
        by_fold.setdefault(int(fold), []).append(np.asarray(value, dtype=float))
    folds = sorted(by_fold)
    return folds, np.asarray([np.mean(by_fold[k], axis=0) for k in folds], dtype=float)


def _interval(mean: float, se: float, n: int, level: float) -> List[float]:
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * se
    return [mean - half, mean + half]


def mean_ci(values: Sequence[float], level: float = LEVEL) -> Dict[str, object]:
    """Mean, sd (ddof=1) and t confidence interval (df = n - 1) of per-fold values;
    ``sd`` and ``ci95`` are None for a single fold."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = float(values.mean())
    if n < 2:
        return {"mean": mean, "sd": None, "ci95": None, "n_folds": n}
    sd = float(values.std(ddof=1))
    return {
        "mean": mean,
        "sd": sd,
        "ci95": _interval(mean, sd / np.sqrt(n), n, level),
        "n_folds": n,
    }


def paired_test(differences: Sequence[float], level: float = LEVEL) -> Optional[Dict[str, object]]:
    """Two-sided t-test that the mean of per-fold paired differences is zero (df = n - 1), with
    the CI of the mean gain and how many folds it won / lost. None for fewer than 2 folds. If
    every fold's difference is the same, ``t`` is None and ``p`` is 0 (or 1 if they are all 0)."""
    diff = np.asarray(differences, dtype=float)
    n = len(diff)
    if n < 2:
        return None
    mean = float(diff.mean())
    sd = float(diff.std(ddof=1))
    se = sd / np.sqrt(n)
    if se > 0:
        t = mean / se
        p = float(min(1.0, 2 * stats.t.sf(abs(t), n - 1)))
        t = float(t)
    else:
        t, p = None, (1.0 if mean == 0 else 0.0)
    return {
        "mean": mean,
        "sd": sd,
        "ci95": _interval(mean, se, n, level),
        "t": t,
        "df": n - 1,
        "p": p,
        "n_folds": n,
        "wins": int((diff > 0).sum()),
        "losses": int((diff < 0).sum()),
    }


def holm(p_values: Sequence[float]) -> List[float]:
    """Holm-adjusted p-values, in the input order: the i-th smallest p times (m - i + 1), made
    non-decreasing in that order and capped at 1."""
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return [float(x) for x in out]


def correct_family(tests: Sequence[dict], alpha: float = ALPHA) -> None:
    """Adds ``p_holm``, ``holds`` (the gain is positive and p_holm < alpha) and ``verdict`` to
    each ``paired_test`` result of one family, in place."""
    for test, p in zip(tests, holm([t["p"] for t in tests])):
        test["p_holm"] = p
        significant = p < alpha
        test["holds"] = bool(significant and test["mean"] > 0)
        test["verdict"] = "holds" if test["holds"] else "reversed" if significant else "not shown"
