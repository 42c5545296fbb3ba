"""Decoding a recording of any length a block at a time, into the waveform every later stage
expects (float32 mono 16 kHz in [-1, 1]), in memory that does not grow with its length.

``load_audio`` (``preprocessing.audio``) reads one utterance whole; :class:`AudioStream` reads a
call, an interview or an hour of meeting in blocks (libsndfile: WAV, FLAC, OGG/Vorbis, MP3, ...,
any sample rate and channel count). Channels are averaged as ``load_audio`` averages them, and
other rates are resampled with the same polyphase filter (``scipy.signal.resample_poly``, exact
ratio ``16000 / rate``): each block is filtered with ``RESAMPLE_CONTEXT`` input samples of the
blocks around it, cut on sample positions where the two rates meet, so the blocks put together
are the whole-file resampling to float rounding.

A span the decoder cannot read (a corrupt FLAC frame, an MP3 it loses sync in, a file cut short,
NaN or infinite samples) becomes silence in the output, so every later time stays the time in the
file, and is listed in :attr:`AudioStream.unreadable` with its time range and the decoder's
reason. Reading resumes at the next second the decoder can read again.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Iterator, List, Tuple, Union

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from preprocessing.audio import AudioError, AudioInfo, _one_line
from preprocessing.features import SAMPLE_RATE

DEFAULT_BLOCK_SECONDS = 10.0  # decoded per step: the memory a stream holds is about this much
# Input samples of context each side of a block when resampling: past the longest polyphase
# filter resample_poly builds (10 * max(up, down) / up input samples; 441 at 44.1 kHz).
RESAMPLE_CONTEXT_SECONDS = 0.1
# Read this much at a time; after a read error, reading is retried this far on, and again,
# until the decoder reads: an unreadable span is known to this resolution.
READ_STEP_SECONDS = 0.25
_READ_ERRORS = (sf.LibsndfileError, RuntimeError, ValueError, OSError)


@dataclasses.dataclass(frozen=True)
class Unreadable:
    """A span of the file, in seconds, that could not be decoded (silence in the output)."""

    start_s: float
    end_s: float
    reason: str

    def to_dict(self) -> dict:
        return {
            "start_s": round(self.start_s, 3),
            "end_s": round(self.end_s, 3),
            "reason": self.reason,
        }


class AudioStream:
    """A recording decoded block by block: ``for start, block in stream.blocks(): ...``.

    ``start`` is the index of the block's first sample in the 16 kHz output, ``block`` float32
    ``[n]`` mono in [-1, 1]. Blocks are consecutive and together as long as the file (at 16 kHz).
    :attr:`info` describes the file; :attr:`unreadable` fills in as the blocks are read.

    Args:
        path: the audio file.
        block_seconds: audio decoded per block (of the file's own rate).

    Raises:
        AudioError: on opening: a missing, empty or undecodable file, or one without frames.
    """

    def __init__(
        self, path: Union[str, os.PathLike], *, block_seconds: float = DEFAULT_BLOCK_SECONDS
    ):
        if not block_seconds > 0:
            raise ValueError(f"block_seconds must be > 0, got {block_seconds}")
        self.path = Path(path)
        if not self.path.is_file():
            raise AudioError(
                self.path, "file not found" if not self.path.exists() else "not a regular file"
            )
        if self.path.stat().st_size == 0:
            raise AudioError(self.path, "empty file (0 bytes)")
        try:
            with sf.SoundFile(str(self.path)) as f:
                self.info = AudioInfo(
                    path=str(self.path),
                    sample_rate=int(f.samplerate),
                    channels=int(f.channels),
                    duration=max(f.frames, 0) / f.samplerate,
                    format=f.format,
                    subtype=f.subtype,
                )
                self._frames = int(f.frames)
        except _READ_ERRORS as error:
            raise AudioError(
                self.path,
                f"cannot decode (unsupported, corrupt or truncated file): {_one_line(error)}",
            ) from error
        if self._frames <= 0:
            raise AudioError(self.path, "no audio frames")
        rate = self.info.sample_rate
        g = math.gcd(SAMPLE_RATE, rate)
        self._up, self._down = SAMPLE_RATE // g, rate // g
        # Blocks and context are whole multiples of `down` input samples: such a position maps
        # to a whole output sample (times `up / down`), so blocks join without a seam.
        self._block = max(1, int(block_seconds * rate) // self._down) * self._down
        self._context = max(1, math.ceil(RESAMPLE_CONTEXT_SECONDS * rate / self._down)) * self._down
        self.unreadable: List[Unreadable] = []

    @property
    def num_samples(self) -> int:
        """Samples of the 16 kHz output (``ceil(frames * 16000 / rate)``)."""
        return -(-self._frames * self._up // self._down)

    @property
    def duration(self) -> float:
        return self._frames / self.info.sample_rate

    def _note(self, start: int, end: int, reason: str) -> None:
        rate = self.info.sample_rate
        if (
            self.unreadable
            and self.unreadable[-1].reason == reason
            and abs(self.unreadable[-1].end_s - start / rate) < 1e-9
        ):
            start = round(self.unreadable.pop().start_s * rate)  # one span, not one per block
        self.unreadable.append(Unreadable(start / rate, end / rate, reason))

    def _input_blocks(self) -> Iterator[np.ndarray]:
        """Mono float64 blocks of the file's own rate, together exactly ``frames`` long."""
        pending, size = [], 0
        for piece in self._input_pieces():
            pending.append(piece)
            size += piece.size
            if size >= self._block:
                yield np.concatenate(pending)
                pending, size = [], 0
        if pending:
            yield np.concatenate(pending)

    def _input_pieces(self) -> Iterator[np.ndarray]:
        """Mono float64 pieces of at most ``READ_STEP_SECONDS``: a decoder error costs the
        piece it happens in, not a whole block."""
        rate, total = self.info.sample_rate, self._frames
        step = max(1, int(READ_STEP_SECONDS * rate))
        f = sf.SoundFile(str(self.path))
        position = 0
        try:
            while position < total:
                wanted = min(step, total - position)
                try:
                    data = f.read(wanted, dtype="float32", always_2d=True)
                except _READ_ERRORS as error:
                    reason = f"cannot decode: {_one_line(error)}"
                    # libsndfile cannot go on after most decoder errors: open the file again
                    # and seek past the bad part, a step at a time.
                    resume = position
                    while True:
                        resume = min(resume + step, total)
                        if resume >= total:
                            break
                        try:
                            f.close()
                            f = sf.SoundFile(str(self.path))
                            f.seek(resume)
                            break
                        except _READ_ERRORS:
                            continue
                    self._note(position, resume, reason)
                    yield np.zeros(resume - position)
                    position = resume
                    continue
                if data.shape[0] == 0:  # the decoder ended before the header's length
                    self._note(position, total, "file ends early: truncated or corrupt")
                    yield np.zeros(total - position)
                    return
                mono = data.mean(axis=1, dtype=np.float64)
                bad = ~np.isfinite(mono)
                if bad.any():
                    for first, last in _runs_of(bad):
                        self._note(position + first, position + last, "NaN or infinite samples")
                    mono[bad] = 0.0
                yield mono
                position += data.shape[0]
        finally:
            f.close()

    def blocks(self) -> Iterator[Tuple[int, np.ndarray]]:
        """``(first output sample, float32 16 kHz mono block)``, in order, clipped to [-1, 1]."""
        up, down, context = self._up, self._down, self._context
        if up == down:
            out = 0
            for block in self._input_blocks():
                yield out, np.clip(block, -1.0, 1.0).astype(np.float32)
                out += block.size
            return
        # buffer holds input samples [buffer_start, buffer_start + buffer.size); output is
        # produced for input [done, limit), with `context` input samples either side.
        buffer, buffer_start, done = np.zeros(0), 0, 0
        pieces = self._input_blocks()
        finished = False
        while not finished:
            block = next(pieces, None)
            if block is None:
                finished = True
            else:
                buffer = np.concatenate([buffer, block])
            end = buffer_start + buffer.size
            limit = end if finished else ((end - context) // down) * down
            if limit <= done:
                continue
            left = max(0, done - context)
            right = end if finished else limit + context
            resampled = resample_poly(buffer[left - buffer_start : right - buffer_start], up, down)
            first = (done - left) * up // down
            count = (-(-limit * up // down)) - done * up // down
            out = resampled[first : first + count]
            yield done * up // down, np.clip(out, -1.0, 1.0).astype(np.float32)
            done = limit
            keep_from = max(0, done - context)
            buffer = buffer[keep_from - buffer_start :]
            buffer_start = keep_from


def _runs_of(mask: np.ndarray) -> List[Tuple[int, int]]:
    """``[first, end)`` of each run of True in a 1-D boolean array."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]
