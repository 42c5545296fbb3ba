"""The custom layers against plain NumPy references."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer.layers import (
    CrossModalityExcitation,
    LengthMask,
    MaskedMaxPooling,
    PriorCorrection,
    SegmentMeanMaxPooling,
    ZeroPadded,
)
from trainer.metrics import prior_corrected


def pooling_reference(frames, spans, num_words, pooling="mean_max"):
    batch, num_frames, channels = frames.shape
    width = 2 * channels if pooling == "mean_max" else channels
    out = np.zeros((batch, spans.shape[1], width), np.float32)
    for b in range(batch):
        for j in range(num_words[b]):
            start = min(max(spans[b, j, 0], 0), num_frames)
            end = min(max(spans[b, j, 1], start), num_frames)
            if end <= start:
                continue
            segment = frames[b, start:end]
            pooled = [segment.mean(axis=0)]
            if pooling == "mean_max":
                pooled.append(segment.max(axis=0))
            out[b, j] = np.concatenate(pooled)
    return out


@pytest.fixture
def ragged_batch():
    rng = np.random.default_rng(0)
    frames = rng.normal(size=(3, 20, 5)).astype(np.float32)
    spans = np.array(
        [
            [[2, 6], [6, 7], [5, 9], [9, 9], [0, 0]],  # normal, one-frame, overlapping, empty, pad
            [[-3, 4], [15, 40], [4, 4], [0, 0], [0, 0]],  # clipped left, clipped right, empty
            [[0, 20], [3, 1], [0, 0], [0, 0], [0, 0]],  # whole utterance, reversed span
        ],
        np.int32,
    )
    num_words = np.array([4, 3, 2], np.int32)
    return frames, spans, num_words


@pytest.mark.parametrize("pooling", ["mean_max", "mean"])
def test_segment_pooling_matches_numpy(ragged_batch, pooling):
    frames, spans, num_words = ragged_batch
    got = SegmentMeanMaxPooling(pooling)([frames, spans, num_words]).numpy()
    np.testing.assert_allclose(
        got, pooling_reference(frames, spans, num_words, pooling), rtol=1e-6, atol=1e-6
    )


def test_segment_pooling_exact_zero_for_padding_and_empty(ragged_batch):
    frames, spans, num_words = ragged_batch
    frames = frames + 10.0  # positive frames: a wrong max or mean would be non-zero
    got = SegmentMeanMaxPooling()([frames, spans, num_words]).numpy()
    assert np.all(got[0, 3] == 0.0)  # empty span
    assert np.all(got[0, 4] == 0.0)  # padded slot, although its span [0, 0) is also empty
    assert np.all(got[1, 2:] == 0.0)
    assert np.all(got[2, 1:] == 0.0)  # reversed span is empty
    # A one-frame span: mean == max == that frame.
    np.testing.assert_allclose(got[0, 1], np.concatenate([frames[0, 6], frames[0, 6]]))


def test_segment_pooling_ignores_padding(ragged_batch):
    frames, spans, num_words = ragged_batch
    layer = SegmentMeanMaxPooling()
    base = layer([frames, spans, num_words]).numpy()
    rng = np.random.default_rng(1)
    # Extra frames after the last span end (spans that were clipped to T=20 excluded: keep T).
    more_slots = np.concatenate([spans, rng.integers(0, 20, size=(3, 4, 2)).astype(np.int32)], 1)
    padded = layer([frames, more_slots, num_words]).numpy()
    np.testing.assert_array_equal(padded[:, :5], base)
    assert np.all(padded[:, 5:] == 0.0)


def test_segment_pooling_in_tf_function_with_unknown_shapes(ragged_batch):
    frames, spans, num_words = ragged_batch
    layer = SegmentMeanMaxPooling()
    fn = tf.function(
        layer,
        input_signature=[
            [
                tf.TensorSpec([None, None, 5], tf.float32),
                tf.TensorSpec([None, None, 2], tf.int32),
                tf.TensorSpec([None], tf.int32),
            ]
        ],
    )
    np.testing.assert_allclose(
        fn([frames, spans, num_words]).numpy(),
        pooling_reference(frames, spans, num_words),
        atol=1e-6,
    )


def test_segment_pooling_gradient_reaches_only_span_frames():
    frames = tf.Variable(np.arange(24, dtype=np.float32).reshape(1, 8, 3))
    spans = np.array([[[1, 3], [5, 6]]], np.int32)
    with tf.GradientTape() as tape:
        out = SegmentMeanMaxPooling()([frames, spans, np.array([2], np.int32)])
        loss = tf.reduce_sum(out)
    grad = tape.gradient(loss, frames).numpy()[0]
    # Word 0 covers frames 1-2: mean gives 1/2 each, max (increasing values) adds 1 to frame 2.
    np.testing.assert_allclose(grad[1], 0.5)
    np.testing.assert_allclose(grad[2], 1.5)
    np.testing.assert_allclose(grad[5], 2.0)  # one-frame span: mean 1 + max 1
    assert np.all(grad[[0, 3, 4, 6, 7]] == 0.0)


def cme_reference(acoustic, semantic, w_a, b_a, w_s, b_s):
    def sigmoid(x):
        return 1.0 / (1.0 + np.exp(-x))

    gate_a = sigmoid(semantic @ w_a + b_a)
    gate_s = sigmoid(acoustic @ w_s + b_s)
    return gate_a * acoustic, gate_s * semantic, gate_a, gate_s


def test_cross_modality_excitation_matches_numpy():
    rng = np.random.default_rng(2)
    acoustic = rng.normal(size=(2, 4, 6)).astype(np.float32)
    semantic = rng.normal(size=(2, 4, 3)).astype(np.float32)
    layer = CrossModalityExcitation(return_gates=True)
    layer([acoustic, semantic])
    w_a, b_a = (rng.normal(size=(3, 6)).astype(np.float32), rng.normal(size=6).astype(np.float32))
    w_s, b_s = (rng.normal(size=(6, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32))
    layer.acoustic_gate.set_weights([w_a, b_a])
    layer.semantic_gate.set_weights([w_s, b_s])
    got = [t.numpy() for t in layer([acoustic, semantic])]
    for g, want in zip(got, cme_reference(acoustic, semantic, w_a, b_a, w_s, b_s)):
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "excite_acoustic,excite_semantic", [(False, True), (True, False), (False, False)]
)
def test_cross_modality_excitation_ablations_are_identity(excite_acoustic, excite_semantic):
    rng = np.random.default_rng(3)
    acoustic = rng.normal(size=(2, 4, 6)).astype(np.float32)
    semantic = rng.normal(size=(2, 4, 3)).astype(np.float32)
    layer = CrossModalityExcitation(excite_acoustic, excite_semantic)
    out_a, out_s = [t.numpy() for t in layer([acoustic, semantic])]
    assert np.array_equal(out_a, acoustic) == (not excite_acoustic)
    assert np.array_equal(out_s, semantic) == (not excite_semantic)
    assert len(layer.trainable_weights) == 2 * (excite_acoustic + excite_semantic)


def test_cross_modality_excitation_gradients_reach_every_weight():
    rng = np.random.default_rng(4)
    acoustic = tf.constant(rng.normal(size=(2, 4, 6)).astype(np.float32))
    semantic = tf.constant(rng.normal(size=(2, 4, 3)).astype(np.float32))
    layer = CrossModalityExcitation()
    with tf.GradientTape() as tape:
        out_a, out_s = layer([acoustic, semantic])
        loss = tf.reduce_sum(out_a**2) + tf.reduce_sum(out_s**2)
    grads = tape.gradient(loss, layer.trainable_weights)
    assert len(grads) == 4
    for weight, grad in zip(layer.trainable_weights, grads):
        assert grad is not None and float(tf.reduce_max(tf.abs(grad))) > 0, weight.name


def test_masked_max_pooling_and_masks():
    x = np.array(
        [
            [[1.0, -5.0], [3.0, -7.0], [100.0, 100.0]],
            [[-2.0, -1.0], [50.0, 50.0], [50.0, 50.0]],
            [[9.0, 9.0], [9.0, 9.0], [9.0, 9.0]],
        ],
        np.float32,
    )
    lengths = np.array([2, 1, 0], np.int32)
    np.testing.assert_array_equal(
        MaskedMaxPooling()([x, lengths]).numpy(), [[3.0, -5.0], [-2.0, -1.0], [0.0, 0.0]]
    )
    np.testing.assert_array_equal(
        LengthMask()([x, lengths]).numpy(), [[True, True, False], [True, False, False], [False] * 3]
    )
    np.testing.assert_array_equal(ZeroPadded()([x, lengths]).numpy()[0, 2], [0.0, 0.0])


@pytest.mark.parametrize(
    "layer",
    [
        SegmentMeanMaxPooling("mean"),
        CrossModalityExcitation(excite_semantic=False, return_gates=True),
        LengthMask(),
        ZeroPadded(),
        MaskedMaxPooling(),
        PriorCorrection([88, 88, 44, 88]),
    ],
)
def test_layers_round_trip_through_config(layer):
    config = keras.saving.serialize_keras_object(layer)
    clone = keras.saving.deserialize_keras_object(config)
    assert type(clone) is type(layer)
    assert clone.get_config() == layer.get_config()


def test_pooling_rejects_unknown_mode():
    with pytest.raises(ValueError, match="pooling must be"):
        SegmentMeanMaxPooling("attention")


def test_spec_augment_masks_bands_in_training_only():
    from trainer.layers import SpecAugment

    layer = SpecAugment(freq_masks=2, freq_width=8, time_masks=2, time_width=10, seed=3)
    x = np.ones((4, 60, 40), np.float32)
    lengths = np.array([60, 40, 30, 25])
    np.testing.assert_array_equal(layer([x, lengths]), x)  # inference: identity
    y = np.asarray(layer([x, lengths], training=True))
    assert set(np.unique(y)) <= {0.0, 1.0} and (y == 0).any()
    for b, n in enumerate(lengths):
        zero_channels = (y[b, :n] == 0).all(axis=0)
        zero_frames = (y[b, :n] == 0).all(axis=1)
        assert zero_channels.sum() <= 16 and zero_frames.sum() <= 20
        # every zero is explained by a masked channel or a masked frame, inside the utterance
        explained = zero_channels[None, :] | zero_frames[:, None]
        np.testing.assert_array_equal(y[b, :n] == 0, explained)
        assert not (y[b, n:] == 0).all(axis=1).any()  # time masks stay inside the utterance
    again = np.asarray(SpecAugment(2, 8, 2, 10, seed=3)([x, lengths], training=True))
    np.testing.assert_array_equal(y, again)  # seeded
    config = SpecAugment.from_config(layer.get_config()).get_config()
    assert config == layer.get_config()


def test_prior_correction_matches_numpy_and_round_trips():
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(4), size=6).astype(np.float32)
    probabilities[0] = [0.25, 0.25, 0.25, 0.25]
    counts = [264, 264, 132, 264]  # RAVDESS's 4-class training folds: half as many neutral
    layer = PriorCorrection(counts)
    corrected = layer(probabilities).numpy()
    expected = prior_corrected(probabilities, counts)
    np.testing.assert_allclose(corrected, expected, atol=1e-6)
    np.testing.assert_allclose(corrected.sum(axis=-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(corrected[0], [0.2, 0.2, 0.4, 0.2], atol=1e-6)  # q ~ 1 / pi
    # Only the prior matters, not the counts' scale; equal counts change nothing.
    np.testing.assert_allclose(PriorCorrection([2, 2, 1, 2])(probabilities), corrected, atol=1e-6)
    np.testing.assert_allclose(PriorCorrection([5] * 4)(probabilities), probabilities, atol=1e-6)
    clone = PriorCorrection.from_config(layer.get_config())
    assert clone.get_config()["class_counts"] == [264.0, 264.0, 132.0, 264.0]
    np.testing.assert_array_equal(clone(probabilities).numpy(), corrected)
    # In a model, traced with an unknown batch size.
    inputs = keras.Input((4,))
    model = keras.Model(inputs, PriorCorrection(counts)(inputs))
    np.testing.assert_allclose(model.predict(probabilities, verbose=0), expected, atol=1e-6)


@pytest.mark.parametrize(
    "counts, message",
    [
        ([88, 0, 44, 88], "one finite count > 0 per class"),
        ([88, -1, 44, 88], "one finite count > 0 per class"),
        ([88, float("nan"), 44, 88], "one finite count > 0 per class"),
        ([], "one finite count > 0 per class"),
        (None, "must be a list of numbers"),
        (["many", 1, 2, 3], "must be a list of numbers"),
    ],
)
def test_prior_correction_rejects_bad_counts(counts, message):
    with pytest.raises(ValueError, match=message):
        PriorCorrection(counts)


def test_prior_correction_needs_one_count_per_class():
    with pytest.raises(ValueError, match=r"3 class counts .* probabilities of 4 classes"):
        PriorCorrection([1, 2, 3])(np.full((2, 4), 0.25, np.float32))
