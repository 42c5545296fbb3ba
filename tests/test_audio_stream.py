"""MP3 in ``preprocessing.audio_stream``: decoded through FFmpeg (PyAV), a corrupt span reported
at its time and the rest decoded where it belongs.

Each MP3 is written by the test (nothing committed): synthetic speech-like audio, or RAVDESS
utterances where the corpus is found, encoded at a variable bitrate by libsndfile (LAME, as the
project writes MP3) or at a constant one by FFmpeg's LAME encoder. Bytes in it are overwritten
with random ones. Where those bytes were in time is read from the clean file's frames (FFmpeg's
demuxer: their byte positions and timestamps), not from the code under test.

Tolerances: a span begins where the first frame the bytes touch begins (within a frame) and
ends no earlier than the last such frame, nor more than 0.5 s later: the frames after it whose
main data begins in the lost bytes (the layer III bit reservoir, up to 255 or 511 bytes back)
and the next 1,088 samples (overlap and synthesis filter) cannot be decoded either. Everything
outside the span is the clean file's decoding, sample for sample (16 kHz: no resampling), and
lines up with the original audio at lag 0.
"""

import av
import numpy as np
import pytest
import soundfile as sf
from data_support import require_speech

from preprocessing.audio import load_audio
from preprocessing.audio_stream import AudioStream

RATE = 16000


