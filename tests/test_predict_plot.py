"""`cme-ser predict --plot FILE.png`: the filterbank of one utterance, its aligned words, and
each word's acoustic and semantic excitation, exactly as the model answered them."""

import json

import numpy as np
import pytest
from data_support import RAVDESS_SPEECH  # noqa: E402

from cli.main import main
from preprocessing.audio import load_audio
from preprocessing.features import log_mel_filterbank
from serving.client import Prediction, WordExcitation
from serving.excitation_plot import plot_excitation

ANGRY_KIDS = RAVDESS_SPEECH / "Actor_01" / "03-01-05-01-01-01-01.flac"
KIDS = "Kids are talking by the door"


@pytest.mark.skipif(not ANGRY_KIDS.is_file(), reason="RAVDESS speech not found")
def test_predict_plot_draws_what_the_model_answered(small_model_base, tmp_path, capsys):
    png = tmp_path / "plots" / "kids.png"
    assert (
        main(
            [
                "predict",
                str(ANGRY_KIDS),
                "--transcript",
                KIDS,
                "--model-dir",
                str(small_model_base),
                "--plot",
                str(png),
                "--json",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    [row] = json.loads(captured.out)["results"]
    assert f"plot: {png}" in captured.err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Redraw from the same answer and read back what was drawn.
    words = [WordExcitation(**w) for w in row["words"]]
    prediction = Prediction(row["emotion"], row["class_id"], row["probabilities"], words)
    waveform = load_audio(ANGRY_KIDS)[0]
    figure = plot_excitation(waveform, prediction, str(tmp_path / "again.png"))
    spectrum, acoustic, semantic = figure.axes
    np.testing.assert_allclose(
        spectrum.images[0].get_array().T, log_mel_filterbank(waveform).numpy(), rtol=1e-6
    )
    assert [t.get_text() for t in spectrum.texts] == ["kids", "are", "talking", "by", "the", "door"]
    for axis, field in ((acoustic, "acoustic_excitation"), (semantic, "semantic_excitation")):
        bars = axis.patches
        assert [round(b.get_height(), 6) for b in bars] == [
            round(w[field], 6) for w in row["words"]
        ]
        assert [(round(b.get_x(), 6), round(b.get_x() + b.get_width(), 6)) for b in bars] == [
            (round(w["start_s"], 6), round(w["end_s"], 6)) for w in row["words"]
        ]
    assert row["emotion"] in figure._suptitle.get_text()


def test_plot_needs_exactly_one_audio_file(small_model_base, tmp_path, capsys):
    args = ["--model-dir", str(small_model_base), "--plot", str(tmp_path / "p.png")]
    assert main(["predict", str(ANGRY_KIDS), str(ANGRY_KIDS), *args]) == 2
    assert "--plot draws one utterance" in capsys.readouterr().err
    assert not (tmp_path / "p.png").exists()
