"""The CME model (Li et al., Interspeech 2021) and its Table 1 baselines as Keras functional models.

The paper's model (``architecture="aligned"``)::

    fbank [B,T,40] -> Normalization -> Conv1D x3 (kernels 5,2,2; filters 64,128,128; ReLU, 'same')
        -> SegmentMeanMaxPooling over each word's frame span -> Z^a [B,M,256]
    word vectors [B,M,d] -> Dense(256) (linear) -> Z^s [B,M,256]
    CrossModalityExcitation(Z^a, Z^s) -> concat [B,M,512] -> BiLSTM(256, masked by num_words)
        -> max over valid words [B,512] -> Dense(128, ReLU) -> Dense(K, softmax)

``alignment="ctc"`` replaces the forced-alignment spans by a CTC-trained soft alignment
(``CTCAlignmentPooling``). The baselines (``cnn_lstm``, ``lstm_attn``, ``utt_concat``,
``attn_fusion``, ``mha``; see each ``*_encoder``) are built from the same blocks
(:func:`acoustic_frontend`, :func:`semantic_projection`, :func:`frame_subsampling`,
:func:`bilstm_encoder`, :func:`attention_encoder`, :func:`classifier_head`), take the same
inputs and end in the same head (``EMBEDDING_LAYER``, ``probabilities``).
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence, Tuple, Union

import keras
import numpy as np

from trainer import layers as cme_layers
from trainer.config import ModelConfig
from trainer.metrics import SmoothedSparseCrossentropy, UnweightedAccuracy

# Names of the model's inputs; the record parser (preprocessing.records) produces exactly these.
INPUT_NAMES = ("fbank", "num_frames", "word_embeddings", "num_words", "word_spans")
NORMALIZATION_LAYER = "fbank_normalization"
EXCITATION_LAYER = "cross_modality_excitation"
EMBEDDING_LAYER = "utterance_embedding"


def model_inputs(config: ModelConfig) -> dict:
    return {
        "fbank": keras.Input(shape=(None, config.fbank_dim), dtype="float32", name="fbank"),
        "num_frames": keras.Input(shape=(), dtype="int32", name="num_frames"),
        "word_embeddings": keras.Input(
            shape=(None, config.word_dim), dtype="float32", name="word_embeddings"
        ),
        "num_words": keras.Input(shape=(), dtype="int32", name="num_words"),
        "word_spans": keras.Input(shape=(None, 2), dtype="int32", name="word_spans"),
    }


# Which inputs each architecture reads (ModelConfig.modality).
ARCHITECTURE_MODALITIES = {
    "aligned": ("both",),
    "cnn_lstm": ("acoustic",),
    "lstm_attn": ("acoustic", "semantic"),
    "utt_concat": ("both",),
    "attn_fusion": ("both",),
    "mha": ("both",),
}


# --- Shared blocks. Every variant is a few lines on top of these. ---------------------------


def normalized_fbank(inputs: dict, config: ModelConfig):
    """fbank ``[B, T, 40]`` -> Normalization (``NORMALIZATION_LAYER``) -> zeros past
    ``num_frames`` -> SpecAugment (training only, when the recipe asks for it)."""
    num_frames = inputs["num_frames"]
    x = keras.layers.Normalization(axis=-1, name=NORMALIZATION_LAYER)(inputs["fbank"])
    x = cme_layers.ZeroPadded(name="fbank_padding")([x, num_frames])
    if config.utterance_norm:
        x = cme_layers.UtteranceMeanNormalization(name="utterance_normalization")([x, num_frames])
    if config.spec_freq_masks or config.spec_time_masks:
        x = cme_layers.SpecAugment(
            config.spec_freq_masks,
            config.spec_freq_width,
            config.spec_time_masks,
            config.spec_time_width,
            seed=config.seed,
            name="spec_augment",
        )([x, num_frames])
    return x


def acoustic_frontend(inputs: dict, config: ModelConfig):
    """The paper's acoustic embedding: :func:`normalized_fbank` -> Conv1D stack (stride 1,
    'same', ReLU) -> ``[B, T, cnn_filters[-1]]``. Positions past ``num_frames`` are zeroed after
    every step, so padding a batch never changes an utterance's output."""
    num_frames = inputs["num_frames"]
    x = normalized_fbank(inputs, config)
    for i, (kernel, filters) in enumerate(zip(config.cnn_kernels, config.cnn_filters)):
        x = keras.layers.Conv1D(
            filters, kernel, strides=1, padding="same", activation="relu", name=f"conv{i + 1}"
        )(x)
        x = cme_layers.ZeroPadded(name=f"conv{i + 1}_padding")([x, num_frames])
    return x


