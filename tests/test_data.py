"""The streamed input pipeline (``trainer.data``) against the in-memory one it replaced: the same
batches, bit for bit, for every option, every epoch, whatever order the records are stored in;
and its per-process record cache."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from in_memory_pipeline_support import (
    assert_identical,
    assert_streams_like_in_memory,
    epochs_of,
    in_memory_records,
    in_memory_speaker_statistics,
)

from preprocessing.records import make_example
from trainer import data
from trainer.data import (
    make_dataset,
    record_channels,
    record_index,
    sorted_records,
    speaker_statistics,
)

WORD_DIM = 4
SPEAKERS = ("sA", "sB", "sC", "sD")
# Lengths in every bucket of BUCKET_BOUNDARIES, the last one past them all.
FRAMES = (60, 150, 250, 350, 450, 600, 800, 1200, 1700, 2300)


def example(i, rng):
    label = i % 4
    frames = int(FRAMES[i % len(FRAMES)] + rng.integers(0, 40))
    return make_example(
        utterance_id=f"u{i:03d}",
        speaker=SPEAKERS[i % 3 if i % 5 else 3],
        label=label,
        label_name="abcd"[label],
        fold=0,
        fbank=rng.normal(size=(frames, 40)).astype(np.float32) * 3 + i % 7,
        words=["w1", "w2", "w3"],
        word_embeddings=rng.normal(size=(3, WORD_DIM)),
        word_start=[0, frames // 3, frames // 2],
        word_end=[frames // 3, frames // 2, frames],
        transcript="w1 w2 w3",
        alignment_source="forced",
        channel=("speech", "song")[(i // 2) % 2],
    ).SerializeToString()


def write(path, raws):
    with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
        for raw in raws:
            writer.write(raw)
    return str(path)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """44 records of 4 speakers and 2 channels in every length bucket, in two files, in no
    particular order: ``(files, raws in id order)``."""
    rng = np.random.default_rng(0)
    raws = [example(i, rng) for i in range(44)]
    order = rng.permutation(len(raws))
    tmp = tmp_path_factory.mktemp("records")
    files = [write(tmp / "a.tfrecord.gz", [raws[i] for i in order[:30]])]
    files.append(write(tmp / "b.tfrecord.gz", [raws[i] for i in order[30:]]))
    return files, raws


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Passes over the records in chunks of 5, so that results cannot depend on chunking."""
    monkeypatch.setattr(data, "CHUNK", 5)


OPTIONS = [
    {},
    {"shuffle": True},
    {"shuffle": True, "time_stretch": 0.2, "with_ids": True},
    {"shuffle": True, "seed": 5, "speakers": ["sA", "sD"], "exclude_speakers": True},
    {"speakers": ["sB"], "with_ids": True, "speaker_norm": True},
    {"shuffle": True, "speakers": [], "with_ids": True},
    {"shuffle": True, "channels": ["song"], "speakers": ["sC"], "exclude_speakers": True},
    {"shuffle": True, "channels": ["speech", "song"], "speaker_norm": True, "time_stretch": 0.1},
    {"channels": ["speech"], "speaker_norm": True, "speakers": ["sA", "sB"]},
    {
        "shuffle": True,
        "seed": 3,
        "channels": ["speech"],
        "speakers": ["sA", "sC", "sD"],
        "time_stretch": 0.15,
        "speaker_norm": True,
        "with_ids": True,
    },
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "defaults")
def test_streamed_batches_are_the_in_memory_ones_bit_for_bit(records, options):
    files, _ = records
    got = assert_streams_like_in_memory(files, WORD_DIM, 3, epochs=2, **options)
    if options.get("speakers") == []:
        assert got == [[], []]
        return
    assert len({b[1].shape[0] for b in got[0]}) > 1  # full and partial batches
    if options.get("shuffle") and options.get("with_ids"):
        first, second = ([i for b in epoch for i in b[2].tolist()] for epoch in got)
        assert first != second and sorted(first) == sorted(second)  # reshuffled, same records


def test_the_order_records_are_stored_in_changes_no_batch(records, tmp_path):
    files, raws = records
    options = dict(shuffle=True, seed=2, time_stretch=0.2, speaker_norm=True, with_ids=True)
    want = epochs_of(make_dataset(files, WORD_DIM, 3, **options))
    # The same records, reversed and spread over three files, as another writer may leave them.
    backwards = raws[::-1]
    other = [write(tmp_path / f"{k}.tfrecord.gz", backwards[k::3]) for k in range(3)]
    assert_identical(epochs_of(make_dataset(other, WORD_DIM, 3, **options)), want)


def test_sorted_records_channels_and_speaker_statistics_stream_the_same_values(records):
    files, raws = records
    assert list(sorted_records(files)) == raws == in_memory_records(files)
    channels = record_channels(files)
    assert len(channels) == len(raws)
    assert channels["u000"] == channels["u001"] == "speech" and channels["u002"] == "song"
    got, want = speaker_statistics(sorted_records(files)), in_memory_speaker_statistics(raws)
    assert sorted(got) == sorted(want) == list(SPEAKERS)
    for speaker in SPEAKERS:
        assert_identical(got[speaker], want[speaker], where=speaker)


def test_a_record_file_is_cached_once_and_again_when_rewritten(records, tmp_path):
    files, raws = records
    path = write(tmp_path / "c.tfrecord.gz", raws[:4])
    first = record_index([path])
    assert record_index([path]) == first  # not scanned (nor copied) twice
    assert [open(p, "rb").read() for p in first.paths] == raws[:4]
    os.utime(path, ns=(0, 0))
    write(path, raws[4:9])
    again = record_index([path])
    assert [open(p, "rb").read() for p in again.paths] == raws[4:9]
    assert not set(again.paths) & set(first.paths)


def test_the_record_cache_is_removed_when_the_process_exits(records):
    files, _ = records
    script = (
        "import os, sys\n"
        "from trainer.data import make_dataset, record_index\n"
        "ds = make_dataset(sys.argv[1:], 4, 3)\n"
        "assert sum(1 for _ in ds) > 0\n"
        "print(os.path.dirname(os.path.dirname(record_index(sys.argv[1:]).paths[0])))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, *files], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    cache = done.stdout.strip().splitlines()[-1]
    assert os.path.basename(cache).startswith("cme-ser-records-")
    assert not os.path.exists(cache)
