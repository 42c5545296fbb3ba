"""`cme-ser predict RECORDING`: long recordings -> speech segments -> a timeline of emotions.

The recordings are built here from held-out RAVDESS utterances (actors 21-24; the test model's
normalisation saw Actor 01), each with its known label and speech span, joined by seeded
silences of random length, with pink noise at 20 and 5 dB SNR
(``preprocessing.joined_recording``); nothing is committed. The model is the small exported CME
model of ``conftest.small_model_base``: agreement between a segment and the same utterance
predicted alone is a property of the pipeline, not of the model's skill.
"""

import json

import numpy as np
import pytest
import soundfile as sf
from data_support import require_speech
from serving_support import aligner, serve_argv, start_server, stop_server

from cli.main import main
from pipeline.segment_evaluation import boundary_f1, match, read_segment_manifest, segment_scores
from preprocessing.audio import load_audio
from preprocessing.audio_stream import AudioStream
from preprocessing.corpora import DEFAULT_CLASSES
from preprocessing.joined_recording import (
    join_utterances,
    ravdess_utterances,
    write_segments_csv,
    write_vtt,
)
from preprocessing.timed_transcripts import TranscriptError, assign_words, read_timed_transcript
from serving.predict import LocalModel, predict_files
from serving.timeline import predict_timeline

ACTORS = ("21", "22", "23", "24")
UTTERANCES = 32
SNRS = (20, 5)
SEED = 3


def ravdess():
    """RAVDESS speech by the project's lookup (tests/data_support.py): a skip without it."""
    return require_speech()


@pytest.fixture(scope="module")
def model(small_model_base):
    return LocalModel(small_model_base)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    """{snr: (path, placed utterances, its WebVTT)} for each of ``SNRS``: the same utterances
    and silences, different noise levels."""
    data = ravdess()
    utterances = ravdess_utterances(data, ACTORS, DEFAULT_CLASSES, seed=SEED, count=UTTERANCES)
    out = tmp_path_factory.mktemp("recordings")
    built = {}
    for snr in SNRS:
        path = out / f"joined-{snr}dB.flac"
        placed = join_utterances(utterances, path, snr_db=snr, seed=SEED, aligner=aligner())
        write_vtt(placed, out / f"joined-{snr}dB.vtt")
        built[snr] = (path, placed, out / f"joined-{snr}dB.vtt")
    return built


@pytest.fixture(scope="module")
def timelines(recordings, model):
    return {
        snr: predict_timeline(
            path, model, transcript_words=read_timed_transcript(vtt), aligner=aligner()
        )
        for snr, (path, _, vtt) in recordings.items()
    }


def spans(placed):
    return [(p.start_s, p.end_s) for p in placed]


# --- Segments ---------------------------------------------------------------------------------


@pytest.mark.parametrize("snr, target", [(20, 0.95), (5, 0.85)])
def test_segment_onsets_meet_the_targets(recordings, timelines, snr, target):
    _, placed, _ = recordings[snr]
    scores = segment_scores(spans(placed), timelines[snr].rows)
    assert scores["onset"]["f1"] >= target, scores
    assert scores["offset"]["f1"] >= target, scores
    # utterances found, each as a segment of its own (never two merged into one)
    found = [i for i in match(spans(placed), timelines[snr].rows) if i is not None]
    assert len(found) >= target * len(placed) and len(set(found)) == len(found)


