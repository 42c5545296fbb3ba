"""experiments.statistics against independent implementations (scipy.stats, a brute-force Holm)."""

import itertools

import numpy as np
import pytest
from scipy import stats as sps

from experiments import statistics as st

# Five folds' scores of two variants (the shape of `cme-ser reproduce`'s results).
BETTER = np.array([0.712, 0.655, 0.741, 0.688, 0.603])
WORSE = np.array([0.690, 0.661, 0.702, 0.650, 0.598])


def brute_force_holm(p):
    """Holm's step-down procedure applied literally at every candidate level; a hypothesis's
    adjusted p is the smallest level at which it is rejected."""
    p = list(p)
    m = len(p)

    def rejected(alpha):
        out, order = set(), sorted(range(m), key=lambda i: p[i])
        for k, i in enumerate(order):
            if (m - k) * p[i] > alpha:  # p > alpha / (m - k), without rounding the level
                break
            out.add(i)
        return out

    candidates = sorted({min(1.0, (m - k) * q) for k in range(m) for q in p} | {1.0})
    return [next(a for a in candidates if i in rejected(a)) for i in range(m)]


def reference_holm(p):
    try:
        from statsmodels.stats.multitest import multipletests
    except ImportError:
        return brute_force_holm(p)
    return list(multipletests(p, method="holm")[1])


def test_mean_ci_matches_scipy():
    for values in (BETTER, WORSE, BETTER[:2], np.array([0.3, 0.9, 0.5, 0.55])):
        result = st.mean_ci(values)
        n = len(values)
        lo, hi = sps.t.interval(0.95, n - 1, loc=np.mean(values), scale=sps.sem(values))
        assert result["n_folds"] == n
        assert result["mean"] == pytest.approx(np.mean(values), abs=1e-12)
        assert result["sd"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
        assert result["ci95"] == pytest.approx([lo, hi], abs=1e-12)
    # Known value: 1, 2, 3 -> mean 2, sd 1, half-width t(0.975, 2) / sqrt(3) = 2.4841.
    ci = st.mean_ci([1.0, 2.0, 3.0])["ci95"]
    assert ci == pytest.approx([2 - 2.4841377, 2 + 2.4841377], abs=1e-6)
    assert st.mean_ci([0.7]) == {"mean": 0.7, "sd": None, "ci95": None, "n_folds": 1}


def test_paired_test_matches_scipy():
    for a, b in ((BETTER, WORSE), (WORSE, BETTER), (BETTER[:3], WORSE[:3])):
        result = st.paired_test(a - b)
        reference = sps.ttest_rel(a, b)
        one_sample = sps.ttest_1samp(a - b, 0.0)
        n = len(a)
        assert result["t"] == pytest.approx(reference.statistic, abs=1e-12)
        assert result["p"] == pytest.approx(reference.pvalue, abs=1e-12)
        assert result["p"] == pytest.approx(one_sample.pvalue, abs=1e-12)
        assert result["df"] == n - 1 and result["n_folds"] == n
        lo, hi = sps.t.interval(0.95, n - 1, loc=np.mean(a - b), scale=sps.sem(a - b))
        assert result["mean"] == pytest.approx(np.mean(a - b), abs=1e-12)
        assert result["ci95"] == pytest.approx([lo, hi], abs=1e-12)
    result = st.paired_test(BETTER - WORSE)
    assert (result["wins"], result["losses"]) == (4, 1)
    assert st.paired_test([0.1]) is None
    constant = st.paired_test([0.02, 0.02, 0.02])
    assert constant["t"] is None and constant["p"] == 0.0 and constant["ci95"] == [0.02, 0.02]
    assert st.paired_test([0.0, 0.0])["p"] == 1.0


def test_holm_known_answer_and_reference():
    # Sorted: 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 = 0.04 -> 0.06 (monotone).
    assert st.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-12)
    assert st.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert st.holm([]) == []
    rng = np.random.default_rng(0)
    cases = [list(rng.uniform(0, 0.2, size=m)) for m in (1, 2, 5, 14)]
    cases += [[0.01, 0.01, 0.02, 0.3], [0.04, 0.001, 0.04, 0.04]]  # ties
    for p in cases:
        assert st.holm(p) == pytest.approx(reference_holm(p), abs=1e-12)
        assert st.holm(p) == pytest.approx(brute_force_holm(p), abs=1e-12)


def test_correct_family_marks_what_holds():
    tests = [
        st.paired_test(d)
        for d in (
            [0.05, 0.06, 0.055, 0.052, 0.058],  # clearly up
            [-0.05, -0.06, -0.055, -0.052, -0.058],  # clearly down
            [0.05, -0.04, 0.01, 0.02, -0.03],
        )
    ]  # noise
    st.correct_family(tests)
    p = [t["p"] for t in tests]
    assert [t["p_holm"] for t in tests] == pytest.approx(reference_holm(p), abs=1e-12)
    assert [t["holds"] for t in tests] == [True, False, False]
    assert [t["verdict"] for t in tests] == ["holds", "reversed", "not shown"]


def test_fold_means_count_a_fold_once():
    # Fold 0 has two seeds, fold 1 and 2 one each: 3 observations, not 4.
    folds, means = st.fold_means([(0, 0.60), (1, 0.70), (0, 0.80), (2, 0.75)])
    assert folds == [0, 1, 2]
    np.testing.assert_allclose(means, [0.70, 0.70, 0.75])
    summary = st.mean_ci(means)
    assert summary["n_folds"] == 3
    assert summary["mean"] == pytest.approx((0.70 + 0.70 + 0.75) / 3)  # not the unit mean 0.7125
    lo, hi = sps.t.interval(0.95, 2, loc=np.mean(means), scale=sps.sem(means))
    assert summary["ci95"] == pytest.approx([lo, hi], abs=1e-12)
    # Vectors (several scores of a unit) are averaged element-wise.
    folds, means = st.fold_means([(1, [0.5, 1.0]), (1, [0.7, 0.0]), (0, [0.1, 0.2])])
    assert folds == [0, 1]
    np.testing.assert_allclose(means, [[0.1, 0.2], [0.6, 0.5]])


def test_brute_force_holm_is_itself_right():
    # The reference checked against Holm's definition on every order of a small family.
    for p in itertools.permutations([0.01, 0.04, 0.03, 0.005]):
        expected = {0.005: 0.02, 0.01: 0.03, 0.03: 0.06, 0.04: 0.06}
        assert brute_force_holm(p) == pytest.approx([expected[q] for q in p], abs=1e-12)
