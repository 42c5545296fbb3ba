"""The CME model (Li et al., Interspeech 2021) as a Keras functional model.

    fbank [B,T,40] -> Normalization -> Conv1D x3 (kernels 5,2,2; filters 64,128,128; ReLU, 'same')
        -> SegmentMeanMaxPooling over each word's frame span -> Z^a [B,M,256]
    word vectors [B,M,d] -> Dense(256) (linear) -> Z^s [B,M,256]
    CrossModalityExcitation(Z^a, Z^s) -> concat [B,M,512] -> BiLSTM(256, masked by num_words)
        -> max over valid words [B,512] -> Dense(128, ReLU) -> Dense(K, softmax)
"""

from __future__ import annotations

from typing import Iterable

import keras
import numpy as np

from trainer import layers as cme_layers
from trainer.config import ModelConfig
from trainer.metrics import UnweightedAccuracy

# Names of the model's inputs; the record parser (preprocessing.records) produces exactly these.
INPUT_NAMES = ("fbank", "num_frames", "word_embeddings", "num_words", "word_spans")
NORMALIZATION_LAYER = "fbank_normalization"
EXCITATION_LAYER = "cross_modality_excitation"
EMBEDDING_LAYER = "utterance_embedding"


def model_inputs(config: ModelConfig) -> dict:
    return {
        "fbank": keras.Input(shape=(None, config.fbank_dim), dtype="float32", name="fbank"),
        "num_frames": keras.Input(shape=(), dtype="int32", name="num_frames"),
        "word_embeddings": keras.Input(shape=(None, config.word_dim), dtype="float32",
                                       name="word_embeddings"),
        "num_words": keras.Input(shape=(), dtype="int32", name="num_words"),
        "word_spans": keras.Input(shape=(None, 2), dtype="int32", name="word_spans"),
    }


def build_model(config: ModelConfig = ModelConfig()) -> keras.Model:
    """Builds (and compiles) the paper's model from ``config``.

    The filterbank normalisation layer starts as identity-free (unadapted); call
    :func:`adapt_normalization` with training frames before fitting.
    """
    inputs = model_inputs(config)
    num_frames, num_words = inputs["num_frames"], inputs["num_words"]

    # Acoustic branch. Positions past num_frames are zeroed after every step so that padding
    # a batch never changes an utterance's output.
    x = keras.layers.Normalization(axis=-1, name=NORMALIZATION_LAYER)(inputs["fbank"])
    x = cme_layers.ZeroPadded(name="fbank_padding")([x, num_frames])
    if config.spec_freq_masks or config.spec_time_masks:
        x = cme_layers.SpecAugment(config.spec_freq_masks, config.spec_freq_width,
                                   config.spec_time_masks, config.spec_time_width,
                                   seed=config.seed, name="spec_augment")([x, num_frames])
    for i, (kernel, filters) in enumerate(zip(config.cnn_kernels, config.cnn_filters)):
        x = keras.layers.Conv1D(filters, kernel, strides=1, padding="same", activation="relu",
                                name=f"conv{i + 1}")(x)
        x = cme_layers.ZeroPadded(name=f"conv{i + 1}_padding")([x, num_frames])
    acoustic = cme_layers.SegmentMeanMaxPooling(config.pooling, name="alignment_pooling")(
        [x, inputs["word_spans"], num_words])

    # Semantic branch: pretrained word vectors, fine-tuned by a linear map.
    semantic = keras.layers.Dense(config.semantic_dim, name="semantic_projection")(
        inputs["word_embeddings"])

    acoustic, semantic, _, _ = cme_layers.CrossModalityExcitation(
        config.excite_acoustic, config.excite_semantic, return_gates=True,
        name=EXCITATION_LAYER)([acoustic, semantic])

    words = keras.layers.Concatenate(name="word_fusion")([acoustic, semantic])
    word_mask = cme_layers.LengthMask(name="word_mask")([words, num_words])
    hidden = keras.layers.Bidirectional(
        keras.layers.LSTM(config.lstm_units, return_sequences=True), name="bilstm")(
        words, mask=word_mask)
    utterance = cme_layers.MaskedMaxPooling(name="word_max_pooling")([hidden, num_words])
    z = keras.layers.Dense(config.fcn_units, activation="relu", name=EMBEDDING_LAYER)(utterance)
    if config.dropout:
        z = keras.layers.Dropout(config.dropout, seed=config.seed, name="dropout")(z)
    probabilities = keras.layers.Dense(config.num_classes, activation="softmax",
                                       name="probabilities")(z)

    model = keras.Model(inputs=inputs, outputs=probabilities, name="cme")
    compile_model(model, config)
    return model


def compile_model(model: keras.Model, config: ModelConfig) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="wa"),
                 UnweightedAccuracy(config.num_classes, name="ua")],
    )


def valid_frames(fbank: np.ndarray, num_frames: Iterable[int]) -> np.ndarray:
    """Stacks the real (unpadded) frames of a padded batch ``[B, T, C]`` into ``[N, C]``."""
    return np.concatenate([fbank[i, :n] for i, n in enumerate(num_frames)], axis=0)


def adapt_normalization(model: keras.Model, frames: np.ndarray) -> None:
    """Fits the in-model filterbank normalisation (per-channel mean/variance) on ``frames``.

    ``frames`` is ``[N, fbank_dim]``: training frames only, never padding (see
    :func:`valid_frames`). Keeping the statistics inside the model means serving cannot skew.
    """
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim != 2 or frames.shape[0] == 0:
        raise ValueError(f"need a non-empty [N, channels] frame matrix, got shape {frames.shape}")
    # The layer was built on [B, T, C] inputs, so it adapts on a one-utterance batch.
    model.get_layer(NORMALIZATION_LAYER).adapt(frames[None])
