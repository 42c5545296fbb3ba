"""`cme-ser predict` end to end on RAVDESS files: decode, forced alignment (or recognition), the
REST server (or the SavedModel in-process), and the report."""

import json

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly
from serving_support import (
    ANGRY,
    CLASSES,
    KIDS,
    SAD,
    needs_ravdess,
    serve_argv,
    start_server,
    stop_server,
)

from cli.main import main

pytestmark = needs_ravdess


@pytest.fixture(scope="module")
def base(small_model_export):
    return small_model_export[1]  # conftest: small_model() exported once per session


class Server:
    def __init__(self, url):
        self.url = url


@pytest.fixture(scope="module")
def server(base):
    """`cme-ser serve` over ``base`` (its REST API at ``server.url``)."""
    process, url = start_server(serve_argv(base, "--poll-seconds", "0", "--grpc-port", "-1"))
    yield Server(url)
    assert stop_server(process) == 0


def run_json(capsys, *argv):
    assert main(["predict", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_predict_through_rest_matches_the_local_savedmodel(server, base, capsys, tmp_path):
    # The same file at 44.1 kHz in WAV: load_audio resamples any rate to 16 kHz.
    samples, rate = sf.read(str(ANGRY), dtype="float32")
    wav = tmp_path / "angry_44k.wav"
    sf.write(str(wav), resample_poly(samples, 441, 160).astype(np.float32), 44100)

    remote = run_json(capsys, str(ANGRY), str(wav), "--transcript", KIDS, "--url", server.url)
    assert remote["model"] == f"{server.url}/v1/models/cme"
    first, second = remote["results"]
    assert first["audio"] == str(ANGRY) and first["alignment_source"] == "forced"
    assert [w["word"] for w in first["words"]] == ["kids", "are", "talking", "by", "the", "door"]
    assert abs(first["duration_s"] - len(samples) / 16000) < 1e-3
    assert list(first["probabilities"]) == list(CLASSES)
    assert abs(sum(first["probabilities"].values()) - 1) < 1e-5
    assert first["emotion"] == max(first["probabilities"], key=first["probabilities"].get)
    assert first["class_id"] == CLASSES.index(first["emotion"])
    for word in first["words"]:
        assert 0 < word["acoustic_excitation"] < 1 and 0 < word["semantic_excitation"] < 1
        assert 0 <= word["start_s"] < word["end_s"] <= first["duration_s"]
    # The resampled copy is nearly the same utterance.
    assert [w["word"] for w in second["words"]] == [w["word"] for w in first["words"]]
    assert abs(second["duration_s"] - first["duration_s"]) < 0.01

    local = run_json(capsys, str(ANGRY), "--transcript", KIDS, "--model-dir", str(base))
    assert local["model"] == str(base / "1")  # a base directory: its newest version
    [same] = local["results"]
    assert same["emotion"] == first["emotion"]
    np.testing.assert_allclose(
        list(same["probabilities"].values()), list(first["probabilities"].values()), atol=1e-6
    )
    np.testing.assert_allclose(
        [w["acoustic_excitation"] for w in same["words"]],
        [w["acoustic_excitation"] for w in first["words"]],
        atol=1e-6,
    )


def test_predict_text_report_and_recognition(server, capsys):
    assert main(["predict", str(SAD), "--url", server.url]) == 0  # no transcript: ASR
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{SAD}: ") and "asr alignment" in out[0]
    emotion = out[0].split(": ", 1)[1].split(" ")[0]
    assert emotion in CLASSES
    assert out[1].startswith("  probabilities: ") and all(c in out[1] for c in CLASSES)
    assert out[2].split() == [
        "word",
        "start_s",
        "end_s",
        "acoustic_excitation",
        "semantic_excitation",
    ]
    words = [line.split()[0] for line in out[3:] if not line.startswith("  note:")]
    assert "door" in words  # "Dogs are sitting by the door", recognised


def test_predict_errors(server, capsys, tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really a wav file")
    assert (
        main(
            [
                "predict",
                str(ANGRY),
                str(broken),
                "--transcript",
                KIDS,
                "--url",
                server.url,
                "--json",
            ]
        )
        == 2
    )
    captured = capsys.readouterr()
    results = json.loads(captured.out)["results"]
    assert results[0]["emotion"] in CLASSES  # the good file still gets its answer
    assert results[1]["stage"] == "decode" and "cannot decode" in results[1]["error"]
    assert "1 of 2 file(s) failed" in captured.err

    assert main(["predict", str(tmp_path / "missing.flac"), "--url", server.url]) == 2
    assert "no such audio file" in capsys.readouterr().err
    # A server that is not there, and a model name it does not serve.
    assert main(["predict", str(ANGRY), "--transcript", KIDS, "--url", "http://127.0.0.1:9"]) == 2
    assert "cannot reach http://127.0.0.1:9/v1/models/cme" in capsys.readouterr().err
    assert (
        main(
            [
                "predict",
                str(ANGRY),
                "--transcript",
                KIDS,
                "--url",
                server.url,
                "--model-name",
                "other",
            ]
        )
        == 2
    )
    out = capsys.readouterr().out
    assert "error (model): Servable not found for request: Latest(other)" in out
    assert main(["predict", str(ANGRY), "--model-dir", str(tmp_path)]) == 2
    assert "neither a SavedModel" in capsys.readouterr().err


def test_local_model_reports_the_graphs_input_check_as_a_message(base):
    """The SavedModel's in-graph checks refuse a word starting after the audio; `cme-ser
    predict --model-dir` says which rule, without TensorFlow's node names or a traceback, and
    a batch with the bad file in it still answers the good one."""
    from serving.client import Utterance
    from serving.predict import LocalModel, Result, predict_batch
    from trainer.export import synthetic_utterance

    model = LocalModel(base)
    waveform = synthetic_utterance(1.0)
    late = Utterance(waveform, ["kids", "door"], [0.1, 1.5], [0.4, 1.8])
    with pytest.raises(ValueError) as error:
        model.predict_waveform([late])
    assert str(error.value) == (
        "word_start_s must be at most num_samples / 16000 (a word must start inside the audio); "
        "[row, slot]: [[0 1]]; word_start_s: [1.5]; audio seconds: [1]"
    )
    fine = Utterance(waveform, ["kids"], [0.1], [0.4])
    pending = [(late, Result("late.wav")), (fine, Result("fine.wav"))]
    predict_batch(model, pending)
    assert pending[0][1].stage == "model" and pending[0][1].error == str(error.value)
    assert pending[1][1].error is None and pending[1][1].prediction.emotion in CLASSES


def test_assertion_message_drops_tensorflows_framing():
    from serving.predict import assertion_message

    raw = (
        "Graph execution error:\n\nDetected at node Assert_4/Assert defined at (most recent "
        "call last):\n<stack traces unavailable>\nassertion failed: [num_samples must be at "
        "least 400 (one 25 ms frame at 16 kHz)] [num_samples:] [300 500]\n\t [[{{node "
        "Assert_4/Assert}}]] [Op:__inference_signature_wrapper_282]"
    )
    assert assertion_message(raw) == (
        "num_samples must be at least 400 (one 25 ms frame at 16 kHz); num_samples: [300 500]"
    )
    # Brackets inside the rule stay; a message that is no assertion keeps its own text.
    assert assertion_message(
        "assertion failed: [words must be [batch, words]] [words shape:] [2 6]\n\t [[{{node A}}]]"
    ) == ("words must be [batch, words]; words shape: [2 6]")
    assert assertion_message(
        "Graph execution error:\n\nDetected at node X defined at (most "
        "recent call last):\n<stack traces unavailable>\nsomething else "
        "broke\n\t [[{{node X}}]] [Op:__inference_f_1]"
    ) == ("something else broke")
