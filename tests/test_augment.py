"""Augmented copies (preprocessing/augment.py) on real RAVDESS audio: the drawn conditions,
their determinism and SNR, the Beam job's copies beside their sources, and that training reads
them only when told to while held-out scoring never does."""

import collections
import json

import numpy as np
import pytest
import tensorflow as tf
from data_support import RAVDESS_SONG, RAVDESS_SPEECH, needs_song, needs_speech

from experiments.folds import files_by_fold
from preprocessing import audio, augment, beam_pipeline, corpora
from preprocessing.embeddings import fetch_glove
from preprocessing.records import decode_example
from preprocessing.utterance import filterbank
from trainer.config import ModelConfig, variant_config
from trainer.train import train_fold

# One speech and one song recording of each of 4 actors (2 male, 2 female): 2 folds.
FILES = [
    ("speech", "Actor_01/03-01-05-01-01-01-01.flac"),
    ("song", "Actor_01/03-02-03-01-02-01-01.flac"),
    ("speech", "Actor_02/03-01-04-01-01-01-02.flac"),
    ("song", "Actor_02/03-02-01-01-02-01-02.flac"),
    ("speech", "Actor_03/03-01-03-01-01-01-03.flac"),
    ("song", "Actor_03/03-02-05-01-02-01-03.flac"),
    ("speech", "Actor_04/03-01-01-01-01-01-04.flac"),
    ("song", "Actor_04/03-02-04-01-02-01-04.flac"),
]
SOURCE_FIELDS = (
    "speaker",
    "label",
    "label_name",
    "fold",
    "num_frames",
    "words",
    "word_start",
    "word_end",
    "transcript",
    "alignment_source",
)
TINY = ModelConfig(
    cnn_filters=(4, 8, 8),
    semantic_dim=8,
    lstm_units=4,
    fcn_units=4,
    batch_size=4,
    selection="fixed",
    epochs=1,
)


def snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    """``10 log10(sum(x^2) / sum((y - x)^2))``, measured on the written samples."""
    clean = clean.astype(np.float64)
    return float(10 * np.log10(np.sum(clean**2) / np.sum((noisy.astype(np.float64) - clean) ** 2)))


@needs_speech
def test_conditions_are_drawn_per_utterance_and_copy_and_keep_the_length():
    waveform, _ = audio.load_audio(RAVDESS_SPEECH / FILES[0][1])
    seen = collections.Counter()
    for actor in range(1, 25):
        for copy in (1, 2):
            condition = augment.draw(f"03-01-05-01-01-01-{actor:02d}", copy)
            assert condition == augment.draw(f"03-01-05-01-01-01-{actor:02d}", copy)
            assert 1 <= len(condition.names) <= augment.MAX_CHAIN
            assert list(condition.names) == sorted(condition.names, key=augment.CONDITIONS.index)
            seen.update(condition.names)
            seen["chains"] += len(condition.names) > 1
            for name, params in condition.steps:
                if name == "noise":
                    assert augment.SNR_DB[0] <= params["snr_db"] <= augment.SNR_DB[1]
                if name == "gain":
                    assert augment.GAIN_DB[0] <= params["gain_db"] <= augment.GAIN_DB[1]
            assert json.loads(condition.describe())[0][0] == condition.names[0]
    assert set(seen) == set(augment.CONDITIONS) | {"chains"}
    assert 0 < seen["chains"] < 48
    with pytest.raises(ValueError, match="numbered from 1"):
        augment.draw("x", 0)

    for name in augment.CONDITIONS:
        params = {"noise": {"snr_db": 10.0, "seed": 3}, "gain": {"gain_db": -6.0}}.get(name, {})
        if name == "reverb":
            params = {"room_size": 0.5, "wet_level": 0.3, "dry_level": 0.8}
        condition = augment.Condition(((name, params),))
        out = augment.apply(waveform, condition)
        assert out.shape == waveform.shape and out.dtype == np.float32
        assert np.all(np.isfinite(out)) and not np.allclose(out, waveform, atol=1e-3)
        np.testing.assert_array_equal(out, augment.apply(waveform, condition))  # deterministic
        if name == "gain":
            np.testing.assert_allclose(out, waveform * 10 ** (-6 / 20), rtol=1e-4, atol=1e-7)
        if name == "telephone":
            spectrum = np.abs(np.fft.rfft(out)) ** 2
            hz = np.fft.rfftfreq(out.size, 1 / 16000)
            assert spectrum[hz > 4100].sum() < 1e-3 * spectrum.sum()  # nothing above 8 kHz / 2
            assert spectrum[hz < 150].sum() < 0.02 * spectrum.sum()
    # Noise at the drawn SNR, measured on real speech, within 0.5 dB, over the whole range.
    for snr in (5.0, 12.5, 20.0):
        noisy = augment.apply(waveform, augment.Condition((("noise", {"snr_db": snr, "seed": 1}),)))
        assert snr_db(waveform, noisy) == pytest.approx(snr, abs=0.5)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    if not (RAVDESS_SPEECH.is_dir() and RAVDESS_SONG.is_dir()):
        pytest.skip("RAVDESS speech and song not found (see ../shared/data/README.md)")
    root = tmp_path_factory.mktemp("corpus")
    for channel, name in FILES:
        source = (RAVDESS_SPEECH if channel == "speech" else RAVDESS_SONG) / name
        (root / channel / name).parent.mkdir(parents=True, exist_ok=True)
        (root / channel / name).symlink_to(source)
    return [root / "speech", root / "song"]


