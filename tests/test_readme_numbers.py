"""Every score the README quotes comes from a committed results file, as the result it is
quoted as: a score with its interval, ``x [lo, hi]``, is an estimate in a results JSON with
that mean and that 95% interval; scores quoted together as ``WA x / UA y`` are the ``wa`` and
``ua`` of one row; a lone score is a number of some results file. A number with no archived run
behind it, or a WA and a UA from different rows quoted as one result, fails here."""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Scores and gains have three decimals; "p < 0.001" is a bound, not a measurement.
_N = r"(?<![\d.<])(?<!< )[+-]?0\.\d{3}(?!\d)"
_SCORE = rf"({_N})(?: \[({_N}), ({_N})\])?"
# One claim: a score and its interval, and a second joined by " / " (WA / UA).
CLAIM = re.compile(rf"{_SCORE}(?: / (?:[A-Z]{{2}} )?{_SCORE})?")


def _r(value) -> str:
    return f"{float(value):.3f}".replace("-0.000", "0.000")


def _stat(value):
    """(mean, ci95 or None) of a number or a ``statistics.mean_ci``-like dict, else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _r(value), None
    if isinstance(value, dict) and isinstance(value.get("mean"), (int, float)):
        ci = value.get("ci95")
        return _r(value["mean"]), tuple(_r(c) for c in ci) if ci else None
    return None


class Results:
    """What the committed results JSONs hold: every number, every estimate (mean with its
    interval), and every row's (WA, UA) pair."""

    def __init__(self, results_dir: Path):
        self.numbers, self.estimates, self.pairs = set(), set(), set()
        for path in sorted(results_dir.rglob("*.json")):
            self._walk(json.loads(path.read_text()))

    def _walk(self, value):
        if isinstance(value, bool):
            return
        if isinstance(value, (int, float)):
            self.numbers.add(_r(value))
        elif isinstance(value, dict):
            stat = _stat(value)
            if stat and stat[1]:
                self.estimates.add(stat)
            wa, ua = _stat(value.get("wa")), _stat(value.get("ua"))
            if wa and ua:
                self.pairs.add((wa, ua))
            for v in value.values():
                self._walk(v)
        elif isinstance(value, list):
            for v in value:
                self._walk(v)

    def holds(self, first, second=None) -> bool:
        def score_ok(score):
            mean, ci = score
            return (mean, ci) in self.estimates if ci else mean in self.numbers

        if second is None:
            return score_ok(first)
        return any(
            wa[0] == first[0]
            and ua[0] == second[0]
            and (first[1] is None or wa[1] == first[1])
            and (second[1] is None or ua[1] == second[1])
            for wa, ua in self.pairs
        )


def statements(markdown: str):
    """Table cells, and the sentences (or ';'-separated clauses) of every other paragraph,
    outside code blocks."""
    prose = re.sub(r"```.*?```", "", markdown, flags=re.S)
    for paragraph in re.split(r"\n\s*\n", prose):
        if paragraph.lstrip().startswith("|"):
            for line in paragraph.splitlines():
                yield from line.split("|")
        else:
            yield from re.split(r"(?<=[.:])\s+(?=[A-Z*(`])|;\s+", " ".join(paragraph.split()))


def unsupported(markdown: str, results_dir: Path):
    results = Results(results_dir)
    for statement in statements(markdown):
        for match in CLAIM.finditer(statement):
            m, lo, hi, m2, lo2, hi2 = (g and _r(g) for g in match.groups())
            first = (m, (lo, hi) if lo else None)
            second = (m2, (lo2, hi2) if lo2 else None) if m2 else None
            if not results.holds(first, second):
                yield match.group(0), statement


def test_every_readme_score_is_in_a_committed_results_file():
    missing = list(unsupported((ROOT / "README.md").read_text(), ROOT / "docs" / "results"))
    assert not missing, "README numbers with no results behind them:\n" + "\n".join(
        f"{claim}: {statement[:200]}" for claim, statement in missing
    )


def test_the_check_catches_numbers_from_two_rows_quoted_as_one(tmp_path):
    (tmp_path / "r.json").write_text(
        json.dumps(
            {
                "rows": [
                    {
                        "variant": "a",
                        "wa": {"mean": 0.7321, "ci95": [0.6512, 0.8133]},
                        "ua": 0.6904,
                    },
                    {
                        "variant": "b",
                        "wa": 0.7012,
                        "ua": 0.6971,
                        "gain": {"mean": -0.0071, "ci95": [-0.0242, 0.0104]},
                    },
                ]
            }
        )
    )
    good = (
        "Variant a scored WA 0.732 [0.651, 0.813] / UA 0.690. Variant b: 0.701 / 0.697 "
        "(p < 0.001), a gain of -0.007 [-0.024, +0.010]; a's WA 0.732 beats b's UA 0.697."
    )
    assert list(unsupported(good, tmp_path)) == []
    mixed = "Variant a scored WA 0.732 / UA 0.697 in r.md."
    assert list(unsupported(mixed, tmp_path)) == [("0.732 / UA 0.697", mixed)]
    wrong_ci = "b gained -0.007 [-0.024, +0.011]."
    assert list(unsupported(wrong_ci, tmp_path)) == [("-0.007 [-0.024, +0.011]", wrong_ci)]
    assert list(unsupported("| x | 0.999 |", tmp_path)) == [("0.999", " 0.999 ")]