def semantic_projection(inputs: dict, config: ModelConfig):
    """Pretrained word vectors ``[B, M, d]`` fine-tuned by a linear map ->
    ``[B, M, semantic_dim]``."""
    return keras.layers.Dense(config.semantic_dim, name="semantic_projection")(
        inputs["word_embeddings"]
    )


def frame_subsampling(frames, num_frames, config: ModelConfig, name: str = "frame_subsampling"):
    """Masked max-pool by ``frame_stride`` -> ``(frames [B, ceil(T / s), C], lengths [B])``."""
    return cme_layers.FrameSubsampling(config.frame_stride, name=name)([frames, num_frames])


def subsampled_cnn_frames(inputs: dict, config: ModelConfig):
    """:func:`acoustic_frontend` then :func:`frame_subsampling`: the acoustic sequence of the
    recurrent and attention baselines (~93 steps for a 3.7 s RAVDESS utterance at stride 4)."""
    return frame_subsampling(acoustic_frontend(inputs, config), inputs["num_frames"], config)


def bilstm_encoder(x, lengths, config: ModelConfig, name: str, mask_name: str):
    """BiLSTM(``lstm_units`` per direction) over the first ``lengths[b]`` steps -> ``[B, L, 2U]``
    (consume it with a masked pooling: states past the length are meaningless)."""
    mask = cme_layers.LengthMask(name=mask_name)([x, lengths])
    return keras.layers.Bidirectional(
        keras.layers.LSTM(config.lstm_units, return_sequences=True), name=name
    )(x, mask=mask)


def attention_encoder(x, lengths, config: ModelConfig, prefix: str):
    """BiLSTM + additive attention pooling (masked) -> utterance vector ``[B, 2U]``."""
    hidden = bilstm_encoder(x, lengths, config, name=f"{prefix}_bilstm", mask_name=f"{prefix}_mask")
    return cme_layers.AttentionPooling(config.lstm_units, name=f"{prefix}_attention")(
        [hidden, lengths]
    )


def classifier_head(utterance, config: ModelConfig):
    """Utterance vector -> Dense(``fcn_units``, ReLU; ``EMBEDDING_LAYER``) -> dropout ->
    Dense(K, softmax; ``probabilities``)."""
    z = keras.layers.Dense(config.fcn_units, activation="relu", name=EMBEDDING_LAYER)(utterance)
    if config.dropout:
        z = keras.layers.Dropout(config.dropout, seed=config.seed, name="dropout")(z)
    return keras.layers.Dense(config.num_classes, activation="softmax", name="probabilities")(z)


# --- Architectures: inputs -> (utterance vector, names of the inputs read). -----------------

ALL_INPUTS = frozenset(INPUT_NAMES)
ACOUSTIC_INPUTS = frozenset({"fbank", "num_frames"})
SEMANTIC_INPUTS = frozenset({"word_embeddings", "num_words"})


def aligned_encoder(inputs: dict, config: ModelConfig):
    """The paper's model: word-level acoustic pooling, CME, BiLSTM over words, max over words.

    ``alignment="forced"`` pools each word's forced-alignment span (``SegmentMeanMaxPooling``);
    ``alignment="ctc"`` ignores ``word_spans`` and pools through a CTC-trained soft alignment of
    the CNN frames to the projected words (``CTCAlignmentPooling``; its loss, weighted by
    ``ctc_weight``, joins the training loss).
    """
    num_frames, num_words = inputs["num_frames"], inputs["num_words"]
    frames = acoustic_frontend(inputs, config)
    if config.alignment == "forced":
        acoustic = cme_layers.SegmentMeanMaxPooling(config.pooling, name="alignment_pooling")(
            [frames, inputs["word_spans"], num_words]
        )
        semantic = semantic_projection(inputs, config)
        used = ALL_INPUTS
    else:
        semantic = semantic_projection(inputs, config)
        acoustic = cme_layers.CTCAlignmentPooling(
            pooling=config.pooling, ctc_weight=config.ctc_weight, name="alignment_pooling"
        )([frames, semantic, num_frames, num_words])
        used = ALL_INPUTS - {"word_spans"}

    acoustic, semantic, _, _ = cme_layers.CrossModalityExcitation(
        config.excite_acoustic, config.excite_semantic, return_gates=True, name=EXCITATION_LAYER
    )([acoustic, semantic])
    words = keras.layers.Concatenate(name="word_fusion")([acoustic, semantic])
    hidden = bilstm_encoder(words, num_words, config, name="bilstm", mask_name="word_mask")
    return cme_layers.MaskedMaxPooling(name="word_max_pooling")([hidden, num_words]), used