def preprocess(corpus, out, copies):
    return beam_pipeline.run(
        dataset="ravdess",
        items=corpora.ravdess(corpus, channels=("speech", "song")),
        out_dir=out,
        class_names=corpora.DEFAULT_CLASSES,
        embeddings_path=str(fetch_glove()),
        num_folds=2,
        beam_args=["--runner=DirectRunner"],
        augment_copies=copies,
    )


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):
    """The same corpus preprocessed with one copy per utterance and with none."""
    out = {copies: tmp_path_factory.mktemp(f"copies{copies}") for copies in (1, 0)}
    summaries = {copies: preprocess(corpus, out[copies], copies) for copies in out}
    return out, summaries


def records_of(out):
    """utterance id -> (decoded record, serialized bytes, fold directory)."""
    found = {}
    for path in beam_pipeline.record_files(out):
        for raw in tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator():
            record = decode_example(raw)
            found[record["utterance_id"]] = (record, raw, path.split("/")[-2])
    return found


@needs_speech
@needs_song
def test_a_copy_is_its_source_under_a_drawn_condition_in_its_speakers_fold(runs, corpus):
    out, summaries = runs
    records, plain = records_of(out[1]), records_of(out[0])
    sources = {i: r for i, r in records.items() if corpora.COPY_MARK not in i}
    assert len(sources) == len(FILES) and len(records) == 2 * len(FILES)
    summary = summaries[1]
    assert (summary["records"], summary["augmented_records"], summary["augment_errors"]) == (
        8,
        8,
        0,
    )
    assert summary["complete"] and summary["augment_copies"] == 1
    assert summary["records_per_channel"] == {
        "speech": 4,
        "song": 4,
        "speech_aug": 4,
        "song_aug": 4,
    }
    plan = json.loads((out[1] / beam_pipeline.FOLD_PLAN_FILE).read_text())
    waveforms = {
        name.split("/")[1].rsplit(".", 1)[0]: audio.load_audio(
            (RAVDESS_SPEECH if channel == "speech" else RAVDESS_SONG) / name
        )[0]
        for channel, name in FILES
    }
    for utterance_id, (source, _, source_dir) in sources.items():
        copy, _, copy_dir = records[corpora.copy_id(utterance_id, 1)]
        # The source's speaker, label, fold, words and spans; its own channel and features.
        assert {k: copy[k] for k in SOURCE_FIELDS} == {k: source[k] for k in SOURCE_FIELDS}
        assert copy["fold"] == plan["folds"][copy["speaker"]] and copy_dir == source_dir
        assert copy["channel"] == source["channel"] + "_aug" and source["augmentation"] == ""
        condition = augment.draw(utterance_id, 1)
        assert copy["augmentation"] == condition.describe()
        assert not np.allclose(copy["fbank"], source["fbank"], atol=1e-2)
        # The copy's filterbank is that of the drawn condition applied to the decoded audio.
        expected = filterbank(augment.apply(waveforms[utterance_id], condition))
        np.testing.assert_allclose(copy["fbank"], expected, rtol=1e-5, atol=1e-4)
        # No copies: the very records a run without augmentation writes, byte for byte.
        assert plain[utterance_id][1] == records[utterance_id][1]
    assert set(plain) == set(sources)
    assert "augmented_records" not in summaries[0] and "augment_copies" not in summaries[0]


