"""Keras layers of the CME model: temporal alignment mean-max pooling and cross modality excitation.

Every layer here is a pure function of its inputs and weights (no global state), serializable
through ``get_config`` and registered under the ``cme_ser`` package so ``.keras`` files and
SavedModels reload without ``custom_objects``.
"""

from __future__ import annotations

import keras
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

    def __init__(self, excite_acoustic: bool = True, excite_semantic: bool = True,
                 return_gates: bool = False, **kwargs):
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
            self.acoustic_gate = keras.layers.Dense(acoustic_dim, activation="sigmoid",
                                                    name="acoustic_gate")
            self.acoustic_gate.build(semantic_shape)
        if self.excite_semantic:
            self.semantic_gate = keras.layers.Dense(semantic_dim, activation="sigmoid",
                                                    name="semantic_gate")
            self.semantic_gate.build(acoustic_shape)

    def call(self, inputs):
        acoustic, semantic = inputs
        gate_a = self.acoustic_gate(semantic) if self.acoustic_gate is not None else tf.ones_like(acoustic)
        gate_s = self.semantic_gate(acoustic) if self.semantic_gate is not None else tf.ones_like(semantic)
        outputs = (gate_a * acoustic, gate_s * semantic)
        if self.return_gates:
            outputs = outputs + (gate_a, gate_s)
        return outputs

    def compute_output_shape(self, input_shapes):
        acoustic_shape, semantic_shape = input_shapes
        shapes = (tuple(acoustic_shape), tuple(semantic_shape))
        return shapes + shapes if self.return_gates else shapes

    def get_config(self):
        return {**super().get_config(), "excite_acoustic": self.excite_acoustic,
                "excite_semantic": self.excite_semantic, "return_gates": self.return_gates}


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

    def __init__(self, freq_masks: int = 0, freq_width: int = 8, time_masks: int = 0,
                 time_width: int = 20, seed=None, **kwargs):
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
        freq = self._bands(self.freq_masks, self.freq_width,
                           tf.fill([batch], float(channels)), channels)
        time = self._bands(self.time_masks, self.time_width, lengths, frames)
        keep = tf.logical_not(freq[:, None, :] | time[:, :, None])
        return x * tf.cast(keep, x.dtype)

    def compute_output_shape(self, input_shapes):
        return tuple(input_shapes[0])

    def get_config(self):
        return {**super().get_config(), "freq_masks": self.freq_masks,
                "freq_width": self.freq_width, "time_masks": self.time_masks,
                "time_width": self.time_width, "seed": self.seed}
