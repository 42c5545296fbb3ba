"""Decoding one audio file into the waveform every later stage expects.

``load_audio`` returns float32 mono 16 kHz samples in [-1, 1] or raises ``AudioError``; it never
returns something the feature extractor would choke on later (empty, NaN, silent, too short).
Any format libsndfile reads works (WAV, FLAC, OGG/Vorbis, AIFF, ...).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path
from typing import List, Tuple, Union

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from preprocessing.features import FRAME_LENGTH, SAMPLE_RATE

OVERLONG_POLICIES = ("truncate", "reject")
DEFAULT_MAX_SECONDS = 60.0
DEFAULT_SILENCE_THRESHOLD = 1e-4  # peak below this (about -80 dBFS) counts as digital silence


# libsndfile's log line for a WAV/AIFF data chunk whose header length disagrees with the file.
_DATA_CHUNK_MISMATCH = re.compile(
    r"^\s*(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE
)
_PLACEHOLDER_BYTES = 0x7FFFFFF0  # 0x7FFFFFFF / 0xFFFFFFFF (and close) mean "length unknown"


class AudioError(ValueError):
    """An audio file that cannot become a waveform. ``str(error)`` names the file and the reason."""

    def __init__(self, path: Union[str, os.PathLike], reason: str, stage: str = "decode"):
        self.path = str(path)
        self.reason = reason
        self.stage = stage
        super().__init__(f"{self.path}: {reason}")


@dataclasses.dataclass
class AudioInfo:
    """What the file was, before conversion. ``duration`` is in seconds of the original file."""

    path: str
    sample_rate: int
    channels: int
    duration: float
    format: str = ""
    subtype: str = ""
    warnings: List[str] = dataclasses.field(default_factory=list)


def load_audio(
    path: Union[str, os.PathLike],
    *,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    overlong: str = "truncate",
    silence_threshold: float = DEFAULT_SILENCE_THRESHOLD,
) -> Tuple[np.ndarray, AudioInfo]:
    """Decode ``path`` into float32 ``[S]`` mono samples at 16 kHz in [-1, 1].

    Multi-channel audio is averaged to mono; other sample rates are resampled with a polyphase
    filter (exact ratio ``16000 / rate``). Audio longer than ``max_seconds`` is cut to its first
    ``max_seconds`` with a note in ``info.warnings`` (``overlong="truncate"``) or rejected
    (``overlong="reject"``).

    Raises:
        AudioError: missing, empty, unreadable, corrupt or truncated file; NaN/inf samples;
            silence only (peak < ``silence_threshold``); shorter than one 25 ms frame; too long
            under ``overlong="reject"``.
        ValueError: a bad argument (unknown ``overlong`` policy, non-positive ``max_seconds``).
    """
    if overlong not in OVERLONG_POLICIES:
        raise ValueError(f"overlong must be one of {OVERLONG_POLICIES}, got {overlong!r}")
    if not max_seconds > 0:
        raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
    path = Path(path)
    if not path.exists():
        raise AudioError(path, "file not found")
    if not path.is_file():
        raise AudioError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")

    try:
        with sf.SoundFile(str(path)) as f:
            info = AudioInfo(
                path=str(path),
                sample_rate=int(f.samplerate),
                channels=int(f.channels),
                duration=f.frames / f.samplerate if f.frames > 0 else 0.0,
                format=f.format,
                subtype=f.subtype,
            )
            declared = int(f.frames)
            if declared <= 0:
                raise AudioError(path, f"no audio frames ({f.format}/{f.subtype}, 0 samples)")
            # Check the length from the header first: a too-long file is rejected, or only its
            # kept part decoded, without reading hours of audio.
            max_frames = int(math.floor(max_seconds * f.samplerate))
            too_long = declared > max_frames
            if too_long and overlong == "reject":
                raise AudioError(
                    path, f"too long: {info.duration:.2f} s > max_seconds={max_seconds:g}"
                )
            wanted = min(declared, max_frames)
            log = f.extra_info
            samples = f.read(frames=wanted, dtype="float32", always_2d=True)
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as error:
        # A truncated FLAC lands here too ("flac decoder lost sync").
        raise AudioError(
            path, f"cannot decode (unsupported, corrupt or truncated file): {_one_line(error)}"
        ) from error

    # A WAV cut short does not raise: libsndfile quietly clamps the frame count to the bytes
    # present and notes "data : <header> (should be <actual>)" in its log. A partial recording
    # no longer matches its transcript and label, so that is an error. Streaming writers put a
    # placeholder length (0 or ~4 GiB) in the header; such files are complete, only noted.
    chunk = _DATA_CHUNK_MISMATCH.search(log)
    if chunk:
        header_bytes, actual_bytes = int(chunk.group(1)), int(chunk.group(2))
        if header_bytes == 0 or header_bytes >= _PLACEHOLDER_BYTES:
            info.warnings.append(
                f"data length in header is a placeholder ({header_bytes}); "
                f"read {actual_bytes} bytes"
            )
        elif header_bytes - actual_bytes >= 8 * info.channels:  # more than a frame's padding
            raise AudioError(
                path,
                f"truncated: header declares {header_bytes} data bytes, file holds {actual_bytes}",
            )

    # Backstop for other formats: fewer frames decoded than the header declared.
    if samples.shape[0] < wanted:
        raise AudioError(
            path,
            f"truncated or corrupt: header declares {declared} frames, "
            f"only {samples.shape[0]} decoded",
        )
    if not np.all(np.isfinite(samples)):
        raise AudioError(path, "contains NaN or infinite samples")
    if too_long:
        info.warnings.append(f"truncated from {info.duration:.2f} s to max_seconds={max_seconds:g}")

    waveform = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if info.sample_rate != SAMPLE_RATE:
        waveform = _resample(waveform, info.sample_rate)
        if too_long:  # the polyphase output may be a sample longer than the exact limit
            waveform = waveform[: int(math.floor(max_seconds * SAMPLE_RATE))]
    peak = float(np.max(np.abs(waveform))) if waveform.size else 0.0
    if peak > 1.0:
        # Float files may exceed full scale; resampling may overshoot a little. Clip, and say so
        # when it is more than filter ringing.
        if peak > 1.01:
            info.warnings.append(f"clipped to [-1, 1] (peak {peak:.3f})")
        waveform = np.clip(waveform, -1.0, 1.0)
    if waveform.shape[0] < FRAME_LENGTH:
        raise AudioError(
            path,
            f"too short: {waveform.shape[0] / SAMPLE_RATE * 1000:.1f} ms, "
            f"less than one {FRAME_LENGTH / SAMPLE_RATE * 1000:.0f} ms frame",
        )
    if peak < silence_threshold:
        raise AudioError(path, f"silence only (peak {peak:.2e} < {silence_threshold:g})")
    return np.ascontiguousarray(waveform, dtype=np.float32), info


def _resample(waveform: np.ndarray, rate: int) -> np.ndarray:
    """Resample ``[S]`` from ``rate`` to 16 kHz; the ratio is reduced so it is exact."""
    g = math.gcd(SAMPLE_RATE, rate)
    return resample_poly(waveform, SAMPLE_RATE // g, rate // g).astype(np.float32)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
