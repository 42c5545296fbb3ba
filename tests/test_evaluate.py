"""`cme-ser evaluate` on a handful of real RAVDESS song (and speech) files with a small exported
model: in-process and through the REST server, every input scored or listed in errors.jsonl,
and the report's numbers recomputed from its own predictions."""

import collections
import json
from pathlib import Path

import numpy as np
import pytest
from data_support import RAVDESS_SONG as SONG
from data_support import RAVDESS_SPEECH as SPEECH
from serving_support import serve_argv, start_server, stop_server

from cli.main import main

CLASSES = ["angry", "happy", "neutral", "sad"]
KIDS = "Kids are talking by the door"
pytestmark = pytest.mark.skipif(
    not (SPEECH.is_dir() and SONG.is_dir()), reason="RAVDESS speech and song not both found"
)

SONG_FILES = [
    "Actor_01/03-02-01-01-01-01-01.flac",  # neutral, "Kids ..."
    "Actor_01/03-02-03-01-02-01-01.flac",  # happy, "Dogs ..."
    "Actor_01/03-02-04-02-01-01-01.flac",  # sad, strong
    "Actor_01/03-02-05-01-02-02-01.flac",  # angry
    "Actor_02/03-02-05-02-01-01-02.flac",  # angry
    "Actor_02/03-02-04-01-02-02-02.flac",  # sad
    "Actor_02/03-02-02-01-01-01-02.flac",
]  # calm: not a class of the model
SPEECH_FILES = ["Actor_01/03-01-05-01-01-01-01.flac", "Actor_02/03-01-01-01-02-01-02.flac"]
CORRUPT = "Actor_02/03-02-03-01-01-01-02.flac"  # a valid name, but not audio


def link(root: Path, names, source: Path) -> Path:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(source / name)
    return root


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evaluate_corpora")
    song = link(tmp / "song", SONG_FILES, SONG)
    (song / CORRUPT).write_bytes(b"fLaC but then nothing a decoder can use")
    (song / "Actor_02" / "notes.txt").write_text("not a recording")
    return {"song": song, "speech": link(tmp / "speech", SPEECH_FILES, SPEECH)}


