"""Augmented copies of a waveform: other recording conditions, drawn per utterance and copy.

A copy passes the decoded 16 kHz waveform through one condition, or a chain of two, before the
filterbank is computed (``preprocessing.utterance``):

==========  =================================================================================
condition   what it does (parameters drawn uniformly)
==========  =================================================================================
reverb      room reverberation (``pedalboard.Reverb``: room size 0.3-0.9, wet level 0.1-0.4,
            dry level 0.6-1.0)
telephone   telephone band: 4th-order Butterworth band-pass 300-3400 Hz (``scipy.signal``),
            then down to 8 kHz and back (``pedalboard.Resample``)
gain        recording level: ``pedalboard.Gain`` of -10 to +10 dB (not clipped: a level, not
            a distortion)
noise       additive white Gaussian noise at an SNR of 5-20 dB over the whole utterance:
            ``sigma^2 = mean(x^2) / 10^(snr / 10)``
==========  =================================================================================

A chain applies its conditions in the order above, so the noise comes last and the SNR holds
for the copy as written. Every draw comes from a generator seeded by the utterance id and the
copy number (:func:`draw`), so a copy is the same on every run and runner. The length of the
waveform never changes: a copy keeps its source's word spans (the conditions do not move
words in time), and is never re-aligned.

Copies are records of a channel of their own, ``corpora.augmented_channel`` of the source's
(``speech_aug``, ``song_aug``), with the utterance id ``corpora.copy_id``: models train on them
only when a configuration names those channels, and nothing scores them (``trainer.data``
leaves augmented channels out unless asked for).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Dict, Tuple

import numpy as np
import pedalboard
from scipy import signal

from preprocessing.features import SAMPLE_RATE

# The conditions, in the order a chain applies them.
CONDITIONS = ("reverb", "telephone", "gain", "noise")
SNR_DB = (5.0, 20.0)
GAIN_DB = (-10.0, 10.0)
TELEPHONE_BAND_HZ = (300.0, 3400.0)
TELEPHONE_RATE = 8000
ROOM_SIZE = (0.3, 0.9)
WET_LEVEL = (0.1, 0.4)
DRY_LEVEL = (0.6, 1.0)
MAX_CHAIN = 2  # a copy has one condition or a chain of two
AUGMENT_STAGE = "augment"  # the error stage of a copy that failed (its source's record stands)


@dataclasses.dataclass(frozen=True)
class Condition:
    """The drawn conditions of one copy, in application order, with their parameters:
    ``steps`` is ``((name, {parameter: value}), ...)``."""

    steps: Tuple[Tuple[str, Dict[str, float]], ...]

    @property
    def names(self) -> Tuple[str, ...]:
        return tuple(name for name, _ in self.steps)

    def describe(self) -> str:
        """The record's ``augmentation`` feature: a JSON list of ``[name, parameters]``."""
        return json.dumps([[name, params] for name, params in self.steps], sort_keys=True)


def _seed(utterance_id: str, copy: int) -> int:
    digest = hashlib.sha256(f"{utterance_id}\0{copy}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


def draw(utterance_id: str, copy: int) -> Condition:
    """The condition of copy ``copy`` of ``utterance_id``: one to ``MAX_CHAIN`` distinct
    conditions and their parameters, from a generator seeded by both (deterministic)."""
    if copy < 1:
        raise ValueError(f"copies are numbered from 1, got {copy}")
    rng = np.random.default_rng(_seed(utterance_id, copy))
    count = int(rng.integers(1, MAX_CHAIN + 1))
    chosen = set(rng.choice(len(CONDITIONS), size=count, replace=False).tolist())
    steps = []
    for index, name in enumerate(CONDITIONS):
        if index not in chosen:
            continue
        if name == "reverb":
            params = {
                "room_size": float(rng.uniform(*ROOM_SIZE)),
                "wet_level": float(rng.uniform(*WET_LEVEL)),
                "dry_level": float(rng.uniform(*DRY_LEVEL)),
            }
        elif name == "gain":
            params = {"gain_db": float(rng.uniform(*GAIN_DB))}
        elif name == "noise":
            params = {"snr_db": float(rng.uniform(*SNR_DB)), "seed": int(rng.integers(2**31))}
        else:
            params = {}
        rounded = {k: round(v, 4) if isinstance(v, float) else v for k, v in params.items()}
        steps.append((name, rounded))
    return Condition(tuple(steps))


_TELEPHONE_BAND = signal.butter(
    4, TELEPHONE_BAND_HZ, btype="bandpass", fs=SAMPLE_RATE, output="sos"
)


def apply(waveform: np.ndarray, condition: Condition) -> np.ndarray:
    """``waveform`` (float32 ``[S]`` at 16 kHz) under ``condition``: float32 ``[S]``, the same
    length."""
    x = np.asarray(waveform, dtype=np.float32)
    for name, params in condition.steps:
        if name == "reverb":
            x = pedalboard.Reverb(**params)(x, SAMPLE_RATE)
        elif name == "telephone":
            x = signal.sosfilt(_TELEPHONE_BAND, x).astype(np.float32)
            x = pedalboard.Resample(target_sample_rate=TELEPHONE_RATE)(x, SAMPLE_RATE)
        elif name == "gain":
            x = pedalboard.Gain(gain_db=params["gain_db"])(x, SAMPLE_RATE)
        elif name == "noise":
            x = add_noise(x, params["snr_db"], np.random.default_rng(params["seed"]))
        else:
            raise ValueError(f"unknown condition {name!r} (known: {', '.join(CONDITIONS)})")
    if x.shape != np.shape(waveform):
        raise ValueError(f"{condition.names} changed the length: {np.shape(waveform)} -> {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def add_noise(waveform: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """``waveform`` plus white Gaussian noise scaled to ``snr_db`` over the whole waveform:
    ``10 log10(sum(x^2) / sum(n^2)) = snr_db`` (exactly, for the drawn noise)."""
    x = np.asarray(waveform, dtype=np.float64)
    noise = rng.standard_normal(x.shape)
    noise *= np.sqrt(np.sum(x**2) / (np.sum(noise**2) * 10.0 ** (snr_db / 10.0)))
    return (x + noise).astype(np.float32)
