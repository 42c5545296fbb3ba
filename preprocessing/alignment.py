"""Words and their frame spans at 100 frames per second (10 ms, the filterbank's rate).

A span is ``[start, end)`` in frames, end exclusive, ``start < end``. Frame ``i`` is the
filterbank frame that starts at sample ``160 * i``, so spans index the filterbank rows directly.
An utterance of ``S`` samples has ``1 + (S - 400) // 160`` frames.

Where the words come from (``Alignment.source``):

- ``given``: a corpus alignment read with ``read_textgrid`` / ``read_wdseg``;
- ``forced``: ``PocketSphinxAligner.align`` of a known transcript;
- ``asr``: ``PocketSphinxAligner.recognize`` when there is no transcript;
- ``fallback``: the aligner could not place the words, so they split the voiced region evenly.

Every failure that should mark the utterance as an error is an ``AlignmentError``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from praatio import textgrid as praat_textgrid
from praatio.utilities.errors import PraatioException

from preprocessing.features import (  # noqa: F401
    FRAME_LENGTH,
    FRAME_STEP,
    FRAMES_PER_SECOND,
    SAMPLE_RATE,
    num_frames_for,
)

SOURCES = ("given", "forced", "asr", "fallback")

# A corpus alignment may run past the filterbank's last frame by a little: the filterbank drops
# the final partial 25 ms window (up to 2 frames at the very end), plus rounding of times.
DEFAULT_TOLERANCE_FRAMES = 3

# Interval labels that mean "no word" in TextGrids.
SILENCE_LABELS = frozenset({"", "sil", "sp", "<sil>", "<s>", "</s>"})

# Sphinx-style non-words: <s>, </s>, <sil>, [NOISE], [SPEECH], ++BREATHING++, (NULL).
_FILLER = re.compile(r"^(<.*>|\[.*\]|\+\+.*\+\+|\(null\))$", re.IGNORECASE)
_VARIANT = re.compile(r"\(\d+\)$")  # pronunciation variant suffix: word(2)
# A token: letters/digits with apostrophes allowed inside ("don't", "o'clock").
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
# Non-speech annotations in transcripts (IEMOCAP: [LAUGHTER], [BREATHING]); Sphinx fillers.
_ANNOTATION = re.compile(r"\[[^\]]*\]|<[^>]*>|\+\+[^+]*\+\+")

# Beams for forced alignment. PocketSphinx's defaults (1e-48) prune every path for 11 of the
# 1,440 RAVDESS utterances (mostly strongly emotional ones) and seg() then comes back empty;
# the alignment search graph is tiny, so searching it all costs ~30% more time and finds a
# path for every one.
ALIGN_BEAMS = {"beam": 1e-200, "wbeam": 1e-200, "pbeam": 1e-200}
# The acoustic model's spoken-noise filler, aligned in place of out-of-dictionary words.
OOV_PLACEHOLDER = "[SPEECH]"

# Energy VAD for the fallback: frames within VAD_RANGE_DB of the loudest frame and above an
# absolute floor count as voiced (RAVDESS has quiet actors peaking at -38 dBFS).
VAD_RANGE_DB = 35.0
VAD_FLOOR_DB = -75.0
# A forced alignment with more than this share of its word frames before the first or after
# the last voiced frame has put words on silence: the aligner lost its way (on RAVDESS only 3
# screamed utterances of 1,440, at 37-42%; the next worst is 19%). Splitting the voiced region
# evenly is the better guess then.
MAX_UNVOICED_SHARE = 0.25


class AlignmentError(ValueError):
    """Words cannot be read or placed; ``str(error)`` says why."""


@dataclasses.dataclass(frozen=True)
class WordSpan:
    """One word over frames ``[start, end)``."""

    word: str
    start: int
    end: int

    def __post_init__(self):
        # Coerce NumPy integers so the spans serialise and compare as plain ints.
        object.__setattr__(self, "start", int(self.start))
        object.__setattr__(self, "end", int(self.end))
        if not self.word:
            raise AlignmentError("empty word")
        if not 0 <= self.start < self.end:
            raise AlignmentError(f"word {self.word!r}: bad span [{self.start}, {self.end})")


@dataclasses.dataclass(frozen=True)
class Alignment:
    """Words in spoken order with their spans.

    ``notes`` explain anything estimated rather than aligned; ``oov`` lists the transcript words
    that were not in the pronunciation dictionary (their spans are estimates).
    """

    words: Tuple[WordSpan, ...]
    source: str
    notes: Tuple[str, ...] = ()
    oov: Tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "words", tuple(self.words))
        object.__setattr__(self, "notes", tuple(self.notes))
        object.__setattr__(self, "oov", tuple(self.oov))
        if self.source not in SOURCES:
            raise AlignmentError(f"source must be one of {SOURCES}, got {self.source!r}")
        for before, after in zip(self.words, self.words[1:]):
            if after.start < before.start:
                raise AlignmentError(
                    f"words out of order: {before.word!r} at frame "
                    f"{before.start} before {after.word!r} at {after.start}"
                )

    @property
    def tokens(self) -> Tuple[str, ...]:
        return tuple(w.word for w in self.words)


def normalize_transcript(text: str) -> List[str]:
    """Lowercase word tokens of ``text``.

    Punctuation is dropped (hyphens and slashes separate words); apostrophes inside a word are
    kept ("don't"); bracketed annotations such as ``[LAUGHTER]`` or ``<sil>`` are removed.
    A transcript of only punctuation gives ``[]``.
    """
    text = text.replace("\u2019", "'").replace("\u2018", "'")
    text = _ANNOTATION.sub(" ", text)
    return _TOKEN.findall(text.lower())


# ------------------------------------------------------------------------------------------
# PocketSphinx


class PocketSphinxAligner:
    """Forced alignment and recognition with PocketSphinx's bundled US English models.

    Build one per worker (loading the models takes 0.3-0.5 s) and reuse it; not thread-safe.
    The recognition decoder (with its language model) is loaded on the first ``recognize``.

    ``loglevel`` is PocketSphinx's ("DEBUG", "INFO", "WARN", "ERROR", "FATAL"). It is a
    process-wide setting in PocketSphinx: every Decoder constructed sets it again.
    """

    def __init__(
        self,
        *,
        hmm: Optional[str] = None,
        dictionary: Optional[str] = None,
        lm: Optional[str] = None,
        loglevel: str = "FATAL",
    ):
        import pocketsphinx  # here, so importing this module stays cheap

        self._pocketsphinx = pocketsphinx
        self._common = {"samprate": SAMPLE_RATE, "loglevel": loglevel}
        if hmm is not None:
            self._common["hmm"] = hmm
        if dictionary is not None:
            self._common["dict"] = dictionary
        self._lm = lm
        # bestpath=False: alignment needs the Viterbi segmentation, not a lattice rescoring.
        self._aligner = pocketsphinx.Decoder(bestpath=False, **self._common, **ALIGN_BEAMS)
        self._recognizer = None
        self._has_placeholder = self._aligner.lookup_word(OOV_PLACEHOLDER) is not None

    def in_dictionary(self, word: str) -> bool:
        return self._aligner.lookup_word(word) is not None

    # -- forced alignment --------------------------------------------------------------------

    def align(self, waveform: np.ndarray, transcript: str) -> Alignment:
        """Align ``transcript`` to ``waveform`` (float32 in [-1, 1], 16 kHz mono).

        Returns exactly ``normalize_transcript(transcript)`` as words, in order, with
        non-overlapping spans inside the waveform's frames. Out-of-dictionary words are aligned
        as spoken noise and their span shared with their neighbours in proportion to word length
        (listed in ``oov``). If the decoder cannot align (nothing in the dictionary, no path,
        decoder error) or puts over a quarter of the word frames outside the voiced region,
        the words split the voiced region evenly instead (source "fallback").

        Raises:
            AlignmentError: the transcript has no words; the audio has no voiced frame (silence)
                or fewer frames than words; the waveform is not finite.
        """
        words = normalize_transcript(transcript)
        if not words:
            raise AlignmentError(f"transcript has no words: {transcript!r}")
        samples = _as_samples(waveform)
        num_frames = num_frames_for(samples.size)
        if num_frames < len(words):
            raise AlignmentError(
                f"{len(words)} words do not fit in {num_frames} frames "
                f"({samples.size / SAMPLE_RATE:.3f} s of audio)"
            )
        # Checked first: the aligner happily spreads words over digital silence.
        voiced_start, voiced_end = voiced_region(samples)
        oov_at = [i for i, w in enumerate(words) if not self.in_dictionary(w)]
        oov = tuple(words[i] for i in oov_at)
        notes = []
        if oov:
            notes.append(f"out of dictionary: {', '.join(oov)} (spans estimated)")

        failure = None
        if len(oov_at) == len(words):
            failure = "no transcript word is in the pronunciation dictionary"
        elif oov_at and not self._has_placeholder:
            failure = f"no {OOV_PLACEHOLDER} filler in the acoustic model to stand for OOV words"
        else:
            unknown = set(oov_at)
            text = [OOV_PLACEHOLDER if i in unknown else w for i, w in enumerate(words)]
            spans, failure = self._force_align(samples, text)
        if failure is None:
            spans = _make_valid(spans, num_frames)
            for run in _runs(oov_at):
                spans = _share_with_neighbours(spans, words, run, voiced_start)
            total = sum(e - s for s, e in spans)
            inside = sum(max(0, min(e, voiced_end) - max(s, voiced_start)) for s, e in spans)
            if total - inside > MAX_UNVOICED_SHARE * total:
                failure = (
                    f"implausible: {100 * (total - inside) / total:.0f}% of the word "
                    f"frames lie outside the voiced frames"
                )
            else:
                return Alignment(
                    tuple(WordSpan(w, s, e) for w, (s, e) in zip(words, spans)),
                    "forced",
                    tuple(notes),
                    oov,
                )

        start, end = voiced_start, voiced_end
        if end - start < len(words):  # widen a too-short voiced region to fit the words
            start = max(0, min(start, num_frames - len(words)))
            end = max(end, start + len(words))
        spans = _split(start, end, [1] * len(words))
        notes.append(
            f"forced alignment failed ({failure}); words split evenly over the "
            f"voiced frames [{start}, {end})"
        )
        return Alignment(
            tuple(WordSpan(w, s, e) for w, (s, e) in zip(words, spans)),
            "fallback",
            tuple(notes),
            oov,
        )

    def _force_align(
        self, samples: np.ndarray, text: Sequence[str]
    ) -> Tuple[List[Tuple[int, int]], Optional[str]]:
        """Spans (end exclusive, unclipped) of ``text`` or ``([], reason)``."""
        decoder = self._aligner
        try:
            decoder.set_align_text(" ".join(text))
            segments = _decode(decoder, _pcm16(samples))
        except RuntimeError as error:
            return [], f"decoder error: {' '.join(str(error).split())}"
        if segments is None:
            return [], "no alignment path"
        found = [
            (_strip_variant(s.word), s.start_frame, s.end_frame + 1)
            for s in segments
            if not _is_silence(s.word)
        ]
        if [w for w, _, _ in found] != list(text):
            return [], f"aligner returned {' '.join(w for w, _, _ in found)!r}"
        return [(s, e) for _, s, e in found], None

    # -- recognition -------------------------------------------------------------------------

    def recognize(self, waveform: np.ndarray) -> Alignment:
        """Recognise words with the bundled language model (source "asr").

        Fillers and silences are dropped; ``words`` is empty when nothing was recognised.

        Raises:
            AlignmentError: the audio has no voiced frame (silence), or the decoder failed.
        """
        samples = _as_samples(waveform)
        num_frames = num_frames_for(samples.size)
        voiced_region(samples)  # raises on silence, where recognition would invent words
        if self._recognizer is None:
            options = dict(self._common)
            if self._lm is not None:
                options["lm"] = self._lm
            self._recognizer = self._pocketsphinx.Decoder(**options)
        try:
            segments = _decode(self._recognizer, _pcm16(samples))
        except RuntimeError as error:
            raise AlignmentError(f"recognition failed: {' '.join(str(error).split())}") from error
        found = [
            (_strip_variant(s.word).lower(), s.start_frame, s.end_frame + 1)
            for s in (segments or [])
            if not _FILLER.match(s.word)
        ]
        # A word recognised in the last partial window lies past the filterbank's last frame.
        kept = [f for f in found if f[1] < num_frames]
        notes = [] if kept else ["nothing recognised"]
        if len(kept) < len(found):
            notes.append(f"dropped {len(found) - len(kept)} word(s) after the last frame")
        kept = kept[:num_frames]
        spans = _make_valid([(s, e) for _, s, e in kept], num_frames) if kept else []
        return Alignment(
            tuple(WordSpan(w, s, e) for (w, _, _), (s, e) in zip(kept, spans)), "asr", tuple(notes)
        )


def _decode(decoder, pcm: bytes):
    """One utterance through ``decoder``; its ``seg()`` (``None`` when no path was found)."""
    decoder.start_utt()
    try:
        # full_utt: normalise the cepstra over the whole utterance instead of a running guess.
        decoder.process_raw(pcm, full_utt=True)
    finally:
        decoder.end_utt()  # leave the decoder ready for the next utterance even on errors
    return decoder.seg()


def _as_samples(waveform: np.ndarray) -> np.ndarray:
    samples = np.asarray(waveform, dtype=np.float32)
    if samples.ndim != 1:
        raise AlignmentError(f"waveform must be 1-D mono samples, got shape {samples.shape}")
    if not np.all(np.isfinite(samples)):
        raise AlignmentError("waveform contains NaN or infinite samples")
    return samples


def _pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def _strip_variant(word: str) -> str:
    return _VARIANT.sub("", word)


def _is_silence(word: str) -> bool:
    # The placeholder is a filler too, but in an alignment it stands for a transcript word.
    return word != OOV_PLACEHOLDER and bool(_FILLER.match(word))


# ------------------------------------------------------------------------------------------
# Span arithmetic


def _make_valid(spans: Sequence[Tuple[int, int]], num_frames: int) -> List[Tuple[int, int]]:
    """The nearest spans that are non-empty, non-overlapping, in order and inside
    ``[0, num_frames)``. Valid spans come back unchanged; needs ``num_frames >= len(spans)``."""
    out = []
    previous_end = 0
    for start, end in spans:  # forward: no overlap with the previous word, at least one frame
        start = max(int(start), previous_end)
        end = max(int(end), start + 1)
        out.append([start, end])
        previous_end = end
    limit = num_frames
    for i in range(len(out) - 1, -1, -1):  # backward: leave room for the words after this one
        out[i][1] = min(out[i][1], limit)
        out[i][0] = min(out[i][0], out[i][1] - 1)
        limit = out[i][0]
    return [(s, e) for s, e in out]


def _split(start: int, end: int, weights: Sequence[float]) -> List[Tuple[int, int]]:
    """``[start, end)`` cut into consecutive pieces in proportion to ``weights``, each at
    least one frame (needs ``end - start >= len(weights)``)."""
    length, total = end - start, float(sum(weights))
    cuts, cumulative = [0], 0.0
    for weight in weights[:-1]:
        cumulative += weight
        cuts.append(int(round(length * cumulative / total)))
    cuts.append(length)
    pieces = _make_valid(list(zip(cuts[:-1], cuts[1:])), length)
    return [(start + s, start + e) for s, e in pieces]


def _runs(indices: Sequence[int]) -> List[Tuple[int, int]]:
    """Maximal runs of consecutive indices as ``(first, last)``."""
    runs = []
    for i in indices:
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def _share_with_neighbours(
    spans: List[Tuple[int, int]], words: Sequence[str], run: Tuple[int, int], voiced_start: int
) -> List[Tuple[int, int]]:
    """Re-split the frames from the word before an OOV run to the word after it by word length.

    The spoken-noise model that stands in for an OOV word tends to take only its minimum of
    3 frames, leaving the rest of the word to its neighbours; sharing the whole stretch by
    letters was closer to the real spans on RAVDESS (a known word treated as OOV) than either
    keeping the filler's span or placing the word in the gap between its neighbours.
    """
    first = max(run[0] - 1, 0)
    last = min(run[1] + 1, len(spans) - 1)
    start, end = spans[first][0], spans[last][1]
    # A leading OOV word has no left neighbour, and the filler leaves most of it to the
    # leading silence: let it reach back to where voicing starts. (Doing the same at the end
    # made trailing OOV words worse on RAVDESS: the voicing there often runs on in a breath.)
    if run[0] == 0:
        start = min(start, voiced_start)
    pieces = _split(start, end, [len(w) for w in words[first : last + 1]])
    return list(spans[:first]) + pieces + list(spans[last + 1 :])


def voiced_region(waveform: np.ndarray) -> Tuple[int, int]:
    """Frames ``[first, last + 1)`` between the first and last voiced 10 ms frame.

    Raises:
        AlignmentError: no frame is voiced (silence, or shorter than one frame).
    """
    samples = np.asarray(waveform, dtype=np.float64)
    num_frames = num_frames_for(samples.size)
    if num_frames == 0:
        raise AlignmentError(f"audio shorter than one frame ({samples.size} samples)")
    frames = np.lib.stride_tricks.sliding_window_view(samples, FRAME_LENGTH)[::FRAME_STEP]
    energy_db = 10.0 * np.log10(np.mean(frames[:num_frames] ** 2, axis=1) + 1e-12)
    threshold = max(float(energy_db.max()) - VAD_RANGE_DB, VAD_FLOOR_DB)
    voiced = np.flatnonzero(energy_db > threshold)
    if voiced.size == 0:
        raise AlignmentError(
            f"no speech to align: the audio is silent (loudest 10 ms frame "
            f"{energy_db.max():.1f} dBFS)"
        )
    return int(voiced[0]), int(voiced[-1]) + 1


# ------------------------------------------------------------------------------------------
# Corpus alignments


def read_textgrid(path: Union[str, os.PathLike], tier: str = "words") -> List[WordSpan]:
    """Words of the interval tier named ``tier`` (any case) of a Praat TextGrid.

    Parsed by praatio: the long and the short text format, UTF-8 or Praat's UTF-16. Silence
    intervals ("", "sil", "sp", "<sil>") are skipped; labels are normalised like transcripts, and
    a label of several words splits its interval evenly. Times become frames as
    ``round(seconds * 100)``, with at least one frame per word. Of tiers sharing a name, the first
    is read. A short-format file cut off between two intervals reads as the intervals before
    the cut (praatio's short-format reader stops there without an error).

    Raises:
        AlignmentError: unreadable file; malformed file (praatio cannot parse it, or its intervals
            are empty, overlap or lie outside their tier); no such tier; a point tier.
    """
    where = os.fspath(path)
    try:
        grid = praat_textgrid.openTextgrid(
            where, includeEmptyIntervals=False, reportingMode="error", duplicateNamesMode="rename"
        )
    except OSError as error:
        raise AlignmentError(f"{where}: cannot read: {error.strerror or error}") from error
    # praatio's parsers fail with these on files that are not well-formed TextGrids.
    except (PraatioException, ValueError, IndexError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise AlignmentError(f"{where}: malformed TextGrid: {reason}") from error
    for name in grid.tierNames:
        if name.strip().lower() != tier.lower():
            continue
        found = grid.getTier(name)
        if not isinstance(found, praat_textgrid.IntervalTier):
            raise AlignmentError(f"{where}: tier {name!r} is a point tier, not an interval tier")
        return _interval_words(found.entries, where)
    raise AlignmentError(
        f"{where}: no tier named {tier!r} (tiers: "
        f"{', '.join(repr(n) for n in grid.tierNames) or 'none'})"
    )


def _interval_words(intervals, where: str) -> List[WordSpan]:
    words = []
    for xmin, xmax, label in intervals:
        if label.strip().lower() in SILENCE_LABELS:
            continue
        tokens = normalize_transcript(label)
        if not tokens:  # punctuation or a noise annotation only
            continue
        start = _seconds_to_frame(xmin, where)
        end = max(_seconds_to_frame(xmax, where), start + 1)
        if end - start >= len(tokens):
            spans = _split(start, end, [1] * len(tokens))
        else:  # too short to share: every token gets the whole interval
            spans = [(start, end)] * len(tokens)
        words.extend(WordSpan(t, s, e) for t, (s, e) in zip(tokens, spans))
    return words


def _seconds_to_frame(seconds: float, where: str) -> int:
    if not math.isfinite(seconds) or seconds < 0:
        raise AlignmentError(f"{where}: bad time {seconds}")
    return int(math.floor(seconds * FRAMES_PER_SECOND + 0.5))


def _read_text(path: Union[str, os.PathLike]) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        raise AlignmentError(
            f"{os.fspath(path)}: cannot read: {error.strerror or error}"
        ) from error
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):  # a UTF-16 byte-order mark
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def read_wdseg(path: Union[str, os.PathLike]) -> List[WordSpan]:
    """Words of an IEMOCAP ``ForcedAlignment/*.wdseg`` file (Sphinx-3 word segmentation).

    Rows are ``SFrm EFrm SegAScr Word`` with 10 ms frames and an inclusive end frame. Sphinx
    fillers (``<s>``, ``<sil>``, ``++BREATHING++``, ``[NOISE]``) are dropped, pronunciation
    variants ``WORD(2)`` stripped and words lowercased.

    Raises:
        AlignmentError: unreadable, empty or malformed file.
    """
    where = os.fspath(path)
    text = _read_text(path)
    if not text.strip():
        raise AlignmentError(f"{where}: empty wdseg file")
    words = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].lower() == "sfrm" or line.strip().lower().startswith("total"):
            continue
        try:
            if len(fields) != 4:
                raise ValueError
            start, last = int(fields[0]), int(fields[1])
            int(fields[2])
        except ValueError:
            raise AlignmentError(
                f"{where}:{number}: malformed wdseg row {line.strip()!r} "
                f"(expected 'SFrm EFrm SegAScr Word')"
            ) from None
        if start < 0 or last < start:
            raise AlignmentError(f"{where}:{number}: bad frames {start}-{last}")
        word = fields[3]
        if _FILLER.match(word):
            continue
        word = _strip_variant(word).lower()
        words.append(WordSpan(word, start, last + 1))
    return words


def check_within(
    words: Iterable[WordSpan], num_frames: int, tolerance_frames: int = DEFAULT_TOLERANCE_FRAMES
) -> List[WordSpan]:
    """``words`` checked against an utterance of ``num_frames`` frames.

    Spans running past the end by at most ``tolerance_frames`` are clipped (a word left with
    no frame keeps the last one).

    Raises:
        AlignmentError: a word extends further past the audio, or words are out of order; the
            message names the word and its times.
    """
    words = list(words)
    if num_frames <= 0:
        raise AlignmentError(f"no audio frames to place {len(words)} words in")
    out = []
    for w in words:
        if w.end > num_frames + tolerance_frames:
            raise AlignmentError(
                f"word {w.word!r} at {w.start / FRAMES_PER_SECOND:.2f}-"
                f"{w.end / FRAMES_PER_SECOND:.2f} s (frames {w.start}-{w.end}) runs past the "
                f"end of the audio ({num_frames / FRAMES_PER_SECOND:.2f} s, {num_frames} frames)"
            )
        if w.end > num_frames:
            w = WordSpan(w.word, min(w.start, num_frames - 1), num_frames)
        if out and w.start < out[-1].start:
            raise AlignmentError(
                f"words out of order: {out[-1].word!r} at frame {out[-1].start} "
                f"before {w.word!r} at frame {w.start}"
            )
        out.append(w)
    return out
