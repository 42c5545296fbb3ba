"""The filterbank against a NumPy reference, and the record schema's round trip."""

import numpy as np
import pytest
import tensorflow as tf

from preprocessing import features
from preprocessing.records import decode_example, make_example, parse_examples, to_model_inputs


def numpy_filterbank(x):
    x = np.asarray(x, np.float64)
    emphasized = x - features.PRE_EMPHASIS * np.concatenate([[0.0], x[:-1]])
    n = features.num_frames_for(len(x))
    window = 0.5 - 0.5 * np.cos(
        2 * np.pi * np.arange(features.FRAME_LENGTH) / features.FRAME_LENGTH
    )
    frames = np.stack([emphasized[t * 160 : t * 160 + 400] * window for t in range(n)])
    power = np.abs(np.fft.rfft(frames, n=features.FFT_LENGTH)) ** 2
    mel = tf.signal.linear_to_mel_weight_matrix(40, 257, 16000, 20.0, 8000.0).numpy()
    return np.log(power @ mel + features.LOG_FLOOR)


def test_filterbank_matches_numpy_reference():
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    x = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.normal(size=t.size)).astype(np.float32)
    got = features.log_mel_filterbank(x).numpy()
    assert got.shape == (98, 40)  # 1 + (16000 - 400) // 160
    np.testing.assert_allclose(got, numpy_filterbank(x), atol=2e-3)
    # 440 Hz lands in one mel band, which must dominate every frame.
    assert len(set(np.argmax(got, axis=1))) == 1


def test_num_frames_for_ints_and_tensors():
    assert [features.num_frames_for(n) for n in (0, 399, 400, 559, 560, 16000)] == [
        0,
        0,
        1,
        1,
        2,
        98,
    ]
    np.testing.assert_array_equal(
        features.num_frames_for(tf.constant([0, 399, 400, 560, 16000])).numpy(), [0, 0, 1, 2, 98]
    )


def test_padded_batch_gives_the_same_frames_bit_for_bit():
    rng = np.random.default_rng(1)
    a = rng.uniform(-0.5, 0.5, 8000).astype(np.float32)
    b = rng.uniform(-0.5, 0.5, 5000).astype(np.float32)
    batch = np.zeros((2, 8000), np.float32)
    batch[0], batch[1, :5000] = a, b
    out = features.log_mel_filterbank(batch).numpy()
    np.testing.assert_array_equal(out[0], features.log_mel_filterbank(a).numpy())
    nb = features.num_frames_for(5000)
    np.testing.assert_array_equal(out[1, :nb], features.log_mel_filterbank(b).numpy())


def record(rng, frames=7, words=("kids", "are", "zorblax"), dim=3, **overrides):
    values = dict(
        utterance_id="u1",
        speaker="Actor_01",
        label=2,
        label_name="neutral",
        fold=3,
        fbank=rng.normal(size=(frames, 40)).astype(np.float32),
        words=list(words),
        word_embeddings=rng.normal(size=(len(words), dim)).astype(np.float32),
        word_start=list(range(len(words))),
        word_end=list(range(1, len(words) + 1)),
        transcript=" ".join(words),
        alignment_source="forced",
    )
    values.update(overrides)
    return values


def test_record_round_trip_numpy_and_tf_parsers():
    rng = np.random.default_rng(2)
    a, b = (
        record(rng),
        record(rng, frames=11, words=("dogs",), utterance_id="u2", label=0, label_name="angry"),
    )
    serialized = [make_example(**v).SerializeToString() for v in (a, b)]
    back = decode_example(serialized[0])
    for key in a:
        np.testing.assert_array_equal(back[key], a[key])
    inputs = to_model_inputs(parse_examples(tf.constant(serialized), word_dim=3))
    assert inputs["fbank"].shape == (2, 11, 40)
    np.testing.assert_array_equal(inputs["fbank"][0, :7], a["fbank"])
    assert np.all(inputs["fbank"][0, 7:].numpy() == 0)
    np.testing.assert_array_equal(inputs["num_frames"], [7, 11])
    np.testing.assert_array_equal(inputs["num_words"], [3, 1])
    np.testing.assert_array_equal(inputs["word_spans"][0], [[0, 1], [1, 2], [2, 3]])
    np.testing.assert_array_equal(inputs["word_spans"][1], [[0, 1], [0, 0], [0, 0]])
    np.testing.assert_array_equal(inputs["word_embeddings"][1, 0], b["word_embeddings"][0])


@pytest.mark.parametrize(
    "override,message",
    [
        ({"fbank": np.zeros((5, 39), np.float32)}, "fbank must be"),
        ({"word_embeddings": np.zeros((2, 3), np.float32)}, "word_embeddings must be"),
        ({"word_end": [1]}, "one entry per word"),
        ({"alignment_source": "guess"}, "alignment_source must be"),
    ],
)
def test_make_example_rejects_inconsistent_records(override, message):
    with pytest.raises(ValueError, match=message):
        make_example(**record(np.random.default_rng(3), **override))


def test_channel_is_optional_and_old_records_parse():
    rng = np.random.default_rng(4)
    song = make_example(**record(rng, utterance_id="03-02-05-01-01-01-01"), channel="song")
    old = make_example(**record(rng))  # no channel: what preprocessing wrote before channels
    assert "channel" not in old.features.feature
    assert decode_example(song.SerializeToString())["channel"] == "song"
    assert decode_example(old.SerializeToString())["channel"] == ""
    parsed = parse_examples(
        tf.constant([song.SerializeToString(), old.SerializeToString()]), word_dim=3
    )
    assert parsed["channel"].numpy().tolist() == [b"song", b""]
