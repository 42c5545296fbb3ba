"""The corpora the tests read, found by the project's one lookup ($CME_SER_DATA, ./data,
../shared/data: ``preprocessing.corpus_options.find_data_dirs``) from the repository root,
whatever the working directory. A support module: no tests here.

Without a corpus, the tests that need it are skipped (``needs_speech`` / ``needs_song``);
under ``CI=true`` the session fails before any test instead (``missing_under_ci``, called by
conftest.py), so that a CI run without its data never reports "passed"."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import pytest

from infra.usage_error import UsageError
from preprocessing.corpus_options import find_data_dirs

ROOT = Path(__file__).resolve().parents[1]
UNDER_CI = os.environ.get("CI", "").strip().lower() == "true"
# Where a missing corpus "is": a path that exists nowhere, so a test that reads it anyway
# fails with its name in the error.
NOT_FOUND = Path("/nonexistent-corpus")


def _lookup(channel: str) -> Optional[Path]:
    """The RAVDESS ``channel`` directory the commands would find from the repository root."""
    here = os.getcwd()
    os.chdir(ROOT)
    try:
        return find_data_dirs(None, "ravdess", (channel,))[0].resolve()
    except UsageError:
        return None
    finally:
        os.chdir(here)


_SPEECH, _SONG = _lookup("speech"), _lookup("song")
RAVDESS_SPEECH: Path = _SPEECH or NOT_FOUND / "ravdess-speech"
RAVDESS_SONG: Path = _SONG or NOT_FOUND / "ravdess-song"

needs_speech = pytest.mark.skipif(
    _SPEECH is None,
    reason="RAVDESS speech not found by the "
    "project's lookup ($CME_SER_DATA, ./data, ../shared/data)",
)
needs_song = pytest.mark.skipif(
    _SONG is None,
    reason="RAVDESS song not found by the project's "
    "lookup ($CME_SER_SONG_DATA, ./data, ../shared/data)",
)


def require_speech() -> Path:
    """RAVDESS speech, or a skip (inside a test or fixture)."""
    if _SPEECH is None:
        pytest.skip("RAVDESS speech not found (see ../shared/data/README.md)")
    return _SPEECH


def missing_under_ci() -> List[str]:
    """The corpora this machine lacks, if ``CI=true`` (else none)."""
    if not UNDER_CI:
        return []
    return [
        name
        for name, found in (("RAVDESS speech", _SPEECH), ("RAVDESS song", _SONG))
        if found is None
    ]
