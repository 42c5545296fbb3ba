"""load_audio: conversions checked against NumPy, and every rejected input named in its error."""

import numpy as np
import pytest
import soundfile as sf
from data_support import RAVDESS_SPEECH as RAVDESS
from data_support import needs_speech

from preprocessing.audio import AudioError, AudioInfo, load_audio

RAVDESS_FILE = RAVDESS / "Actor_01" / "03-01-01-01-01-01-01.flac"


def tone(seconds, rate=16000, freq=440.0, amplitude=0.5):
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write(path, data, rate=16000, subtype=None, format=None):
    sf.write(str(path), data, rate, subtype=subtype, format=format)
    return path


def assert_audio_error(path, match, **kwargs):
    with pytest.raises(AudioError, match=match) as caught:
        load_audio(path, **kwargs)
    assert str(path) in str(caught.value)
    assert caught.value.stage == "decode"
    assert caught.value.path == str(path)
    return caught.value


def test_16k_mono_wav_round_trips(tmp_path):
    data = tone(1.0)
    path = write(tmp_path / "a.wav", data, subtype="FLOAT")
    waveform, info = load_audio(path)
    assert waveform.dtype == np.float32 and waveform.shape == (16000,)
    np.testing.assert_array_equal(waveform, data)
    assert info == AudioInfo(
        path=str(path),
        sample_rate=16000,
        channels=1,
        duration=1.0,
        format="WAV",
        subtype="FLOAT",
        warnings=[],
    )


def test_stereo_is_averaged(tmp_path):
    left, right = tone(0.5, freq=300), tone(0.5, freq=700, amplitude=0.25)
    path = write(tmp_path / "s.wav", np.stack([left, right], axis=1), subtype="FLOAT")
    waveform, info = load_audio(path)
    assert info.channels == 2
    np.testing.assert_allclose(waveform, (left + right) / 2, atol=1e-7)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampled_to_16k_keeps_the_tone(tmp_path, rate):
    path = write(tmp_path / f"r{rate}.flac", tone(1.0, rate=rate, freq=440.0), rate=rate)
    waveform, info = load_audio(path)
    assert info.sample_rate == rate and info.duration == pytest.approx(1.0)
    assert waveform.shape == (16000,)
    # The spectral peak stays at 440 Hz (1 Hz bins over one second) and the level is kept.
    assert np.argmax(np.abs(np.fft.rfft(waveform))) == 440
    np.testing.assert_allclose(waveform[1000:15000], tone(1.0)[1000:15000], atol=2e-3)


def test_ogg_vorbis_decodes(tmp_path):
    path = write(tmp_path / "a.ogg", tone(0.5), format="OGG", subtype="VORBIS")
    waveform, info = load_audio(path)
    assert info.format == "OGG"
    assert abs(waveform.shape[0] - 8000) <= 1
    assert np.argmax(np.abs(np.fft.rfft(waveform[:8000]))) == 220  # 440 Hz at 2 Hz bins


@needs_speech
def test_real_ravdess_flac():
    waveform, info = load_audio(RAVDESS_FILE)
    assert (info.sample_rate, info.channels, info.format) == (16000, 1, "FLAC")
    assert waveform.shape == (52853,) and info.duration == pytest.approx(52853 / 16000)
    assert 0.0 < np.abs(waveform).max() <= 1.0
    assert info.warnings == []


def test_overlong_truncated_with_warning(tmp_path):
    path = write(tmp_path / "long.wav", tone(3.0, rate=48000), rate=48000, subtype="FLOAT")
    waveform, info = load_audio(path, max_seconds=2.0)
    assert waveform.shape == (32000,)
    assert info.duration == pytest.approx(3.0)
    assert len(info.warnings) == 1 and "truncated from 3.00 s to max_seconds=2" in info.warnings[0]


def test_overlong_rejected(tmp_path):
    path = write(tmp_path / "long.wav", tone(3.0))
    assert_audio_error(
        path, r"too long: 3\.00 s > max_seconds=2", max_seconds=2.0, overlong="reject"
    )
    waveform, _ = load_audio(path, max_seconds=3.0, overlong="reject")  # exactly the limit is fine
    assert waveform.shape == (48000,)


