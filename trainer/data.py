"""tf.data input pipeline: gzipped records -> padded batches of model inputs, bucketed by length.

Records are read once and put in utterance-id order before anything random happens, so a
training run depends on its seed only, not on the order a (multi-process) Beam writer
happened to leave the records in.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from preprocessing.corpora import PRIMARY_CHANNEL
from preprocessing.records import NUM_MEL_BINS, feature_spec, to_model_inputs

# Utterances of similar length share a batch, so little compute goes into padding.
BUCKET_BOUNDARIES = (200, 300, 400, 500, 700, 1000, 1500, 2000)


def sorted_records(files: Sequence[str]) -> List[bytes]:
    """Every serialized record of ``files``, ordered by ``utterance_id``."""
    raws = [r.numpy() for r in tf.data.TFRecordDataset(list(files), compression_type="GZIP")]
    if not raws:
        return []
    ids = tf.io.parse_example(
        tf.constant(raws), {"utterance_id": tf.io.FixedLenFeature([], tf.string)}
    )["utterance_id"].numpy()
    return [raws[i] for i in np.argsort(ids, kind="stable")]


def _channel(record: bytes) -> str:
    """A serialized record's ``channel`` feature; a record without one (a corpus with one
    channel) is speech, ``PRIMARY_CHANNEL``."""
    feature = tf.train.Example.FromString(record).features.feature.get("channel")
    value = feature.bytes_list.value[0] if feature is not None and feature.bytes_list.value else b""
    return value.decode("utf-8") or PRIMARY_CHANNEL


def record_channels(files: Sequence[str]) -> Dict[str, str]:
    """utterance id -> channel (as ``make_dataset(channels=...)`` reads it) of every record in
    ``files``."""
    spec = {"utterance_id": tf.io.FixedLenFeature([], tf.string)}
    return {
        tf.io.parse_single_example(raw, spec)["utterance_id"].numpy().decode(): _channel(
            raw.numpy()
        )
        for raw in tf.data.TFRecordDataset(list(files), compression_type="GZIP")
    }


def speaker_statistics(records: Sequence[bytes]) -> dict:
    """Per speaker, the mean and standard deviation of every filterbank channel over all of the
    speaker's frames: ``{speaker: (mean [C], std [C])}``. Labels are not read."""
    parsed = tf.io.parse_example(
        tf.constant(list(records)),
        {
            "speaker": tf.io.FixedLenFeature([], tf.string),
            "fbank": tf.io.VarLenFeature(tf.float32),
            "num_frames": tf.io.FixedLenFeature([], tf.int64),
        },
    )
    values = tf.sparse.to_dense(parsed["fbank"]).numpy()
    frames = parsed["num_frames"].numpy()
    sums: dict = {}
    for speaker, row, n in zip(parsed["speaker"].numpy(), values, frames):
        if n == 0:
            continue
        fbank = row[: n * NUM_MEL_BINS].reshape(n, NUM_MEL_BINS)
        total = sums.setdefault(speaker.decode("utf-8"), [0, 0.0, 0.0])
        total[0] += n
        total[1] = total[1] + fbank.sum(axis=0, dtype=np.float64)
        total[2] = total[2] + np.square(fbank, dtype=np.float64).sum(axis=0)
    stats = {}
    for speaker, (n, s1, s2) in sums.items():
        mean = s1 / n
        std = np.sqrt(np.maximum(s2 / n - mean**2, 0.0))
        stats[speaker] = (mean.astype(np.float32), np.maximum(std, 1e-3).astype(np.float32))
    return stats


def stretch_time(parsed: dict, factor: tf.Tensor) -> dict:
    """Speed perturbation on features: the frames are resampled to ``round(T / factor)``
    (linear interpolation along time) and the word spans scaled with them, so a word keeps
    covering the same stretch of speech. ``factor > 1`` is faster speech (fewer frames)."""
    fbank = parsed["fbank"]
    frames = tf.shape(fbank)[0]
    new_frames = tf.maximum(tf.cast(tf.round(tf.cast(frames, tf.float32) / factor), tf.int32), 1)
    resized = tf.image.resize(
        fbank[None, :, :, None], tf.stack([new_frames, tf.shape(fbank)[1]]), method="bilinear"
    )[0, :, :, 0]

    def scale(position):
        scaled = tf.round(tf.cast(position, tf.float32) / factor)
        return tf.cast(
            tf.clip_by_value(scaled, 0.0, tf.cast(new_frames, tf.float32)), position.dtype
        )

    start, end = scale(parsed["word_start"]), scale(parsed["word_end"])
    # A word that had frames keeps at least one.
    had_frames = parsed["word_end"] > parsed["word_start"]
    start = tf.where(had_frames & (start >= end), tf.maximum(end - 1, 0), start)
    end = tf.where(had_frames & (start >= end), start + 1, end)
    return {
        **parsed,
        "fbank": resized,
        "word_start": start,
        "word_end": end,
        "num_frames": tf.cast(new_frames, parsed["num_frames"].dtype),
    }