def speechlike(seconds: float, rate: int = RATE, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Voiced bursts of changing pitch between pauses, with a little noise: a variable bitrate
    varies."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    on = (np.sin(2 * np.pi * 0.7 * t) > 0) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    pitch = 2 * np.pi * 180 * t + 4 * np.sin(2 * np.pi * 4 * t)
    x = on * (0.2 * np.sin(pitch) + 0.1 * np.sin(2 * pitch)) + 0.01 * rng.standard_normal(t.size)
    x = x.astype(np.float32)
    return np.stack([x, np.roll(x, 40)], axis=1) if channels == 2 else x


def ravdess_speech(count: int = 8) -> np.ndarray:
    """RAVDESS utterances one after another at 16 kHz (a skip without the corpus)."""
    files = sorted(require_speech().glob("Actor_01/03-01-*"))[:count]
    return np.concatenate([load_audio(f)[0] for f in files])


def write_vbr(path, samples, rate=RATE):
    """Variable bitrate MP3 with a Xing/LAME header, as libsndfile writes it."""
    sf.write(str(path), samples, rate, format="MP3")


def write_cbr(path, samples, rate=RATE, kbps=32):
    """Constant bitrate MP3 (FFmpeg's LAME encoder, an Info header)."""
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    planar = np.ascontiguousarray(samples.reshape(-1, channels).T.astype(np.float32))
    with av.open(str(path), "w", format="mp3") as container:
        stream = container.add_stream(
            "libmp3lame", rate=rate, layout="mono" if channels == 1 else "stereo"
        )
        stream.bit_rate = kbps * 1000
        for start in range(0, planar.shape[1], 1152):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(planar[:, start : start + 1152]),
                format="fltp",
                layout=stream.layout.name,
            )
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def overwrite(path, out, spans, seed=0):
    """``path`` with each ``(fraction of the file, bytes)`` span overwritten with random bytes,
    as ``out``; returns the byte ranges."""
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    ranges = []
    for fraction, size in spans:
        first = int(len(data) * fraction)
        data[first : first + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        ranges.append((first, first + size))
    out.write_bytes(bytes(data))
    return ranges


def frames_time(path, first: int, end: int):
    """(start, end) in seconds of the frames of the clean file ``path`` that bytes
    ``[first, end)`` lie in, and the frame's duration: from FFmpeg's demuxer."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        to_s = stream.time_base
        start = stream.start_time
        hit = [
            (float((p.pts - start) * to_s), float((p.pts + p.duration - start) * to_s))
            for p in container.demux(stream)
            if p.size and p.pos < end and p.pos + p.size > first
        ]
    return hit[0][0], hit[-1][1], hit[0][1] - hit[0][0]


def decode(path):
    stream = AudioStream(path, block_seconds=3.3)
    blocks = list(stream.blocks())
    assert [s for s, _ in blocks] == list(np.cumsum([0] + [b.size for _, b in blocks])[:-1])
    out = np.concatenate([b for _, b in blocks])
    assert out.size == stream.num_samples
    return stream, out


def outside(spans, size, rate=RATE, margin=0.0):
    """Mask of the samples outside the spans (and ``margin`` seconds either side)."""
    keep = np.ones(size, bool)
    for span in spans:
        keep[max(0, int((span.start_s - margin) * rate)) : int((span.end_s + margin) * rate)] = 0
    return keep


def best_lag(out, original, first, last, reach=400):
    """The shift of ``original`` that best matches ``out[first:last]``, in samples."""
    lags = range(-reach, reach + 1)
    return max(
        lags, key=lambda lag: float(np.dot(out[first:last], original[first + lag : last + lag]))
    )


# --- Corrupt spans ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source, write, spans",
    [
        ("synthetic", write_vbr, [(0.45, 3000)]),
        ("synthetic", write_cbr, [(0.45, 3000)]),
        ("synthetic", write_cbr, [(0.25, 2000), (0.7, 600)]),  # constant bitrate: each exact
        ("ravdess", write_vbr, [(0.5, 3000)]),
    ],
    ids=["vbr", "cbr", "cbr-two-spans", "ravdess-vbr"],
)
def test_a_corrupt_mp3_span_is_reported_at_its_time_and_the_rest_is_in_place(
    tmp_path, capfd, source, write, spans
):
    original = speechlike(24.0) if source == "synthetic" else ravdess_speech()
    clean = tmp_path / "clean.mp3"
    write(clean, original)
    _, expected = decode(clean)
    corrupt = tmp_path / "corrupt.mp3"
    ranges = overwrite(clean, corrupt, spans)
    capfd.readouterr()

    stream, out = decode(corrupt)

    assert capfd.readouterr().err == ""  # FFmpeg's and libmpg123's notes stay out of stderr
    assert out.size == expected.size == sf.info(str(clean)).frames
    assert len(stream.unreadable) == len(ranges), stream.unreadable
    for span, (first, end) in zip(stream.unreadable, ranges):
        start_s, end_s, frame_s = frames_time(clean, first, end)
        assert span.reason.startswith("cannot decode: "), span
        assert start_s - 1e-6 <= span.start_s <= start_s + frame_s + 1e-6, (span, start_s)
        assert end_s - 1e-6 <= span.end_s <= end_s + 0.5, (span, end_s)
        assert np.all(out[int(span.start_s * RATE) : int(span.end_s * RATE)] == 0)
        # after the span: the original audio, at its time
        after = int(span.end_s * RATE)
        assert best_lag(out, original, after + 800, after + 2 * RATE) == 0
    keep = outside(stream.unreadable, out.size)
    assert np.max(np.abs(out[keep] - expected[keep])) < 1e-6


def test_a_corrupt_mp3_at_44100_hz_stereo(tmp_path):
    """Resampled to 16 kHz: the same, a resampling filter's length (0.1 s) from the span."""
    original = speechlike(15.0, rate=44100, channels=2)
    clean = tmp_path / "clean.mp3"
    write_vbr(clean, original, rate=44100)
    _, expected = decode(clean)
    corrupt = tmp_path / "corrupt.mp3"
    [(first, end)] = overwrite(clean, corrupt, [(0.5, 4000)])
    stream, out = decode(corrupt)
    [span] = stream.unreadable
    start_s, end_s, frame_s = frames_time(clean, first, end)
    assert start_s - 1e-6 <= span.start_s <= start_s + frame_s + 1e-6
    assert end_s - 1e-6 <= span.end_s <= end_s + 0.5
    keep = outside(stream.unreadable, out.size, margin=0.1)
    assert out.size == expected.size and np.max(np.abs(out[keep] - expected[keep])) < 1e-6


def test_a_truncated_mp3_ends_early_where_it_was_cut(tmp_path):
    clean = tmp_path / "clean.mp3"
    write_vbr(clean, speechlike(20.0))
    _, expected = decode(clean)
    data = clean.read_bytes()
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with av.open(str(clean)) as container:  # the time of the last whole frame kept
        stream = container.streams.audio[0]
        ends = [
            float((p.pts + p.duration - stream.start_time) * stream.time_base)
            for p in container.demux(stream)
            if p.size and p.pos + p.size <= len(data) * 0.6
        ]
    stream, out = decode(cut)
    [span] = stream.unreadable
    assert span.reason == "file ends early: truncated or corrupt"
    assert ends[-1] - 0.1 <= span.start_s <= ends[-1] and span.end_s == pytest.approx(20.0)
    keep = outside(stream.unreadable, out.size)
    assert out.size == expected.size and np.max(np.abs(out[keep] - expected[keep])) < 1e-6


# --- Clean files ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "write, rate, channels",
    [(write_vbr, RATE, 1), (write_cbr, RATE, 1), (write_vbr, 44100, 2)],
    ids=["vbr", "cbr", "vbr-44100-stereo"],
)
def test_a_clean_mp3_decodes_as_libsndfile_did(tmp_path, write, rate, channels):
    """The same length, samples within 1e-4 of libsndfile's (``load_audio``: the same mixdown
    and resampling), and the original audio at lag 0."""
    original = speechlike(12.0, rate=rate, channels=channels)
    path = tmp_path / "clean.mp3"
    write(path, original, rate=rate)
    whole, info = load_audio(path)
    stream, out = decode(path)
    assert stream.unreadable == []
    assert (stream.info.sample_rate, stream.info.channels) == (info.sample_rate, info.channels)
    assert (stream.info.format, stream.info.subtype) == (info.format, info.subtype)
    assert out.size == whole.size and np.max(np.abs(out - whole)) < 1e-4
    if rate == RATE:
        assert out.size == original.size
        assert best_lag(out, original, RATE, 11 * RATE) == 0