def test_bad_arguments_are_value_errors_not_audio_errors(tmp_path):
    path = write(tmp_path / "a.wav", tone(0.1))
    with pytest.raises(ValueError, match="overlong must be one of"):
        load_audio(path, overlong="drop")
    with pytest.raises(ValueError, match="max_seconds must be > 0"):
        load_audio(path, max_seconds=0)


def test_missing_file(tmp_path):
    assert_audio_error(tmp_path / "nope.wav", "file not found")


def test_directory(tmp_path):
    assert_audio_error(tmp_path, "not a regular file")


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    assert_audio_error(path, r"empty file \(0 bytes\)")


def test_wav_header_without_samples(tmp_path):
    path = write(tmp_path / "nosamples.wav", np.zeros(0, np.float32))
    assert path.stat().st_size > 0
    assert_audio_error(path, "no audio frames")


def test_text_file_named_wav(tmp_path):
    path = tmp_path / "text.wav"
    path.write_text("this is not audio\n" * 20)
    assert_audio_error(path, r"cannot decode .*Format not recognised")


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.flac"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    assert_audio_error(path, "cannot decode")


@needs_speech
def test_truncated_flac_is_an_error(tmp_path):
    # libsndfile reads the full length from the FLAC header, then loses sync at the cut.
    data = RAVDESS_FILE.read_bytes()
    path = tmp_path / "half.flac"
    path.write_bytes(data[: len(data) // 2])
    assert_audio_error(
        path, r"cannot decode \(unsupported, corrupt or truncated file\): .*lost sync"
    )


def test_truncated_wav_is_an_error(tmp_path):
    # libsndfile does not raise here: it clamps the frame count to the bytes present.
    full = write(tmp_path / "full.wav", tone(1.0), subtype="PCM_16")
    data = full.read_bytes()
    path = tmp_path / "half.wav"
    path.write_bytes(data[: len(data) // 2])
    assert_audio_error(path, r"truncated: header declares 32000 data bytes, file holds 15978")


def test_streamed_wav_with_placeholder_length_is_kept(tmp_path):
    full = write(tmp_path / "full.wav", tone(0.5), subtype="PCM_16")
    data = bytearray(full.read_bytes())
    data_chunk = data.index(b"data")
    data[data_chunk + 4 : data_chunk + 8] = (0xFFFFFFFF).to_bytes(4, "little")
    path = tmp_path / "streamed.wav"
    path.write_bytes(bytes(data))
    waveform, info = load_audio(path)
    assert waveform.shape == (8000,)
    assert any("placeholder" in w for w in info.warnings)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples(tmp_path, bad):
    data = tone(0.1)
    data[100] = bad
    path = write(tmp_path / "bad.wav", data, subtype="FLOAT")
    assert_audio_error(path, "NaN or infinite")


def test_silence_only(tmp_path):
    path = write(tmp_path / "silent.wav", np.full(16000, 5e-5, np.float32), subtype="FLOAT")
    assert_audio_error(path, r"silence only \(peak 5\.00e-05 < 0\.0001\)")
    waveform, _ = load_audio(path, silence_threshold=1e-5)  # configurable
    assert waveform.shape == (16000,)


def test_shorter_than_one_frame(tmp_path):
    path = write(tmp_path / "short.wav", tone(399 / 16000))
    assert_audio_error(path, r"too short: 24\.9 ms, less than one 25 ms frame")
    waveform, _ = load_audio(write(tmp_path / "frame.wav", tone(400 / 16000)))
    assert waveform.shape == (400,)


def test_float_file_beyond_full_scale_is_clipped_with_warning(tmp_path):
    path = write(tmp_path / "hot.wav", tone(0.1, amplitude=2.0), subtype="FLOAT")
    waveform, info = load_audio(path)
    assert waveform.max() == 1.0 and waveform.min() == -1.0
    assert info.warnings == ["clipped to [-1, 1] (peak 2.000)"]
