"""``cme-ser predict``: audio files -> words with times -> ``predict_waveform`` -> a report.

Each file is decoded (``preprocessing.audio.load_audio``: WAV/FLAC/..., any sample rate, to
16 kHz mono), its words and their frame spans come from PocketSphinx forced alignment of the
transcript (or recognition when there is none), the spans become seconds (frame / 100, which
the signature turns back into the same frames), and the model answers through the REST API
(``serving.client.RestClient``: ``cme-ser serve`` or TF Serving) or a SavedModel loaded in this
process (:class:`LocalModel`). A file that fails is reported and the others still run.

``cme-ser predict --manifest`` reads a list of files, each with its own transcript (and
optionally its label): :func:`read_manifest`, then :func:`predict_files` with one transcript
per file, several files per request.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from serving.client import (
    SAMPLE_RATE,
    UNCERTAIN,
    Prediction,
    Utterance,
    predictions_from_outputs,
    waveform_batch,
)

FRAMES_PER_SECOND = 100


@dataclasses.dataclass
class Result:
    """One file's outcome: a prediction, or the error that stopped it."""

    audio: str
    prediction: Optional[Prediction] = None
    error: Optional[str] = None
    stage: str = ""  # where it failed: decode, alignment, model
    duration_s: float = 0.0
    alignment_source: str = ""
    notes: List[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        out = {"audio": self.audio}
        if self.error is not None:
            out.update(error=self.error, stage=self.stage)
            return out
        out.update(duration_s=round(self.duration_s, 3), alignment_source=self.alignment_source)
        out.update(self.prediction.to_dict())
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def resolve_model_dir(path) -> Path:
    """A SavedModel directory: ``path`` itself, or its newest numeric version subdirectory."""
    from serving.repository import list_versions

    path = Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    versions = list_versions(path)
    if not versions:
        raise FileNotFoundError(
            f"{path}: neither a SavedModel (no saved_model.pb) nor a base "
            f"directory with numeric version subdirectories"
        )
    return versions[max(versions)]


class LocalModel:
    """The ``predict_waveform`` signature of a SavedModel loaded in this process."""

    def __init__(self, path, min_confidence: float = 0.0):
        import tensorflow as tf

        from trainer.calibration import check_min_confidence
        from trainer.signature_names import PREDICT_WAVEFORM

        self.path = resolve_model_dir(path)
        self.min_confidence = check_min_confidence(min_confidence)
        self._loaded = tf.saved_model.load(str(self.path))
        if PREDICT_WAVEFORM not in self._loaded.signatures:
            raise ValueError(
                f"{self.path}: the SavedModel has no {PREDICT_WAVEFORM!r} signature "
                f"(signatures: {sorted(self._loaded.signatures)})"
            )
        self._function = self._loaded.signatures[PREDICT_WAVEFORM]

    def predict_waveform(self, utterances: Sequence[Utterance]) -> List[Prediction]:
        """Raises ``ValueError`` with the rule's message when the graph's input checks
        (``trainer.export.check_waveform_inputs``) refuse the batch."""
        import tensorflow as tf

        inputs = waveform_batch(utterances)
        inputs["words"] = np.vectorize(lambda w: w.encode("utf-8"), otypes=[object])(
            inputs["words"]
        )
        try:
            outputs = self._function(**{k: tf.constant(v) for k, v in inputs.items()})
        except tf.errors.InvalidArgumentError as error:
            raise ValueError(assertion_message(error.message)) from None
        return predictions_from_outputs(
            {k: v.numpy() for k, v in outputs.items()}, utterances, self.min_confidence
        )

    @property
    def temperature(self) -> float:
        """The calibration temperature the SavedModel serves with (1.0: none, or an export
        from before calibration was exported)."""
        variable = getattr(self._loaded, "calibration_temperature", None)
        return 1.0 if variable is None else float(variable.numpy())


def _bracketed(text: str) -> List[str]:
    """The top-level ``[...]`` items of ``text``, brackets inside them kept."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "[":
            depth += 1
            if depth == 1:
                start = i + 1
        elif char == "]" and depth:
            depth -= 1
            if depth == 0:
                items.append(text[start:i])
    return items


def assertion_message(message: str) -> str:
    """A TensorFlow error message without TensorFlow's framing, for a person to read.

    ``assertion failed: [<rule>] [<label>] [<values>] ...`` (a failed ``tf.debugging.Assert``,
    after eager's "Graph execution error: Detected at node ..." and before the node names
    ``[[{{node ...}}]] [Op:...]``) becomes ``<rule>; <label> [<values>] ...``; any other
    message keeps its own text, its framing cut."""
    # TF's status message ends with the failing node's name: "\n\t [[{{node ...}}]]".
    text = message.split("\n\t [[", 1)[0].split(" [[{{", 1)[0]
    text = text.split("<stack traces unavailable>", 1)[-1]
    marker = "assertion failed: "
    if marker in text:
        items = _bracketed(text.split(marker, 1)[1])
        if items:
            rule, data = items[0], items[1:]
            pairs = [f"{label} [{value}]" for label, value in zip(data[::2], data[1::2])]
            return "; ".join([rule.strip()] + pairs)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else message.strip()


def prepare(path, transcript: Optional[str], aligner) -> tuple:
    """``(Utterance, Result-so-far)`` for one audio file, or ``(None, Result with error)``."""
    from preprocessing import audio

    result = Result(audio=str(path))
    try:
        waveform, info = audio.load_audio(path)
    except audio.AudioError as error:
        result.error, result.stage = error.reason, "decode"
        return None, result
    result.notes.extend(info.warnings)
    return prepare_waveform(waveform, transcript, aligner, result)


def prepare_waveform(
    waveform: np.ndarray, transcript: Optional[str], aligner, result: Result
) -> tuple:
    """``(Utterance, result)`` for 16 kHz mono samples: ``transcript`` force-aligned (None or
    "": its words recognised); ``(None, result with the error)`` when no word can be placed."""
    from preprocessing.alignment import AlignmentError

    result.duration_s = waveform.size / SAMPLE_RATE
    try:
        aligned = aligner.align(waveform, transcript) if transcript else aligner.recognize(waveform)
    except AlignmentError as error:
        result.error, result.stage = str(error), "alignment"
        return None, result
    result.alignment_source = aligned.source
    result.notes.extend(aligned.notes)
    if not aligned.words:
        result.error, result.stage = "no words were recognised (pass --transcript)", "alignment"
        return None, result
    utterance = Utterance(
        waveform=waveform,
        words=[w.word for w in aligned.words],
        start_s=[w.start / FRAMES_PER_SECOND for w in aligned.words],
        end_s=[w.end / FRAMES_PER_SECOND for w in aligned.words],
    )
    return utterance, result


def predict_files(
    paths: Sequence,
    model,
    *,
    transcript: Optional[str] = None,
    transcripts: Optional[Sequence[Optional[str]]] = None,
    aligner=None,
    batch_size: int = 1,
) -> List[Result]:
    """Runs every file through ``model`` (anything with ``predict_waveform``, e.g.
    ``RestClient`` or :class:`LocalModel`); one :class:`Result` per file, in order.

    ``transcript`` is said in every file; ``transcripts`` instead gives each file its own
    (None or "": recognise that file). Up to ``batch_size`` files go to the model in one
    request, whatever their transcripts (rows are padded; padding changes no result). A batch
    the model refuses is retried file by file, so a bad file fails alone. An ``OSError`` (the
    server cannot be reached) is raised: every other file would fail the same way."""
    if transcripts is None:
        transcripts = [transcript] * len(paths)
    elif transcript is not None:
        raise ValueError("give transcript= or transcripts=, not both")
    if len(transcripts) != len(paths):
        raise ValueError(f"{len(paths)} files but {len(transcripts)} transcripts")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if aligner is None:
        from preprocessing.alignment import PocketSphinxAligner

        aligner = PocketSphinxAligner()
    results, pending = [], []
    for path, text in zip(paths, transcripts):
        utterance, result = prepare(path, text, aligner)
        results.append(result)
        if utterance is not None:
            pending.append((utterance, result))
        if len(pending) == batch_size:
            predict_batch(model, pending)
            pending = []
    if pending:
        predict_batch(model, pending)
    return results


def predict_batch(model, pending: List[tuple]) -> None:
    """Sets each ``(utterance, result)``'s prediction, or its error (stage "model")."""
    try:
        predictions = model.predict_waveform([utterance for utterance, _ in pending])
    except OSError:
        raise
    except Exception as error:  # the model's answer: retry alone, or report and go on
        if len(pending) > 1:
            for one in pending:
                predict_batch(model, [one])
            return
        result = pending[0][1]
        result.error, result.stage = getattr(error, "message", None) or str(error), "model"
        return
    for (_, result), prediction in zip(pending, predictions):
        result.prediction = prediction


def model_class_names(model) -> List[str]:
    """The class names of ``model``, in probability order, from one prediction of a second
    of faint noise with one word (a model says its class names with every answer)."""
    waveform = np.random.default_rng(0).normal(0.0, 1e-3, SAMPLE_RATE).astype(np.float32)
    [prediction] = model.predict_waveform([Utterance(waveform, ["the"], [0.2], [0.5])])
    return list(prediction.probabilities)


# ----------------------------------------------------------------------------------------------
# Manifests: many files, each with its own transcript and optionally its label


@dataclasses.dataclass(frozen=True)
class ManifestEntry:
    """One manifest row: the audio file (resolved against the manifest's directory), what is
    said in it (None: recognise it) and its true label (None: not given); ``where`` is
    ``"<manifest>:<line>"``; ``error`` says why a row is unusable (then it is not predicted)."""

    audio: str
    transcript: Optional[str]
    label: Optional[str]
    where: str
    error: Optional[str] = None


def read_manifest(path) -> List[ManifestEntry]:
    """The rows of a ``.csv`` (header with a ``path`` column; ``transcript`` and ``label``
    optional) or ``.jsonl`` manifest, in order. Labels are lowercased. Raises ValueError for a
    missing file, an unknown extension or a CSV header without ``path``."""
    from preprocessing.corpora import manifest_rows, resolve_path

    path = Path(path)
    if path.suffix.lower() not in (".csv", ".jsonl", ".ndjson"):
        raise ValueError(f"{path}: manifest must be .csv or .jsonl, got {path.suffix!r}")
    if not path.is_file():
        raise ValueError(f"{path}: manifest not found")
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            header = [h.strip() for h in (csv.DictReader(f).fieldnames or [])]
        if "path" not in header:
            raise ValueError(f"{path}: manifest header has no 'path' column (has {header})")
    entries = []
    for where, row in manifest_rows(path):
        if isinstance(row, str):
            entries.append(ManifestEntry(where, None, None, where, error=row))
            continue
        audio, transcript, label = (row.get(key) for key in ("path", "transcript", "label"))
        transcript = str(transcript) if transcript else None
        label = str(label).lower() if label not in (None, "") else None
        if audio in (None, ""):
            entries.append(
                ManifestEntry(where, transcript, label, where, error=f"no path ({where})")
            )
            continue
        entries.append(
            ManifestEntry(resolve_path(path.parent, str(audio)), transcript, label, where)
        )
    return entries


def predict_manifest(
    entries: Sequence[ManifestEntry], model, *, aligner=None, batch_size: int = 8
) -> List[Result]:
    """:func:`predict_files` on the usable entries, each with its own transcript; one
    :class:`Result` per entry, in order (an unusable row's has stage "manifest")."""
    usable = [e for e in entries if e.error is None]
    predicted = iter(
        predict_files(
            [e.audio for e in usable],
            model,
            transcripts=[e.transcript for e in usable],
            aligner=aligner,
            batch_size=batch_size,
        )
        if usable
        else []
    )
    return [
        next(predicted)
        if e.error is None
        else Result(audio=e.audio, error=e.error, stage="manifest")
        for e in entries
    ]


def manifest_accuracy(entries: Sequence[ManifestEntry], results: Sequence[Result]) -> dict:
    """Accuracy over the labelled files that got a prediction: ``{"correct", "labelled",
    "accuracy"}`` (accuracy None when no labelled file was predicted); ``failed`` counts
    labelled files without a prediction."""
    scored = [
        (e.label, r.prediction.emotion)
        for e, r in zip(entries, results)
        if e.label is not None and r.error is None
    ]
    failed = sum(e.label is not None and r.error is not None for e, r in zip(entries, results))
    uncertain = sum(emotion == UNCERTAIN for _, emotion in scored)
    scored = [(label, emotion) for label, emotion in scored if emotion != UNCERTAIN]
    correct = sum(label == emotion for label, emotion in scored)
    return {
        "correct": correct,
        "labelled": len(scored),
        "failed": failed,
        "uncertain": uncertain,
        "accuracy": correct / len(scored) if scored else None,
    }


def format_text(results: Sequence[Result], labels: Optional[Sequence[Optional[str]]] = None) -> str:
    """The human-readable report: emotion, probabilities, and each word's excitation; with
    ``labels`` (one per result, None: unknown), each file's true label too."""
    lines = []
    for i, result in enumerate(results):
        label = labels[i] if labels is not None else None
        if result.error is not None:
            lines.append(f"{result.audio}: error ({result.stage}): {result.error}")
            continue
        prediction = result.prediction
        lines.append(
            f"{result.audio}: {prediction.emotion} "
            f"(p = {prediction.confidence:.3f}; "
            f"{result.duration_s:.2f} s, {result.alignment_source} alignment"
            + (f"; label {label}" if label is not None else "")
            + ")"
        )
        lines.append(
            "  probabilities: "
            + "  ".join(f"{name} {p:.3f}" for name, p in prediction.probabilities.items())
        )
        width = max([4] + [len(w.word) for w in prediction.words])
        lines.append(
            f"  {'word':<{width}}  start_s  end_s  acoustic_excitation  semantic_excitation"
        )
        for w in prediction.words:
            lines.append(
                f"  {w.word:<{width}}  {w.start_s:7.2f}  {w.end_s:5.2f}  "
                f"{w.acoustic_excitation:19.3f}  {w.semantic_excitation:19.3f}"
            )
        for note in result.notes:
            lines.append(f"  note: {note}")
    return "\n".join(lines)
