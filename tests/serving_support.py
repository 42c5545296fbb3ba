"""Shared helpers of the serving tests (a support module: no tests here, and named so that no
test module imports another): a small CME model with real GloVe vectors and a real RAVDESS
utterance, exported as a SavedModel version; and `cme-ser serve` started as a process."""

import functools
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import keras
import numpy as np
from data_support import RAVDESS_SPEECH as RAVDESS
from data_support import needs_speech

from preprocessing import alignment, audio, corpora, embeddings
from preprocessing.utterance import filterbank, utterance_to_example
from trainer.config import ModelConfig
from trainer.export import export_saved_model
from trainer.model import adapt_normalization, build_model

needs_ravdess = needs_speech  # the serving tests skip (fail under CI) without RAVDESS speech
ANGRY = RAVDESS / "Actor_01" / "03-01-05-01-01-01-01.flac"  # "Kids are talking by the door"
SAD = RAVDESS / "Actor_01" / "03-01-04-02-02-01-01.flac"  # "Dogs are sitting by the door"
KIDS = "Kids are talking by the door"
DOGS = "Dogs are sitting by the door"
CLASSES = ("angry", "happy", "neutral", "sad")
# Small enough to build and export in about a second; 50-d input to match GloVe 6B 50-d.
SMALL = ModelConfig(
    word_dim=50,
    cnn_filters=(8, 16, 16),
    semantic_dim=16,
    lstm_units=8,
    fcn_units=8,
    class_names=CLASSES,
)
VOCAB_SIZE = 20000  # holds every word of the two RAVDESS statements


@functools.lru_cache(maxsize=1)
def glove() -> embeddings.WordVectors:
    return embeddings.load(embeddings.fetch_glove())


@functools.lru_cache(maxsize=1)
def aligner() -> alignment.PocketSphinxAligner:
    return alignment.PocketSphinxAligner()


def small_model(seed: int = 0) -> keras.Model:
    """The CME graph at a small size, random weights (seeded), normalisation adapted on the
    real filterbank of a RAVDESS utterance. The output layer is scaled up so that the classes
    are well apart (a near-uniform softmax would make argmax comparisons fragile)."""
    keras.utils.set_random_seed(seed)
    model = build_model(SMALL.replace(seed=seed))
    waveform, _ = audio.load_audio(ANGRY)
    adapt_normalization(model, filterbank(waveform))
    layer = model.get_layer("probabilities")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel * 20.0, bias])
    return model


def export(model: keras.Model, version_dir, vocab_size: int = VOCAB_SIZE) -> dict:
    return export_saved_model(
        model, version_dir, class_names=CLASSES, vectors=glove(), vocab_size=vocab_size
    )


def aligned(path, transcript):
    """(waveform [S], Alignment) of a RAVDESS file, forced-aligned like preprocessing does."""
    waveform, _ = audio.load_audio(path)
    return waveform, aligner().align(waveform, transcript)


def timed_words(result: alignment.Alignment):
    """(words, start seconds, end seconds) of an alignment: frame / 100."""
    return (
        [w.word for w in result.words],
        [w.start / 100 for w in result.words],
        [w.end / 100 for w in result.words],
    )


def example_bytes(path, transcript, label="angry") -> bytes:
    """The record preprocessing writes for ``path``, serialized (the real Beam-job path)."""
    utterance = corpora.Utterance(
        utterance_id=Path(path).stem,
        audio_path=str(path),
        speaker="Actor_01",
        label_name=label,
        transcript=transcript,
    )
    example, _ = utterance_to_example(
        utterance, aligner=aligner(), vectors=glove(), class_names=CLASSES, fold=0
    )
    return example.SerializeToString()


def waveform_inputs(rows):
    """predict_waveform arrays for ``rows`` of (waveform, words, starts, ends), padded."""
    from serving.client import Utterance, waveform_batch

    inputs = waveform_batch([Utterance(*row) for row in rows])
    inputs["words"] = np.vectorize(lambda w: w.encode("utf-8"), otypes=[object])(inputs["words"])
    return inputs


ROOT = Path(__file__).resolve().parents[1]


def start_server(argv, *, env=None, timeout: float = 300.0):
    """``argv`` (a `cme-ser serve` command, e.g. ``[sys.executable, "-m", "cli",
    "serve", ...]``) started in the repository: ``(process, REST url)`` once it has printed its
    ready line (every worker loaded), which is kept as ``process.announcement``. stderr goes
    to ``process.stderr_file`` (a temporary file: a pipe nobody reads could fill and block the
    server); :func:`stop_server` ends it. Fails, with the server's stderr, if it exits or stays
    silent for ``timeout`` seconds."""
    stderr = tempfile.TemporaryFile(mode="w+")
    process = subprocess.Popen(
        [str(a) for a in argv],
        cwd=ROOT,
        env=env,
        text=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
    )
    process.stderr_file = stderr
    found, done = [], threading.Event()

    def read():
        for line in process.stdout:  # anything a library prints first is skipped
            if not found and "REST API at " in line:
                found.append(line)
                done.set()
        done.set()  # end of output: the server has exited

    threading.Thread(target=read, daemon=True).start()  # reads on: a full pipe would block
    done.wait(timeout)
    if not found:
        stop_server(process, signal_=None)
        raise AssertionError(
            f"`cme-ser serve` did not start (status {process.returncode}): "
            f"{server_stderr(process)[-5000:]}"
        )
    process.announcement = found[0].strip()
    return process, process.announcement.rsplit(" ", 1)[1]


def server_stderr(process) -> str:
    process.stderr_file.seek(0)
    return process.stderr_file.read()


def stop_server(process, signal_=signal.SIGTERM, timeout: float = 60.0):
    """Sends ``signal_`` (SIGTERM; None: kill at once) and returns the exit status; a server
    still running after ``timeout`` seconds is killed, with its workers."""
    if process.poll() is None and signal_ is not None:
        process.send_signal(signal_)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    if process.poll() is None:
        for pid in [process.pid] + children(process.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait()
    return process.returncode


def children(pid: int):
    """``pid``'s child processes (Linux /proc): the workers of `cme-ser serve`."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def serve_argv(base, *flags):
    """`cme-ser serve` on free loopback ports (REST and gRPC) over ``base``."""
    return [
        sys.executable,
        "-m",
        "cli",
        "serve",
        "--model-base-path",
        str(base),
        "--port",
        "0",
        *flags,
    ]


def grpc_address(announcement: str) -> str:
    """The gRPC host:port of `cme-ser serve`'s ready line."""
    return announcement.split("gRPC at ", 1)[1].split(",", 1)[0]


def grpc_status_versions(address: str, model: str = "cme"):
    """GetModelStatus on a new channel (a new connection): the versions listed."""
    import grpc
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    with grpc.insecure_channel(address) as ch:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        response = model_service_pb2_grpc.ModelServiceStub(ch).GetModelStatus(request, timeout=60)
    return [s.version for s in response.model_version_status]


def listening_inodes(pid: int, port: int) -> set:
    """The inodes of the sockets ``pid`` has open that listen on ``port`` (Linux /proc)."""
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):  # (gRPC listens on IPv6, v4-mapped)
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                listening.add(fields[9])
    owned = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                owned.add(target[8:-1])
    except OSError:
        return set()
    return listening & owned
