"""``cme-ser predict RECORDING``: a recording of any length -> speech segments -> a timeline of
emotions, one row per segment.

The file is decoded a block at a time (``preprocessing.audio_stream.AudioStream``), its speech
found as it is decoded (``preprocessing.segmentation``: Silero VAD, then merged and bounded),
and each segment, as soon as it is final, is cut out with ``DEFAULT_PAD_S`` of audio either
side, its words aligned (the words a timed transcript puts there, forced-aligned, or
recognised: ``preprocessing.alignment.PocketSphinxAligner``), and sent to the model with others
in batches of ``batch_size`` (the ``predict_waveform`` signature: in-process, or TF Serving's
REST or gRPC API, whose server stays stock). Memory holds one block, the open segments and one
batch: it does not grow with the recording.

A row has the segment's start and end (the detected speech, seconds in the recording), its
words with their times in the recording and their acoustic and semantic excitation, the
emotion and the class probabilities; a segment that cannot be predicted keeps its row with the
error. Spans the decoder could not read are listed with their times, and transcript words no
segment is near are listed too: nothing is dropped silently.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from typing import List, Optional, Sequence, Union

import numpy as np

from serving.client import SAMPLE_RATE, Prediction, WordExcitation
from serving.predict import Result, predict_batch, prepare_waveform

FRAME = SAMPLE_RATE // 100  # envelope resolution: one RMS value per 10 ms


@dataclasses.dataclass
class Row:
    """One speech segment and what the model says of it (``prediction`` None: see ``error``)."""

    segment: int
    start_s: float
    end_s: float
    prediction: Optional[Prediction] = None
    alignment_source: str = ""
    error: Optional[str] = None
    stage: str = ""
    notes: List[str] = dataclasses.field(default_factory=list)

    @property
    def words(self) -> List[WordExcitation]:
        return self.prediction.words if self.prediction is not None else []

    @property
    def emotion(self) -> Optional[str]:
        return self.prediction.emotion if self.prediction is not None else None

    def to_dict(self) -> dict:
        out = {
            "segment": self.segment,
            "start_s": round(self.start_s, 3),
            "end_s": round(self.end_s, 3),
        }
        if self.prediction is None:
            out.update(error=self.error, stage=self.stage)
        else:
            out["text"] = " ".join(w.word for w in self.words)
            out.update(self.prediction.to_dict())
            for word in out["words"]:
                word["start_s"], word["end_s"] = round(word["start_s"], 3), round(word["end_s"], 3)
            out["alignment_source"] = self.alignment_source
        if self.notes:
            out["notes"] = list(self.notes)
        return out


@dataclasses.dataclass
class Timeline:
    """A recording's rows, in time order, and what could not be used."""

    audio: str
    duration_s: float
    sample_rate: int
    channels: int
    rows: List[Row]
    unreadable: list  # preprocessing.audio_stream.Unreadable
    unplaced_words: list  # preprocessing.timed_transcripts.TimedWord
    envelope: np.ndarray  # RMS of every 10 ms of the 16 kHz audio, float32 [frames]

    def to_dict(self) -> dict:
        """The summary (no rows): the file, and what was unreadable or unplaced."""
        return {
            "audio": self.audio,
            "duration_s": round(self.duration_s, 3),
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "segments": len(self.rows),
            "failed_segments": sum(r.prediction is None for r in self.rows),
            "unreadable": [u.to_dict() for u in self.unreadable],
            "unplaced_words": [
                {"word": w.word, "start_s": round(w.start_s, 3), "end_s": round(w.end_s, 3)}
                for w in self.unplaced_words
            ],
        }


