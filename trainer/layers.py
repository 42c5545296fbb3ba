"""Keras layers of the CME model: temporal alignment mean-max pooling and cross modality excitation,
and the prior correction of served probabilities; at the end, the blocks of the Table 1
baselines and of the CTC-alignment ablation.

Every layer here is a pure function of its inputs and weights (no global state), serializable
through ``get_config`` and registered under the ``cme_ser`` package so ``.keras`` files and
SavedModels reload without ``custom_objects``.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

PACKAGE = "cme_ser"


def _valid_words(num_words: tf.Tensor, max_words: tf.Tensor) -> tf.Tensor:
    """Bool [B, M]: word slot j of utterance b holds a real word (j < num_words[b])."""
    return tf.sequence_mask(tf.cast(num_words, tf.int32), max_words)


@keras.saving.register_keras_serializable(package=PACKAGE)
class SegmentMeanMaxPooling(keras.layers.Layer):
    """Temporal alignment mean-max pooling (Li et al. 2021, section 3.2).

    For utterance ``b`` and word ``j`` with frame span ``[s, e)`` (end exclusive, clipped to
    ``[0, T]``)::

        mean_j = (1 / (e - s)) * sum_{t=s}^{e-1} X[b, t, :]
        max_j  = max_{t=s}^{e-1} X[b, t, :]
        out[b, j] = concat(mean_j, max_j)          # pooling="mean_max", 2C features
        out[b, j] = mean_j                         # pooling="mean", C features

    Padded word slots (``j >= num_words[b]``) and empty spans (``e <= s`` after clipping) give
    exactly zero.

    The cost is linear in the number of frames covered by the spans: the spans are expanded to
    a flat list of (word, frame) pairs, the frames gathered once and reduced with segment ops.
    The dense ``[B, M, T, C]`` masked product of the paper's released code is never built.
    Overlapping spans are allowed (a frame shared by two words is counted in both).

    Inputs:
        frames: float ``[B, T, C]``.
        spans: int ``[B, M, 2]``, (start frame inclusive, end frame exclusive).
        num_words: int ``[B]``.
    Output:
        float ``[B, M, 2C]`` (``mean_max``) or ``[B, M, C]`` (``mean``).
    """

    def __init__(self, pooling: str = "mean_max", **kwargs):
        super().__init__(**kwargs)
        if pooling not in ("mean_max", "mean"):
            raise ValueError(f"pooling must be 'mean_max' or 'mean', got {pooling!r}")
        self.pooling = pooling
        # The flat (word, frame) list has a data-dependent length, which XLA cannot compile.
        self.supports_jit = False

    def call(self, inputs):
        frames, spans, num_words = inputs
        frames = tf.convert_to_tensor(frames)
        spans = tf.cast(spans, tf.int32)
        shape = tf.shape(frames)
        batch, num_frames, channels = shape[0], shape[1], shape[2]
        max_words = tf.shape(spans)[1]

        starts = tf.clip_by_value(spans[..., 0], 0, num_frames)
        ends = tf.clip_by_value(spans[..., 1], starts, num_frames)
        valid = _valid_words(num_words, max_words)
        lengths = tf.where(valid, ends - starts, 0)  # [B, M], 0 for padding and empty spans

        num_segments = batch * max_words
        flat_lengths = tf.reshape(lengths, [-1])
        flat_starts = tf.reshape(starts, [-1])
        segment_ids = tf.repeat(tf.range(num_segments), flat_lengths)  # [N] word slot per pair
        first_pair = tf.cumsum(flat_lengths, exclusive=True)
        offset = tf.range(tf.shape(segment_ids)[0]) - tf.gather(first_pair, segment_ids)
        frame_index = tf.gather(flat_starts, segment_ids) + offset
        row = (segment_ids // max_words) * num_frames + frame_index
        picked = tf.gather(tf.reshape(frames, [-1, channels]), row)  # [N, C]

        denom = tf.cast(tf.maximum(flat_lengths, 1), frames.dtype)[:, None]
        mean = tf.math.unsorted_segment_sum(picked, segment_ids, num_segments) / denom
        out_shape = tf.stack([batch, max_words, channels])
        mean = tf.reshape(mean, out_shape)
        if self.pooling == "mean":
            return mean
        maxed = tf.math.unsorted_segment_max(picked, segment_ids, num_segments)
        # Empty segments come back as the dtype's lowest value: make them exactly zero.
        maxed = tf.where((flat_lengths > 0)[:, None], maxed, tf.zeros_like(maxed))
        maxed = tf.reshape(maxed, out_shape)
        return tf.concat([mean, maxed], axis=-1)

    def compute_output_shape(self, input_shapes):
        frames_shape, spans_shape, _ = input_shapes
        channels = frames_shape[-1]
        if channels is not None and self.pooling == "mean_max":
            channels = 2 * channels
        return (frames_shape[0], spans_shape[1], channels)

    def get_config(self):
        return {**super().get_config(), "pooling": self.pooling}


@keras.saving.register_keras_serializable(package=PACKAGE)
class CrossModalityExcitation(keras.layers.Layer):
    """Cross modality excitation (Li et al. 2021, section 3.3).

    Each modality is gated, per word and per feature, by a sigmoid of a linear map of the
    *other* modality::

        E^a = sigmoid(Z^s W^a + b^a)     # [B, M, Da], from the semantic side
        E^s = sigmoid(Z^a W^s + b^s)     # [B, M, Ds], from the acoustic side
        Z^a <- E^a * Z^a,  Z^s <- E^s * Z^s

    ``excite_acoustic=False`` / ``excite_semantic=False`` replace the matching gate by 1 (the
    ablations "w/o Excite^a", "w/o Excite^s"). With ``return_gates=True`` the layer also returns
    ``(E^a, E^s)`` (a disabled gate is returned as ones) so callers can inspect which words
    carried the decision.

    Inputs: ``[acoustic [B, M, Da], semantic [B, M, Ds]]``.
    Output: ``(acoustic', semantic')`` or ``(acoustic', semantic', E^a, E^s)``.
    """

    def __init__(
        self,
        excite_acoustic: bool = True,
        excite_semantic: bool = True,
        return_gates: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.excite_acoustic = bool(excite_acoustic)
        self.excite_semantic = bool(excite_semantic)
        self.return_gates = bool(return_gates)

    def build(self, input_shapes):
        acoustic_shape, semantic_shape = input_shapes
        acoustic_dim, semantic_dim = int(acoustic_shape[-1]), int(semantic_shape[-1])
        self.acoustic_gate = None
        self.semantic_gate = None
        if self.excite_acoustic:
            self.acoustic_gate = keras.layers.Dense(
                acoustic_dim, activation="sigmoid", name="acoustic_gate"
            )
            self.acoustic_gate.build(semantic_shape)
        if self.excite_semantic:
            self.semantic_gate = keras.layers.Dense(
                semantic_dim, activation="sigmoid", name="semantic_gate"
            )
            self.semantic_gate.build(acoustic_shape)

    def call(self, inputs):
        acoustic, semantic = inputs
        gate_a = (
            self.acoustic_gate(semantic)
            if self.acoustic_gate is not None
            else tf.ones_like(acoustic)
        )
        gate_s = (
            self.semantic_gate(acoustic)
            if self.semantic_gate is not None
            else tf.ones_like(semantic)
        )
        outputs = (gate_a * acoustic, gate_s * semantic)
        if self.return_gates:
            outputs = outputs + (gate_a, gate_s)
        return outputs

    def compute_output_shape(self, input_shapes):
        acoustic_shape, semantic_shape = input_shapes
        shapes = (tuple(acoustic_shape), tuple(semantic_shape))
        return shapes + shapes if self.return_gates else shapes

    def get_config(self):
        return {
            **super().get_config(),
            "excite_acoustic": self.excite_acoustic,
            "excite_semantic": self.excite_semantic,
            "return_gates": self.return_gates,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class LengthMask(keras.layers.Layer):
    """Bool mask ``[B, L]`` from lengths ``[B]``: position ``i`` is valid iff ``i < length``.

    Inputs: ``[reference [B, L, ...], lengths [B]]``; L is read from ``reference``.
    """

    def call(self, inputs):
        reference, lengths = inputs
        return tf.sequence_mask(tf.cast(lengths, tf.int32), tf.shape(reference)[1])

    def compute_output_shape(self, input_shapes):
        return tuple(input_shapes[0][:2])


@keras.saving.register_keras_serializable(package=PACKAGE)
class ZeroPadded(keras.layers.Layer):
    """Sets the positions beyond each sequence's length to exactly zero.

    ``out[b, t] = x[b, t] if t < lengths[b] else 0``. Used after input normalisation and
    after each convolution so that padding a batch to a longer length changes nothing: the
    'same' convolution then sees zeros past the end, exactly as for an unpadded utterance.

    Inputs: ``[x [B, T, C], lengths [B]]``. Output: ``[B, T, C]``.
    """

    def call(self, inputs):
        x, lengths = inputs
        mask = tf.sequence_mask(tf.cast(lengths, tf.int32), tf.shape(x)[1], dtype=x.dtype)
        return x * mask[..., None]

    def compute_output_shape(self, input_shapes):
        return tuple(input_shapes[0])


@keras.saving.register_keras_serializable(package=PACKAGE)
class MaskedMaxPooling(keras.layers.Layer):
    """Max over the valid steps of a sequence: ``out[b] = max_{t < lengths[b]} x[b, t]``.

    An empty sequence (length 0) gives zeros. A Keras mask arriving with ``x`` (from a masked
    RNN) is consumed: ``lengths`` already says the same, and the output has no time axis.

    Inputs: ``[x [B, L, D], lengths [B]]``. Output: ``[B, D]``.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def compute_mask(self, inputs, mask=None):
        return None

    def call(self, inputs):
        x, lengths = inputs
        valid = tf.sequence_mask(tf.cast(lengths, tf.int32), tf.shape(x)[1])
        lowest = tf.fill(tf.shape(x), tf.constant(x.dtype.min, x.dtype))
        pooled = tf.reduce_max(tf.where(valid[..., None], x, lowest), axis=1)
        return tf.where((tf.cast(lengths, tf.int32) > 0)[:, None], pooled, tf.zeros_like(pooled))

    def compute_output_shape(self, input_shapes):
        shape = input_shapes[0]
        return (shape[0], shape[2])