def test_segment_labels_agree_with_the_utterance_predicted_alone(
    recordings, timelines, model, tmp_path
):
    """Each utterance as it lies in the 20 dB recording (its whole file's stretch, noise
    included), predicted alone the way `cme-ser predict FILE` predicts it, against its row."""
    path, placed, _ = recordings[20]
    samples, _ = sf.read(str(path), dtype="float32")
    alone_files = []
    for i, p in enumerate(placed):
        first = int(round(p.file_start_s * 16000))
        alone = tmp_path / f"alone-{i}.flac"
        sf.write(str(alone), samples[first : first + sf.info(p.source).frames], 16000)
        alone_files.append(str(alone))
    alone = predict_files(
        alone_files,
        model,
        transcripts=[p.transcript for p in placed],
        aligner=aligner(),
        batch_size=8,
    )
    rows = timelines[20].rows
    found = match(spans(placed), rows)
    agree = [rows[i].emotion == a.prediction.emotion for i, a in zip(found, alone)]
    assert np.mean(agree) >= 0.95, agree
    for i, a in zip(found, alone):  # and the probabilities are close, not only the argmax
        close = [
            abs(rows[i].prediction.probabilities[c] - a.prediction.probabilities[c])
            for c in DEFAULT_CLASSES
        ]
        assert max(close) < 0.1, (rows[i].to_dict(), a.to_dict())


