"""`cme-ser predict --manifest`: many files, each with its own transcript (and optionally its
label), batched into shared requests; per-file answers, failures and accuracy."""

import json

import numpy as np
import pytest
from data_support import RAVDESS_SONG, RAVDESS_SPEECH  # noqa: E402

from cli.main import main

ANGRY_KIDS = RAVDESS_SPEECH / "Actor_01" / "03-01-05-01-01-01-01.flac"
SAD_DOGS = RAVDESS_SPEECH / "Actor_01" / "03-01-04-02-02-01-01.flac"
HAPPY_DOGS_SONG = RAVDESS_SONG / "Actor_02" / "03-02-03-01-02-01-02.flac"
KIDS, DOGS = "Kids are talking by the door", "Dogs are sitting by the door"
pytestmark = pytest.mark.skipif(
    not (ANGRY_KIDS.is_file() and HAPPY_DOGS_SONG.is_file()),
    reason="RAVDESS speech and song not both found",
)


def run_json(capsys, argv, code=0):
    assert main(argv + ["--json"]) == code
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def test_manifest_rows_keep_their_own_transcripts(small_model_base, tmp_path, capsys):
    (tmp_path / "sung.flac").symlink_to(HAPPY_DOGS_SONG)  # a path relative to the manifest
    manifest = tmp_path / "files.csv"
    manifest.write_text(
        "path,transcript,label\n"
        f"{ANGRY_KIDS},{KIDS},angry\n"
        f"sung.flac,{DOGS},Happy\n"
        f"{SAD_DOGS},{DOGS},\n"  # no label: predicted, not scored
        f"{tmp_path / 'missing.flac'},{KIDS},sad\n"
        f",{KIDS},sad\n"
    )  # no path
    out = tmp_path / "predictions.jsonl"
    doc, err = run_json(
        capsys,
        [
            "predict",
            "--manifest",
            str(manifest),
            "--model-dir",
            str(small_model_base),
            "--batch-size",
            "3",
            "--out",
            str(out),
        ],
        code=2,
    )
    assert "2 of 5 file(s) failed" in err
    results = doc["results"]
    assert [r["audio"] for r in results[:4]] == [
        str(ANGRY_KIDS),
        str(tmp_path / "sung.flac"),
        str(SAD_DOGS),
        str(tmp_path / "missing.flac"),
    ]
    words = [[w["word"] for w in r["words"]] for r in results[:3]]
    assert words == [
        ["kids", "are", "talking", "by", "the", "door"],
        ["dogs", "are", "sitting", "by", "the", "door"],
        ["dogs", "are", "sitting", "by", "the", "door"],
    ]
    assert [r.get("label") for r in results] == ["angry", "happy", None, "sad", "sad"]
    assert (results[3]["stage"], results[3]["error"]) == ("decode", "file not found")
    assert results[4]["stage"] == "manifest" and results[4]["error"].startswith("no path")
    correct = sum(r["emotion"] == r["label"] for r in results[:2])
    assert doc["accuracy"] == {
        "correct": correct,
        "labelled": 2,
        "failed": 2,
        "uncertain": 0,  # no --min-confidence: every answer is an emotion
        "accuracy": correct / 2,
    }
    assert [json.loads(line) for line in out.read_text().splitlines()] == results

    # With --min-confidence above every answer's, each is "uncertain": none is scored, all
    # are counted, and the probabilities are still there.
    doc, _ = run_json(
        capsys,
        [
            "predict",
            "--manifest",
            str(manifest),
            "--model-dir",
            str(small_model_base),
            "--min-confidence",
            "1.0",
        ],
        code=2,
    )
    answered = [r for r in doc["results"] if r.get("error") is None]
    assert [r["emotion"] for r in answered] == ["uncertain"] * 3
    assert all(len(r["probabilities"]) == 4 for r in answered)
    assert doc["accuracy"] == {
        "correct": 0,
        "labelled": 0,
        "failed": 2,
        "uncertain": 2,
        "accuracy": None,
    }

    # Batched with other transcripts, each file's answer is its answer alone.
    for row, transcript in ((results[0], KIDS), (results[2], DOGS)):
        alone, _ = run_json(
            capsys,
            [
                "predict",
                row["audio"],
                "--transcript",
                transcript,
                "--model-dir",
                str(small_model_base),
                "--batch-size",
                "1",
            ],
        )
        [alone] = alone["results"]
        assert alone["emotion"] == row["emotion"]
        np.testing.assert_allclose(
            list(alone["probabilities"].values()), list(row["probabilities"].values()), atol=1e-5
        )
        np.testing.assert_allclose(
            [w["end_s"] for w in alone["words"]], [w["end_s"] for w in row["words"]]
        )


