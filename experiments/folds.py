"""The preprocessed records of a Beam preprocessing run, by fold (``records/fold-K/``): what
every ``cme-ser reproduce`` protocol trains and scores on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

from preprocessing.beam_pipeline import FOLD_PLAN_FILE, record_files
from preprocessing.records import word_dim_of_files


def files_by_fold(records_dir) -> Dict[int, List[str]]:
    plan = json.loads((Path(records_dir) / FOLD_PLAN_FILE).read_text())
    files = {k: record_files(records_dir, k) for k in range(plan["num_folds"])}
    empty = [k for k, v in files.items() if not v]
    if empty:
        raise ValueError(
            f"fold(s) {empty} have no records in {records_dir}: every fold needs "
            "examples (fewer folds, or more speakers)"
        )
    return files


def word_dim_of(records_dir) -> int:
    """The word vectors' dimension in the records of ``records_dir``."""
    return word_dim_of_files(record_files(records_dir))
