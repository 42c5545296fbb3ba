"""tf.data input pipeline: gzipped records -> padded batches of model inputs, bucketed by length.

Records are put in utterance-id order before anything random happens, so a training run
depends on its seed only, not on the order a (multi-process) Beam writer happened to leave the
records in.

The records are streamed, never held in memory: a first pass over each gzipped file (GZIP is
not random-access) keeps a few bytes per record (its id, speaker and channel) and writes each
serialized record to a file of its own in this process's record cache, a temporary directory
removed when the process exits. The dataset then shuffles the cached records' file names, not
the parsed records, and reads each record when it is needed: the same permutation (a shuffle
does not look at its elements), so the same batches as reading every record into memory.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, fields
from typing import Dict, Iterable, Iterator, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from preprocessing.corpora import PRIMARY_CHANNEL, is_augmented, records_for
from preprocessing.records import NUM_MEL_BINS, feature_spec, to_model_inputs

# Utterances of similar length share a batch, so little compute goes into padding.
BUCKET_BOUNDARIES = (200, 300, 400, 500, 700, 1000, 1500, 2000)
# Records parsed (or scanned) together: bounds the memory of a pass, not its result.
CHUNK = 256
_INDEX_SPEC = {
    "utterance_id": tf.io.FixedLenFeature([], tf.string),
    "speaker": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "channel": tf.io.FixedLenFeature([], tf.string, default_value=""),
}


@dataclass(frozen=True)
class RecordIndex:
    """What is known of each record without holding it: ``utterance_ids`` (bytes), ``speakers``
    (bytes), ``channels`` (str; a record without a channel feature, of a corpus with one
    channel, is speech: ``PRIMARY_CHANNEL``) and ``paths``, the cached serialized record."""

    utterance_ids: Tuple[bytes, ...]
    speakers: Tuple[bytes, ...]
    channels: Tuple[str, ...]
    paths: Tuple[str, ...]

    def __add__(self, other: "RecordIndex") -> "RecordIndex":
        return RecordIndex(
            self.utterance_ids + other.utterance_ids,
            self.speakers + other.speakers,
            self.channels + other.channels,
            self.paths + other.paths,
        )

    def take(self, positions: Iterable[int]) -> "RecordIndex":
        positions = list(positions)
        columns = (getattr(self, field.name) for field in fields(self))
        return RecordIndex(*(tuple(column[i] for i in positions) for column in columns))

    def sorted(self) -> "RecordIndex":
        """In utterance-id order (records with the same id keep their file order)."""
        ids = np.array(self.utterance_ids, dtype=object)
        return self.take(np.argsort(ids, kind="stable"))


class _RecordCache:
    """Every record file read by this process, one uncompressed file per record, in a temporary
    directory removed at exit (by the process that made it, not by a forked child). A record
    file is scanned once per process; a rewritten one (another size or time) again."""

    def __init__(self):
        self._lock = threading.Lock()
        self._root: Optional[str] = None
        self._indexes: Dict[tuple, RecordIndex] = {}

    def _directory(self) -> str:
        if self._root is None:
            self._root = tempfile.mkdtemp(prefix="cme-ser-records-")
            atexit.register(_remove_if_mine, self._root, os.getpid())
        return self._root

    def index(self, path: str) -> RecordIndex:
        stat = tf.io.gfile.stat(path)
        key = (path, stat.length, stat.mtime_nsec)
        with self._lock:
            if key not in self._indexes:
                self._indexes[key] = self._scan(path, len(self._indexes))
            return self._indexes[key]

    def _scan(self, path: str, number: int) -> RecordIndex:
        out = os.path.join(self._directory(), str(number))
        os.makedirs(out)
        ids, speakers, channels, paths = [], [], [], []
        chunks = tf.data.TFRecordDataset(path, compression_type="GZIP").batch(CHUNK)
        for raws in chunks:
            parsed = tf.io.parse_example(raws, _INDEX_SPEC)
            ids += parsed["utterance_id"].numpy().tolist()
            speakers += parsed["speaker"].numpy().tolist()
            channels += [c.decode("utf-8") or PRIMARY_CHANNEL for c in parsed["channel"].numpy()]
            for raw in raws.numpy():
                paths.append(os.path.join(out, f"{len(paths)}.pb"))
                with open(paths[-1], "wb") as f:
                    f.write(raw)
        return RecordIndex(tuple(ids), tuple(speakers), tuple(channels), tuple(paths))


def _remove_if_mine(root: str, pid: int) -> None:
    if os.getpid() == pid:
        shutil.rmtree(root, ignore_errors=True)


_CACHE = _RecordCache()


def record_index(files: Sequence[str]) -> RecordIndex:
    """The :class:`RecordIndex` of every record of ``files``, in utterance-id order."""
    return sum((_CACHE.index(f) for f in files), RecordIndex((), (), (), ())).sorted()


def read_records(paths: Sequence[str]) -> Iterator[bytes]:
    """The serialized records cached at ``paths``, in that order, ``CHUNK`` at a time."""
    reads = tf.data.Dataset.from_tensor_slices(tf.constant(list(paths), tf.string))
    reads = reads.map(tf.io.read_file, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    for chunk in reads.batch(CHUNK).as_numpy_iterator():
        yield from chunk


def sorted_records(files: Sequence[str]) -> Iterator[bytes]:
    """Every serialized record of ``files``, ordered by ``utterance_id`` (streamed)."""
    return read_records(record_index(files).paths)


def preprocess_options(channels: Sequence[str]) -> str:
    """The ``cme-ser preprocess`` options that write records of ``channels``."""
    real, copies = records_for(channels)
    return f"--channels {','.join(real)}" + (f" --augment-copies {copies}" if copies else "")


def record_channels(files: Sequence[str]) -> Dict[str, str]:
    """utterance id -> channel (as ``make_dataset(channels=...)`` reads it) of every record in
    ``files``."""
    index = record_index(files)
    return {i.decode("utf-8"): c for i, c in zip(index.utterance_ids, index.channels)}


def speaker_statistics(records: Iterable[bytes]) -> dict:
    """Per speaker, the mean and standard deviation of every filterbank channel over all of the
    speaker's frames: ``{speaker: (mean [C], std [C])}``, from running float64 sums over
    ``records`` (serialized, read ``CHUNK`` at a time). Labels are not read."""
    spec = {
        "speaker": tf.io.FixedLenFeature([], tf.string),
        "fbank": tf.io.VarLenFeature(tf.float32),
        "num_frames": tf.io.FixedLenFeature([], tf.int64),
    }
    records = iter(records)
    sums: dict = {}
    while chunk := list(itertools.islice(records, CHUNK)):
        parsed = tf.io.parse_example(tf.constant(chunk), spec)
        values = tf.sparse.to_dense(parsed["fbank"]).numpy()
        frames = parsed["num_frames"].numpy()
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
    without a channel feature are ``speech``; ``speech_aug`` / ``song_aug`` their augmented
    copies): how a model is trained on some domains only. None keeps every channel but the
    augmented ones, which are for training only.
    """
    if not files:
        raise ValueError("no record files given")
    spec = feature_spec(word_dim)

    def parse(raw):
        parsed = tf.io.parse_single_example(raw, spec)
        return {
            k: (v.to_tensor() if isinstance(v, tf.RaggedTensor) else v) for k, v in parsed.items()
        }

    records = record_index(files)
    held = set(records.channels)
    # Augmented copies (``preprocessing.augment``) are read only where a caller names their
    # channels (a model's training channels): no evaluation ever scores one.
    wanted = set(channels) if channels is not None else {c for c in held if not is_augmented(c)}
    records = records.take(i for i, channel in enumerate(records.channels) if channel in wanted)
    if records.paths and set(channels or ()) - held:
        # A speech + song model given speech-only records would train on speech alone and
        # say otherwise.
        raise ValueError(
            f"the model trains on channel(s) {', '.join(channels)}, but the records hold "
            f"{', '.join(sorted(held))}: preprocess with {preprocess_options(channels)}"
        )
    if not records.paths:
        raise ValueError(
            f"no records in {list(files)[:3]}..."
            + (f" of channel(s) {list(channels)}" if channels is not None else "")
        )
    kept = records
    if speakers is not None:
        chosen = {s.encode("utf-8") for s in list(speakers) or [""]}
        kept = records.take(
            i
            for i, speaker in enumerate(records.speakers)
            if (speaker in chosen) != exclude_speakers
        )
    # Shuffling the file names is shuffling the records: a shuffle draws positions, never
    # looking at its elements; its buffer is every record of the channels, as it was when the
    # records were parsed (and filtered by speaker) first.
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(kept.paths, tf.string))
    if shuffle:
        ds = ds.shuffle(len(records.paths), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(
        lambda path: parse(tf.io.read_file(path)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if speaker_norm:
        # Over every record of the channels, the held-out speakers' too (no labels are read).
        stats = speaker_statistics(read_records(records.paths))
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
    # records are read in id order (sorted above), not file by file, so there are no files to
    # shard by.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.map(split).prefetch(tf.data.AUTOTUNE).with_options(options)