def test_rows_carry_the_transcript_words_inside_their_segment(recordings, timelines):
    _, placed, _ = recordings[20]
    timeline = timelines[20]
    found = match(spans(placed), timeline.rows)
    for p, i in zip(placed, found):
        row = timeline.rows[i]
        assert [w.word for w in row.words] == p.transcript.lower().split()
        assert row.alignment_source in ("forced", "fallback")
        for w in row.words:  # recording time, within the padded segment
            assert row.start_s - 0.21 <= w.start_s < w.end_s <= row.end_s + 0.21
        assert sum(row.prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert all(
            0 < w.acoustic_excitation < 1 and 0 < w.semantic_excitation < 1 for w in row.words
        )
    assert timeline.unplaced_words == [] and timeline.unreadable == []
    assert timeline.envelope.size == int(timeline.duration_s * 100)


def test_boundary_f1_counts_each_detection_once():
    assert boundary_f1([1.0, 2.0], [1.1, 1.15, 5.0])["hits"] == 1
    assert boundary_f1([1.0, 2.0], [1.1, 2.19]) == {
        "f1": 1.0,
        "hits": 2,
        "reference": 2,
        "detected": 2,
    }
    assert boundary_f1([1.0], [1.25])["f1"] == 0.0


# --- Inputs -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def short_recording(tmp_path_factory):
    """6 clean utterances joined (16 kHz FLAC), for the format checks."""
    data = ravdess()
    out = tmp_path_factory.mktemp("short")
    utterances = ravdess_utterances(data, ACTORS, DEFAULT_CLASSES, seed=1, count=6)
    placed = join_utterances(utterances, out / "short.flac", snr_db=30, seed=1, aligner=aligner())
    write_vtt(placed, out / "short.vtt")
    return out / "short.flac", placed, out / "short.vtt"


@pytest.mark.parametrize(
    "suffix, rate, channels, subtype",
    [
        (".wav", 8000, 1, "PCM_16"),  # telephone audio
        (".wav", 44100, 2, "FLOAT"),  # stereo at a CD rate
        (".ogg", 16000, 1, "VORBIS"),
        (".mp3", 16000, 1, "MPEG_LAYER_III"),
    ],
)
def test_any_format_rate_and_channel_count(
    short_recording, model, tmp_path, suffix, rate, channels, subtype
):
    from scipy.signal import resample_poly

    path, placed, vtt = short_recording
    samples, _ = sf.read(str(path), dtype="float32")
    if rate != 16000:
        g = np.gcd(rate, 16000)
        samples = resample_poly(samples, rate // g, 16000 // g).astype(np.float32)
    if channels == 2:
        samples = np.stack([samples, samples], axis=1)
    converted = tmp_path / f"converted{suffix}"
    sf.write(str(converted), samples, rate, subtype=subtype)
    timeline = predict_timeline(
        converted, model, transcript_words=read_timed_transcript(vtt), aligner=aligner()
    )
    assert (timeline.sample_rate, timeline.channels) == (rate, channels)
    scores = segment_scores(spans(placed), timeline.rows)
    assert scores["onset"]["f1"] == 1.0, scores
    found = match(spans(placed), timeline.rows)
    assert [[w.word for w in timeline.rows[i].words] for i in found] == [
        p.transcript.lower().split() for p in placed
    ]


def test_streamed_decoding_is_the_whole_file_decoding(tmp_path):
    rng = np.random.default_rng(0)
    samples = (0.1 * rng.standard_normal((44100 * 25 + 123, 2))).astype(np.float32)
    path = tmp_path / "cd.wav"
    sf.write(str(path), samples, 44100)
    whole, _ = load_audio(path)
    stream = AudioStream(path, block_seconds=3.3)
    blocks = list(stream.blocks())
    assert [start for start, _ in blocks] == list(np.cumsum([0] + [b.size for _, b in blocks])[:-1])
    streamed = np.concatenate([b for _, b in blocks])
    assert streamed.size == whole.size == stream.num_samples
    assert np.max(np.abs(streamed - whole)) < 1e-6


def test_nan_samples_are_an_unreadable_span(tmp_path):
    samples = np.full(16000 * 4, 0.01, np.float32)
    samples[16000 * 2 : 16000 * 2 + 800] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(str(path), samples, 16000, subtype="FLOAT")
    stream = AudioStream(path)
    out = np.concatenate([b for _, b in stream.blocks()])
    assert [(u.start_s, u.end_s, u.reason) for u in stream.unreadable] == [
        (2.0, 2.05, "NaN or infinite samples")
    ]
    assert np.all(out[32000:32800] == 0) and out.size == samples.size


def test_a_corrupt_span_is_reported_and_the_rest_scored(short_recording, model, tmp_path):
    path, placed, vtt = short_recording
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4000] = (
        np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    )
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(bytes(data))
    timeline = predict_timeline(
        corrupt, model, transcript_words=read_timed_transcript(vtt), aligner=aligner()
    )
    assert timeline.duration_s == pytest.approx(sf.info(str(path)).duration)
    [bad] = timeline.unreadable
    assert "cannot decode" in bad.reason and 0 < bad.start_s < bad.end_s < timeline.duration_s
    predicted = [r for r in timeline.rows if r.prediction is not None]
    assert any(r.end_s <= bad.start_s for r in predicted)
    assert any(r.start_s >= bad.end_s for r in predicted)
    # utterances clear of the bad span are all still found and predicted
    clear = [p for p in placed if p.end_s < bad.start_s - 0.5 or p.start_s > bad.end_s + 0.5]
    found = match(spans(clear), timeline.rows)
    assert all(i is not None and timeline.rows[i].prediction is not None for i in found)


# --- Transcripts ------------------------------------------------------------------------------


def test_timed_transcripts_vtt_srt_and_textgrid(tmp_path):
    (tmp_path / "a.vtt").write_text(
        "WEBVTT\n\n00:00:01.000 --> 00:00:03.000\n"
        "<v Ann>Kids are talking, by the door.\n\n"
        "00:00:10.000 --> 00:00:11.000\nDogs [LAUGHTER] are\n"
    )
    (tmp_path / "a.srt").write_text("1\n00:00:01,000 --> 00:00:03,000\nKids are talking\n")
    (tmp_path / "a.TextGrid").write_text(
        'File type = "ooTextFile"\nObject class = "TextGrid"\n\nxmin = 0\nxmax = 3\n'
        'tiers? <exists>\nsize = 1\nitem []:\n    item [1]:\n        class = "IntervalTier"\n'
        '        name = "words"\n        xmin = 0\n        xmax = 3\n'
        '        intervals: size = 2\n        intervals [1]:\n            xmin = 0\n'
        '            xmax = 1.5\n            text = "kids"\n        intervals [2]:\n'
        '            xmin = 1.5\n            xmax = 3\n            text = "are"\n'
    )
    vtt = read_timed_transcript(tmp_path / "a.vtt")
    assert [w.word for w in vtt] == ["kids", "are", "talking", "by", "the", "door", "dogs", "are"]
    assert (vtt[0].start_s, vtt[5].end_s) == (1.0, 3.0)
    srt = read_timed_transcript(tmp_path / "a.srt")
    assert [(w.word, round(w.start_s, 3)) for w in srt] == [
        ("kids", 1.0),
        ("are", 1.667),
        ("talking", 2.333),
    ]
    grid = read_timed_transcript(tmp_path / "a.TextGrid")
    assert [(w.word, w.start_s, w.end_s) for w in grid] == [("kids", 0.0, 1.5), ("are", 1.5, 3.0)]
    per_segment, unplaced = assign_words(
        vtt + [type(vtt[0])("far", 30.0, 30.5)], [(0.9, 3.1), (9.6, 11.2)]
    )
    assert [[w.word for w in s] for s in per_segment] == [
        ["kids", "are", "talking", "by", "the", "door"],
        ["dogs", "are"],
    ]
    assert [w.word for w in unplaced] == ["far"]
    with pytest.raises(TranscriptError, match="must be"):
        read_timed_transcript(tmp_path / "a.txt")
    (tmp_path / "bad.srt").write_text("not a subtitle file at all")
    with pytest.raises(TranscriptError, match="malformed SRT"):
        read_timed_transcript(tmp_path / "bad.srt")


# --- The command, in process and through a server ------------------------------------------


def test_predict_command_writes_the_timeline(short_recording, small_model_base, tmp_path, capsys):
    path, placed, vtt = short_recording
    csv_path, jsonl, png = tmp_path / "t.csv", tmp_path / "t.jsonl", tmp_path / "t.png"
    assert (
        main(
            [
                "predict",
                str(path),
                "--transcript-file",
                str(vtt),
                "--model-dir",
                str(small_model_base),
                "--json",
                "--csv",
                str(csv_path),
                "--out",
                str(jsonl),
                "--plot",
                str(png),
            ]
        )
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    rows = doc["rows"]
    assert doc["timeline"]["segments"] == len(rows) == len(placed)
    assert [r["text"] for r in rows] == [p.transcript.lower().replace(",", "") for p in placed]
    assert [json.loads(line) for line in jsonl.read_text().splitlines()] == rows
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith(
        "segment,start_s,end_s,emotion,confidence,p_angry,p_happy,"
        "p_neutral,p_sad,text,acoustic_excitation,semantic_excitation"
    )
    assert len(lines) == len(rows) + 1
    first = lines[1].split(",")
    assert first[3] == rows[0]["emotion"] and float(first[1]) == rows[0]["start_s"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a short utterance is still one utterance, as before
    assert (
        main(
            [
                "predict",
                placed[0].source,
                "--transcript",
                placed[0].transcript,
                "--model-dir",
                str(small_model_base),
                "--json",
            ]
        )
        == 0
    )
    assert "results" in json.loads(capsys.readouterr().out)
    # --transcript is for one utterance, and options that need one recording say so
    assert (
        main(
            [
                "predict",
                str(path),
                "--timeline",
                "--transcript",
                "kids",
                "--model-dir",
                str(small_model_base),
            ]
        )
        == 2
    )
    assert (
        main(
            [
                "predict",
                str(path),
                str(path),
                "--csv",
                str(csv_path),
                "--model-dir",
                str(small_model_base),
            ]
        )
        == 2
    )


def test_served_model_gives_the_same_timeline(short_recording, small_model_base, model):
    from serving.client import RestClient

    path, _, vtt = short_recording
    words = read_timed_transcript(vtt)
    local = predict_timeline(path, model, transcript_words=words, aligner=aligner(), batch_size=4)
    process, url = start_server(serve_argv(small_model_base, "--grpc-port", "-1"))
    try:
        with RestClient(url, "cme") as client:
            served = predict_timeline(
                path, client, transcript_words=words, aligner=aligner(), batch_size=4
            )
    finally:
        assert stop_server(process) == 0
    assert [(r.start_s, r.end_s, r.emotion) for r in served.rows] == [
        (r.start_s, r.end_s, r.emotion) for r in local.rows
    ]
    for a, b in zip(served.rows, local.rows):
        for c in DEFAULT_CLASSES:
            assert a.prediction.probabilities[c] == pytest.approx(
                b.prediction.probabilities[c], abs=1e-5
            )


def test_evaluate_scores_labelled_segments(recordings, small_model_base, tmp_path, capsys):
    path, placed, vtt = recordings[20]
    manifest = tmp_path / "segments.csv"
    write_segments_csv(placed, manifest)
    lines = manifest.read_text().splitlines()
    # the path and transcript columns added, and a labelled segment where nobody speaks
    quiet = (placed[0].end_s + placed[1].start_s) / 2
    manifest.write_text(
        "\n".join(
            ["path,start,end,label,transcript"]
            + [f"{path},{line},{vtt}" for line in lines[1:]]
            + [f"{path},{quiet - 0.05:.3f},{quiet + 0.05:.3f},sad,{vtt}"]
        )
        + "\n"
    )
    assert len(read_segment_manifest(manifest)) == len(placed) + 1
    out = tmp_path / "report"
    assert (
        main(
            [
                "evaluate",
                "--model-dir",
                str(small_model_base),
                "--dataset",
                "segments",
                "--data-dir",
                str(manifest),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert report["inputs"] == len(placed) + 1 and report["n"] == len(placed)
    assert report["errors"] == 1 and report["complete"]
    assert report["segments"]["onset"]["f1"] >= 0.95
    predictions = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["label"] for p in predictions] == [p.label for p in placed]
    [error] = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    assert error["stage"] == "segmentation" and "no speech segment" in error["reason"]


# --- The README's commands --------------------------------------------------------------------


def test_joined_recording_command(small_model_base, tmp_path, capsys):
    """`python -m preprocessing.joined_recording --out ... --actors 21,22 --count 3 --snr 20`:
    the recording, its transcript and its labels, which `cme-ser evaluate --dataset segments`
    reads as they are."""
    from preprocessing import joined_recording

    ravdess()
    out = tmp_path / "demo" / "recording.flac"
    assert (
        joined_recording.main(
            ["--out", str(out), "--actors", "21,22", "--count", "3", "--snr", "20"]
        )
        == 0
    )
    labels = (tmp_path / "demo" / "recording.segments.csv").read_text().splitlines()
    assert labels[0] == "path,start,end,label,transcript" and len(labels) == 4
    assert all(
        line.startswith("recording.flac,") and line.endswith(",recording.vtt")
        for line in labels[1:]
    )
    words = read_timed_transcript(tmp_path / "demo" / "recording.vtt")
    assert len(words) == 18  # two RAVDESS statements of 6 words
    ends = [float(line.split(",")[2]) for line in labels[1:]]
    assert sf.info(str(out)).duration > ends[-1] and ends == sorted(ends)
    report_dir = tmp_path / "report"
    assert (
        main(
            [
                "evaluate",
                "--model-dir",
                str(small_model_base),
                "--dataset",
                "segments",
                "--data-dir",
                str(tmp_path / "demo" / "recording.segments.csv"),
                "--out",
                str(report_dir),
            ]
        )
        == 0
    )
    report = json.loads((report_dir / "report.json").read_text())
    assert report["n"] == 3 and report["errors"] == 0
    assert report["segments"]["onset"]["hits"] == 3


def test_timeline_benchmark_prints_speed_and_memory(small_model_base, tmp_path):
    """`python benchmarks/timeline.py --model-dir DIR --minutes ...`, at half and one minute."""
    import subprocess
    import sys
    from pathlib import Path

    ravdess()
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [
            sys.executable,
            str(root / "benchmarks" / "timeline.py"),
            "--model-dir",
            str(small_model_base),
            "--minutes",
            "0.5,1",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(result["lengths"]) == {"0.5min", "1min"}
    for minutes, run in (("0.5min", 30.0), ("1min", 60.0)):
        got = result["lengths"][minutes]
        assert got["duration_s"] == pytest.approx(run, abs=0.1)
        assert got["predicted"] == got["segments"] > run / 8  # an utterance every ~5.5 s
        assert got["seconds"] > 0 and got["cpu_seconds"] > 0 and got["peak_rss_mb"] > 100
