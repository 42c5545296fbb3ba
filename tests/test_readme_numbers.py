"""Every score the README quotes comes from a committed results file: the numbers of each
statement (a sentence, or a table row) must all sit together in one small object of one
committed results JSON (a table row, an estimate, a comparison), not merely somewhere in it.
A number with no archived run behind it, or two numbers from different rows quoted as one
result, fails here."""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Scores and gains have three decimals; "p < 0.001" is a bound, not a measurement.
NUMBER = re.compile(r"(?<![\d.<])(?<!< )[+-]?0\.\d{3}(?!\d)")
# An object with more numbers than this (a whole file, a whole table) is too big to vouch for
# a statement: its numbers must come from one row-sized object.
MAX_NUMBERS = 128


def _numbers(value, out: set) -> set:
    if isinstance(value, bool):
        return out
    if isinstance(value, (int, float)):
        out.add(f"{abs(value):.3f}")
    elif isinstance(value, dict):
        for v in value.values():
            _numbers(v, out)
    elif isinstance(value, list):
        for v in value:
            _numbers(v, out)
    return out


def _objects(value):
    """The number sets of every dict and list in ``value`` small enough to vouch."""
    if isinstance(value, (dict, list)):
        found = _numbers(value, set())
        if len(found) <= MAX_NUMBERS:
            yield found
        for v in (value.values() if isinstance(value, dict) else value):
            yield from _objects(v)


def statements(markdown: str):
    """Table rows, and the sentences (or ';'-separated clauses) of every other paragraph,
    outside code blocks."""
    prose = re.sub(r"```.*?```", "", markdown, flags=re.S)
    for paragraph in re.split(r"\n\s*\n", prose):
        if paragraph.lstrip().startswith("|"):
            yield from paragraph.splitlines()
        else:
            yield from re.split(r"(?<=[.:])\s+(?=[A-Z*(`])|;\s+", " ".join(paragraph.split()))


def unsupported(markdown: str, results_dir: Path):
    objects = [found for path in sorted(results_dir.rglob("*.json"))
               for found in _objects(json.loads(path.read_text()))]
    for statement in statements(markdown):
        quoted = {n.lstrip("+-") for n in NUMBER.findall(statement)}
        if quoted and not any(quoted <= found for found in objects):
            yield sorted(quoted), statement


def test_every_readme_score_is_in_a_committed_results_file():
    missing = list(unsupported((ROOT / "README.md").read_text(), ROOT / "docs" / "results"))
    assert not missing, "README numbers with no results object behind them:\n" + "\n".join(
        f"{numbers}: {statement[:200]}" for numbers, statement in missing)


def test_the_check_catches_numbers_from_two_rows_quoted_as_one(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"rows": [
        {"variant": "a", "wa": 0.7321, "ua": 0.6904},
        {"variant": "b", "wa": 0.7012, "ua": 0.6971}]}))
    good = "Variant a scored WA 0.732 / UA 0.690. Variant b: 0.701 / 0.697 (p < 0.001)."
    assert list(unsupported(good, tmp_path)) == []
    mixed = "Variant a scored WA 0.732 / UA 0.697 in r.md."
    assert list(unsupported(mixed, tmp_path)) == [(["0.697", "0.732"], mixed)]
    assert list(unsupported("| x | 0.999 |", tmp_path)) == [(["0.999"], "| x | 0.999 |")]
