"""The committed results are what their archived units give: each results file, re-rendered
from the units archived beside it by this checkout's code (nothing trained), has the same
numbers. A table whose units are not archived, or were edited, fails here."""

import importlib
import json
import shutil
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"

# (results directory, the module that rendered it, its JSON file)
ARCHIVED = [
    ("", "experiments.reproduce", "ravdess.json"),  # Table 1
    ("ensembles", "experiments.reproduce", "ravdess.json"),
    ("", "experiments.nested", "ravdess-nested.json"),
    ("nested-speech-song", "experiments.nested", "ravdess-nested.json"),
    ("", "experiments.crossdomain", "ravdess-cross-domain.json"),
    ("", "experiments.stability", "ravdess-stability.json"),
    ("stability-cme_fixed20_song", "experiments.stability", "ravdess-stability.json"),
    # The third nested run (docs/selection-robust.json), archived in chunks as it trains.
    ("nested-robust", "experiments.nested", "ravdess-nested.json"),
]


@pytest.mark.parametrize("subdir, module, name", ARCHIVED)
def test_committed_results_rerender_from_their_archive(tmp_path, subdir, module, name):
    source = RESULTS / subdir
    committed = json.loads((source / name).read_text())
    copy = tmp_path / "results"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("ensembles"))
    importlib.import_module(module).rerender(copy, "ravdess")
    # (A path the files name is the committed directory's.)
    again = json.loads(
        (copy / name)
        .read_text()
        .replace(copy.as_posix(), "/".join(p for p in ("docs/results", subdir) if p))
    )
    assert set(again) == set(committed)
    for key in sorted(set(committed) - {"header"}):
        assert again[key] == committed[key], key
    assert again["header"]["command"] == committed["header"]["command"]
    assert again["header"]["commit"] == committed["header"]["commit"]


def test_units_marked_restored_are_the_archived_units_they_name():
    """A unit an archive marks ``restored_from`` is that file's unit: the same predictions
    and the same recorded training time (it was copied, not trained again)."""
    checked, sources = 0, {}
    for archive in sorted(RESULTS.rglob("*-units.jsonl")):
        for line in archive.read_text().splitlines():
            if '"restored_from"' not in line:  # most units were trained: no need to parse them
                continue
            row = json.loads(line)
            source = row.get("restored_from")
            if not source:
                continue
            key = (row["variant"], row["seed"], row["fold"])
            if source not in sources:  # each source archive parsed once
                sources[source] = [
                    json.loads(other)
                    for other in (RESULTS.parents[1] / source).read_text().splitlines()
                ]
            originals = sources[source]
            [original] = [
                o
                for o in originals
                if (o["variant"], o["seed"], o["fold"]) == key
                and o.get("kind", "outer") == row.get("kind", "outer")
            ]
            assert original["predictions"] == row["predictions"], key
            assert original["seconds"] == row["seconds"], key
            checked += 1
    assert checked >= 15  # the first nested run's cme_refit_bag outer units
