"""The record schema: one ``tf.train.Example`` per utterance, written by preprocessing and read
by the trainer, the evaluator and the serving signature. This module is its only definition.

Features (ragged ones are stored flattened next to their length):

==================  =========  ===============================================================
key                 type       meaning
==================  =========  ===============================================================
utterance_id        bytes      corpus-unique id
speaker             bytes      speaker id (folds never split a speaker)
label               int64      class index into the run's class list (optional at serving)
label_name          bytes      class name
fold                int64      cross-validation fold of the speaker
fbank               float[]    ``num_frames x 40`` log-mel filterbank, row-major
num_frames          int64      frames at 100 per second
words               bytes[]    the aligned words, in order
word_embeddings     float[]    ``num_words x d`` pretrained word vectors, row-major
num_words           int64      number of words
word_start          int64[]    first frame of each word
word_end            int64[]    one past the last frame of each word (end exclusive)
transcript          bytes      the transcript the words came from
alignment_source    bytes      given | forced | asr | fallback
channel             bytes      optional: "speech" | "song" for RAVDESS; absent (parsed as "")
                               in records of corpora without channels and in older records;
                               an augmented copy's is its source's + "_aug" (preprocessing.augment)
augmentation        bytes      optional: an augmented copy's conditions, a JSON list of
                               ``[name, parameters]``; absent in real recordings
==================  =========  ===============================================================
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from preprocessing.alignment import SOURCES as ALIGNMENT_SOURCES
from preprocessing.features import NUM_MEL_BINS

NO_LABEL = -1


def make_example(
    *,
    utterance_id: str,
    speaker: str,
    label: int,
    label_name: str,
    fold: int,
    fbank: np.ndarray,
    words: Sequence[str],
    word_embeddings: np.ndarray,
    word_start: Sequence[int],
    word_end: Sequence[int],
    transcript: str,
    alignment_source: str,
    channel: Optional[str] = None,
    augmentation: Optional[str] = None,
) -> tf.train.Example:
    """Builds one record, checking the shapes agree with each other. ``channel`` None writes
    no ``channel`` feature, ``augmentation`` None no ``augmentation`` feature."""
    fbank = np.asarray(fbank, dtype=np.float32)
    word_embeddings = np.asarray(word_embeddings, dtype=np.float32)
    num_words = len(words)
    if fbank.ndim != 2 or fbank.shape[1] != NUM_MEL_BINS:
        raise ValueError(f"fbank must be [frames, {NUM_MEL_BINS}], got {fbank.shape}")
    if word_embeddings.ndim != 2 or word_embeddings.shape[0] != num_words:
        raise ValueError(f"word_embeddings must be [{num_words}, d], got {word_embeddings.shape}")
    if len(word_start) != num_words or len(word_end) != num_words:
        raise ValueError("word_start / word_end must have one entry per word")
    if alignment_source not in ALIGNMENT_SOURCES:
        raise ValueError(f"alignment_source must be one of {ALIGNMENT_SOURCES}")

    def b(values):
        return tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[v.encode("utf-8") for v in values])
        )

    def i(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))

    def f(values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))

    feature = {
        "utterance_id": b([utterance_id]),
        "speaker": b([speaker]),
        "label": i([label]),
        "label_name": b([label_name]),
        "fold": i([fold]),
        "fbank": f(fbank.reshape(-1)),
        "num_frames": i([fbank.shape[0]]),
        "words": b(words),
        "word_embeddings": f(word_embeddings.reshape(-1)),
        "num_words": i([num_words]),
        "word_start": i(word_start),
        "word_end": i(word_end),
        "transcript": b([transcript]),
        "alignment_source": b([alignment_source]),
    }
    if channel is not None:
        feature["channel"] = b([channel])
    if augmentation is not None:
        feature["augmentation"] = b([augmentation])
    return tf.train.Example(features=tf.train.Features(feature=feature))


def feature_spec(word_dim: int) -> dict:
    """The parsing spec: ragged features come back as ``tf.RaggedTensor`` rows."""
    return {
        "utterance_id": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "speaker": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "label": tf.io.FixedLenFeature([], tf.int64, default_value=NO_LABEL),
        "label_name": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "fold": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
        "fbank": tf.io.RaggedFeature(
            tf.float32,
            value_key="fbank",
            partitions=[tf.io.RaggedFeature.UniformRowLength(NUM_MEL_BINS)],
        ),
        "num_frames": tf.io.FixedLenFeature([], tf.int64),
        "words": tf.io.RaggedFeature(tf.string, value_key="words"),
        "word_embeddings": tf.io.RaggedFeature(
            tf.float32,
            value_key="word_embeddings",
            partitions=[tf.io.RaggedFeature.UniformRowLength(word_dim)],
        ),
        "num_words": tf.io.FixedLenFeature([], tf.int64),
        "word_start": tf.io.RaggedFeature(tf.int64, value_key="word_start"),
        "word_end": tf.io.RaggedFeature(tf.int64, value_key="word_end"),
        "transcript": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "alignment_source": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "channel": tf.io.FixedLenFeature([], tf.string, default_value=""),
    }


def parse_examples(serialized: tf.Tensor, word_dim: int) -> dict:
    """Parses a batch of serialized records into the raw (ragged) features."""
    return tf.io.parse_example(serialized, feature_spec(word_dim))


def _dense(value):
    return value.to_tensor() if isinstance(value, tf.RaggedTensor) else value


def to_model_inputs(parsed: Mapping[str, tf.Tensor]) -> dict:
    """The model's named inputs (``trainer.model.INPUT_NAMES``) from parsed records: a batch
    from :func:`parse_examples` (ragged, padded here) or already padded dense rows."""
    spans = tf.stack([_dense(parsed["word_start"]), _dense(parsed["word_end"])], axis=-1)
    return {
        "fbank": _dense(parsed["fbank"]),
        "num_frames": tf.cast(parsed["num_frames"], tf.int32),
        "word_embeddings": _dense(parsed["word_embeddings"]),
        "num_words": tf.cast(parsed["num_words"], tf.int32),
        "word_spans": tf.cast(spans, tf.int32),
    }


def word_dim_of_files(files: Sequence[str]) -> int:
    """The word vectors' dimension in the (GZIP) record files ``files``, read from their first
    record as :func:`decode_example` infers it (every record of a data set has the same)."""
    files = list(files)
    if not files:
        raise ValueError("no record files to read the word dimension from")
    raw = next(iter(tf.data.TFRecordDataset(files[:1], compression_type="GZIP")))
    return int(decode_example(raw.numpy())["word_embeddings"].shape[1])


def decode_example(serialized: bytes, word_dim: Optional[int] = None) -> dict:
    """One record as NumPy values (for inspection and tests). ``word_dim`` is inferred."""
    example = tf.train.Example.FromString(serialized)
    feats = example.features.feature

    def ints(key):
        return list(feats[key].int64_list.value)

    def strs(key):
        return [v.decode("utf-8") for v in feats[key].bytes_list.value]

    num_words = ints("num_words")[0]
    embeddings = np.asarray(feats["word_embeddings"].float_list.value, dtype=np.float32)
    if word_dim is None:
        word_dim = embeddings.size // num_words if num_words else 0
    return {
        "utterance_id": strs("utterance_id")[0],
        "speaker": strs("speaker")[0],
        "label": ints("label")[0],
        "label_name": strs("label_name")[0],
        "fold": ints("fold")[0],
        "fbank": np.asarray(feats["fbank"].float_list.value, np.float32).reshape(-1, NUM_MEL_BINS),
        "num_frames": ints("num_frames")[0],
        "words": strs("words"),
        "word_embeddings": embeddings.reshape(num_words, word_dim),
        "num_words": num_words,
        "word_start": ints("word_start"),
        "word_end": ints("word_end"),
        "transcript": strs("transcript")[0],
        "alignment_source": strs("alignment_source")[0],
        "channel": strs("channel")[0] if "channel" in feats else "",
        "augmentation": strs("augmentation")[0] if "augmentation" in feats else "",
    }