def predict_timeline(
    path: Union[str, os.PathLike],
    model,
    *,
    transcript_words=None,
    aligner=None,
    batch_size: int = 8,
    options=None,
    pad_s: Optional[float] = None,
    block_seconds: Optional[float] = None,
) -> Timeline:
    """The timeline of ``path`` (any length) from ``model`` (anything with
    ``predict_waveform``: ``serving.predict.LocalModel``, ``serving.client.RestClient``, ...).

    Args:
        transcript_words: the recording's ``TimedWord`` s (``read_timed_transcript``); None:
            every segment's words are recognised. A segment no transcript word is near has its
            words recognised too (with a note).
        aligner: a ``PocketSphinxAligner`` (one is built if None).
        batch_size: segments per model request.
        options: ``preprocessing.segmentation.SegmenterOptions``.
        pad_s: audio kept either side of a segment for alignment and the model.
        block_seconds: audio decoded at a time.

    Raises:
        preprocessing.audio.AudioError: the file cannot be opened as audio at all.
        OSError: a served model cannot be reached.
    """
    from preprocessing.audio_stream import DEFAULT_BLOCK_SECONDS, AudioStream
    from preprocessing.segmentation import (
        DEFAULT_PAD_S,
        SegmenterOptions,
        SegmentTidier,
        SpeechSegmenter,
    )
    from preprocessing.timed_transcripts import WordAssigner

    options = options or SegmenterOptions()
    pad = DEFAULT_PAD_S if pad_s is None else pad_s
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if aligner is None:
        from preprocessing.alignment import PocketSphinxAligner

        aligner = PocketSphinxAligner()
    stream = AudioStream(path, block_seconds=block_seconds or DEFAULT_BLOCK_SECONDS)
    segmenter, tidier = SpeechSegmenter(options), SegmentTidier(options)
    assigner = WordAssigner(transcript_words) if transcript_words is not None else None
    audio = _Window()
    envelope = _Envelope()
    rows: List[Row] = []
    waiting: List = []  # final segments waiting for the one after them (word assignment)
    pending: List = []  # (utterance, result, row) waiting for a batch

    def flush() -> None:
        if pending:
            predict_batch(model, [(u, r) for u, r, _, _ in pending])
            for _, result, row, offset in pending:
                _fill(row, result, offset=offset)
            pending.clear()

    def start_row(segment, following) -> None:
        row = Row(len(rows), segment.start_s, segment.end_s)
        rows.append(row)
        first = max(0, int(round((segment.start_s - pad) * SAMPLE_RATE)))
        last = min(audio.end, int(round((segment.end_s + pad) * SAMPLE_RATE)))
        offset = first / SAMPLE_RATE
        waveform = audio.cut(first, last)
        text = None
        if assigner is not None:
            words = assigner.take(
                (segment.start_s, segment.end_s),
                None if following is None else (following.start_s, following.end_s),
            )
            text = " ".join(w.word for w in words)
            if not words:
                row.notes.append("no transcript words here: recognised")
        for span in stream.unreadable:
            if span.start_s < segment.end_s and span.end_s > segment.start_s:
                row.notes.append(
                    f"overlaps an unreadable span {span.start_s:.2f}-"
                    f"{span.end_s:.2f} s (silence there)"
                )
        utterance, result = prepare_waveform(
            waveform, text or None, aligner, Result(audio=str(path))
        )
        if utterance is None:
            _fill(row, result, offset=offset)
            return
        pending.append((utterance, result, row, offset))
        if len(pending) >= batch_size:
            flush()

    def handle(segments) -> None:
        for segment in segments:
            waiting.append(segment)
            while len(waiting) > 1:
                start_row(waiting.pop(0), waiting[0])

    for start, block in stream.blocks():
        audio.add(start, block)
        envelope.add(block)
        handle(tidier.add(segmenter.feed(block)))
        # Keep the audio that segments not yet cut may still need.
        keep = [s for s in (segmenter.open_since_s, tidier.held_since_s) if s is not None]
        keep += [s.start_s for s in waiting]
        keep_from = min(keep) if keep else audio.end / SAMPLE_RATE
        # a second more: a span about to open starts up to a VAD window and its onset lead back
        audio.drop_before(int((keep_from - pad - 1.0) * SAMPLE_RATE))
    handle(tidier.add(segmenter.finish()) + tidier.finish())
    while waiting:
        start_row(waiting.pop(0), waiting[0] if waiting else None)
    flush()
    return Timeline(
        audio=str(path),
        duration_s=stream.duration,
        sample_rate=stream.info.sample_rate,
        channels=stream.info.channels,
        rows=rows,
        unreadable=list(stream.unreadable),
        unplaced_words=assigner.finish() if assigner is not None else [],
        envelope=envelope.values(),
    )


def _fill(row: Row, result: Result, *, offset: float) -> None:
    """The row's outcome from ``result``: its words moved from segment time to recording time."""
    row.alignment_source = result.alignment_source
    row.notes.extend(result.notes)
    if result.prediction is None:
        row.error, row.stage = result.error, result.stage
        return
    row.prediction = dataclasses.replace(
        result.prediction,
        words=[
            dataclasses.replace(w, start_s=w.start_s + offset, end_s=w.end_s + offset)
            for w in result.prediction.words
        ],
    )


