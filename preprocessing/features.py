"""The log-mel filterbank: the one definition used by preprocessing, training and serving.

25 ms Hann windows every 10 ms (100 frames per second, the rate of the forced aligner's
frames), 512-point FFT, power spectrum, 40 mel bands between 20 Hz and 8 kHz, natural log
with a floor. Pure core-TensorFlow ops, so the serving SavedModel computes the very same
features in-graph (stock TF Serving has no tensorflow-io / tensorflow-text kernels).
"""

from __future__ import annotations

import tensorflow as tf

SAMPLE_RATE = 16000
FRAME_LENGTH = 400  # 25 ms at 16 kHz
FRAME_STEP = 160  # 10 ms at 16 kHz
FRAMES_PER_SECOND = SAMPLE_RATE // FRAME_STEP  # 100
FFT_LENGTH = 512
NUM_MEL_BINS = 40
LOWER_EDGE_HZ = 20.0
UPPER_EDGE_HZ = 8000.0
PRE_EMPHASIS = 0.97
LOG_FLOOR = 1e-6


def num_frames_for(num_samples):
    """Frames produced for ``num_samples`` samples (0 when shorter than one window).

    Works on Python ints and on integer tensors alike.
    """
    if isinstance(num_samples, int):
        return 1 + (num_samples - FRAME_LENGTH) // FRAME_STEP if num_samples >= FRAME_LENGTH else 0
    num_samples = tf.cast(num_samples, tf.int32)
    return tf.where(num_samples >= FRAME_LENGTH, 1 + (num_samples - FRAME_LENGTH) // FRAME_STEP, 0)


def log_mel_filterbank(waveform: tf.Tensor) -> tf.Tensor:
    """Log-mel filterbank of 16 kHz mono audio.

    Args:
        waveform: float ``[S]`` or ``[B, S]`` in [-1, 1] at 16 kHz. For a padded batch, frame
            ``t`` of row ``b`` depends only on samples ``[160 t - 1, 160 t + 400)``, so the first
            ``num_frames_for(num_samples[b])`` frames equal those of the unpadded utterance.
    Returns:
        float32 ``[..., num_frames_for(S), 40]``.
    """
    waveform = tf.convert_to_tensor(waveform, dtype=tf.float32)
    # Pre-emphasis y[n] = x[n] - 0.97 x[n-1] (x[-1] = 0): flattens the spectral tilt of speech.
    previous = tf.pad(waveform[..., :-1], [[0, 0]] * (waveform.shape.rank - 1) + [[1, 0]])
    emphasized = waveform - PRE_EMPHASIS * previous
    stft = tf.signal.stft(
        emphasized,
        frame_length=FRAME_LENGTH,
        frame_step=FRAME_STEP,
        fft_length=FFT_LENGTH,
        window_fn=tf.signal.hann_window,
        pad_end=False,
    )
    power = tf.math.square(tf.abs(stft))
    mel_matrix = tf.signal.linear_to_mel_weight_matrix(
        num_mel_bins=NUM_MEL_BINS,
        num_spectrogram_bins=FFT_LENGTH // 2 + 1,
        sample_rate=SAMPLE_RATE,
        lower_edge_hertz=LOWER_EDGE_HZ,
        upper_edge_hertz=UPPER_EDGE_HZ,
    )
    mel = tf.tensordot(power, mel_matrix, axes=1)
    return tf.math.log(mel + LOG_FLOOR)