@keras.saving.register_keras_serializable(package=PACKAGE)
class SpecAugment(keras.layers.Layer):
    """SpecAugment-style masking of (normalised) filterbank frames, in training only.

    Per utterance, ``freq_masks`` bands of ``w ~ U{0..freq_width}`` channels and ``time_masks``
    spans of ``w ~ U{0..time_width}`` frames (inside the utterance's ``lengths[b]`` frames) are
    set to 0, the mean of normalised features (Park et al., 2019; no time warping). At
    inference the layer is the identity, so exported models are unaffected.

    Inputs: ``[x [B, T, C], lengths [B]]``. Output: ``[B, T, C]``.
    """

    def __init__(
        self,
        freq_masks: int = 0,
        freq_width: int = 8,
        time_masks: int = 0,
        time_width: int = 20,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.freq_masks, self.freq_width = int(freq_masks), int(freq_width)
        self.time_masks, self.time_width = int(time_masks), int(time_width)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _bands(self, count, width, extent, size):
        """Bool [B, size]: union of `count` random bands of width <= `width` within `extent`."""
        positions = tf.range(size, dtype=tf.float32)[None, :]
        extent = tf.cast(extent, tf.float32)[:, None]
        masked = tf.zeros([tf.shape(extent)[0], size], tf.bool)
        for _ in range(count):
            u = keras.random.uniform(tf.shape(extent), seed=self.seed_generator)
            w = tf.floor(u * (width + 1))
            v = keras.random.uniform(tf.shape(extent), seed=self.seed_generator)
            start = tf.floor(v * tf.maximum(extent - w, 0.0))
            masked |= (positions >= start) & (positions < start + w)
        return masked

    def call(self, inputs, training=None):
        x, lengths = inputs
        if not training or (self.freq_masks == 0 and self.time_masks == 0):
            return x
        batch, frames, channels = tf.shape(x)[0], tf.shape(x)[1], x.shape[-1]
        freq = self._bands(
            self.freq_masks, self.freq_width, tf.fill([batch], float(channels)), channels
        )
        time = self._bands(self.time_masks, self.time_width, lengths, frames)
        keep = tf.logical_not(freq[:, None, :] | time[:, :, None])
        return x * tf.cast(keep, x.dtype)

    def compute_output_shape(self, input_shapes):
        return tuple(input_shapes[0])

    def get_config(self):
        return {
            **super().get_config(),
            "freq_masks": self.freq_masks,
            "freq_width": self.freq_width,
            "time_masks": self.time_masks,
            "time_width": self.time_width,
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class PriorCorrection(keras.layers.Layer):
    """Class probabilities divided by the training class prior and renormalised (the layer of
    ``trainer.metrics.prior_corrected``, applied by the exported model after the ensemble mean)::

        pi_k    = n_k / N,   N = sum_j n_j                 n = class_counts, K numbers > 0
        q[b, k] = (p[b, k] / pi_k) / sum_j (p[b, j] / pi_j)

    If ``p`` is the posterior under the training prior, ``argmax q`` is the decision a model
    trained on balanced classes would make (the one that maximises expected UA rather than WA).
    The counts are configuration, not weights: the layer has no state. A row of zeros has no
    corrected value (0 / 0); probabilities from a softmax are never all zero.

    Input: ``probabilities [B, K]`` (any leading shape ``[..., K]``). Output: ``q [B, K]``.
    """

    def __init__(self, class_counts, **kwargs):
        super().__init__(**kwargs)
        try:
            counts = [float(c) for c in class_counts]
        except (TypeError, ValueError):
            raise ValueError(
                f"class_counts must be a list of numbers, got {class_counts!r}"
            ) from None
        if not counts or not all(math.isfinite(c) and c > 0 for c in counts):
            raise ValueError(f"class_counts must be one finite count > 0 per class, got {counts}")
        self.class_counts = counts

    def build(self, input_shape):
        classes = input_shape[-1]
        if classes is not None and int(classes) != len(self.class_counts):
            raise ValueError(
                f"{len(self.class_counts)} class counts {self.class_counts} for "
                f"probabilities of {int(classes)} classes"
            )

    def call(self, probabilities):
        probabilities = tf.convert_to_tensor(probabilities)
        counts = np.asarray(self.class_counts, np.float64)
        inverse_prior = tf.constant(counts.sum() / counts, probabilities.dtype)  # 1 / pi_k
        scaled = probabilities * inverse_prior
        return scaled / tf.reduce_sum(scaled, axis=-1, keepdims=True)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "class_counts": list(self.class_counts)}


@keras.saving.register_keras_serializable(package=PACKAGE)
class TemperatureScaling(keras.layers.Layer):
    """Temperature scaling of class probabilities (Guo et al., ICML 2017; the layer of
    ``trainer.calibration.temperature_scaled``, applied by the exported model last)::

        q[b, k] = exp(log p[b, k] / T) / sum_j exp(log p[b, j] / T)

    ``T > 1`` softens over-confident probabilities, ``T < 1`` sharpens them; the argmax never
    changes. ``T`` is fitted on held-out answers (``trainer.calibration.fit_temperature``); it is
    configuration, not a weight. ``p`` is clipped at 1e-12 before the log, as in
    ``trainer.calibration``.

    Args:
        temperature: ``T``, a finite number > 0.

    Input shape: ``[..., K]`` probabilities. Output shape: the same.
    """

    def __init__(self, temperature, **kwargs):
        super().__init__(**kwargs)
        temperature = float(temperature)
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
        self.temperature = temperature

    def call(self, probabilities):
        probabilities = tf.convert_to_tensor(probabilities)
        logits = tf.math.log(tf.maximum(probabilities, tf.constant(1e-12, probabilities.dtype)))
        return tf.nn.softmax(logits / tf.constant(self.temperature, probabilities.dtype), axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


# --- Blocks of the Table-1 baselines and of the CTC-alignment ablation (trainer/model.py). ---


def _masked_softmax(scores: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
    """Softmax over the last axis restricted to ``valid`` (bool, same shape as ``scores``).

    Invalid entries get exactly 0 (they never touch the valid ones: ``exp(lowest - max) == 0``);
    a row without any valid entry is all zeros.
    """
    lowest = tf.constant(scores.dtype.min, scores.dtype)
    weights = tf.nn.softmax(tf.where(valid, scores, lowest), axis=-1)
    return tf.where(valid, weights, tf.zeros_like(weights))


@keras.saving.register_keras_serializable(package=PACKAGE)
class FrameSubsampling(keras.layers.Layer):
    """Masked max-pooling of frames by ``stride`` (windows ``[k*s, (k+1)*s)``, no overlap)::

        out[b, k] = max_{k*s <= t < min((k+1)*s, n_b)} x[b, t]      for k < ceil(n_b / s)
        out[b, k] = 0                                                 otherwise
        lengths'[b] = ceil(n_b / s),   n_b = lengths[b]

    Frames past ``n_b`` never enter a window, and the window grid starts at frame 0 whatever
    the padded length, so padding a batch changes nothing. ``stride=1`` is ``ZeroPadded``.

    Inputs: ``[x [B, T, C], lengths [B]]``.
    Outputs: ``(x' [B, ceil(T / s), C], lengths' [B] int32)``.
    """

    def __init__(self, stride: int = 4, **kwargs):
        super().__init__(**kwargs)
        if int(stride) < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.stride = int(stride)

    def call(self, inputs):
        x, lengths = inputs
        x = tf.convert_to_tensor(x)
        lengths = tf.maximum(tf.cast(lengths, tf.int32), 0)
        stride = self.stride
        shape = tf.shape(x)
        batch, frames, channels = shape[0], shape[1], shape[2]
        windows = (frames + stride - 1) // stride
        lowest = x.dtype.min
        valid = tf.sequence_mask(lengths, frames)
        masked = tf.where(valid[..., None], x, tf.constant(lowest, x.dtype))
        masked = tf.pad(
            masked, [[0, 0], [0, windows * stride - frames], [0, 0]], constant_values=lowest
        )
        pooled = tf.reduce_max(
            tf.reshape(masked, tf.stack([batch, windows, stride, channels])), axis=2
        )
        new_lengths = (lengths + stride - 1) // stride
        keep = tf.sequence_mask(new_lengths, windows)
        pooled = tf.where(keep[..., None], pooled, tf.zeros_like(pooled))
        return pooled, new_lengths

    def compute_output_shape(self, input_shapes):
        x_shape, lengths_shape = input_shapes
        frames = x_shape[1]
        if frames is not None:
            frames = -(-frames // self.stride)
        return (x_shape[0], frames, x_shape[2]), tuple(lengths_shape)

    def get_config(self):
        return {**super().get_config(), "stride": self.stride}


@keras.saving.register_keras_serializable(package=PACKAGE)
class AttentionPooling(keras.layers.Layer):
    """Additive (self-)attention pooling over the valid steps of a sequence (Mirsamadi et al.
    2017; the "LSTM + Attn" baselines)::

        e[b, t]     = v^T tanh(W x[b, t] + c)                  W [D, U], c [U], v [U]
        alpha[b, :] = softmax(e[b, :]) over t < lengths[b]     (0 elsewhere)
        out[b]      = sum_t alpha[b, t] x[b, t]

    An empty sequence gives zeros. A Keras mask arriving with ``x`` is consumed (``lengths``
    says the same). ``units`` defaults to D. With ``return_weights`` the layer also returns
    ``alpha``.

    Inputs: ``[x [B, L, D], lengths [B]]``. Output: ``[B, D]`` (and ``alpha [B, L]``).
    """

    def __init__(self, units=None, return_weights: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.units = None if units is None else int(units)
        self.return_weights = bool(return_weights)
        self.supports_masking = True

    def build(self, input_shapes):
        dim = int(input_shapes[0][-1])
        units = self.units or dim
        self.kernel = self.add_weight(
            name="kernel", shape=(dim, units), initializer="glorot_uniform"
        )
        self.bias = self.add_weight(name="bias", shape=(units,), initializer="zeros")
        self.query = self.add_weight(name="query", shape=(units,), initializer="glorot_uniform")

    def compute_mask(self, inputs, mask=None):
        return None

    def call(self, inputs, mask=None):
        x, lengths = inputs
        valid = tf.sequence_mask(tf.cast(lengths, tf.int32), tf.shape(x)[1])
        x = tf.where(valid[..., None], x, tf.zeros_like(x))
        hidden = tf.tanh(tf.tensordot(x, self.kernel, axes=1) + self.bias)
        weights = _masked_softmax(tf.tensordot(hidden, self.query, axes=1), valid)
        pooled = tf.einsum("bl,bld->bd", weights, x)
        return (pooled, weights) if self.return_weights else pooled

    def compute_output_shape(self, input_shapes):
        shape = input_shapes[0]
        pooled = (shape[0], shape[2])
        return (pooled, (shape[0], shape[1])) if self.return_weights else pooled

    def get_config(self):
        return {**super().get_config(), "units": self.units, "return_weights": self.return_weights}


@keras.saving.register_keras_serializable(package=PACKAGE)
class QueryAttention(keras.layers.Layer):
    """Bilinear attention of one query vector over the valid steps of a sequence: one hop of
    the multi-hop attention of Yoon et al. (2019)::

        e[b, l]     = q[b]^T W k[b, l]                         W [Dq, Dk]
        alpha[b, :] = softmax(e[b, :]) over l < lengths[b]     (0 elsewhere)
        out[b]      = sum_l alpha[b, l] k[b, l]

    An empty sequence gives zeros. A Keras mask arriving with ``keys`` is consumed.

    Inputs: ``[query [B, Dq], keys [B, L, Dk], lengths [B]]``. Output: ``[B, Dk]``.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def build(self, input_shapes):
        query_shape, keys_shape, _ = input_shapes
        self.kernel = self.add_weight(
            name="kernel",
            shape=(int(query_shape[-1]), int(keys_shape[-1])),
            initializer="glorot_uniform",
        )

    def compute_mask(self, inputs, mask=None):
        return None

    def call(self, inputs, mask=None):
        query, keys, lengths = inputs
        valid = tf.sequence_mask(tf.cast(lengths, tf.int32), tf.shape(keys)[1])
        keys = tf.where(valid[..., None], keys, tf.zeros_like(keys))
        projected = tf.matmul(query, self.kernel)  # [B, Dk]
        weights = _masked_softmax(tf.einsum("bd,bld->bl", projected, keys), valid)
        return tf.einsum("bl,bld->bd", weights, keys)

    def compute_output_shape(self, input_shapes):
        return (input_shapes[1][0], input_shapes[1][2])


@keras.saving.register_keras_serializable(package=PACKAGE)
class PairMask(keras.layers.Layer):
    """Bool attention mask ``[B, Lq, Lk]``: query step i may attend to key step j iff
    ``i < query_lengths[b]`` and ``j < key_lengths[b]`` (the ``attention_mask`` of
    ``keras.layers.MultiHeadAttention``).

    Inputs: ``[queries [B, Lq, ...], query_lengths [B], keys [B, Lk, ...], key_lengths [B]]``;
    Lq and Lk are read from the reference tensors.
    """

    def call(self, inputs):
        queries, query_lengths, keys, key_lengths = inputs
        rows = tf.sequence_mask(tf.cast(query_lengths, tf.int32), tf.shape(queries)[1])
        cols = tf.sequence_mask(tf.cast(key_lengths, tf.int32), tf.shape(keys)[1])
        return rows[:, :, None] & cols[:, None, :]

    def compute_output_shape(self, input_shapes):
        return (input_shapes[0][0], input_shapes[0][1], input_shapes[2][1])


@keras.saving.register_keras_serializable(package=PACKAGE)
class IgnoreInputs(keras.layers.Layer):
    """Returns its first input unchanged and ignores the others.

    A Keras functional model must use every input it declares, but all variants share the one
    record interface (``trainer.model.INPUT_NAMES``) and some read only part of it (a unimodal
    baseline, the CTC-aligned model without ``word_spans``). Passing the unused inputs through
    here keeps them connected without letting them influence anything.

    Inputs: ``[x, *ignored]``. Output: ``x``.
    """

    def call(self, inputs):
        return tf.identity(inputs[0])

    def compute_output_shape(self, input_shapes):
        return tuple(input_shapes[0])


@keras.saving.register_keras_serializable(package=PACKAGE)
class CTCAlignmentPooling(keras.layers.Layer):
    """Word-level pooling through a learned, CTC-trained soft alignment (the "w/o forced
    alignment" ablation): ``SegmentMeanMaxPooling`` without the forced-alignment spans.

    Each frame is classified into (blank, word position 1..M) by matching it against the words
    of its own utterance::

        s[b, t, m] = h[b, t]^T W e[b, m] / sqrt(C)             m = 1..M,  W [C, Ds]
        s[b, t, 0] = w_0^T h[b, t] + c_0                        the blank logit
        s[b, t, m] = -1e9                                       for padded words m > n_b
        p[b, t, :] = softmax(s[b, t, :])                        [B, T, M + 1]

    ``p`` is trained with CTC (``tf.compat.v1.nn.ctc_loss``, the C++ kernel) against the label
    sequence ``1, 2, ..., n_b`` (each word once, in order; blank = 0) over the utterance's
    ``T_b = num_frames[b]`` frames. The per-utterance loss is divided by ``T_b`` (a per-frame
    loss, of the order of the cross-entropy), averaged over the batch, scaled by ``ctc_weight``
    and added with ``add_loss`` (Keras adds ``model.losses`` to the training loss). Utterances
    with fewer frames than words cannot be aligned and contribute 0.

    The posterior replaces the binary span indicator: ``A[b, m, t] = p[b, t, m]`` for valid
    frames ``t < T_b`` (0 elsewhere), and per word::

        mean[b, m] = sum_t A[b, m, t] h[b, t] / max(sum_t A[b, m, t], 1e-6)
        max[b, m]  = max_{t < T_b} A[b, m, t] h[b, t]
        out[b, m]  = concat(mean, max)  (pooling="mean_max", 2C)   or   mean  (pooling="mean", C)

    Padded word slots (``m >= n_b``) are exactly zero. Padding frames or words changes nothing
    for the real ones.

    Cost: the bilinear score projects the M words into frame space (``W e``), never the T
    frames. The max needs the ``[B, M, T, C]`` product once, for its argmax over t; its value
    and gradient then go through gathers of ``A`` and ``h`` at that argmax (``[B, M, C]``), not
    through a gradient of the full product.

    Inputs: ``[frames h [B, T, C], words e [B, M, Ds], num_frames [B], num_words [B]]``.
    Output: float ``[B, M, 2C]`` or ``[B, M, C]``; with ``return_alignment`` also
    ``A [B, M, T]``.
    """

    def __init__(
        self,
        pooling: str = "mean_max",
        ctc_weight: float = 1.0,
        return_alignment: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if pooling not in ("mean_max", "mean"):
            raise ValueError(f"pooling must be 'mean_max' or 'mean', got {pooling!r}")
        self.pooling = pooling
        self.ctc_weight = float(ctc_weight)
        self.return_alignment = bool(return_alignment)
        self.supports_jit = False  # the CTC kernel has no XLA lowering

    def build(self, input_shapes):
        frames_shape, words_shape = input_shapes[0], input_shapes[1]
        self.channels = int(frames_shape[-1])
        self.word_projection = keras.layers.Dense(
            self.channels, use_bias=False, name="word_projection"
        )  # W^T: Ds -> C
        self.word_projection.build(words_shape)
        self.blank = keras.layers.Dense(1, name="blank_logit")
        self.blank.build(frames_shape)

    def alignment_logits(self, frames, words, num_words):
        """``s [B, T, M + 1]`` above (index 0 = blank, index m = word m; padded words -1e9)."""
        scale = 1.0 / float(self.channels) ** 0.5
        scores = tf.einsum("btc,bmc->btm", frames, self.word_projection(words)) * scale
        valid_words = _valid_words(num_words, tf.shape(words)[1])
        scores = tf.where(valid_words[:, None, :], scores, tf.constant(-1e9, scores.dtype))
        return tf.concat([self.blank(frames), scores], axis=-1)

    def ctc_loss(self, logits, num_frames, num_words):
        """Per-utterance CTC loss ``[B]`` / frames: labels ``1..n_b``, blank 0; 0 when
        ``n_b = 0`` or ``num_frames[b] < n_b``."""
        num_frames = tf.cast(num_frames, tf.int32)
        num_words = tf.cast(num_words, tf.int32)
        max_words = tf.shape(logits)[2] - 1
        has_words = num_words > 0
        # The kernel refuses empty label sequences: an utterance without words gets a dummy
        # problem instead (uniform logits, one label: an extra class M + 1) and loss 0.
        logits = tf.where(has_words[:, None, None], logits, tf.zeros_like(logits))
        dummy = tf.where(has_words, tf.constant(-1e9, logits.dtype), tf.zeros([], logits.dtype))
        dummy = tf.broadcast_to(dummy[:, None, None], tf.shape(logits[..., :1]))
        label_lengths = tf.maximum(num_words, 1)
        indices = tf.where(tf.sequence_mask(label_lengths, tf.maximum(max_words, 1)))  # [N, 2]
        positions = tf.cast(indices[:, 1], tf.int32) + 1  # word m -> class m
        values = tf.where(tf.gather(has_words, indices[:, 0]), positions, max_words + 1)
        # The v1 kernel wants the blank last: classes (word 1..M, dummy, blank) are labels
        # 0..M of (classes - 1).
        blank_last = tf.concat([logits[..., 1:], dummy, logits[..., :1]], axis=-1)
        dense_shape = tf.stack([tf.shape(logits)[0], tf.maximum(max_words, 1)])
        loss = tf.compat.v1.nn.ctc_loss(
            tf.SparseTensor(indices, values - 1, tf.cast(dense_shape, tf.int64)),
            blank_last,
            num_frames,
            preprocess_collapse_repeated=False,
            ctc_merge_repeated=True,
            ignore_longer_outputs_than_inputs=True,
            time_major=False,
        )
        loss = tf.where(has_words, loss, tf.zeros_like(loss))
        return loss / tf.cast(tf.maximum(num_frames, 1), loss.dtype)

    def call(self, inputs):
        frames, words, num_frames, num_words = inputs
        frames = tf.convert_to_tensor(frames)
        num_frames = tf.cast(num_frames, tf.int32)
        num_words = tf.cast(num_words, tf.int32)
        max_frames, max_words = tf.shape(frames)[1], tf.shape(words)[1]
        valid_frames = tf.sequence_mask(num_frames, max_frames)  # [B, T]
        valid_words = _valid_words(num_words, max_words)  # [B, M]
        frames = tf.where(valid_frames[..., None], frames, tf.zeros_like(frames))

        logits = self.alignment_logits(frames, words, num_words)
        posterior = tf.nn.softmax(logits, axis=-1)
        alignment = tf.transpose(posterior[..., 1:], [0, 2, 1])  # [B, M, T]
        alignment *= tf.cast(valid_frames, alignment.dtype)[:, None, :]
        alignment *= tf.cast(valid_words, alignment.dtype)[..., None]

        mass = tf.reduce_sum(alignment, axis=-1, keepdims=True)  # [B, M, 1]
        pooled = tf.einsum("bmt,btc->bmc", alignment, frames) / tf.maximum(mass, 1e-6)
        if self.pooling == "mean_max":
            # argmax_t of A[b, m, t] h[b, t, c] over valid frames (no gradient needed) ...
            weighted = (
                tf.stop_gradient(alignment)[..., None] * tf.stop_gradient(frames)[:, None, :, :]
            )  # [B, M, T, C]
            weighted = tf.where(
                valid_frames[:, None, :, None],
                weighted,
                tf.constant(frames.dtype.min, frames.dtype),
            )
            best = tf.argmax(weighted, axis=2, output_type=tf.int32)  # [B, M, C]
            # ... then the value A[b, m, t*] h[b, t*, c], differentiable through two gathers.
            best_a = tf.gather(alignment, best, batch_dims=2)  # [B, M, C]
            best_h = tf.gather(
                tf.transpose(frames, [0, 2, 1]), tf.transpose(best, [0, 2, 1]), batch_dims=2
            )  # [B, C, M]
            maxed = best_a * tf.transpose(best_h, [0, 2, 1])
            keep = valid_words & (num_frames > 0)[:, None]
            maxed = tf.where(keep[..., None], maxed, tf.zeros_like(maxed))
            pooled = tf.concat([pooled, maxed], axis=-1)

        self.add_loss(
            self.ctc_weight * tf.reduce_mean(self.ctc_loss(logits, num_frames, num_words))
        )
        return (pooled, alignment) if self.return_alignment else pooled

    def compute_output_shape(self, input_shapes):
        frames_shape, words_shape = input_shapes[0], input_shapes[1]
        channels = frames_shape[-1]
        if channels is not None and self.pooling == "mean_max":
            channels = 2 * channels
        pooled = (frames_shape[0], words_shape[1], channels)
        if self.return_alignment:
            return pooled, (frames_shape[0], words_shape[1], frames_shape[1])
        return pooled

    def get_config(self):
        return {
            **super().get_config(),
            "pooling": self.pooling,
            "ctc_weight": self.ctc_weight,
            "return_alignment": self.return_alignment,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class UtteranceMeanNormalization(keras.layers.Layer):
    """Per-utterance cepstral-style mean normalisation over the valid frames::

        out[b, t] = x[b, t] - (1 / n_b) * sum_{t' < n_b} x[b, t']   for t < n_b, else 0

    Removes an utterance's constant channel offset (microphone, distance, speaker's average
    spectrum) and keeps its contour. Inputs: ``[x [B, T, C], lengths [B]]``. Output ``[B, T, C]``.
    """

    def call(self, inputs):
        x, lengths = inputs
        mask = tf.sequence_mask(tf.cast(lengths, tf.int32), tf.shape(x)[1], dtype=x.dtype)[
            ..., None
        ]
        count = tf.maximum(tf.reduce_sum(mask, axis=1, keepdims=True), 1.0)
        mean = tf.reduce_sum(x * mask, axis=1, keepdims=True) / count
        return (x - mean) * mask

    def compute_output_shape(self, input_shapes):
        return tuple(input_shapes[0])