def cnn_lstm_encoder(inputs: dict, config: ModelConfig):
    """Acoustic CNN + LSTM (Satt et al. 2017): CNN frames -> subsampling -> LSTM(``lstm_units``)
    -> its state at the last valid step."""
    frames, lengths = subsampled_cnn_frames(inputs, config)
    mask = cme_layers.LengthMask(name="frame_mask")([frames, lengths])
    return keras.layers.LSTM(config.lstm_units, name="lstm")(frames, mask=mask), ACOUSTIC_INPUTS


def lstm_attn_encoder(inputs: dict, config: ModelConfig):
    """Unimodal BiLSTM + attention (Mirsamadi et al. 2017). ``modality="acoustic"``: normalised
    filterbank frames -> subsampling -> BiLSTM -> attention. ``modality="semantic"``: projected
    word vectors -> BiLSTM over words -> attention."""
    if config.modality == "acoustic":
        frames, lengths = frame_subsampling(
            normalized_fbank(inputs, config), inputs["num_frames"], config
        )
        return attention_encoder(frames, lengths, config, "acoustic"), ACOUSTIC_INPUTS
    words = semantic_projection(inputs, config)
    return attention_encoder(words, inputs["num_words"], config, "semantic"), SEMANTIC_INPUTS


def utt_concat_encoder(inputs: dict, config: ModelConfig):
    """Utterance-level concatenation: the two unimodal BiLSTM + attention encoders, the
    acoustic one over the subsampled CNN frames (the same acoustic features as the aligned
    model, so the comparison isolates the fusion), concatenated."""
    frames, lengths = subsampled_cnn_frames(inputs, config)
    acoustic = attention_encoder(frames, lengths, config, "acoustic")
    semantic = attention_encoder(
        semantic_projection(inputs, config), inputs["num_words"], config, "semantic"
    )
    return keras.layers.Concatenate(name="utterance_fusion")([acoustic, semantic]), (
        ALL_INPUTS - {"word_spans"}
    )