def make_dataset(
    files: Sequence[str],
    word_dim: int,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    speakers: Optional[Sequence[str]] = None,
    exclude_speakers: bool = False,
    with_ids: bool = False,
    time_stretch: float = 0.0,
    speaker_norm: bool = False,
    channels: Optional[Sequence[str]] = None,
) -> tf.data.Dataset:
    """Batches of ``(inputs, label)``, or ``(inputs, label, utterance_id)`` with ``with_ids``.

    ``speakers`` keeps only those speakers' records (or drops them, ``exclude_speakers``): how
    the inner validation split is carved out of the training folds. ``time_stretch`` > 0
    perturbs each utterance's speed by a factor drawn from ``[1 - x, 1 + x]``, anew every epoch
    (training only). ``speaker_norm`` standardises each utterance's filterbank with its
    speaker's statistics over all of that speaker's records in ``files`` (no labels used).
    ``channels`` keeps only records of those channels (RAVDESS ``speech`` / ``song``; records
    without a channel feature are ``speech``): how a model is trained on some domains only.
    """
    if not files:
        raise ValueError("no record files given")
    spec = feature_spec(word_dim)

    def parse(raw):
        parsed = tf.io.parse_single_example(raw, spec)
        return {
            k: (v.to_tensor() if isinstance(v, tf.RaggedTensor) else v) for k, v in parsed.items()
        }

    records = sorted_records(files)
    held = set()
    if channels is not None:
        of = [_channel(r) for r in records]
        held = set(of)
        records = [r for r, channel in zip(records, of) if channel in set(channels)]
    if records and set(channels or ()) - held:
        # A speech + song model given speech-only records would train on speech alone and
        # say otherwise.
        raise ValueError(
            f"the model trains on channel(s) {', '.join(channels)}, but the records hold "
            f"{', '.join(sorted(held))}: preprocess with --channels {','.join(channels)}"
        )
    if not records:
        raise ValueError(
            f"no records in {list(files)[:3]}..."
            + (f" of channel(s) {list(channels)}" if channels is not None else "")
        )
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(records)).map(
        parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    if speaker_norm:
        stats = speaker_statistics(records)
        names = sorted(stats)
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(names), tf.range(len(names), dtype=tf.int64)
            ),
            default_value=-1,
        )
        means = tf.constant(np.stack([stats[n][0] for n in names]))
        stds = tf.constant(np.stack([stats[n][1] for n in names]))

        def standardise(parsed):
            row = table.lookup(parsed["speaker"])
            fbank = (parsed["fbank"] - means[row]) / stds[row]
            return {**parsed, "fbank": fbank}

        ds = ds.map(standardise, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if speakers is not None:
        chosen = tf.constant(list(speakers) or [""], tf.string)

        def keep(parsed):
            hit = tf.reduce_any(tf.equal(parsed["speaker"], chosen))
            return tf.logical_not(hit) if exclude_speakers else hit

        ds = ds.filter(keep)
    if shuffle:
        ds = ds.shuffle(len(records), seed=seed, reshuffle_each_iteration=True)
    if time_stretch > 0:
        # Stateless draws keyed by a seeded stream that changes every epoch: reproducible.
        randoms = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

        def perturb(parsed, key):
            u = tf.random.stateless_uniform([], seed=tf.stack([key, tf.constant(seed, tf.int64)]))
            return stretch_time(parsed, 1.0 + time_stretch * (2.0 * u - 1.0))

        ds = tf.data.Dataset.zip((ds, randoms)).map(
            perturb, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
    ds = ds.bucket_by_sequence_length(
        lambda parsed: tf.cast(parsed["num_frames"], tf.int32),
        bucket_boundaries=list(BUCKET_BOUNDARIES),
        bucket_batch_sizes=[batch_size] * (len(BUCKET_BOUNDARIES) + 1),
    )

    def split(parsed):
        outputs = (to_model_inputs(parsed), tf.cast(parsed["label"], tf.int32))
        return outputs + (parsed["utterance_id"],) if with_ids else outputs

    # Under a multi-worker strategy each worker takes its share of every global batch: the
    # records are in memory (sorted above), so there are no files to shard by.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.map(split).prefetch(tf.data.AUTOTUNE).with_options(options)
