"""tf.data input pipeline: gzipped records -> padded batches of model inputs, bucketed by length."""

from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf

from preprocessing.records import feature_spec, to_model_inputs

# Utterances of similar length share a batch, so little compute goes into padding.
BUCKET_BOUNDARIES = (200, 300, 400, 500, 700, 1000, 1500, 2000)


def make_dataset(files: Sequence[str], word_dim: int, batch_size: int, *, shuffle: bool = False,
                 seed: int = 0, speakers: Optional[Sequence[str]] = None,
                 exclude_speakers: bool = False, with_ids: bool = False) -> tf.data.Dataset:
    """Batches of ``(inputs, label)``, or ``(inputs, label, utterance_id)`` with ``with_ids``.

    ``speakers`` keeps only those speakers' records (or drops them, ``exclude_speakers``): how
    the inner validation split is carved out of the training folds.
    """
    if not files:
        raise ValueError("no record files given")
    spec = feature_spec(word_dim)

    def parse(raw):
        parsed = tf.io.parse_single_example(raw, spec)
        return {k: (v.to_tensor() if isinstance(v, tf.RaggedTensor) else v)
                for k, v in parsed.items()}

    ds = tf.data.TFRecordDataset(list(files), compression_type="GZIP").map(
        parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if speakers is not None:
        chosen = tf.constant(list(speakers) or [""], tf.string)

        def keep(parsed):
            hit = tf.reduce_any(tf.equal(parsed["speaker"], chosen))
            return tf.logical_not(hit) if exclude_speakers else hit

        ds = ds.filter(keep)
    if shuffle:
        ds = ds.shuffle(4096, seed=seed, reshuffle_each_iteration=True)
    ds = ds.bucket_by_sequence_length(
        lambda parsed: tf.cast(parsed["num_frames"], tf.int32),
        bucket_boundaries=list(BUCKET_BOUNDARIES),
        bucket_batch_sizes=[batch_size] * (len(BUCKET_BOUNDARIES) + 1))

    def split(parsed):
        outputs = (to_model_inputs(parsed), tf.cast(parsed["label"], tf.int32))
        return outputs + (parsed["utterance_id"],) if with_ids else outputs

    return ds.map(split).prefetch(tf.data.AUTOTUNE)