def attn_fusion_encoder(inputs: dict, config: ModelConfig):
    """Word-level attention fusion: each projected word (query) attends over the subsampled CNN
    frames (keys/values; ``MultiHeadAttention`` with ``attention_heads`` heads, valid frames and
    words only); ``[word, attended audio]`` -> BiLSTM over words -> max over words. No spans:
    the attention learns the alignment."""
    num_words = inputs["num_words"]
    frames, lengths = subsampled_cnn_frames(inputs, config)
    words = semantic_projection(inputs, config)
    mask = cme_layers.PairMask(name="word_frame_mask")([words, num_words, frames, lengths])
    heads = config.attention_heads
    attended = keras.layers.MultiHeadAttention(
        num_heads=heads, key_dim=max(1, config.semantic_dim // heads), name="word_frame_attention"
    )(words, frames, frames, attention_mask=mask)
    fused = keras.layers.Concatenate(name="word_fusion")([words, attended])
    hidden = bilstm_encoder(fused, num_words, config, name="bilstm", mask_name="word_mask")
    return (
        cme_layers.MaskedMaxPooling(name="word_max_pooling")([hidden, num_words]),
        ALL_INPUTS - {"word_spans"},
    )


def mha_encoder(inputs: dict, config: ModelConfig):
    """Multi-hop attention (Yoon et al. 2019, MHA-2): BiLSTM audio encoder over the subsampled
    CNN frames, BiLSTM text encoder over the projected words; hop 1: the audio summary (max
    over valid frames) attends over the text states -> text context H1; hop 2: H1 attends over
    the audio states -> audio context H2; ``[H1, H2]``."""
    num_words = inputs["num_words"]
    frames, lengths = subsampled_cnn_frames(inputs, config)
    audio = bilstm_encoder(frames, lengths, config, name="acoustic_bilstm", mask_name="frame_mask")
    text = bilstm_encoder(
        semantic_projection(inputs, config),
        num_words,
        config,
        name="semantic_bilstm",
        mask_name="word_mask",
    )
    summary = cme_layers.MaskedMaxPooling(name="acoustic_max_pooling")([audio, lengths])
    text_context = cme_layers.QueryAttention(name="hop1_attention")([summary, text, num_words])
    audio_context = cme_layers.QueryAttention(name="hop2_attention")([text_context, audio, lengths])
    return (
        keras.layers.Concatenate(name="utterance_fusion")([text_context, audio_context]),
        ALL_INPUTS - {"word_spans"},
    )


ENCODERS = {
    "aligned": aligned_encoder,
    "cnn_lstm": cnn_lstm_encoder,
    "lstm_attn": lstm_attn_encoder,
    "utt_concat": utt_concat_encoder,
    "attn_fusion": attn_fusion_encoder,
    "mha": mha_encoder,
}


def model_name(config: ModelConfig) -> str:
    if config.architecture == "aligned":
        return "cme" if config.alignment == "forced" else "cme_ctc"
    return config.architecture


def build_model(config: ModelConfig = ModelConfig()) -> keras.Model:
    """Builds (and compiles) the model of ``config.architecture`` (the paper's model, or a
    Table 1 baseline) from ``config``.

    Every architecture takes the same inputs (``INPUT_NAMES``; the ones it does not read pass
    through ``IgnoreInputs`` and influence nothing) and ends in :func:`classifier_head`. The
    filterbank normalisation layer starts unadapted; call :func:`adapt_normalization` with
    training frames before fitting.
    """
    allowed = ARCHITECTURE_MODALITIES[config.architecture]
    if config.modality not in allowed:
        raise ValueError(
            f"architecture {config.architecture!r} reads modality "
            f"{' or '.join(map(repr, allowed))}, got {config.modality!r}"
        )
    if config.alignment != "forced" and config.architecture != "aligned":
        raise ValueError(
            f"alignment={config.alignment!r} needs architecture 'aligned', got "
            f"{config.architecture!r}"
        )
    inputs = model_inputs(config)
    utterance, used = ENCODERS[config.architecture](inputs, config)
    unused = [inputs[name] for name in INPUT_NAMES if name not in used]
    if unused:
        utterance = cme_layers.IgnoreInputs(name="unused_inputs")([utterance, *unused])
    probabilities = classifier_head(utterance, config)

    model = keras.Model(inputs=inputs, outputs=probabilities, name=model_name(config))
    compile_model(model, config)
    return model


def compile_model(
    model: keras.Model,
    config: ModelConfig,
    steps_per_epoch: Optional[int] = None,
    epochs: Optional[int] = None,
) -> None:
    """Adam (AdamW with ``weight_decay``; with ``ema_momentum`` > 0 the trained weights are their
    moving average), cross-entropy with ``label_smoothing``, WA/UA metrics.

    ``lr_schedule="cosine"`` decays the rate to 0 over ``epochs * steps_per_epoch`` steps
    (``epochs`` defaults to ``config.epochs``) and needs ``steps_per_epoch``; without it the rate
    stays constant (the paper's recipe).
    """
    rate = config.learning_rate
    if config.lr_schedule == "cosine" and steps_per_epoch:
        rate = keras.optimizers.schedules.CosineDecay(
            config.learning_rate, decay_steps=(epochs or config.epochs) * int(steps_per_epoch)
        )
    # EMA: Keras keeps the average beside each weight and writes it into the model at the end
    # of ``fit`` (``optimizer.finalize_variable_values``), so the trained model is the average.
    ema = {"use_ema": True, "ema_momentum": config.ema_momentum} if config.ema_momentum else {}
    optimizer = (
        keras.optimizers.AdamW(learning_rate=rate, weight_decay=config.weight_decay, **ema)
        if config.weight_decay
        else keras.optimizers.Adam(learning_rate=rate, **ema)
    )
    model.compile(
        optimizer=optimizer,
        loss=SmoothedSparseCrossentropy(config.label_smoothing),
        metrics=[
            keras.metrics.SparseCategoricalAccuracy(name="wa"),
            UnweightedAccuracy(config.num_classes, name="ua"),
        ],
    )
    # Keras (without a distribution strategy) creates the optimizer's slots inside the first
    # traced train step; TensorFlow then traces that step a second time. Built here, it is
    # traced once: 2-3 s less per fit, the same weights bit for bit.
    optimizer.build(model.trainable_variables)


def valid_frames(fbank: np.ndarray, num_frames: Iterable[int]) -> np.ndarray:
    """Stacks the real (unpadded) frames of a padded batch ``[B, T, C]`` into ``[N, C]``."""
    return np.concatenate([fbank[i, :n] for i, n in enumerate(num_frames)], axis=0)


FrameChunks = Callable[[], Iterable[np.ndarray]]


def _frame_chunks(frames: Union[np.ndarray, FrameChunks]) -> FrameChunks:
    """``frames`` as a function returning its non-empty ``[n, C]`` float32 chunks anew."""

    def chunks():
        for chunk in frames() if callable(frames) else [frames]:
            chunk = np.asarray(chunk, dtype=np.float32)
            if chunk.ndim != 2:
                raise ValueError(f"need [N, channels] frame matrices, got shape {chunk.shape}")
            if chunk.shape[0]:
                yield chunk

    return chunks


def frame_moments(frames: Union[np.ndarray, FrameChunks]) -> Tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and variance ``[C]`` (float32) of ``frames``: an ``[N, C]`` matrix, or
    a function returning ``[n, C]`` chunks of one (called twice, the same chunks each time:
    the variance is a second pass, about the mean).

    Bit for bit what ``keras.layers.Normalization.adapt`` computes on the whole matrix
    (``np.mean`` and ``np.var``: float32 sums added row after row, divided by the count), while
    holding one chunk at a time: a model trains the same however its frames were read.
    """
    chunks = _frame_chunks(frames)

    def row_sum(values):  # continues the running sum row by row, as numpy sums a matrix
        total = None
        for chunk in values:
            total = np.add.reduce(chunk if total is None else np.vstack([total, chunk]), axis=0)
        return total

    count = [0]

    def counted(values):
        for chunk in values:
            count[0] += chunk.shape[0]
            yield chunk

    total = row_sum(counted(chunks()))
    if total is None:
        raise ValueError("need a non-empty [N, channels] frame matrix, got no frames")
    n = count[0]
    # np.mean's and np.var's division: into the float32 sum, by the count as an intp.
    mean = np.true_divide(total, np.intp(n), out=total, casting="unsafe")
    count[0] = 0
    squares = row_sum(np.square(chunk - mean) for chunk in counted(chunks()))
    if count[0] != n:
        raise ValueError(f"the frames changed between passes: {n} frames, then {count[0]}")
    return mean, np.true_divide(squares, np.intp(n), out=squares, casting="unsafe")


def adapt_normalization(model: keras.Model, frames: Union[np.ndarray, FrameChunks]) -> None:
    """Fits the in-model filterbank normalisation (per-channel mean/variance) on ``frames``.

    ``frames`` is ``[N, fbank_dim]``, or a function returning chunks of it (read in two passes,
    never held whole; see :func:`frame_moments`): training frames only, never padding (see
    :func:`valid_frames`). Keeping the statistics inside the model means serving cannot skew.
    A model that does not read the filterbank (the semantic-only baseline) has no such layer:
    then this checks there are frames and does nothing else.
    """
    if not any(layer.name == NORMALIZATION_LAYER for layer in model.layers):
        if next(_frame_chunks(frames)(), None) is None:
            raise ValueError("need a non-empty [N, channels] frame matrix, got no frames")
        return
    layer = model.get_layer(NORMALIZATION_LAYER)
    mean, variance = frame_moments(frames)
    # What Normalization.adapt ends with, given the moments it would have computed (the layer
    # was built on [B, T, C] inputs).
    layer.adapt_mean.assign(mean)
    layer.adapt_variance.assign(variance)
    layer.finalize_state()


def like_inputs(model: keras.Model) -> dict:
    """Fresh ``keras.Input`` tensors with the names, shapes and dtypes of ``model``'s inputs, to
    build a model that wraps ``model`` (or several like it)."""
    return {
        key: keras.Input(shape=tensor.shape[1:], dtype=tensor.dtype, name=key)
        for key, tensor in model.input.items()
    }


def average_models(members: Sequence[keras.Model], name: str = "ensemble") -> keras.Model:
    """A seed ensemble as one model: the same inputs, the mean of ``members``' probabilities.

    ``members`` are trained models of one configuration (e.g. different seeds); each is renamed
    ``<name>_member<k>`` (layer names must be unique in a model) and shared, not copied. One
    member is returned as it is.
    """
    members = list(members)
    if not members:
        raise ValueError("an ensemble needs at least one member")
    if len(members) == 1:
        return members[0]
    shapes = {tuple(m.output.shape[1:]) for m in members}
    if len(shapes) != 1:
        raise ValueError(f"members disagree on their output shape: {sorted(shapes)}")
    for k, member in enumerate(members):
        member.name = f"{name}_member{k}"
    inputs = like_inputs(members[0])
    probabilities = keras.layers.Average(name="probabilities")([m(inputs) for m in members])
    return keras.Model(inputs=inputs, outputs=probabilities, name=name)


def ensemble_members(model: keras.Model) -> list:
    """The member models of an :func:`average_models` ensemble (empty for a single model)."""
    return [layer for layer in model.layers if isinstance(layer, keras.Model)]
