"""Checks of ``predict_waveform`` / ``predict_waveform_bytes`` inputs, made before the graph runs
so that a bad request gets a message that says what is wrong (the graph would silently clip, or
fail deep inside with an op's message).

Rules, per row ``b`` of a batch of ``B`` rows and ``M`` word slots:

* shapes: ``waveform [B, S]`` (or ``waveform_bytes [B]``, each a whole number of 4-byte float32
  samples), ``num_samples [B]``, ``words``, ``word_start_s``, ``word_end_s`` all ``[B, M]``;
* ``400 <= num_samples[b] <=`` the samples row b has (at least one 25 ms frame);
* every sample finite (NaN in the padding would leak into the convolutions);
* the words are a non-empty prefix of the row, padded with "" only at the end;
* every time finite; for each real word ``0 <= start <= end`` and ``start`` inside the audio
  (``start <= num_samples / 16000``).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from preprocessing.features import FRAME_LENGTH, SAMPLE_RATE
from serving.status import invalid_argument


def _shape(array: np.ndarray) -> str:
    return "[" + ",".join(str(d) for d in array.shape) + "]"


def check_waveform_inputs(inputs: Mapping[str, np.ndarray]) -> None:
    """``predict_waveform`` inputs; raises ``ServingError`` INVALID_ARGUMENT naming the first
    problem found."""
    waveform = inputs["waveform"]
    if waveform.ndim != 2:
        raise invalid_argument(f"waveform must be [batch, samples], got shape {_shape(waveform)}")
    if waveform.shape[0] and waveform.shape[1] == 0:
        raise invalid_argument("waveform is empty (0 samples)")
    finite = np.isfinite(waveform)
    if not finite.all():
        b, i = np.argwhere(~finite)[0]
        raise invalid_argument(f"waveform[{b}][{i}] is {waveform[b, i]}: samples must be finite "
                               f"(16 kHz, in [-1, 1])")
    padded = waveform.shape[1]
    _check_rows(inputs, waveform.shape[0], [padded] * waveform.shape[0],
                lambda b, n: f"num_samples[{b}] = {n} is more than the waveform's {padded} "
                             f"samples")


def check_waveform_bytes_inputs(inputs: Mapping[str, np.ndarray]) -> None:
    """``predict_waveform_bytes`` inputs (``waveform_bytes``: object array of bytes)."""
    data = inputs["waveform_bytes"]
    if data.ndim != 1:
        raise invalid_argument(f"waveform_bytes must be [batch] (one string of float32 samples "
                               f"per row), got shape {_shape(data)}")
    lengths = []
    for b, raw in enumerate(data):
        if len(raw) % 4:
            raise invalid_argument(f"waveform_bytes[{b}] has {len(raw)} bytes: not a whole number "
                                   f"of float32 samples (4 bytes each, little-endian)")
        if not len(raw):
            raise invalid_argument(f"waveform_bytes[{b}] is empty (0 samples)")
        samples = np.frombuffer(raw, dtype="<f4")
        finite = np.isfinite(samples)
        if not finite.all():
            i = int(np.argmin(finite))
            raise invalid_argument(f"waveform_bytes[{b}] sample {i} is {samples[i]}: samples "
                                   f"must be finite (16 kHz, in [-1, 1])")
        lengths.append(samples.size)
    _check_rows(inputs, data.shape[0], lengths,
                lambda b, n: f"num_samples[{b}] = {n} is more than the {lengths[b]} samples in "
                             f"waveform_bytes[{b}]")


def _check_rows(inputs: Mapping[str, np.ndarray], batch: int, lengths: Sequence[int],
                too_long) -> None:
    """The rules shared by both signatures, given each row's number of samples."""
    num_samples = inputs["num_samples"]
    words = inputs["words"]
    starts, ends = inputs["word_start_s"], inputs["word_end_s"]
    if num_samples.shape != (batch,):
        raise invalid_argument(f"num_samples must be [batch] = [{batch}] (one length per waveform "
                               f"row), got shape {_shape(num_samples)}")
    if words.ndim != 2 or words.shape[0] != batch:
        raise invalid_argument(f"words must be [batch, words] with batch {batch}, got shape "
                               f"{_shape(words)}")
    for name, times in (("word_start_s", starts), ("word_end_s", ends)):
        if times.shape != words.shape:
            raise invalid_argument(
                f"{name} has shape {_shape(times)} but words has shape {_shape(words)}: give one "
                f"start and one end time per word slot (pad words with \"\" and times with 0)")
    if batch == 0:
        raise invalid_argument("empty batch: no waveform rows")

    for b in range(batch):
        n = int(num_samples[b])
        if n <= 0:
            raise invalid_argument(f"num_samples[{b}] = {n}: the waveform is empty")
        if n > lengths[b]:
            raise invalid_argument(too_long(b, n))
        if n < FRAME_LENGTH:
            raise invalid_argument(
                f"num_samples[{b}] = {n}: shorter than one {1000 * FRAME_LENGTH // SAMPLE_RATE} ms "
                f"frame ({FRAME_LENGTH} samples at {SAMPLE_RATE} Hz)")
    for name, times in (("word_start_s", starts), ("word_end_s", ends)):
        bad = ~np.isfinite(times)
        if bad.any():
            b, j = np.argwhere(bad)[0]
            raise invalid_argument(f"{name}[{b}][{j}] is {times[b, j]}: times must be finite "
                                   f"seconds")

    present = words != b""
    for b in range(batch):
        count = int(present[b].sum())
        if count == 0:
            raise invalid_argument(f"row {b} has no words: give at least one word with its times")
        if not present[b, :count].all():
            j = int(np.argmin(present[b]))
            raise invalid_argument(f"words[{b}][{j}] is empty but a word follows it: pad with "
                                   f"\"\" only after the last word")
        seconds = int(num_samples[b]) / SAMPLE_RATE
        for j in range(count):
            start, end = float(starts[b, j]), float(ends[b, j])
            word = words[b, j].decode("utf-8", "replace")
            if start < 0 or end < 0:
                raise invalid_argument(f"word {j} ({word!r}) of row {b} has a negative time "
                                       f"({start:g} s to {end:g} s)")
            if end < start:
                raise invalid_argument(f"word {j} ({word!r}) of row {b} ends before it starts "
                                       f"({start:g} s > {end:g} s)")
            if start > seconds:
                raise invalid_argument(f"word {j} ({word!r}) of row {b} starts at {start:g} s, "
                                       f"after the audio ends ({seconds:g} s)")
