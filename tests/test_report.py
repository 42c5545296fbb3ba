"""The cross-validation report of records with several RAVDESS channels: speech (the paper's
task) and song are reported apart, speech first and beside the paper's numbers; the pooled
score is named as such. Records of one channel keep the one-line headline."""

import pytest

from pipeline.report import render_markdown, summarize

CLASSES = ["angry", "happy", "neutral", "sad"]


def _fold(fold, wa, ua, channels=None):
    confusion = [[5, 0, 0, 0], [0, 5, 0, 0], [0, 0, 5, 0], [0, 0, 0, 5]]
    return {
        "fold": fold,
        "wa": wa,
        "ua": ua,
        "confusion": confusion,
        "by_channel": {
            name: {"wa": w, "ua": u, "confusion": confusion, "examples": 20}
            for name, (w, u) in (channels or {}).items()
        },
    }


def test_speech_and_song_are_reported_apart_and_speech_beside_the_paper():
    rows = [
        _fold(0, 0.70, 0.68, {"speech": (0.60, 0.58), "song": (0.80, 0.78)}),
        _fold(1, 0.74, 0.72, {"speech": (0.64, 0.62), "song": (0.84, 0.82)}),
    ]
    report = summarize(rows, CLASSES)
    speech, song = report["by_channel"]["speech"], report["by_channel"]["song"]
    assert speech["wa_mean"] == pytest.approx(0.62) and speech["ua_mean"] == pytest.approx(0.60)
    assert song["ua_mean"] == pytest.approx(0.80) and song["ua_std"] == pytest.approx(0.02)
    assert speech["examples"] == [20, 20]
    lines = render_markdown(report).splitlines()
    assert lines[2] == (
        "Speech: WA 0.620 +- 0.020, UA 0.600 +- 0.020 over 2 speaker-independent folds "
        "(paper, RAVDESS: WA 0.720, UA 0.708)."
    )
    assert (
        lines[4] == "Song: WA 0.820 +- 0.020, UA 0.800 +- 0.020 over 2 speaker-independent folds."
    )
    assert lines[6].startswith("All held-out examples (song, speech together): WA 0.720 +- 0.020")


def test_one_channel_keeps_the_one_line_headline():
    report = summarize([_fold(0, 0.70, 0.68), _fold(1, 0.74, 0.72)], CLASSES)
    assert report["by_channel"] == {}
    lines = render_markdown(report).splitlines()
    assert lines[2] == (
        "WA 0.720 +- 0.020, UA 0.700 +- 0.020 over 2 speaker-independent folds "
        "(paper, RAVDESS: WA 0.720, UA 0.708)."
    )
    assert lines[3] == "" and lines[4].startswith("| fold | examples |")
