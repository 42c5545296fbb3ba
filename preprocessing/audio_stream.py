"""Decoding a recording of any length a block at a time, into the waveform every later stage
expects (float32 mono 16 kHz in [-1, 1]), in memory that does not grow with its length.

``load_audio`` (``preprocessing.audio``) reads one utterance whole; :class:`AudioStream` reads a
call, an interview or an hour of meeting in blocks (WAV, FLAC, OGG/Vorbis, ... through libsndfile;
MPEG audio (MP3, MP2) through FFmpeg (PyAV); any sample rate and channel count). Channels are
averaged as ``load_audio`` averages them, and other rates are resampled with the same polyphase
filter (``scipy.signal.resample_poly``, exact ratio ``16000 / rate``): each block is filtered with
``RESAMPLE_CONTEXT`` input samples of the blocks around it, cut on sample positions where the two
rates meet, so the blocks put together are the whole-file resampling to float rounding.

A span the decoder cannot read (a corrupt FLAC frame, an MP3 it loses sync in, a file cut short,
NaN or infinite samples) becomes silence in the output, so every later time stays the time in the
file, and is listed in :attr:`AudioStream.unreadable` with its time range and the decoder's
reason. Reading resumes where the decoder can read again: for libsndfile the next step of
``READ_STEP_SECONDS`` it can seek to and read.

MP3 is not read through libsndfile: after a corrupt span its decoder (mpg123) resumes seconds off
and the file "ends early". FFmpeg resyncs on the next frame header, but an MPEG audio stream has
no timestamps: the demuxer counts the bytes it could not sync on as one frame, whatever their
length. So the frames are checked here (:func:`_mpeg_frame`) and the time of the bytes without a
frame is worked out (:meth:`AudioStream._mpeg_scan`): in a constant-bitrate file from the frame
size (exact); in a variable-bitrate one from the frame count of its Xing/Info header (exact for one
corrupt span; several share the lost frames in proportion to their bytes, each within what its
bytes can hold). Every later frame is placed at its time in the file.
"""

from __future__ import annotations

import dataclasses
import math
import os
from fractions import Fraction
from pathlib import Path
from typing import Iterator, List, NamedTuple, Optional, Tuple, Union