class _Window:
    """The recent 16 kHz samples: blocks added at the end, dropped from the start."""

    def __init__(self):
        self._blocks: List = []  # (first sample, block)
        self.end = 0

    def add(self, start: int, block: np.ndarray) -> None:
        self._blocks.append((start, block))
        self.end = start + block.size

    def drop_before(self, sample: int) -> None:
        while self._blocks and self._blocks[0][0] + self._blocks[0][1].size <= sample:
            self._blocks.pop(0)

    def cut(self, first: int, last: int) -> np.ndarray:
        parts = [
            block[max(first - start, 0) : max(last - start, 0)]
            for start, block in self._blocks
            if start < last and start + block.size > first
        ]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)


class _Envelope:
    """RMS of every 10 ms of the blocks fed (a 60 min recording: 360,000 numbers)."""

    def __init__(self):
        self._carry = np.zeros(0, np.float32)
        self._values: List[np.ndarray] = []

    def add(self, block: np.ndarray) -> None:
        samples = np.concatenate([self._carry, block])
        whole = samples.size // FRAME * FRAME
        self._carry = samples[whole:]
        frames = samples[:whole].astype(np.float64).reshape(-1, FRAME)
        self._values.append(np.sqrt(np.mean(frames**2, axis=1)).astype(np.float32))

    def values(self) -> np.ndarray:
        return np.concatenate(self._values) if self._values else np.zeros(0, np.float32)


# ----------------------------------------------------------------------------------------------
# Output


def class_names_of(rows: Sequence[Row]) -> List[str]:
    """The model's classes, in probability order (from the first predicted row)."""
    for row in rows:
        if row.prediction is not None:
            return list(row.prediction.probabilities)
    return []


def to_jsonl(timeline: Timeline) -> str:
    """One JSON object per row."""
    return "".join(json.dumps(row.to_dict()) + "\n" for row in timeline.rows)


CSV_FIXED = ("segment", "start_s", "end_s", "emotion", "confidence")


def to_csv(timeline: Timeline) -> str:
    """One line per row: segment, start_s, end_s, emotion, confidence, ``p_<class>`` per class,
    text, ``acoustic_excitation`` / ``semantic_excitation`` (one number per word, space
    separated, in the order of text), alignment_source, error."""
    classes = class_names_of(timeline.rows)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        list(CSV_FIXED)
        + [f"p_{c}" for c in classes]
        + ["text", "acoustic_excitation", "semantic_excitation", "alignment_source", "error"]
    )
    for row in timeline.rows:
        p = row.prediction
        probabilities = [f"{p.probabilities[c]:.4f}" for c in classes] if p else [""] * len(classes)
        writer.writerow(
            [
                row.segment,
                f"{row.start_s:.3f}",
                f"{row.end_s:.3f}",
                row.emotion or "",
                f"{p.confidence:.4f}" if p else "",
            ]
            + probabilities
            + [
                " ".join(w.word for w in row.words),
                " ".join(_number(w.acoustic_excitation) for w in row.words),
                " ".join(_number(w.semantic_excitation) for w in row.words),
                row.alignment_source,
                row.error or "",
            ]
        )
    return out.getvalue()


def _number(value: float) -> str:
    return "nan" if value != value else f"{value:.4f}"


def _clock(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60.0)
    return f"{int(minutes)}:{rest:05.2f}"


def format_text(timeline: Timeline) -> str:
    """The human-readable timeline: one line per segment, then what could not be used."""
    lines = [
        f"{timeline.audio}: {len(timeline.rows)} speech segments in "
        f"{_clock(timeline.duration_s)} ({timeline.sample_rate} Hz, "
        f"{timeline.channels} channel{'s' if timeline.channels != 1 else ''})"
    ]
    for row in timeline.rows:
        when = f"  {_clock(row.start_s):>8} - {_clock(row.end_s):>8}"
        if row.prediction is None:
            lines.append(f"{when}  error ({row.stage}): {row.error}")
            continue
        lines.append(
            f"{when}  {row.emotion:<9} p = {row.prediction.confidence:.2f}  "
            + " ".join(w.word for w in row.words)
        )
    for span in timeline.unreadable:
        lines.append(f"  unreadable {_clock(span.start_s)} - {_clock(span.end_s)}: {span.reason}")
    if timeline.unplaced_words:
        shown = " ".join(f"{w.word}@{w.start_s:.1f}" for w in timeline.unplaced_words[:20])
        lines.append(
            f"  {len(timeline.unplaced_words)} transcript word(s) near no speech "
            f"segment: {shown}" + (" ..." if len(timeline.unplaced_words) > 20 else "")
        )
    return "\n".join(lines)
