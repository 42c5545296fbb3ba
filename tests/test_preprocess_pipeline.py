"""The Beam preprocessing job end to end on real RAVDESS audio plus a zoo of broken inputs.

Runs the real DirectRunner (multi-processing, 2 workers) once for the module, then checks
that every input became either a record or an error line with the right stage.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf
from data_support import RAVDESS_SONG  # noqa: E402
from data_support import RAVDESS_SPEECH as RAVDESS  # noqa: E402
from in_memory_pipeline_support import assert_streams_like_in_memory

from preprocessing import beam_pipeline, corpora
from preprocessing.embeddings import fetch_glove
from preprocessing.records import decode_example, word_dim_of_files

# Two actors of each gender, so both 2-fold halves hold both genders.
GOOD = [
    "Actor_01/03-01-05-01-01-01-01.flac",  # angry, "Kids are talking by the door"
    "Actor_01/03-01-04-02-02-01-01.flac",  # sad, "Dogs are sitting by the door"
    "Actor_02/03-01-03-01-01-02-02.flac",
    "Actor_02/03-01-01-01-02-01-02.flac",
    "Actor_03/03-01-05-02-02-02-03.flac",
    "Actor_04/03-01-04-01-01-01-04.flac",
]
TRANSCRIPTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
LABELS = {"01": "neutral", "03": "happy", "04": "sad", "05": "angry"}
CLASSES = ("angry", "happy", "neutral", "sad")


def ravdess_row(rel):
    parts = Path(rel).stem.split("-")
    return {
        "path": str(RAVDESS / rel),
        "label": LABELS[parts[2]],
        "speaker": rel.split("/")[0],
        "transcript": TRANSCRIPTS[parts[4]],
    }


def textgrid(path, intervals, xmax):
    lines = [
        'File type = "ooTextFile"',
        'Object class = "TextGrid"',
        "",
        "xmin = 0",
        f"xmax = {xmax}",
        "tiers? <exists>",
        "size = 1",
        "item []:",
        "    item [1]:",
        '        class = "IntervalTier"',
        '        name = "words"',
        "        xmin = 0",
        f"        xmax = {xmax}",
        f"        intervals: size = {len(intervals)}",
    ]
    for i, (a, b, word) in enumerate(intervals, 1):
        lines += [
            f"        intervals [{i}]:",
            f"            xmin = {a}",
            f"            xmax = {b}",
            f'            text = "{word}"',
        ]
    Path(path).write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A manifest mixing real RAVDESS files with one broken input per failure mode."""
    if not RAVDESS.is_dir():
        pytest.fail(f"RAVDESS not found at {RAVDESS} (see ../shared/data/README.md)")
    root = tmp_path_factory.mktemp("corpus")
    rows = [ravdess_row(rel) for rel in GOOD]
    real, sr = sf.read(RAVDESS / GOOD[0], dtype="float32")
    expected_errors = {}

    def bad(name, stage, label="angry", speaker="Actor_03", transcript="kids are talking", **kw):
        rows.append(
            {
                "path": str(root / name),
                "label": label,
                "speaker": speaker,
                "transcript": transcript,
                **kw,
            }
        )
        expected_errors[Path(name).stem] = stage

    bad("missing.wav", "decode")
    (root / "empty.wav").write_bytes(b"")
    bad("empty.wav", "decode")
    flac = (RAVDESS / GOOD[1]).read_bytes()
    (root / "truncated.flac").write_bytes(flac[: len(flac) // 3])
    bad("truncated.flac", "decode")
    (root / "notes.wav").write_text("this is not audio\n")
    bad("notes.wav", "decode")
    nan = real.copy()
    nan[1000:1010] = np.nan
    sf.write(root / "nan.wav", nan, sr, subtype="FLOAT")
    bad("nan.wav", "decode")
    sf.write(root / "silence.wav", np.zeros(sr * 2, np.float32), sr)
    bad("silence.wav", "decode")
    sf.write(root / "punctuation.wav", real, sr)
    bad("punctuation.wav", "alignment", transcript="?! ... --")
    sf.write(root / "late_grid.wav", real, sr)
    textgrid(root / "late_grid.TextGrid", [(0.5, 1.0, "kids"), (1.0, 9.5, "door")], 9.5)
    bad("late_grid.wav", "alignment", textgrid=str(root / "late_grid.TextGrid"))
    rows.append(
        {
            "path": str(root / "late_grid.wav"),
            "label": "bored",
            "speaker": "Actor_04",
            "transcript": "kids",
        }
    )
    expected_errors["late_grid-2"] = "corpus"  # unknown label (the id repeats: made unique)

    # Valid but unusual inputs that must become records.
    stereo_8k = np.stack([real[::2], real[::2] * 0.5], axis=1)
    sf.write(root / "stereo_8k.wav", stereo_8k, 8000)
    rows.append({**ravdess_row(GOOD[0]), "path": str(root / "stereo_8k.wav")})
    long = np.tile(real, int(np.ceil(65 * sr / len(real))))[: 65 * sr]
    sf.write(root / "long.flac", long, sr)
    rows.append({**ravdess_row(GOOD[0]), "path": str(root / "long.flac")})
    sf.write(root / "given.wav", real, sr)
    textgrid(
        root / "given.TextGrid",
        [(0.0, 0.9, ""), (0.9, 1.2, "kids"), (1.2, 1.5, "are")],
        len(real) / sr,
    )
    rows.append(
        {
            **ravdess_row(GOOD[0]),
            "path": str(root / "given.wav"),
            "textgrid": str(root / "given.TextGrid"),
        }
    )

    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest, expected_errors, len(rows)


@pytest.fixture(scope="module")
def embeddings_path():
    return str(fetch_glove())


@pytest.fixture(scope="module")
def job(corpus, embeddings_path, tmp_path_factory):
    manifest, _, _ = corpus
    out = tmp_path_factory.mktemp("records")
    items = list(corpora.manifest(manifest, CLASSES))
    summary = beam_pipeline.run(
        dataset="manifest",
        items=items,
        out_dir=out,
        class_names=CLASSES,
        embeddings_path=embeddings_path,
        num_folds=2,
        overwrite=False,
        beam_args=[
            "--runner=DirectRunner",
            "--direct_running_mode=multi_processing",
            "--direct_num_workers=2",
        ],
    )
    return out, summary, items


def read_records(out):
    records = {}
    for path in beam_pipeline.record_files(out):
        for raw in tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator():
            rec = decode_example(raw)
            rec["file"] = path
            records[rec["utterance_id"]] = rec
    return records


def test_every_input_is_a_record_or_an_error(job, corpus):
    out, summary, _ = job
    _, expected_errors, num_rows = corpus
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    got = {e["utterance_id"]: e["stage"] for e in errors}
    assert got == expected_errors
    assert all(e["reason"] and e["path"] for e in errors)
    records = read_records(out)
    assert len(records) == num_rows - len(expected_errors) == summary["records"]
    assert set(records).isdisjoint(got)
    assert summary["complete"] and summary["inputs"] == num_rows
    assert summary["errors_per_stage"] == {"alignment": 2, "corpus": 1, "decode": 6}


def test_error_reasons_are_clear(job):
    out, _, _ = job
    reasons = {
        e["utterance_id"]: e["reason"]
        for e in map(json.loads, (out / "errors.jsonl").read_text().splitlines())
    }
    assert "bored" in reasons["late_grid-2"]
    assert "door" in reasons["late_grid"]  # names the word whose times exceed the audio
    for key in ("missing", "empty", "truncated", "notes", "nan", "silence"):
        assert len(reasons[key]) > 10, key


def test_ravdess_records_hold_the_transcript_aligned_inside_the_audio(job):
    out, _, items = job
    records = read_records(out)
    for rel in GOOD:
        rec = records[Path(rel).stem]
        row = ravdess_row(rel)
        assert rec["words"] == row["transcript"].lower().split()
        assert rec["alignment_source"] == "forced"
        assert rec["label_name"] == row["label"] and rec["label"] == CLASSES.index(row["label"])
        starts, ends = np.array(rec["word_start"]), np.array(rec["word_end"])
        assert np.all(ends > starts) and np.all(np.diff(starts) > 0)
        assert np.all(starts[1:] >= ends[:-1] - 1)
        assert starts[0] > 0 and ends[-1] <= rec["num_frames"]
        audio, sr = sf.read(row["path"])
        assert rec["num_frames"] == 1 + (len(audio) - 400) // 160
        assert rec["word_embeddings"].shape == (6, 50)
        assert np.all(np.abs(rec["word_embeddings"]).sum(axis=1) > 0)  # all in GloVe


def test_unusual_but_valid_inputs_become_records(job):
    out, _, _ = job
    records = read_records(out)
    assert records["stereo_8k"]["alignment_source"] == "forced"
    assert (
        abs(records["stereo_8k"]["num_frames"] - records["03-01-05-01-01-01-01"]["num_frames"]) <= 1
    )
    assert records["long"]["num_frames"] == 1 + (60 * 16000 - 400) // 160  # truncated to 60 s
    given = records["given"]
    assert given["alignment_source"] == "given"
    assert given["words"] == ["kids", "are"]
    assert given["word_start"] == [90, 120] and given["word_end"] == [120, 150]


def test_folds_are_speaker_independent_and_written(job):
    out, summary, _ = job
    plan = json.loads((out / "fold_plan.json").read_text())
    records = read_records(out)
    for rec in records.values():
        assert Path(rec["file"]).parent.name == f"fold-{rec['fold']}"
        assert plan["folds"][rec["speaker"]] == rec["fold"]
    speakers_per_fold = [{r["speaker"] for r in records.values() if r["fold"] == k} for k in (0, 1)]
    assert not speakers_per_fold[0] & speakers_per_fold[1]
    assert sum(summary["records_per_fold"].values()) == len(records)


@pytest.mark.parametrize(
    "options",
    [
        {"shuffle": True, "seed": 1, "time_stretch": 0.1, "speaker_norm": True, "with_ids": True},
        {
            "shuffle": True,
            "speakers": ["Actor_02"],
            "exclude_speakers": True,
            "channels": ["speech"],
        },
    ],
    ids=["stretch,speaker_norm", "speakers,channels"],
)
def test_training_streams_the_records_into_the_in_memory_batches(job, options):
    """The job's records (real audio, a 65 s one past every length bucket) as training reads
    them: the batches of the in-memory pipeline the streamed one replaced, bit for bit."""
    out, _, _ = job
    files = beam_pipeline.record_files(out)
    batches = assert_streams_like_in_memory(files, word_dim_of_files(files), 2, **options)
    dropped = set(options.get("speakers", ()))  # only ever excluded here
    kept = [r for r in read_records(out).values() if r["speaker"] not in dropped]
    assert sum(len(b[1]) for b in batches[0]) == len(kept) and len(kept) > len(batches[0])


def test_rerun_never_mixes_old_and_new_records(job, corpus, embeddings_path):
    out, summary, items = job
    with pytest.raises(FileExistsError, match="--overwrite"):
        beam_pipeline.run(
            dataset="manifest",
            items=items,
            out_dir=out,
            class_names=CLASSES,
            embeddings_path=embeddings_path,
            num_folds=2,
        )
    # A rerun on fewer utterances with overwrite leaves only the new records.
    subset = [i for i in items if getattr(i, "utterance_id", "").startswith("03-01")]
    copy = Path(str(out) + "-copy")
    shutil.copytree(out, copy)
    new = beam_pipeline.run(
        dataset="manifest",
        items=subset,
        out_dir=copy,
        class_names=CLASSES,
        embeddings_path=embeddings_path,
        num_folds=2,
        overwrite=True,
        beam_args=["--runner=DirectRunner"],
    )
    assert new["records"] == len(subset) == len(read_records(copy))
    assert (copy / "errors.jsonl").read_text() == ""


def test_cli_exits_non_zero_only_when_nothing_usable_was_produced(
    tmp_path, capsys, embeddings_path
):
    from cli.main import main

    (tmp_path / "bad.wav").write_text("not audio")
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label,speaker\nbad.wav,angry,a\nmissing.wav,sad,b\n")
    args = [
        "preprocess",
        "--dataset",
        "manifest",
        "--data-dir",
        str(bad),
        "--folds",
        "2",
        "--embeddings",
        embeddings_path,
        "--beam-arg=--runner=DirectRunner",
    ]
    assert main(args + ["--out", str(tmp_path / "out_bad")]) == 2
    assert "nothing usable was produced" in capsys.readouterr().err
    good = tmp_path / "good.csv"
    good.write_text(
        "path,label,speaker,transcript\n"
        f"{RAVDESS / GOOD[0]},angry,a,Kids are talking by the door\n"
        f"{RAVDESS / GOOD[3]},neutral,b,Dogs are sitting by the door\n"
        "missing.wav,sad,b,\n"
    )
    assert (
        main(
            [
                "preprocess",
                "--dataset",
                "manifest",
                "--data-dir",
                str(good),
                "--folds",
                "2",
                "--embeddings",
                embeddings_path,
                "--beam-arg=--runner=DirectRunner",
                "--out",
                str(tmp_path / "out_good"),
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "out_good" / "summary.json").read_text())
    assert (summary["records"], summary["errors"], summary["complete"]) == (2, 1, True)


def test_cli_preprocesses_ravdess_speech_and_song_together(tmp_path, capsys, embeddings_path):
    from cli.main import main

    song_root = RAVDESS_SONG
    if not song_root.is_dir():
        pytest.skip("RAVDESS song not found (see ../shared/data/README.md)")
    speech, song = tmp_path / "speech", tmp_path / "song"
    for root, source, names in (
        (
            speech,
            RAVDESS,
            ["Actor_01/03-01-05-01-01-01-01.flac", "Actor_02/03-01-01-01-02-01-02.flac"],
        ),
        (
            song,
            song_root,
            [
                "Actor_01/03-02-05-01-01-01-01.flac",
                "Actor_02/03-02-04-01-02-02-02.flac",
                "Actor_02/03-02-02-01-01-01-02.flac",
            ],
        ),
    ):  # calm: not a class
        for name in names:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).symlink_to(source / name)
    out = tmp_path / "out"
    assert (
        main(
            [
                "preprocess",
                "--dataset",
                "ravdess",
                "--data-dir",
                str(speech),
                "--data-dir",
                str(song),
                "--channels",
                "speech,song",
                "--folds",
                "2",
                "--embeddings",
                embeddings_path,
                "--beam-arg=--runner=DirectRunner",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["records"], summary["errors"]) == (4, 0)
    assert summary["records_per_channel"] == {"speech": 2, "song": 2}
    records = read_records(out)
    # Ids differ by the channel code; the channel is in the record; an actor's speech and song
    # share its fold.
    assert {i: r["channel"] for i, r in records.items()} == {
        "03-01-05-01-01-01-01": "speech",
        "03-01-01-01-02-01-02": "speech",
        "03-02-05-01-01-01-01": "song",
        "03-02-04-01-02-02-02": "song",
    }
    plan = json.loads((out / beam_pipeline.FOLD_PLAN_FILE).read_text())
    assert plan["folds"] == {"Actor_01": 0, "Actor_02": 1}
    for r in records.values():
        assert r["fold"] == plan["folds"][r["speaker"]]
        assert Path(r["file"]).parent.name == f"fold-{r['fold']}"
    assert [e["channels"] for e in plan["summary"]] == [{"song": 1, "speech": 1}] * 2