import av
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
_FFMPEG_ERRORS = (av.error.FFmpegError, OSError, ValueError)
# After a lost MPEG frame, the output of the next frames still holds the lost one: a layer III
# granule (576 samples) is overlapped with the one before, and the synthesis filter bank keeps
# 512 samples of history. Those frames are decoded for the decoder's state, and count as lost.
MPEG_SETTLE_SAMPLES = 576 + 512


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
        self._start = 0  # FFmpeg: the encoder's delay, samples decoded before the file's first
        self._xing: Optional[_Xing] = None
        self._mpeg_lost_samples: Optional[List[int]] = None
        self._ffmpeg = _starts_like_mpeg(self.path) and self._open_ffmpeg()
        if not self._ffmpeg:
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
    def _audio_start(self) -> Optional[int]:
        """MPEG: where the first audio frame begins, if known (after a Xing/Info header)."""
        return self._xing.end if self._xing is not None else None

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
        """Mono float64 pieces, together exactly ``frames`` long."""
        return self._ffmpeg_pieces() if self._ffmpeg else self._sndfile_pieces()

    def _sndfile_pieces(self) -> Iterator[np.ndarray]:
        """Pieces of at most ``READ_STEP_SECONDS`` through libsndfile: a decoder error costs
        the piece it happens in, not a whole block."""
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
                yield self._finite(position, data.mean(axis=1, dtype=np.float64))
                position += data.shape[0]
        finally:
            f.close()

    def _finite(self, position: int, mono: np.ndarray) -> np.ndarray:
        """``mono`` (starting at input sample ``position``) with NaN and infinite samples noted
        and made silence."""
        bad = ~np.isfinite(mono)
        if bad.any():
            for first, last in _runs_of(bad):
                self._note(position + first, position + last, "NaN or infinite samples")
            mono[bad] = 0.0
        return mono

    # --- FFmpeg (MPEG audio) ------------------------------------------------------------------

    def _open_ffmpeg(self) -> bool:
        """Open an MPEG audio file through FFmpeg: its info, length and start as FFmpeg decodes
        it. False if FFmpeg does not read it as MPEG audio (libsndfile is tried then)."""
        try:
            with av.open(str(self.path)) as container:
                if container.format.name != "mp3" or not container.streams.audio:
                    return False
                stream = container.streams.audio[0]
                rate, codec = int(stream.rate), stream.codec_context.name.replace("float", "")
                to_samples = stream.time_base * rate
                self._start = _samples(stream.start_time, to_samples, 0)
                self._xing = _xing_header(self.path)
                if self._xing is not None and self._xing.frames and stream.duration is not None:
                    # The header's frame count less the encoder's delay and padding: exact.
                    self._frames = _samples(stream.duration, to_samples, 0)
                else:  # FFmpeg's length would be an estimate from the bitrate: count the frames
                    self._frames = self._mpeg_scan() - self._start
                self.info = AudioInfo(
                    path=str(self.path),
                    sample_rate=rate,
                    channels=int(stream.channels),
                    duration=self._frames / rate,
                    format="MP3",  # libsndfile's names
                    subtype=_MPEG_SUBTYPES.get(codec, codec.upper()),
                )
                return True
        except _FFMPEG_ERRORS:
            return False

    def _ffmpeg_pieces(self) -> Iterator[np.ndarray]:
        """Decoded frames placed by their timestamps, the bytes without frame sync given the
        time they held (:meth:`_mpeg_scan`); a gap between frames is silence and noted.

        Around such bytes, frames whose output can hold them count as lost too: the last one
        before (the bytes may begin inside it), those after whose main data begins in them (the
        layer III bit reservoir), and the next ``MPEG_SETTLE_SAMPLES``."""
        position = 0  # the next input sample to yield
        reason: Optional[str] = None  # why the samples before the next frame are missing
        held: List[Tuple[np.ndarray, int]] = []  # the last frame's samples and input sample
        with av.open(str(self.path)) as container:
            stream = container.streams.audio[0]
            to_samples = stream.time_base * self.info.sample_rate
            offset = -self._start  # input sample = decoder timestamp (in samples) + offset
            pending = 0  # bytes without frame sync since the last frame
            span = 0  # how many such spans were passed
            frame_end = 0  # timestamp (samples) at which the last frame ended
            reservoir = 0  # bytes of main data read since the start or the last span
            settle = 0  # samples still to decode for the decoder's state alone
            for packet, frame in _mpeg_packets(container, stream, self._audio_start):
                if frame is None:
                    pending += packet.size
                    continue
                pts = _samples(packet.pts, to_samples, frame_end)
                if pending:
                    # The demuxer gave these bytes `pts - frame_end` samples; they held `lost`.
                    if self._mpeg_lost_samples is None:
                        self._mpeg_scan()
                    if span < len(self._mpeg_lost_samples):  # (the two passes agree)
                        offset += self._mpeg_lost_samples[span] - (pts - frame_end)
                    reason = reason or (
                        f"cannot decode: {pending} bytes without MPEG frame sync (corrupt frames)"
                    )
                    span, pending, reservoir, settle, held = span + 1, 0, 0, MPEG_SETTLE_SAMPLES, []
                for mono, at in held:
                    for piece, position, reason in self._place(mono, at, position, reason):
                        yield piece
                held = []
                frame_end = pts + _samples(packet.duration, to_samples, frame.samples)
                pending += max(0, packet.size - frame.size)  # trailing bytes of no frame
                # all its bytes there, its main data all read
                whole = packet.size >= frame.size and frame.backstep <= reservoir
                reservoir += frame.main_data
                try:
                    decoded = packet.decode()  # decoded even if not whole: the decoder's state
                except _FFMPEG_ERRORS as error:
                    reason = reason or f"cannot decode: {_ffmpeg_reason(error)}"
                    whole = False
                if not whole:
                    reason = reason or "cannot decode: MPEG frame data missing (bit reservoir)"
                    settle = MPEG_SETTLE_SAMPLES
                elif reason is not None and settle > 0:
                    settle -= frame.samples
                else:
                    held = [(_mono(a), _samples(a.pts, to_samples, pts) + offset) for a in decoded]
            try:
                decoded = stream.decode(None)  # the decoder's last frames, if it holds any
            except _FFMPEG_ERRORS:
                decoded = []
            held += [(_mono(a), _samples(a.pts, to_samples, frame_end) + offset) for a in decoded]
            for mono, at in held:
                for piece, position, reason in self._place(mono, at, position, reason):
                    yield piece
        if position < self._frames:
            self._note(position, self._frames, "file ends early: truncated or corrupt")
            yield np.zeros(self._frames - position)

    def _place(
        self, mono: np.ndarray, at: int, position: int, reason: Optional[str]
    ) -> Iterator[Tuple[np.ndarray, int, Optional[str]]]:
        """``(piece, position after it, reason)`` for decoded samples whose first is input
        sample ``at`` when ``position`` samples were yielded: silence before them if they start
        later (noted with ``reason``), their samples from ``position`` on, none past the end."""
        total = self._frames
        if at > position and position < total:
            end = min(at, total)
            self._note(position, end, reason or "cannot decode: missing audio")
            yield np.zeros(end - position), end, None
            position = end
        first, last = max(0, position - at), min(mono.size, total - at)
        if first < last:
            yield self._finite(at + first, mono[first:last]), at + last, None

    def _mpeg_scan(self) -> int:
        """A demux-only pass over the file (no decoding; memory flat): sets the samples held by
        each span of bytes without frame sync that a frame follows, in order, and returns the
        samples of all frames (the encoder's delay and padding included).

        Constant bitrate (every frame of one bitrate): a span holds its bytes / the mean frame
        size, whole frames (exact). Variable: the frames the Xing/Info header counts less the
        frames found are the frames lost, shared in proportion to the spans' bytes (exact for
        one span) and each kept within what its bytes can hold (its bytes / the largest frame
        ... / the smallest). Without that header count, or in a file shorter than the header
        says (cut short), as at a constant bitrate.
        """
        spans: List[int] = []  # bytes of each span
        pending, count, total_size, smallest, largest = 0, 0, 0, None, 0
        bitrates, samples_per_frame = set(), 0
        with av.open(str(self.path)) as container:
            stream = container.streams.audio[0]
            for packet, frame in _mpeg_packets(container, stream, self._audio_start):
                if frame is None:
                    pending += packet.size
                    continue
                if pending:
                    spans.append(pending)
                    pending = 0
                count, total_size = count + 1, total_size + frame.size
                smallest = min(smallest or frame.size, frame.size)
                largest = max(largest, frame.size)
                bitrates.add(frame.bitrate)
                samples_per_frame = frame.samples
                pending += max(0, packet.size - frame.size)
        if not count:
            self._mpeg_lost_samples = [0] * len(spans)
            return 0
        estimates = [size * count / total_size for size in spans]  # at the mean frame size
        xing = self._xing
        counted = xing.frames if xing else None
        if xing and xing.size and self.path.stat().st_size < xing.pos + xing.size:
            counted = None  # cut short: the header's count is not the frames there are
        if len(bitrates) == 1 or not counted or counted <= count:
            frames = [round(estimate) for estimate in estimates]
        else:
            scale, done, frames = (counted - count) / sum(estimates), 0.0, []
            for size, estimate in zip(spans, estimates):
                share = round(done + estimate * scale) - round(done)
                done += estimate * scale
                frames.append(min(max(share, size // largest), -(-size // smallest)))
        self._mpeg_lost_samples = [n * samples_per_frame for n in frames]
        return (count + sum(frames)) * samples_per_frame

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


# --- MPEG audio frames ----------------------------------------------------------------------

# kbit/s of bitrate indexes 1-14: MPEG-1 layers I, II, III; MPEG-2/2.5 layer I, layers II and III.
_MPEG1_KBPS = (
    (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
)
_MPEG2_KBPS = (
    (32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
)
_MPEG_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_MPEG_SUBTYPES = {"mp1": "MPEG_LAYER_I", "mp2": "MPEG_LAYER_II", "mp3": "MPEG_LAYER_III"}


class _MpegFrame(NamedTuple):
    size: int  # bytes, header included
    samples: int  # per channel
    bitrate: int  # kbit/s
    mpeg1: bool
    mono: bool
    # Layer III: how far back (bytes of the main data of the frames before) its main data begins
    # (the bit reservoir), and how many bytes of main data it carries itself. 0 for layers I, II.
    backstep: int = 0
    main_data: int = 0


def _mpeg_frame(head: bytes) -> Optional[_MpegFrame]:
    """The MPEG audio frame that begins with ``head`` (its first 8 bytes or more; 4 are enough
    for all but ``backstep``), or None if it does not begin with a frame header (no sync, a
    reserved field, a free-format bitrate)."""
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return None
    version, layer = (head[1] >> 3) & 3, 4 - ((head[1] >> 1) & 3)
    index, rate_index, padding = head[2] >> 4, (head[2] >> 2) & 3, (head[2] >> 1) & 1
    if version == 1 or layer == 4 or index in (0, 15) or rate_index == 3:
        return None
    mpeg1, mono = version == 3, head[3] >> 6 == 3
    kbps = (_MPEG1_KBPS[layer - 1] if mpeg1 else _MPEG2_KBPS[min(layer, 2) - 1])[index - 1]
    rate = _MPEG_RATES[version][rate_index]
    if layer == 1:
        return _MpegFrame((12 * kbps * 1000 // rate + padding) * 4, 384, kbps, mpeg1, mono)
    if layer == 2:
        return _MpegFrame(144 * kbps * 1000 // rate + padding, 1152, kbps, mpeg1, mono)
    size = (144 if mpeg1 else 72) * kbps * 1000 // rate + padding
    side = _side_info_bytes(mpeg1, mono) + (0 if head[1] & 1 else 2)  # 2: a CRC
    at = 4 + (0 if head[1] & 1 else 2)
    backstep = 0
    if len(head) >= at + 2:  # main_data_begin: 9 bits (MPEG-1) or 8 (MPEG-2, 2.5)
        backstep = (head[at] << 1 | head[at + 1] >> 7) if mpeg1 else head[at]
    return _MpegFrame(
        size, 1152 if mpeg1 else 576, kbps, mpeg1, mono, backstep, max(0, size - 4 - side)
    )


def _side_info_bytes(mpeg1: bool, mono: bool) -> int:
    """Layer III side information after the header (and its CRC)."""
    return (17 if mono else 32) if mpeg1 else (9 if mono else 17)


def _mpeg_packets(
    container, stream, start: Optional[int] = None
) -> Iterator[Tuple["av.Packet", Optional[_MpegFrame]]]:
    """The stream's packets with their frame (None: bytes without frame sync). Bytes the demuxer
    skipped, after ``start`` (where the audio begins, if known), come as a frameless stand-in
    of their size."""
    expected = start
    for packet in container.demux(stream):
        if packet.size == 0:
            continue
        if packet.pos is not None and packet.pos >= 0:
            if expected is not None and packet.pos > expected:
                yield _Skipped(packet.pos - expected), None
            expected = packet.pos + packet.size
        yield packet, _mpeg_frame(bytes(packet)[:8])


class _Skipped(NamedTuple):
    size: int


class _Xing(NamedTuple):
    """A Xing/Info header frame (LAME's, FFmpeg's): the first frame of the stream, no audio."""

    pos: int  # where it begins
    end: int  # where it ends: the first audio frame
    frames: Optional[int]  # audio frames in the stream (None: its flags say it does not tell)
    size: Optional[int]  # bytes of the stream, from its own first byte


def _xing_header(path: Path) -> Optional[_Xing]:
    """The file's Xing/Info header frame: the first frame after any ID3v2 tag (the first 64 KiB
    after it are searched), or None."""
    with open(path, "rb") as f:
        tag = f.read(10)
        start = 0
        if tag[:3] == b"ID3" and len(tag) == 10:  # its size: 4 bytes of 7 bits, a footer
            start = 10 + sum((b & 0x7F) << (7 * (3 - i)) for i, b in enumerate(tag[6:10]))
            start += 10 if tag[5] & 0x10 else 0
        f.seek(start)
        head = f.read(1 << 16)
    found = [head.find(name) for name in (b"Xing", b"Info")]
    for at in sorted(i for i in found if i >= 0):
        for side in (9, 17, 32):  # side information before it: whichever the header agrees with
            frame = _mpeg_frame(head[at - 4 - side : at - side]) if at >= 4 + side else None
            if frame is None or _side_info_bytes(frame.mpeg1, frame.mono) != side:
                continue
            if len(head) < at + 16:
                return None
            flags = head[at + 7]
            frames = int.from_bytes(head[at + 8 : at + 12], "big") if flags & 1 else None
            size_at = at + (12 if flags & 1 else 8)
            size = int.from_bytes(head[size_at : size_at + 4], "big") if flags & 2 else None
            pos = start + at - 4 - side
            return _Xing(pos, pos + frame.size, frames, size)
    return None


def _starts_like_mpeg(path: Path) -> bool:
    """The file begins with an ID3v2 tag or an MPEG audio frame header."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:  # libsndfile says why
        return False
    return head[:3] == b"ID3" or _mpeg_frame(head) is not None


def _samples(value: Optional[int], to_samples: Fraction, default: int) -> int:
    """A timestamp or duration in the stream's time base as samples (``default`` if unset)."""
    return default if value is None else int(round(value * to_samples))


def _mono(audio: "av.AudioFrame") -> np.ndarray:
    """A decoded frame as float64 mono in [-1, 1] (channels averaged)."""
    data = audio.to_ndarray()
    channels = len(audio.layout.channels)
    if not audio.format.is_planar:
        data = data.reshape(-1, channels).T
    if data.dtype.kind in "iu":
        bits = data.dtype.itemsize * 8
        data = data.astype(np.float64)
        if audio.format.name.startswith("u8"):
            data -= 128.0
        data /= 2.0 ** (bits - 1)
    return data.mean(axis=0, dtype=np.float64)


def _ffmpeg_reason(error: BaseException) -> str:
    return _one_line(getattr(error, "strerror", None) or error)


def _runs_of(mask: np.ndarray) -> List[Tuple[int, int]]:
    """``[first, end)`` of each run of True in a 1-D boolean array."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]
