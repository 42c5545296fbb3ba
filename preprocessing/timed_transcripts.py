"""Transcripts with times, for long recordings: which words fall in which speech segment.

Read formats: WebVTT (``.vtt``) and SubRip (``.srt``), parsed by pysubs2, and Praat TextGrids
(``.TextGrid``, the ``words`` tier, by ``preprocessing.alignment.read_textgrid``). A subtitle cue
gives its text a time span, not each word: the cue's words (``normalize_transcript``: markup
such as ``<v Speaker>`` and ``[LAUGHTER]`` dropped) share its span evenly, and each word goes to
the speech segment nearest its estimated middle. Those estimates only choose the segment; the
words' real spans come from forced alignment of the segment's audio.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

from preprocessing.alignment import AlignmentError, normalize_transcript, read_textgrid
from preprocessing.features import FRAMES_PER_SECOND

TIMED_TRANSCRIPT_SUFFIXES = (".vtt", ".srt", ".textgrid")
# A word whose middle lies further than this from every speech segment is listed as unplaced,
# not forced into a segment it was not spoken in.
MAX_WORD_DISTANCE_S = 1.0


class TranscriptError(ValueError):
    """A timed transcript that cannot be read; ``str(error)`` names the file and why."""


@dataclasses.dataclass(frozen=True)
class TimedWord:
    """A word and its (estimated) span in seconds."""

    word: str
    start_s: float
    end_s: float

    @property
    def middle_s(self) -> float:
        return (self.start_s + self.end_s) / 2


def read_timed_transcript(path: Union[str, os.PathLike]) -> List[TimedWord]:
    """The words of a WebVTT, SRT or TextGrid file in time order.

    Raises:
        TranscriptError: unknown extension, missing, unreadable or malformed file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TIMED_TRANSCRIPT_SUFFIXES:
        raise TranscriptError(
            f"{path}: a timed transcript must be "
            f"{', '.join(TIMED_TRANSCRIPT_SUFFIXES)}"
            f" (got {path.suffix or 'no extension'!r})"
        )
    if not path.is_file():
        raise TranscriptError(f"{path}: transcript not found")
    if suffix == ".textgrid":
        try:
            spans = read_textgrid(path)
        except AlignmentError as error:
            raise TranscriptError(str(error)) from error
        return [
            TimedWord(w.word, w.start / FRAMES_PER_SECOND, w.end / FRAMES_PER_SECOND) for w in spans
        ]
    import pysubs2

    try:
        subtitles = pysubs2.load(
            str(path), encoding="utf-8", format_=None if suffix != ".vtt" else "vtt"
        )
    except (pysubs2.exceptions.Pysubs2Error, UnicodeDecodeError, ValueError) as error:
        raise TranscriptError(
            f"{path}: malformed {suffix[1:].upper()} file: "
            f"{' '.join(str(error).split()) or type(error).__name__}"
        ) from error
    words = []
    for event in sorted(subtitles, key=lambda e: e.start):
        if event.is_comment:
            continue
        tokens = normalize_transcript(event.plaintext)
        start, end = event.start / 1000.0, max(event.end, event.start) / 1000.0
        step = (end - start) / max(len(tokens), 1)
        words.extend(
            TimedWord(t, start + i * step, start + (i + 1) * step) for i, t in enumerate(tokens)
        )
    return words


class WordAssigner:
    """Hands each speech segment, in order, the words nearest it: a word goes to the segment
    (``(start_s, end_s)``) nearest its middle if one is within ``max_distance_s``; others are
    collected in :attr:`unplaced`. Segments come one at a time with the one after them (None
    for the last), so a recording is handled as it is segmented; each word is looked at once."""

    def __init__(self, words: Sequence[TimedWord], max_distance_s: float = MAX_WORD_DISTANCE_S):
        self._words = sorted(words, key=lambda w: w.middle_s)
        self._next = 0
        self.max_distance_s = max_distance_s
        self.unplaced: List[TimedWord] = []

    def take(
        self, segment: Tuple[float, float], following: Optional[Tuple[float, float]]
    ) -> List[TimedWord]:
        start, end = segment
        right = end + self.max_distance_s
        if following is not None:  # nearer to the next segment: left for it
            right = min(right, (end + following[0]) / 2)
        taken = []
        while self._next < len(self._words) and self._words[self._next].middle_s <= right:
            word = self._words[self._next]
            self._next += 1
            if word.middle_s < start - self.max_distance_s:
                self.unplaced.append(word)
            else:
                taken.append(word)
        return taken

    def finish(self) -> List[TimedWord]:
        """Every word still unplaced (after the last segment)."""
        self.unplaced.extend(self._words[self._next :])
        self._next = len(self._words)
        return self.unplaced


def assign_words(
    words: Sequence[TimedWord],
    segments: Sequence[Tuple[float, float]],
    *,
    max_distance_s: float = MAX_WORD_DISTANCE_S,
) -> Tuple[List[List[TimedWord]], List[TimedWord]]:
    """``(words of each segment, words of none)`` for segments in order (:class:`WordAssigner`
    over all of them)."""
    assigner = WordAssigner(words, max_distance_s)
    per_segment = [
        assigner.take(segment, segments[i + 1] if i + 1 < len(segments) else None)
        for i, segment in enumerate(segments)
    ]
    return per_segment, assigner.finish()
