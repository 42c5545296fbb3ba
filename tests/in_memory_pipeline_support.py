"""The input pipeline as it was before it streamed (every record read into memory, parsed, then
shuffled): the reference ``trainer.data.make_dataset``'s batches must match bit for bit, since
committed results depend on training seeing exactly the same batches."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from preprocessing.corpora import PRIMARY_CHANNEL
from preprocessing.records import NUM_MEL_BINS, feature_spec, to_model_inputs
from trainer.data import BUCKET_BOUNDARIES, make_dataset, stretch_time


def in_memory_records(files):
    raws = [r.numpy() for r in tf.data.TFRecordDataset(list(files), compression_type="GZIP")]
    ids = tf.io.parse_example(
        tf.constant(raws), {"utterance_id": tf.io.FixedLenFeature([], tf.string)}
    )["utterance_id"].numpy()
    return [raws[i] for i in np.argsort(ids, kind="stable")]


def in_memory_speaker_statistics(records):
    parsed = tf.io.parse_example(
        tf.constant(list(records)),
        {
            "speaker": tf.io.FixedLenFeature([], tf.string),
            "fbank": tf.io.VarLenFeature(tf.float32),
            "num_frames": tf.io.FixedLenFeature([], tf.int64),
        },
    )
    values = tf.sparse.to_dense(parsed["fbank"]).numpy()
    sums: dict = {}
    for speaker, row, n in zip(parsed["speaker"].numpy(), values, parsed["num_frames"].numpy()):
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


def in_memory_dataset(
    files,
    word_dim,
    batch_size,
    *,
    shuffle=False,
    seed=0,
    speakers=None,
    exclude_speakers=False,
    with_ids=False,
    time_stretch=0.0,
    speaker_norm=False,
    channels=None,
):
    """``make_dataset`` before it streamed, without its input checks."""
    spec = feature_spec(word_dim)

    def parse(raw):
        parsed = tf.io.parse_single_example(raw, spec)
        return {
            k: v.to_tensor() if isinstance(v, tf.RaggedTensor) else v for k, v in parsed.items()
        }

    def channel_of(record):
        feature = tf.train.Example.FromString(record).features.feature.get("channel")
        value = (
            feature.bytes_list.value[0] if feature is not None and feature.bytes_list.value else b""
        )
        return value.decode("utf-8") or PRIMARY_CHANNEL

    records = in_memory_records(files)
    if channels is not None:
        records = [r for r in records if channel_of(r) in set(channels)]
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(records)).map(parse)
    if speaker_norm:
        stats = in_memory_speaker_statistics(records)
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
            return {**parsed, "fbank": (parsed["fbank"] - means[row]) / stds[row]}

        ds = ds.map(standardise)
    if speakers is not None:
        chosen = tf.constant(list(speakers) or [""], tf.string)

        def keep(parsed):
            hit = tf.reduce_any(tf.equal(parsed["speaker"], chosen))
            return tf.logical_not(hit) if exclude_speakers else hit

        ds = ds.filter(keep)
    if shuffle:
        ds = ds.shuffle(len(records), seed=seed, reshuffle_each_iteration=True)
    if time_stretch > 0:
        randoms = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

        def perturb(parsed, key):
            u = tf.random.stateless_uniform([], seed=tf.stack([key, tf.constant(seed, tf.int64)]))
            return stretch_time(parsed, 1.0 + time_stretch * (2.0 * u - 1.0))

        ds = tf.data.Dataset.zip((ds, randoms)).map(perturb)
    ds = ds.bucket_by_sequence_length(
        lambda parsed: tf.cast(parsed["num_frames"], tf.int32),
        bucket_boundaries=list(BUCKET_BOUNDARIES),
        bucket_batch_sizes=[batch_size] * (len(BUCKET_BOUNDARIES) + 1),
    )

    def split(parsed):
        outputs = (to_model_inputs(parsed), tf.cast(parsed["label"], tf.int32))
        return outputs + (parsed["utterance_id"],) if with_ids else outputs

    return ds.map(split)


def epochs_of(ds, epochs=2):
    """Every batch of ``epochs`` passes over ``ds`` (as ``fit`` iterates it), as numpy arrays."""
    return [[tf.nest.map_structure(np.asarray, b) for b in ds] for _ in range(epochs)]


def assert_identical(got, want, where="batches"):
    """``got`` and ``want`` (nested batches) are equal bit for bit: same structure, dtypes,
    shapes and bytes."""
    tf.nest.assert_same_structure(got, want)
    for path, (a, b) in enumerate(zip(tf.nest.flatten(got), tf.nest.flatten(want))):
        assert a.dtype == b.dtype and a.shape == b.shape, (where, path, a.shape, b.shape)
        if a.dtype == object:
            assert a.tolist() == b.tolist(), (where, path)
        else:
            assert a.tobytes() == b.tobytes(), (where, path)


def assert_streams_like_in_memory(files, word_dim, batch_size, epochs=2, **options):
    """``make_dataset(files, ...)`` yields the in-memory pipeline's batches for ``epochs``
    epochs, bit for bit. Returns them."""
    tf.random.set_seed(11)  # both under the same global seed, as a training run sets one
    got = epochs_of(make_dataset(files, word_dim, batch_size, **options), epochs)
    tf.random.set_seed(11)
    want = epochs_of(in_memory_dataset(files, word_dim, batch_size, **options), epochs)
    assert [len(e) for e in got] == [len(e) for e in want], options
    assert_identical(got, want, where=options)
    return got