def read_jsonl(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_evaluate_local_model_on_song(small_model_base, corpora, tmp_path, capsys):
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "--model-dir",
                str(small_model_base),
                "--dataset",
                "ravdess",
                "--data-dir",
                str(corpora["song"]),
                "--channels",
                "song",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert (report["model"], report["dataset"], report["channels"], report["classes"]) == (
        str(small_model_base / "1"),
        "ravdess",
        ["song"],
        CLASSES,
    )
    # 6 song files of the model's classes + the corrupt one + notes.txt; calm is not an input.
    assert (report["inputs"], report["n"], report["errors"], report["complete"]) == (8, 6, 2, True)

    predictions = read_jsonl(out / "predictions.jsonl")
    assert sorted(p["utterance_id"] for p in predictions) == sorted(
        Path(name).stem for name in SONG_FILES[:6]
    )
    assert {p["channel"] for p in predictions} == {"song"}
    assert len({p["prediction"] for p in predictions}) > 1  # not a constant answer
    for p in predictions:
        assert p["prediction"] == max(p["probabilities"], key=p["probabilities"].get)
        assert (
            p["label"]
            == {"01": "neutral", "03": "happy", "04": "sad", "05": "angry"}[
                p["utterance_id"].split("-")[2]
            ]
        )
    # WA, UA, recall and confusion as computed from the predictions themselves.
    labels = [p["label"] for p in predictions]
    predicted = [p["prediction"] for p in predictions]
    assert report["wa"] == pytest.approx(np.mean([a == b for a, b in zip(labels, predicted)]))
    recall = {c: np.mean([b == c for a, b in zip(labels, predicted) if a == c]) for c in CLASSES}
    assert report["per_class_recall"] == pytest.approx(recall)
    assert report["ua"] == pytest.approx(np.mean(list(recall.values())))
    confusion = np.zeros((4, 4), int)
    for a, b in zip(labels, predicted):
        confusion[CLASSES.index(a), CLASSES.index(b)] += 1
    assert report["confusion"] == confusion.tolist()
    assert report["support"] == {"angry": 2, "happy": 1, "neutral": 1, "sad": 2}

    errors = {e["utterance_id"]: e for e in read_jsonl(out / "errors.jsonl")}
    assert sorted(errors) == ["03-02-03-01-01-01-02", "notes"]
    assert errors["03-02-03-01-01-01-02"]["stage"] == "decode"
    assert errors["03-02-03-01-01-01-02"]["path"] == str(corpora["song"] / CORRUPT)
    assert errors["notes"]["stage"] == "corpus"
    assert report["errors_per_stage"] == {"corpus": 1, "decode": 1}

    markdown = (out / "report.md").read_text()
    assert f"WA {report['wa']:.3f}, UA {report['ua']:.3f} over 6 files" in markdown
    assert markdown in printed
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The serving path: `cme-ser predict` on the same file gives the same answer.
    first = next(p for p in predictions if p["utterance_id"] == "03-02-01-01-01-01-01")
    assert (
        main(
            [
                "predict",
                first["path"],
                "--transcript",
                KIDS,
                "--model-dir",
                str(small_model_base),
                "--json",
            ]
        )
        == 0
    )
    [same] = json.loads(capsys.readouterr().out)["results"]
    assert same["emotion"] == first["prediction"]
    np.testing.assert_allclose(
        list(same["probabilities"].values()), list(first["probabilities"].values()), atol=1e-5
    )


def test_evaluate_served_model_on_speech_and_song(small_model_base, corpora, tmp_path, capsys):
    process, url = start_server(
        serve_argv(small_model_base, "--poll-seconds", "0", "--grpc-port", "-1")
    )
    try:
        local, served = tmp_path / "local", tmp_path / "served"
        assert (
            main(
                [
                    "evaluate",
                    "--model-dir",
                    str(small_model_base),
                    "--data-dir",
                    str(corpora["song"]),
                    "--channels",
                    "song",
                    "--out",
                    str(local),
                ]
            )
            == 0
        )
        assert (
            main(
                [
                    "evaluate",
                    "--url",
                    url,
                    "--data-dir",
                    str(corpora["speech"]),
                    "--data-dir",
                    str(corpora["song"]),
                    "--channels",
                    "speech,song",
                    "--batch-size",
                    "3",
                    "--out",
                    str(served),
                ]
            )
            == 0
        )
    finally:
        assert stop_server(process) == 0
    capsys.readouterr()
    report = json.loads((served / "report.json").read_text())
    assert report["model"] == f"{url}/v1/models/cme"
    assert (report["inputs"], report["n"], report["errors"]) == (10, 8, 2)
    assert {c: s["n"] for c, s in report["by_channel"].items()} == {"song": 6, "speech": 2}
    rows = read_jsonl(served / "predictions.jsonl")
    assert collections.Counter(r["channel"] for r in rows) == {"song": 6, "speech": 2}
    song = [r for r in rows if r["channel"] == "song"]
    assert report["by_channel"]["song"]["wa"] == pytest.approx(
        np.mean([r["label"] == r["prediction"] for r in song])
    )
    # Served, batched 3 at a time, with speech around it: the same song answers as in-process.
    by_id = {r["utterance_id"]: r for r in read_jsonl(local / "predictions.jsonl")}
    for r in song:
        assert r["prediction"] == by_id[r["utterance_id"]]["prediction"]
        np.testing.assert_allclose(
            list(r["probabilities"].values()),
            list(by_id[r["utterance_id"]]["probabilities"].values()),
            atol=1e-5,
        )


def test_evaluate_usage_errors(small_model_base, corpora, tmp_path, capsys):
    base = ["evaluate", "--model-dir", str(small_model_base), "--out", str(tmp_path / "o")]
    assert main(base + ["--data-dir", str(corpora["song"]), "--channels", "choir"]) == 2
    assert "unknown channel(s) ['choir']" in capsys.readouterr().err
    # Song files asked for as speech (the default channel): none there, and it says why.
    assert main(base + ["--data-dir", str(corpora["song"])]) == 2
    err = capsys.readouterr().err
    assert "no file could be scored" in err and "see --channels" in err
    assert not read_jsonl(tmp_path / "o" / "predictions.jsonl")
    with pytest.raises(SystemExit):  # --model-dir or --url is required
        main(["evaluate", "--data-dir", str(corpora["song"])])
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                "--url",
                "http://127.0.0.1:9",
                "--data-dir",
                str(corpora["song"]),
                "--channels",
                "song",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "cannot reach http://127.0.0.1:9/v1/models/cme" in capsys.readouterr().err


def test_a_calibrated_model_reports_ece_before_and_after_and_may_abstain(corpora, tmp_path, capsys):
    """A model exported with a temperature: `evaluate` reports the ECE of its answers and of
    the uncalibrated ones they came from (recomputed here from predictions.jsonl), draws the
    reliability diagram, and with --min-confidence the coverage and accuracy there; `predict
    --min-confidence` answers "uncertain" below it."""
    from serving_support import glove, small_model

    from trainer.calibration import expected_calibration_error, selective_scores, temperature_scaled
    from trainer.export import export_saved_model

    base = tmp_path / "cme"
    export_saved_model(
        small_model(seed=4),
        base / "1",
        class_names=CLASSES,
        vectors=glove(),
        vocab_size=20000,
        temperature=3.0,
    )
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "--model-dir",
                str(base),
                "--data-dir",
                str(corpora["song"]),
                "--channels",
                "song",
                "--min-confidence",
                "0.3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    rows = read_jsonl(out / "predictions.jsonl")
    labels = np.array([CLASSES.index(r["label"]) for r in rows])
    served = np.array([[r["probabilities"][c] for c in CLASSES] for r in rows])
    cal = report["calibration"]
    assert cal["temperature"] == 3.0
    assert cal["served"]["ece"] == pytest.approx(expected_calibration_error(served, labels))
    before = temperature_scaled(served, 1 / 3.0)
    assert cal["uncalibrated"]["ece"] == pytest.approx(expected_calibration_error(before, labels))
    assert (before.argmax(-1) == served.argmax(-1)).all()
    assert before.max(-1).mean() > served.max(-1).mean()  # T = 3 softened them
    assert cal["selective"] == pytest.approx(selective_scores(served, labels, 0.3))
    assert "ECE" in (out / "report.md").read_text()
    assert (out / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()

    # predict: "uncertain" exactly where the top probability is below the threshold.
    threshold = float(np.median(served.max(-1)))
    paths = [r["path"] for r in rows]
    assert (
        main(
            [
                "predict",
                *paths,
                "--transcript",
                KIDS,
                "--model-dir",
                str(base),
                "--json",
                "--min-confidence",
                str(threshold),
            ]
        )
        == 0
    )
    answers = json.loads(capsys.readouterr().out)["results"]
    for answer in answers:
        top = max(answer["probabilities"].values())
        assert (answer["emotion"] == "uncertain") == (top < threshold), answer
    assert any(a["emotion"] == "uncertain" for a in answers)
    assert any(a["emotion"] != "uncertain" for a in answers)
    assert (
        main(
            [
                "predict",
                paths[0],
                "--transcript",
                KIDS,
                "--model-dir",
                str(base),
                "--min-confidence",
                "2",
            ]
        )
        == 2
    )
