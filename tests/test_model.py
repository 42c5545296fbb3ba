"""The functional CME model: shapes, padding invariance, save/load round trips, learning."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from model_support import random_batch, unpadded_row

from trainer.config import ModelConfig
from trainer.model import (
    EXCITATION_LAYER,
    adapt_normalization,
    build_model,
    frame_moments,
    valid_frames,
)

SMALL = ModelConfig(
    word_dim=8,
    cnn_filters=(8, 16, 16),
    semantic_dim=16,
    lstm_units=8,
    fcn_units=8,
    class_names=("a", "b", "c"),
)


def test_paper_sized_model_shapes_and_parameter_count():
    config = ModelConfig(word_dim=300)
    model = build_model(config)
    assert (
        model.get_layer("alignment_pooling").compute_output_shape(
            ((None, None, 128), (None, None, 2), (None,))
        )[-1]
        == 256
    )
    batch = random_batch(np.random.default_rng(0), batch=2, word_dim=300)
    probs = model(batch).numpy()
    assert probs.shape == (2, 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    expected = (
        40 * 64 * 5
        + 64
        + 64 * 128 * 2
        + 128
        + 128 * 128 * 2
        + 128  # CNN
        + 300 * 256
        + 256  # semantic projection
        + 2 * (256 * 256 + 256)  # the two excitation gates
        + 2 * 4 * (512 * 256 + 256 * 256 + 256)  # BiLSTM over 512-d words
        + 512 * 128
        + 128
        + 128 * 4
        + 4  # FCN
    )
    assert model.count_params() - (2 * 40 + 1) == expected  # Normalization: mean, var, count


def test_padding_frames_and_words_does_not_change_outputs():
    rng = np.random.default_rng(1)
    model = build_model(SMALL)
    batch = random_batch(rng)
    base = model(batch).numpy()
    padded = dict(batch)
    padded["fbank"] = np.concatenate([batch["fbank"], rng.normal(size=(4, 17, 40)) * 50], 1)
    padded["word_embeddings"] = np.concatenate(
        [batch["word_embeddings"], rng.normal(size=(4, 3, 8))], 1
    ).astype(np.float32)
    padded["word_spans"] = np.concatenate(
        [batch["word_spans"], rng.integers(0, 40, size=(4, 3, 2))], 1
    ).astype(np.int32)
    np.testing.assert_allclose(model(padded).numpy(), base, rtol=1e-5, atol=1e-6)
    # Garbage in the padded frames/slots of the original batch changes nothing either.
    noisy = dict(batch)
    noisy["fbank"] = batch["fbank"].copy()
    for b, n in enumerate(batch["num_frames"]):
        noisy["fbank"][b, n:] = 1e3
    np.testing.assert_allclose(model(noisy).numpy(), base, rtol=1e-5, atol=1e-6)


def test_single_utterance_equals_its_row_in_a_batch():
    rng = np.random.default_rng(2)
    model = build_model(SMALL)
    batch = random_batch(rng)
    full = model(batch).numpy()
    for b in range(4):
        single = unpadded_row(batch, b)
        np.testing.assert_allclose(model(single).numpy()[0], full[b], rtol=1e-5, atol=1e-6)


def test_normalization_is_adapted_on_valid_frames_only():
    rng = np.random.default_rng(3)
    model = build_model(SMALL)
    batch = random_batch(rng)
    batch["fbank"] = batch["fbank"] * 3.0 + 7.0
    for b, n in enumerate(batch["num_frames"]):
        batch["fbank"][b, n:] = -1e4
    frames = valid_frames(batch["fbank"], batch["num_frames"])
    assert frames.shape == (batch["num_frames"].sum(), 40)
    adapt_normalization(model, frames)
    layer = model.get_layer("fbank_normalization")
    np.testing.assert_allclose(np.ravel(layer.mean), frames.mean(axis=0), rtol=1e-4)
    np.testing.assert_allclose(np.ravel(layer.variance), frames.var(axis=0), rtol=1e-3)
    with pytest.raises(ValueError, match="non-empty"):
        adapt_normalization(model, np.zeros((0, 40), np.float32))


def test_streamed_frame_moments_are_what_adapt_computes_bit_for_bit():
    """Chunk by chunk, in two passes, as training streams its frames: the same float32 moments
    as ``Normalization.adapt`` on the whole matrix, so the model trains the same."""
    rng = np.random.default_rng(5)
    chunks = [
        (rng.normal(size=(int(rng.integers(0, 900)), 40)) * rng.uniform(0.1, 30) + 40).astype(
            np.float32
        )
        for _ in range(200)
    ]
    frames = np.concatenate(chunks)
    adapted = keras.layers.Normalization(axis=-1)
    adapted.build((None, None, 40))
    adapted.adapt(frames[None])
    mean, variance = frame_moments(lambda: iter(chunks))
    assert mean.dtype == variance.dtype == np.float32
    assert mean.tobytes() == np.asarray(adapted.adapt_mean).tobytes()
    assert variance.tobytes() == np.asarray(adapted.adapt_variance).tobytes()
    # Blockwise sums (each chunk summed, then the sums added) are not: the check can fail.
    blockwise = np.sum([c.sum(axis=0) for c in chunks], axis=0) / np.float32(len(frames))
    assert blockwise.astype(np.float32).tobytes() != mean.tobytes()
    model = build_model(SMALL)
    adapt_normalization(model, lambda: iter(chunks))
    layer = model.get_layer("fbank_normalization")
    assert np.asarray(layer.mean).tobytes() == np.asarray(adapted.mean).tobytes()
    assert np.asarray(layer.variance).tobytes() == np.asarray(adapted.variance).tobytes()
    with pytest.raises(ValueError, match="non-empty"):
        adapt_normalization(model, lambda: iter([np.zeros((0, 40), np.float32)]))


def test_ablation_flags_change_the_graph():
    no_excite = build_model(SMALL.replace(excite_acoustic=False, excite_semantic=False))
    assert len(no_excite.get_layer(EXCITATION_LAYER).trainable_weights) == 0
    mean_only = build_model(SMALL.replace(pooling="mean"))
    assert mean_only.get_layer("alignment_pooling").pooling == "mean"
    # mean pooling halves the acoustic width, so the semantic gate's kernel is [16, 16].
    assert mean_only.get_layer(EXCITATION_LAYER).semantic_gate.kernel.shape == (16, 16)


def test_save_and_load_round_trips(tmp_path):
    rng = np.random.default_rng(4)
    model = build_model(SMALL)
    batch = random_batch(rng)
    adapt_normalization(model, valid_frames(batch["fbank"], batch["num_frames"]))
    want = model(batch).numpy()

    keras_path = tmp_path / "model.keras"
    model.save(keras_path)
    reloaded = keras.models.load_model(keras_path)
    np.testing.assert_array_equal(reloaded(batch).numpy(), want)

    saved_dir = str(tmp_path / "saved_model")
    model.export(saved_dir)
    restored = tf.saved_model.load(saved_dir)
    got = restored.serve({k: tf.constant(v) for k, v in batch.items()}).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_model_learns_a_class_carried_only_inside_one_words_span():
    """The label is a bump in the frames of the word at a random position; everything else
    (word vectors, other frames, lengths) is label-independent noise. Only a working span
    pooling path can solve it."""
    rng = np.random.default_rng(5)
    n, frames, words = 384, 40, 4
    config = SMALL.replace(class_names=("low", "high"), learning_rate=3e-3)
    keras.utils.set_random_seed(0)
    model = build_model(config)
    data = random_batch(rng, batch=n, frames=frames, words=words)
    data["num_frames"][:] = frames
    data["num_words"][:] = words
    edges = np.array([0, 10, 20, 30, 40])
    data["word_spans"][:] = np.stack([edges[:-1], edges[1:]], -1)
    labels = rng.integers(0, 2, size=n)
    target_word = rng.integers(0, words, size=n)
    # The "key" word's vector marks which word carries the emotion; its frames carry the label.
    key = rng.normal(size=8).astype(np.float32) * 3
    for i in range(n):
        data["word_embeddings"][i, target_word[i]] = key
        start, end = data["word_spans"][i, target_word[i]]
        data["fbank"][i, start:end, :5] += 2.0 if labels[i] else -2.0
    adapt_normalization(model, data["fbank"].reshape(-1, 40))
    train, test = slice(0, 320), slice(320, n)
    model.fit(
        {k: v[train] for k, v in data.items()}, labels[train], batch_size=32, epochs=8, verbose=0
    )
    accuracy = np.mean(
        model.predict({k: v[test] for k, v in data.items()}, verbose=0).argmax(-1) == labels[test]
    )
    assert accuracy >= 0.9


def test_config_validation_and_json_round_trip():
    config = ModelConfig(class_names=["x", "y"], cnn_kernels=[3], cnn_filters=[4])
    assert ModelConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="pooling must be one of"):
        ModelConfig(pooling="max")
    with pytest.raises(ValueError, match="at least 2 classes"):
        ModelConfig(class_names=("only",))
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({"epochz": 3})


def test_variants_are_configurations_of_the_one_model():
    from trainer.config import RECIPE, VARIANTS, variant_config

    assert variant_config("cme_paper") == ModelConfig(variant="cme_paper")
    assert variant_config("cme") == ModelConfig(**RECIPE)
    both = variant_config("no_excite", epochs=3)
    assert (both.variant, both.excite_acoustic, both.excite_semantic, both.epochs) == (
        "no_excite",
        False,
        False,
        3,
    )
    assert variant_config("mean_pool").acoustic_dim == 128
    for name in VARIANTS:
        assert (
            len(
                build_model(
                    variant_config(
                        name,
                        **{
                            k: getattr(SMALL, k)
                            for k in (
                                "word_dim",
                                "cnn_filters",
                                "semantic_dim",
                                "lstm_units",
                                "fcn_units",
                            )
                        },
                    )
                ).layers
            )
            > 10
        )
    with pytest.raises(ValueError, match="unknown variant 'attention'"):
        variant_config("attention")
