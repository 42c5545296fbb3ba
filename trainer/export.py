"""Export a trained CME model as a SavedModel that stock TensorFlow Serving can load.

Three signatures, built from core TensorFlow ops only (stock TF Serving has no tensorflow-text or
tensorflow-io kernels), so loading needs neither those packages nor this project's Python code:

``serving_default`` (method ``tensorflow/serving/predict``)
    inputs:  ``examples``  string ``[B]``: serialized ``tf.train.Example`` in the record schema
             (``preprocessing.records``; ``label`` and the other bookkeeping keys optional).
    outputs: ``probabilities`` float32 ``[B, K]`` (prior-corrected when the export has class
             counts, see below); ``class_ids`` int64 ``[B]`` (argmax);
             ``classes`` string ``[B]`` (the predicted class's name); ``class_names`` string
             ``[B, K]`` (every row the K class names in probability order, so a client can label
             the probabilities without knowing the model).

``predict_waveform`` (method ``tensorflow/serving/predict``)
    inputs:  ``waveform``     float32 ``[B, S]``: 16 kHz mono in [-1, 1], zero padded to S;
             ``num_samples``  int32   ``[B]``: real samples per row;
             ``words``        string  ``[B, M]``: the words, padded at the end with "";
             ``word_start_s``, ``word_end_s`` float32 ``[B, M]``: each word's start and end in
             seconds (padding: anything finite, e.g. 0).
    outputs: the four above, plus ``acoustic_excitation`` and ``semantic_excitation`` float32
             ``[B, M]``: per word, the mean over features of the cross modality excitation gates
             E^a and E^s (0 for padding slots). Only models with the layer
             ``trainer.model.EXCITATION_LAYER`` (the CME models, forced- or CTC-aligned) have
             them; the Table 1 baselines export the same signatures with the four class outputs.

``predict_waveform_bytes`` (method ``tensorflow/serving/predict``)
    ``predict_waveform`` with the samples as bytes: ``waveform_bytes`` string ``[B]`` holds each
    row's samples as little-endian float32 (4 bytes a sample; rows may differ in length: they
    are zero padded to the longest in-graph); the other inputs and all outputs as above. Over
    REST a bytes value travels as ``{"b64": ...}``: under 60% of the JSON of the numbers, and
    decoding it costs the server almost nothing, where parsing the 62,000 JSON numbers of a
    3.9 s utterance costs ``cme-ser serve`` ~4 ms of CPU under Python's GIL.

Both waveform signatures check their inputs in-graph first (:func:`check_waveform_inputs`): a
bad request fails with INVALID_ARGUMENT ``assertion failed: [<the rule>] [<offending values>]``,
a 400 from stock TF Serving and ``cme-ser serve`` alike.

In-graph conventions of ``predict_waveform`` (the same as preprocessing's):

* filterbank: ``preprocessing.features.log_mel_filterbank``; row b has
  ``num_frames_for(num_samples[b])`` frames (100 per second).
* seconds -> frames as ``preprocessing.alignment`` reads corpus alignments:
  ``start = floor(s * 100 + 0.5)``, ``end = max(floor(e * 100 + 0.5), start + 1)``, both clipped
  to ``[0, num_frames]``; spans are ``[start, end)``. Frame spans from an alignment ``[a, b)``
  therefore round-trip exactly when sent as ``a / 100, b / 100``.
* words are lowercased (``tf.strings.lower``, UTF-8) and looked up in the vocabulary stored in the
  SavedModel (``assets/vocab.txt`` + a variable with the vectors): unknown words get the zero
  vector, as in preprocessing. ``num_words[b]`` = number of non-empty words in row b.

The vocabulary is the first ``vocab_size`` words of the vectors (GloVe rows are in corpus
frequency order, so these are the most frequent words).

Prior correction: exported with ``prior_class_counts`` (``n_k``, the final training data's
class counts), every signature serves ``trainer.layers.PriorCorrection`` of the model's (the
ensemble's mean) probabilities, ``q_k = (p_k / pi_k) / sum_j (p_j / pi_j)``, ``pi_k = n_k / N``,
and ``class_ids`` / ``classes`` are its argmax: TFMA, the cross-validation report and TF Serving
all see the corrected model. The counts are constants of the graph.

Calibration: exported with a ``temperature`` ``T`` (fitted on held-out speakers,
``trainer.calibration``), every signature serves ``trainer.layers.TemperatureScaling`` of those
(prior-corrected) probabilities, ``softmax(log q / T)``, last; the argmax is unchanged. The
SavedModel keeps ``T`` as ``calibration_temperature`` (1.0 when not calibrated).

Portability: the serving functions are traced with every recurrent layer on its generic
(non-cuDNN) kernel (:func:`portable_recurrent_layers`), so the exported graph never holds a
``Cudnn*`` op, whatever device the model was trained on. Keras 3 otherwise picks ``CudnnRNNV3``
whenever a GPU is visible at trace time, which a CPU TF Serving cannot load. Same weights, same
math: only the kernel differs.

Warm-up: every export carries ``assets.extra/tf_serving_warmup_requests`` (TFRecord of
``tensorflow.serving.PredictionLog``): one ``predict_waveform`` and one ``serving_default``
request on a synthetic 2 s utterance (:func:`warmup_requests`), which TF Serving (and
``cme-ser serve``) replays when it loads the version, so the first real request is not the slow
one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import keras
import numpy as np
import tensorflow as tf

from preprocessing import features, records
from preprocessing.embeddings import DEFAULT_VOCAB_SIZE, WordVectors
from trainer.layers import PriorCorrection, TemperatureScaling
from trainer.model import EXCITATION_LAYER, ensemble_members, like_inputs
from trainer.signature_names import PREDICT_WAVEFORM, PREDICT_WAVEFORM_BYTES, SERVING_DEFAULT

VOCAB_ASSET = "vocab.txt"
EXTRA_ASSETS = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"  # TF Serving's name, under assets.extra/
WARMUP_WORDS = ("kids", "are", "talking", "by", "the", "door")
WARMUP_SECONDS = 2.0

PathLike = Union[str, os.PathLike]


def excitation_model(model: keras.Model) -> keras.Model:
    """The same weights with the excitation gates as extra outputs.

    Returns a model mapping the CME inputs to ``[probabilities [B, K], E^a [B, M, Da],
    E^s [B, M, Ds]]``. Needs the layer named ``EXCITATION_LAYER`` built with
    ``return_gates=True`` (``trainer.model.build_model`` always does). For a seed ensemble
    (``trainer.model.average_models``) of CME models, the gates are the mean of the members'.
    """
    members = ensemble_members(model)
    if members and not any(layer.name == EXCITATION_LAYER for layer in model.layers):
        gated = [excitation_model(member) for member in members]
        inputs = like_inputs(model)
        outputs = [g(inputs) for g in gated]
        averaged = [
            keras.layers.Average(name=f"mean_{what}")([o[i] for o in outputs])
            for i, what in enumerate(("probabilities", "acoustic_gate", "semantic_gate"))
        ]
        return keras.Model(inputs, averaged, name=f"{model.name}_with_gates")
    try:
        layer = model.get_layer(EXCITATION_LAYER)
    except ValueError:
        raise ValueError(
            f"model {model.name!r} has no layer named {EXCITATION_LAYER!r}: not a "
            f"CME model from trainer.model.build_model"
        ) from None
    outputs = layer.output
    if not isinstance(outputs, (list, tuple)) or len(outputs) != 4:
        raise ValueError(
            f"layer {EXCITATION_LAYER!r} must be built with return_gates=True "
            f"(it has {len(outputs) if isinstance(outputs, (list, tuple)) else 1} "
            f"outputs, need 4)"
        )
    return keras.Model(
        model.input, [model.output, outputs[2], outputs[3]], name=f"{model.name}_with_gates"
    )


def has_excitation(model: keras.Model) -> bool:
    """Whether ``model`` has the cross modality excitation layer (``EXCITATION_LAYER``), or is
    a seed ensemble of models that all have it: those ``predict_waveform`` returns the gates
    of; the baselines of Table 1 do not."""
    if any(layer.name == EXCITATION_LAYER for layer in model.layers):
        return True
    members = ensemble_members(model)
    return bool(members) and all(has_excitation(member) for member in members)


def serving_vocabulary(vectors: WordVectors, vocab_size: int) -> Tuple[List[str], np.ndarray]:
    """The first ``vocab_size`` rows, lowercased and de-duplicated like ``WordVectors.lookup``
    (the first, most frequent, row of a lowercased word wins).

    Returns ``(words [V], matrix [V + 1, d])``: row ``V`` is the zero vector of unknown words.
    """
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    top = vectors.top(min(vocab_size, len(vectors)))
    seen: Dict[str, int] = {}
    for row, word in enumerate(top.words):
        seen.setdefault(word.lower(), row)
    words = list(seen)
    bad = [w for w in words if "\n" in w or "\r" in w or not w]
    if bad:
        raise ValueError(f"vocabulary words cannot be stored one per line: {bad[:3]!r}")
    rows = np.fromiter(seen.values(), dtype=np.int64, count=len(seen))
    matrix = np.concatenate([top.matrix[rows], np.zeros((1, top.dim), np.float32)])
    return words, matrix


def _class_outputs(probabilities: tf.Tensor, class_names: tf.Tensor) -> Dict[str, tf.Tensor]:
    class_ids = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
    batch = tf.shape(probabilities)[0]
    return {
        "probabilities": probabilities,
        "class_ids": class_ids,
        "classes": tf.gather(class_names, class_ids),
        "class_names": tf.tile(class_names[None, :], [batch, 1]),
    }


def seconds_to_spans(
    word_start_s: tf.Tensor, word_end_s: tf.Tensor, num_frames: tf.Tensor
) -> tf.Tensor:
    """int32 ``[B, M, 2]`` frame spans ``[start, end)`` from times in seconds ``[B, M]``.

    ``start = floor(s * 100 + 0.5)``, ``end = max(floor(e * 100 + 0.5), start + 1)`` (at least one
    frame per word, as ``preprocessing.alignment`` reads TextGrids), then both clipped to
    ``[0, num_frames[b]]``.
    """
    rate = float(features.FRAMES_PER_SECOND)
    start = tf.cast(tf.floor(word_start_s * rate + 0.5), tf.int32)
    end = tf.maximum(tf.cast(tf.floor(word_end_s * rate + 0.5), tf.int32), start + 1)
    limit = tf.cast(num_frames, tf.int32)[:, None]
    start = tf.clip_by_value(start, 0, limit)
    end = tf.clip_by_value(end, 0, limit)
    return tf.stack([start, end], axis=-1)


# Assert prints at most this many elements of each data tensor (the offending values).
_SUMMARIZE = 12
_BYTES_PER_SAMPLE = 4  # float32


def check_waveform_inputs(
    num_samples, words, word_start_s, word_end_s, *, waveform=None, waveform_bytes=None
):
    """The in-graph checks of the ``predict_waveform`` inputs (``waveform``) or the
    ``predict_waveform_bytes`` inputs (``waveform_bytes``, decoded here once its rows passed).
    They are part of the exported graph, so stock TF Serving and ``cme-ser serve`` answer a bad
    request alike: INVALID_ARGUMENT (HTTP 400) ``assertion failed: [<rule>] [<offending
    values>]``, where the graph would otherwise silently clip, or fail deep inside an op.

    Rules, per row ``b`` of a batch of ``B`` rows and ``M`` word slots, in this order:

    * at least one row (``B > 0``);
    * shapes: ``num_samples [B]`` (one per ``waveform`` / ``waveform_bytes`` row), ``words``,
      ``word_start_s``, ``word_end_s`` all ``[B, M]``;
    * ``waveform_bytes``: every row a whole number, not zero, of 4-byte little-endian float32
      samples;
    * ``400 <= num_samples[b] <=`` the samples row b has (at least one 25 ms frame at 16 kHz);
    * every sample finite (NaN in the padding would leak into the convolutions);
    * the words are a non-empty prefix of the row, padded with "" only at the end;
    * every time finite; for each real word ``0 <= start <= end`` and ``start`` inside the audio
      (``start <= num_samples / 16000``).

    Each check runs after the one before it (control dependencies), so a check never sees inputs
    an earlier one refused (no elementwise op on shapes that differ), and a request that breaks
    two rules always gets the same message. Vectorised core ops only (``Assert``, ``Where``,
    ...): no Python per row, nothing TF Serving lacks.

    Returns ``(waveform [B, S] float32, num_samples, words, word_start_s, word_end_s)``, each
    behind a control dependency on every check, so that nothing computed from them (and no
    output) can run or be pruned without the checks.
    """
    source = "waveform" if waveform_bytes is None else "waveform_bytes"
    samples = waveform if waveform_bytes is None else waveform_bytes
    last = []  # the check made last: the next one is built under its control dependency

    def require(rule: str, make) -> None:
        """``make()`` -> ``(condition, data)``, built after the previous check."""
        with tf.control_dependencies(last):
            condition, data = make()
            last[:] = [tf.debugging.Assert(condition, [rule, *data], summarize=_SUMMARIZE)]

    def where(mask):  # int32 (Assert data of int32 / string needs no tf.cond around it)
        return tf.cast(tf.where(mask), tf.int32)

    def values(tensor, mask):
        return tf.strings.as_string(tf.boolean_mask(tensor, mask), shortest=True)

    batch = tf.shape(samples)[0]
    require(
        f"a request needs at least one {source} row (the batch is empty)",
        lambda: (batch > 0, [f"{source} shape:", tf.shape(samples)]),
    )
    require(
        f"num_samples must be [batch]: one length per {source} row",
        lambda: (
            tf.equal(tf.size(num_samples), batch),
            ["num_samples shape:", tf.shape(num_samples), f"{source} rows:", batch],
        ),
    )
    require(
        f"words must be [batch, words]: one row of words per {source} row",
        lambda: (
            tf.equal(tf.shape(words)[0], batch),
            ["words shape:", tf.shape(words), f"{source} rows:", batch],
        ),
    )
    for name, times in (("word_start_s", word_start_s), ("word_end_s", word_end_s)):
        require(
            f"{name} must have the shape of words: one time per word slot (pad words with "
            f"empty strings and times with 0)",
            lambda times=times, name=name: (
                tf.reduce_all(tf.equal(tf.shape(times), tf.shape(words))),
                [f"{name} shape:", tf.shape(times), "words shape:", tf.shape(words)],
            ),
        )

    if waveform_bytes is not None:
        lengths = tf.strings.length(waveform_bytes)  # bytes
        require(
            f"waveform_bytes rows must be a whole number of float32 samples "
            f"({_BYTES_PER_SAMPLE} bytes each, little-endian)",
            lambda: (
                tf.reduce_all(tf.equal(lengths % _BYTES_PER_SAMPLE, 0)),
                ["bytes per row:", lengths],
            ),
        )
        require(
            "waveform_bytes rows must not be empty (0 samples)",
            lambda: (tf.reduce_all(lengths > 0), ["bytes per row:", lengths]),
        )
        with tf.control_dependencies(last):
            # decode_raw with fixed_length zero pads every row to the longest: [B, longest / 4].
            longest = tf.reduce_max(lengths)
            waveform = tf.io.decode_raw(
                waveform_bytes, tf.float32, little_endian=True, fixed_length=longest
            )
            row_samples = lengths // _BYTES_PER_SAMPLE
    else:
        row_samples = tf.fill([batch], tf.shape(waveform)[1])

    frame_ms = 1000 * features.FRAME_LENGTH // features.SAMPLE_RATE
    khz = features.SAMPLE_RATE // 1000
    require(
        f"num_samples must be at least {features.FRAME_LENGTH} (one {frame_ms} ms frame at "
        f"{khz} kHz)",
        lambda: (
            tf.reduce_all(num_samples >= features.FRAME_LENGTH),
            ["num_samples:", num_samples],
        ),
    )
    require(
        f"num_samples must be at most the samples in its {source} row",
        lambda: (
            tf.reduce_all(num_samples <= row_samples),
            ["num_samples:", num_samples, "samples per row:", row_samples],
        ),
    )

    def finite_samples():
        bad = tf.logical_not(tf.math.is_finite(waveform))
        return tf.logical_not(tf.reduce_any(bad)), ["[row, sample] not finite:", where(bad)]

    require(f"{source} samples must be finite ({khz} kHz, in [-1, 1])", finite_samples)

    present = tf.not_equal(words, "")  # [B, M]
    has_words = tf.reduce_any(present, axis=1)
    require(
        "every row needs at least one word (words[b][0] must not be empty)",
        lambda: (
            tf.reduce_all(has_words),
            ["rows without words:", where(tf.logical_not(has_words))],
        ),
    )
    gaps = tf.logical_and(tf.logical_not(present[:, :-1]), present[:, 1:])  # "" then a word
    require(
        "words must be padded with empty strings only after the last word",
        lambda: (
            tf.logical_not(tf.reduce_any(gaps)),
            ["[row, slot] of an empty word before a word:", where(gaps)],
        ),
    )

    def finite_times():
        bad = tf.logical_not(
            tf.logical_and(tf.math.is_finite(word_start_s), tf.math.is_finite(word_end_s))
        )
        return tf.logical_not(tf.reduce_any(bad)), ["[row, slot] not finite:", where(bad)]

    require("word_start_s and word_end_s must be finite (seconds)", finite_times)

    def bad_words(bad, *shown):
        bad = tf.logical_and(present, bad)
        data = ["[row, slot]:", where(bad)]
        for name, tensor in shown:
            data += [f"{name}:", values(tensor, bad)]
        return tf.logical_not(tf.reduce_any(bad)), data

    require(
        "word_start_s must be >= 0 (seconds from the start of the audio)",
        lambda: bad_words(word_start_s < 0.0, ("word_start_s", word_start_s)),
    )
    require(
        "word_end_s must be >= word_start_s (a word cannot end before it starts)",
        lambda: bad_words(
            word_end_s < word_start_s, ("word_start_s", word_start_s), ("word_end_s", word_end_s)
        ),
    )
    seconds = tf.cast(num_samples, tf.float32) / float(features.SAMPLE_RATE)
    require(
        f"word_start_s must be at most num_samples / {features.SAMPLE_RATE} (a word must "
        f"start inside the audio)",
        lambda: bad_words(
            word_start_s > seconds[:, None],
            ("word_start_s", word_start_s),
            ("audio seconds", tf.broadcast_to(seconds[:, None], tf.shape(word_start_s))),
        ),
    )
    with tf.control_dependencies(last):
        return tuple(
            tf.identity(t) for t in (waveform, num_samples, words, word_start_s, word_end_s)
        )


class _Exporter:
    """Builds the serving functions around one model; holds what they capture."""

    def __init__(
        self,
        model: keras.Model,
        class_names: Sequence[str],
        words: List[str],
        matrix: np.ndarray,
        vocab_file: str,
        prior_class_counts: Optional[Sequence[float]] = None,
        temperature: Optional[float] = None,
    ):
        # A CME model is served with its excitation gates as extra outputs; a baseline as is.
        self.with_gates = has_excitation(model)
        self.gates_model = excitation_model(model) if self.with_gates else model
        # After the ensemble mean (the gates model's probabilities), before the argmax.
        self.prior = (
            None
            if prior_class_counts is None
            else PriorCorrection(prior_class_counts, name="prior_correction")
        )
        # Last: calibration rescales the answer the argmax takes (and leaves that argmax).
        self.temperature = (
            None
            if temperature is None
            else TemperatureScaling(temperature, name="temperature_scaling")
        )
        self.word_dim = int(matrix.shape[1])
        self.class_names = tf.constant(list(class_names), tf.string)
        oov_row = len(words)
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                vocab_file,
                key_dtype=tf.string,
                key_index=tf.lookup.TextFileIndex.WHOLE_LINE,
                value_dtype=tf.int64,
                value_index=tf.lookup.TextFileIndex.LINE_NUMBER,
            ),
            default_value=oov_row,
        )
        self.word_vectors = tf.Variable(matrix, trainable=False, name="word_vectors")

    def _predict(self, inputs):
        """``(probabilities [B, K], (E^a, E^s) or None)`` for the model's inputs; the
        probabilities prior-corrected when the export has class counts."""
        gates = None
        if self.with_gates:
            probabilities, gate_a, gate_s = self.gates_model(inputs, training=False)
            gates = (gate_a, gate_s)
        else:
            probabilities = self.gates_model(inputs, training=False)
        if self.prior is not None:
            probabilities = self.prior(probabilities)
        if self.temperature is not None:
            probabilities = self.temperature(probabilities)
        return probabilities, gates

    def serve_examples(self, examples):
        """``examples`` string [B] -> class outputs."""
        parsed = records.parse_examples(examples, self.word_dim)
        inputs = records.to_model_inputs(parsed)
        probabilities, _ = self._predict(inputs)
        return _class_outputs(probabilities, self.class_names)

    def serve_waveform(self, waveform, num_samples, words, word_start_s, word_end_s):
        """Raw audio + timed words -> class outputs + per-word excitation (shapes above)."""
        return self._serve_checked(
            *check_waveform_inputs(num_samples, words, word_start_s, word_end_s, waveform=waveform)
        )

    def serve_waveform_bytes(self, waveform_bytes, num_samples, words, word_start_s, word_end_s):
        """``predict_waveform`` with float32 little-endian sample bytes ``[B]`` per row."""
        return self._serve_checked(
            *check_waveform_inputs(
                num_samples, words, word_start_s, word_end_s, waveform_bytes=waveform_bytes
            )
        )

    def _serve_checked(self, waveform, num_samples, words, word_start_s, word_end_s):
        """``predict_waveform`` on inputs that passed :func:`check_waveform_inputs`."""
        fbank = features.log_mel_filterbank(waveform)  # [B, F, 40], F from the padded length
        num_frames = tf.minimum(features.num_frames_for(num_samples), tf.shape(fbank)[1])
        lowered = tf.strings.lower(words, encoding="utf-8")
        present = tf.not_equal(words, "")  # [B, M]
        rows = self.table.lookup(lowered)
        embeddings = tf.gather(self.word_vectors, rows)  # unknown and "" -> the zero row
        inputs = {
            "fbank": fbank,
            "num_frames": num_frames,
            "word_embeddings": embeddings,
            "num_words": tf.reduce_sum(tf.cast(present, tf.int32), axis=1),
            "word_spans": seconds_to_spans(word_start_s, word_end_s, num_frames),
        }
        probabilities, gates = self._predict(inputs)
        outputs = _class_outputs(probabilities, self.class_names)
        if gates is not None:
            gate_a, gate_s = gates
            mask = tf.cast(present, tf.float32)
            outputs["acoustic_excitation"] = tf.reduce_mean(gate_a, axis=-1) * mask
            outputs["semantic_excitation"] = tf.reduce_mean(gate_s, axis=-1) * mask
        return outputs


@contextlib.contextmanager
def portable_recurrent_layers(model: keras.Model):
    """Within the block, every recurrent layer of ``model`` (nested models and the two halves
    of each ``Bidirectional`` included) that could pick the cuDNN kernel (``use_cudnn`` "auto"
    or True) uses the generic one. Keras decides at trace time (``CudnnRNNV3`` when a GPU is
    visible), so functions traced inside the block contain no ``Cudnn*`` op on any machine.
    The layers are restored on exit. Yields the layers changed."""
    changed = [
        (layer, layer.use_cudnn)
        for layer in model._flatten_layers(include_self=True, recursive=True)
        if getattr(layer, "use_cudnn", False) in ("auto", True)
    ]
    for layer, _ in changed:
        layer.use_cudnn = False
    try:
        yield [layer for layer, _ in changed]
    finally:
        for layer, previous in changed:
            layer.use_cudnn = previous


def synthetic_utterance(seconds: float = WARMUP_SECONDS, seed: int = 0) -> np.ndarray:
    """A speech-like float32 waveform at 16 kHz: a 140 Hz voice with harmonics, syllable-rate
    amplitude modulation and a little noise, peak about 0.3. No data needed."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * features.SAMPLE_RATE)) / features.SAMPLE_RATE
    f0 = 140.0 * (1.0 + 0.05 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(f0) / features.SAMPLE_RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 * (1.0 - np.cos(2 * np.pi * 4.0 * t)) * np.hanning(len(t))
    wave = 0.12 * voice * envelope + 0.005 * rng.standard_normal(len(t))
    return wave.astype(np.float32)


def warmup_requests(words: List[str], matrix: np.ndarray) -> List[bytes]:
    """Serialized ``tensorflow.serving.PredictionLog`` protos, one ``predict_waveform`` and one
    ``serving_default`` request, for the synthetic utterance of :func:`synthetic_utterance` with
    the words of ``WARMUP_WORDS`` spread evenly over it. ``words``/``matrix``: the served
    vocabulary (:func:`serving_vocabulary`), for the record's word vectors."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    waveform = synthetic_utterance()
    seconds = len(waveform) / features.SAMPLE_RATE
    count = len(WARMUP_WORDS)
    edges = np.linspace(0.1 * seconds, 0.9 * seconds, count + 1)
    starts, ends = edges[:-1].astype(np.float32), edges[1:].astype(np.float32)

    def log(signature: str, inputs: Dict[str, np.ndarray]) -> bytes:
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(signature_name=signature)
        )
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        return prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)
        ).SerializeToString()

    by_waveform = log(
        PREDICT_WAVEFORM,
        {
            "waveform": waveform[None, :],
            "num_samples": np.array([len(waveform)], np.int32),
            "words": np.array([[w.encode("utf-8") for w in WARMUP_WORDS]], dtype=object),
            "word_start_s": starts[None, :],
            "word_end_s": ends[None, :],
        },
    )

    num_frames = features.num_frames_for(len(waveform))
    fbank = features.log_mel_filterbank(tf.constant(waveform)).numpy()[:num_frames]
    index = {w: i for i, w in enumerate(words)}
    vectors = matrix[[index.get(w, len(words)) for w in WARMUP_WORDS]]
    frame_start = [int(np.floor(s * features.FRAMES_PER_SECOND + 0.5)) for s in starts]
    frame_end = [
        max(int(np.floor(e * features.FRAMES_PER_SECOND + 0.5)), s + 1)
        for s, e in zip(frame_start, ends)
    ]
    example = records.make_example(
        utterance_id="warmup",
        speaker="warmup",
        label=records.NO_LABEL,
        label_name="",
        fold=0,
        fbank=fbank,
        words=list(WARMUP_WORDS),
        word_embeddings=vectors,
        word_start=frame_start,
        word_end=frame_end,
        transcript=" ".join(WARMUP_WORDS),
        alignment_source="given",
    )
    by_example = log(
        SERVING_DEFAULT, {"examples": np.array([example.SerializeToString()], dtype=object)}
    )
    return [by_waveform, by_example]


def write_warmup_requests(export_dir: PathLike, requests: Sequence[bytes]) -> str:
    """Writes ``requests`` as ``<export_dir>/assets.extra/tf_serving_warmup_requests`` (a
    TFRecord file, as TF Serving reads it; any TensorFlow filesystem). Returns its path."""
    directory = tf.io.gfile.join(os.fspath(export_dir), EXTRA_ASSETS)
    tf.io.gfile.makedirs(directory)
    path = tf.io.gfile.join(directory, WARMUP_FILE)
    with tf.io.TFRecordWriter(path) as writer:
        for request in requests:
            writer.write(request)
    return path


def read_warmup_requests(export_dir: PathLike) -> list:
    """The ``PredictionLog`` protos of an export's warm-up file (empty without one)."""
    from tensorflow_serving.apis import prediction_log_pb2

    path = tf.io.gfile.join(os.fspath(export_dir), EXTRA_ASSETS, WARMUP_FILE)
    if not tf.io.gfile.exists(path):
        return []
    return [
        prediction_log_pb2.PredictionLog.FromString(record.numpy())
        for record in tf.data.TFRecordDataset([path])
    ]


def _build_module(
    model: keras.Model,
    class_names: Sequence[str],
    words: List[str],
    matrix: np.ndarray,
    vocab_file: str,
    prior_class_counts: Optional[Sequence[float]] = None,
    temperature: Optional[float] = None,
) -> Tuple[tf.Module, dict]:
    """The module to save and its signatures (name -> concrete function)."""
    exporter = _Exporter(
        model, class_names, words, matrix, vocab_file, prior_class_counts, temperature
    )
    timed_words = [
        tf.TensorSpec([None], tf.int32, name="num_samples"),
        tf.TensorSpec([None, None], tf.string, name="words"),
        tf.TensorSpec([None, None], tf.float32, name="word_start_s"),
        tf.TensorSpec([None, None], tf.float32, name="word_end_s"),
    ]
    serve_examples = tf.function(
        exporter.serve_examples, input_signature=[tf.TensorSpec([None], tf.string, name="examples")]
    )
    serve_waveform = tf.function(
        exporter.serve_waveform,
        input_signature=[tf.TensorSpec([None, None], tf.float32, name="waveform")] + timed_words,
    )
    serve_bytes = tf.function(
        exporter.serve_waveform_bytes,
        input_signature=[tf.TensorSpec([None], tf.string, name="waveform_bytes")] + timed_words,
    )
    signatures = {
        SERVING_DEFAULT: serve_examples.get_concrete_function(),
        PREDICT_WAVEFORM: serve_waveform.get_concrete_function(),
        PREDICT_WAVEFORM_BYTES: serve_bytes.get_concrete_function(),
    }
    # The module holds the model's variables, the vocabulary table and the vectors; the Keras
    # objects themselves are not saved, so loading needs no Keras or custom classes (the same
    # approach as keras.export.ExportArchive). The variables are the tf.Variables the functions
    # capture, not the Keras variables wrapping them: saving those writes checkpoint variables
    # of their own, which a TF1-style loader (TF Serving's Session) restores while the
    # functions read the captured ones, never restored ("Could not find variable ...").
    module = tf.Module()
    module.model_variables = _captured_variables(signatures.values())
    module.vocabulary = exporter.table
    module.word_vectors = exporter.word_vectors
    # The served probabilities' temperature (1: none), readable by a loader: `evaluate` turns
    # the answers back into the uncalibrated ones with it to report both.
    module.calibration_temperature = tf.Variable(
        1.0 if temperature is None else float(temperature),
        trainable=False,
        dtype=tf.float64,
        name="calibration_temperature",
    )
    # The serving functions reach the SavedModel as its signatures only: held as attributes
    # too, the save would list and serialise them a second time (half of a small export's time)
    # for nothing a loader uses.
    return module, signatures


def _captured_variables(functions) -> list:
    """The variables the concrete ``functions`` read, each once, in order of first use."""
    seen = {}
    for function in functions:
        for variable in function.variables:
            seen.setdefault(id(variable), variable)
    return list(seen.values())


def export_saved_model(
    model: keras.Model,
    export_dir: PathLike,
    *,
    class_names: Sequence[str],
    vectors: WordVectors,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    prior_class_counts: Optional[Sequence[float]] = None,
    temperature: Optional[float] = None,
    overwrite: bool = False,
) -> dict:
    """Write ``model`` as a SavedModel with the ``serving_default``, ``predict_waveform`` and
    ``predict_waveform_bytes`` signatures (see the module docstring) into ``export_dir``.

    ``prior_class_counts`` (one count > 0 per class, those of the data the model was trained
    on): the signatures serve the prior-corrected probabilities (``PriorCorrection``) and their
    argmax. None (the default): the model's probabilities as they are. ``temperature``: the
    signatures serve the (prior-corrected) probabilities temperature-scaled
    (``TemperatureScaling``), the calibration fitted on held-out speakers; None: unscaled.

    The serving functions are traced under :func:`portable_recurrent_layers` (no ``Cudnn*``
    op in the graph) and ``assets.extra/tf_serving_warmup_requests`` is written into the export
    (:func:`warmup_requests`).

    ``export_dir`` is one version directory (e.g. ``serving_model/cme/3``), local or any
    filesystem TensorFlow writes (``gs://...`` from a TFX Trainer on Vertex / Kubeflow). A local
    one is written into a temporary dot-named sibling and renamed into place, so a server
    polling the parent never sees half a model. An existing ``export_dir`` is an error unless
    ``overwrite``.

    Returns ``{"path", "size_bytes", "vocab_size", "word_dim", "class_names", "signatures",
    "prior_class_counts", "temperature"}``.
    """
    class_names = [str(c) for c in class_names]
    num_classes = int(model.output.shape[-1])
    if len(class_names) != num_classes:
        raise ValueError(
            f"{len(class_names)} class names {class_names} for a model with {num_classes} outputs"
        )
    if prior_class_counts is not None:
        prior_class_counts = PriorCorrection(prior_class_counts).class_counts  # validated
        if len(prior_class_counts) != num_classes:
            raise ValueError(
                f"{len(prior_class_counts)} prior class counts "
                f"{prior_class_counts} for a model with {num_classes} outputs"
            )
    if temperature is not None:
        temperature = TemperatureScaling(temperature).temperature  # validated
    word_dim = int(model.input["word_embeddings"].shape[-1])
    if vectors.dim != word_dim:
        raise ValueError(f"word vectors are {vectors.dim}-d but the model takes {word_dim}-d")
    remote = "://" in os.fspath(export_dir)  # pathlib would turn gs://b into gs:/b
    target = os.fspath(export_dir) if remote else Path(export_dir)
    if tf.io.gfile.exists(str(target)) and not overwrite:
        raise FileExistsError(f"{target} exists (pass overwrite=True to replace it)")
    words, matrix = serving_vocabulary(vectors, vocab_size)

    if remote:
        staging = Path(tempfile.mkdtemp(prefix="cme-ser-export-"))
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        # A dot-name is not a number: neither this server nor TF Serving takes it for a version.
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        vocab_file = staging / VOCAB_ASSET  # copied into <export>/assets/ by the save
        vocab_file.write_text("\n".join(words) + "\n", encoding="utf-8")
        requests = warmup_requests(words, matrix)
        with portable_recurrent_layers(model):
            module, signatures = _build_module(
                model, class_names, words, matrix, str(vocab_file), prior_class_counts, temperature
            )
            saved = target if remote else staging / "saved_model"
            if remote and tf.io.gfile.exists(target):
                tf.io.gfile.rmtree(target)
            tf.saved_model.save(module, str(saved), signatures=signatures)
        write_warmup_requests(saved, requests)
        if not remote:
            if target.exists():
                shutil.rmtree(target)
            os.replace(saved, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {
        "path": str(target),
        "size_bytes": directory_size(target),
        "vocab_size": len(words),
        "word_dim": word_dim,
        "class_names": class_names,
        "signatures": list(signatures),
        "prior_class_counts": prior_class_counts,
        "temperature": temperature,
    }


def directory_size(path: PathLike) -> int:
    """Bytes in all files under ``path`` (any filesystem TensorFlow reads)."""
    total = 0
    for directory, _, files in tf.io.gfile.walk(str(path)):
        for name in files:
            try:
                total += tf.io.gfile.stat(tf.io.gfile.join(directory, name)).length
            except tf.errors.NotFoundError:
                # TF's ram:// filesystem lists by bare prefix: "assets" also "contains"
                # ".extra/..." of the sibling assets.extra/. Not a file: skip it.
                continue
    return total