@needs_speech
@needs_song
def test_copies_are_the_same_on_every_run(runs, corpus, tmp_path):
    out, _ = runs
    preprocess(corpus, tmp_path, 1)
    again = records_of(tmp_path)
    first = records_of(out[1])
    assert set(again) == set(first)
    for utterance_id, (_, raw, _) in first.items():
        assert again[utterance_id][1] == raw


@needs_speech
@needs_song
def test_copies_train_only_where_named_and_are_never_scored(runs, tmp_path):
    out, _ = runs
    files, plain_files = files_by_fold(out[1]), files_by_fold(out[0])
    augmented = variant_config("cme_fixed20_song_aug")
    config = TINY.replace(train_channels=augmented.train_channels)
    result = train_fold(files, 1, config, embeddings_path=str(tmp_path / "aug.npz"))
    # Trained on fold 0's 4 recordings and their 4 copies; scored on fold 1's 4 recordings.
    assert result.num_train == result.num_final_train == 8 and result.num_test == 4
    scored = np.load(tmp_path / "aug.npz")
    assert not any(corpora.COPY_MARK in i for i in scored["utterance_ids"])
    assert sorted(scored["channels"]) == ["song", "song", "speech", "speech"]
    # A model not trained on copies is the same model whether or not they are in the records.
    song = TINY.replace(train_channels=("speech", "song"))
    with_copies = train_fold(files, 1, song, embeddings_path=str(tmp_path / "a.npz"))
    without = train_fold(plain_files, 1, song, embeddings_path=str(tmp_path / "b.npz"))
    assert with_copies.num_train == without.num_train == 4
    np.testing.assert_array_equal(
        np.load(tmp_path / "a.npz")["probabilities"], np.load(tmp_path / "b.npz")["probabilities"]
    )
    # Records without copies: the augmented variant says how to make them.
    with pytest.raises(ValueError, match="--channels speech,song --augment-copies 1"):
        train_fold(plain_files, 1, config)


def test_a_variant_on_copies_preprocesses_its_sources_with_one_copy_each():
    """What `cme-ser reproduce` and the TFX entry points (``run_command.training_channels``)
    preprocess for the augmented variant: the real channels and one copy per utterance;
    --channels keeps the variant's augmentation of the channels named."""
    from pipeline.run_command import corpus_channels, training_channels

    config = variant_config("cme_fixed20_song_aug")
    trained, channels = training_channels(config, None)
    assert trained.train_channels == ("speech", "song", "speech_aug", "song_aug")
    assert channels == corpus_channels(trained) == ("speech", "song")
    trained, channels = training_channels(config, ("speech",))
    assert trained.train_channels == ("speech", "speech_aug") and channels is None
    assert corpus_channels(trained) == ("speech",)
    assert training_channels(variant_config("cme_fixed20_song"), None)[1] == ("speech", "song")
    plain, channels = training_channels(variant_config("cme_fixed20_song"), ("speech",))
    assert plain.train_channels == ("speech",) and channels is None
    assert corpora.records_for(config.train_channels) == (("speech", "song"), 1)
    assert corpora.records_for(("speech", "song")) == (("speech", "song"), 0)
    assert corpora.records_for(("speech_aug",)) == (("speech",), 1)


@needs_speech
@needs_song
def test_the_calibrators_held_out_answers_leave_the_copies_out(runs, small_model_export):
    from pipeline.calibrator import held_out_answers

    out, _ = runs
    _, base, _ = small_model_export
    files = files_by_fold(out[1])[1]
    probabilities, labels, channels = held_out_answers(str(base / "1"), files)
    real = {i: r for i, (r, _, _) in records_of(out[0]).items() if r["fold"] == 1}
    assert sorted(channels.tolist()) == sorted(r["channel"] for r in real.values())
    assert sorted(labels.tolist()) == sorted(r["label"] for r in real.values())
    assert probabilities.shape == (len(real), 4)
    # The same answers as on the records without copies (compared per class, sorted: the
    # Beam writer's record order is not part of the answer).
    plain = held_out_answers(str(base / "1"), files_by_fold(out[0])[1])
    np.testing.assert_allclose(
        np.sort(probabilities, axis=0), np.sort(plain[0], axis=0), rtol=1e-5, atol=1e-6
    )
    assert sorted(labels.tolist()) == sorted(plain[1].tolist())