def test_manifest_text_report_with_accuracy(small_model_base, tmp_path, capsys):
    manifest = tmp_path / "files.csv"
    manifest.write_text(
        f"path,transcript,label\n{ANGRY_KIDS},{KIDS},angry\n{HAPPY_DOGS_SONG},{DOGS},happy\n"
    )
    assert main(["predict", "--manifest", str(manifest), "--model-dir", str(small_model_base)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{ANGRY_KIDS}: ") and lines[0].endswith("; label angry)")
    [song] = [line for line in lines if line.startswith(f"{HAPPY_DOGS_SONG}: ")]
    assert song.endswith("; label happy)")
    emotions = [line.split(": ", 1)[1].split(" ")[0] for line in (lines[0], song)]
    correct = (emotions[0] == "angry") + (emotions[1] == "happy")
    assert lines[-1] == f"accuracy {correct / 2:.3f} ({correct} of 2 labelled files)"


def test_manifest_usage_errors(small_model_base, tmp_path, capsys):
    model = ["--model-dir", str(small_model_base)]
    no_path = tmp_path / "bad.csv"
    no_path.write_text("file,transcript\nx.wav,hello\n")
    assert main(["predict", "--manifest", str(no_path), *model]) == 2
    assert "no 'path' column" in capsys.readouterr().err
    good = tmp_path / "good.csv"
    good.write_text(f"path,transcript\n{ANGRY_KIDS},{KIDS}\n")
    assert main(["predict", str(ANGRY_KIDS), "--manifest", str(good), *model]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["predict", "--manifest", str(good), "--transcript", KIDS, *model]) == 2
    assert "a manifest has a transcript column" in capsys.readouterr().err
    assert main(["predict", *model]) == 2
    assert "give audio files or --manifest CSV" in capsys.readouterr().err
    # Without labels there is no accuracy.
    doc, _ = run_json(capsys, ["predict", "--manifest", str(good), *model])
    assert "accuracy" not in doc and doc["results"][0]["emotion"]


def test_a_refused_batch_is_retried_file_by_file(tmp_path):
    """Files share requests; when the model refuses a batch, each file is asked alone, so only
    the file it cannot answer fails (no TensorFlow, no PocketSphinx: stand-ins for both)."""
    import soundfile as sf

    from preprocessing.alignment import Alignment, WordSpan
    from serving.client import Prediction
    from serving.predict import predict_files

    class Aligner:
        def align(self, waveform, transcript):
            return Alignment(
                words=tuple(
                    WordSpan(w, 10 * i, 10 * i + 10)
                    for i, w in enumerate(transcript.lower().split())
                ),
                source="forced",
            )

    class Model:
        def __init__(self):
            self.batches = []

        def predict_waveform(self, utterances):
            self.batches.append([len(u.words) for u in utterances])
            if any(len(u.words) == 3 for u in utterances):
                raise ValueError("three words: refused")
            return [
                Prediction(emotion="sad", class_id=0, probabilities={"sad": 1.0}, words=[])
                for _ in utterances
            ]

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.wav")
        sf.write(str(paths[-1]), np.random.default_rng(i).normal(0, 0.1, 8000), 16000)
    model = Model()
    results = predict_files(
        paths, model, transcripts=["a b", "a b c", "a b c d"], aligner=Aligner(), batch_size=3
    )
    assert model.batches == [[2, 3, 4], [2], [3], [4]]
    assert [r.prediction.emotion if r.prediction else r.stage for r in results] == [
        "sad",
        "model",
        "sad",
    ]
    assert results[1].error == "three words: refused"
    with pytest.raises(ValueError, match="not both"):
        predict_files(paths, model, transcript="a", transcripts=["a"] * 3, aligner=Aligner())
