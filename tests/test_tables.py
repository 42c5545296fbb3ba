"""The number formats and Markdown rows every results table shares (``experiments.tables``)."""

from experiments import statistics as st
from experiments import tables


def test_ci_gives_the_interval_and_a_fold_count_that_differs():
    stat = st.mean_ci([0.70, 0.72, 0.74])
    assert tables.ci(stat) == "0.720 [0.670, 0.770]"
    assert tables.ci(stat, folds=3) == "0.720 [0.670, 0.770]"
    assert tables.ci(stat, folds=5) == "0.720 [0.670, 0.770] (n = 3)"
    assert tables.ci(st.mean_ci([0.7])) == "0.700"  # one fold: no interval
    assert tables.ci(st.mean_ci([0.7]), folds=5) == "0.700 (n = 1)"


def test_gains_and_p_values():
    test = st.paired_test([0.01, 0.03, 0.02, 0.04, 0.05])
    st.correct_family([test])
    assert tables.signed_ci(test) == "+0.030 [+0.010, +0.050]"
    assert tables.p_value(test["p"]) == "0.013"
    assert tables.p_value(0.0004) == "<0.001" and tables.p_value(0.001) == "0.001"
    assert tables.gain(test) == "+0.030 [+0.010, +0.050] (p 0.013, Holm 0.013: holds)"
    assert tables.gain(None) == "-"


def test_table_lines():
    assert tables.table(["a", "b c"], [[1, "x"], ["", 0.5]]) == [
        "| a | b c |",
        "|---|---|",
        "| 1 | x |",
        "|  | 0.5 |",
    ]
    assert tables.table(["only"], []) == ["| only |", "|---|"]
