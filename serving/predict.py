"""``cme-ser predict``: audio files -> words with times -> ``predict_waveform`` -> a report.

Each file is decoded (``preprocessing.audio.load_audio``: WAV/FLAC/..., any sample rate, to
16 kHz mono), its words and their frame spans come from PocketSphinx forced alignment of the
transcript (or recognition when there is none), the spans become seconds (frame / 100, which
the signature turns back into the same frames), and the model answers through the REST API
(``serving.client.RestClient``: ``cme-ser serve`` or TF Serving) or a SavedModel loaded in this
process (:class:`LocalModel`). A file that fails is reported and the others still run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from serving.client import Prediction, Utterance, predictions_from_outputs, waveform_batch

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
        raise FileNotFoundError(f"{path}: neither a SavedModel (no saved_model.pb) nor a base "
                                f"directory with numeric version subdirectories")
    return versions[max(versions)]


class LocalModel:
    """The ``predict_waveform`` signature of a SavedModel loaded in this process."""

    def __init__(self, path):
        import tensorflow as tf

        from serving.signatures import PREDICT_WAVEFORM

        self.path = resolve_model_dir(path)
        self._loaded = tf.saved_model.load(str(self.path))
        if PREDICT_WAVEFORM not in self._loaded.signatures:
            raise ValueError(f"{self.path}: the SavedModel has no {PREDICT_WAVEFORM!r} signature "
                             f"(signatures: {sorted(self._loaded.signatures)})")
        self._function = self._loaded.signatures[PREDICT_WAVEFORM]

    def predict_waveform(self, utterances: Sequence[Utterance]) -> List[Prediction]:
        import tensorflow as tf

        from serving.validation import check_waveform_inputs

        inputs = waveform_batch(utterances)
        inputs["words"] = np.vectorize(lambda w: w.encode("utf-8"), otypes=[object])(
            inputs["words"])
        check_waveform_inputs(inputs)
        outputs = self._function(**{k: tf.constant(v) for k, v in inputs.items()})
        return predictions_from_outputs({k: v.numpy() for k, v in outputs.items()}, utterances)


def prepare(path, transcript: Optional[str], aligner) -> tuple:
    """``(Utterance, Result-so-far)`` for one audio file, or ``(None, Result with error)``."""
    from preprocessing import audio
    from preprocessing.alignment import AlignmentError

    result = Result(audio=str(path))
    try:
        waveform, info = audio.load_audio(path)
    except audio.AudioError as error:
        result.error, result.stage = error.reason, "decode"
        return None, result
    result.duration_s = waveform.size / audio.SAMPLE_RATE
    result.notes.extend(info.warnings)
    try:
        aligned = aligner.align(waveform, transcript) if transcript else \
            aligner.recognize(waveform)
    except AlignmentError as error:
        result.error, result.stage = str(error), "alignment"
        return None, result
    result.alignment_source = aligned.source
    result.notes.extend(aligned.notes)
    if not aligned.words:
        result.error, result.stage = "no words were recognised (pass --transcript)", "alignment"
        return None, result
    utterance = Utterance(
        waveform=waveform, words=[w.word for w in aligned.words],
        start_s=[w.start / FRAMES_PER_SECOND for w in aligned.words],
        end_s=[w.end / FRAMES_PER_SECOND for w in aligned.words])
    return utterance, result


def predict_files(paths: Sequence, model, *, transcript: Optional[str] = None,
                  aligner=None) -> List[Result]:
    """Runs every file through ``model`` (anything with ``predict_waveform``, e.g.
    ``RestClient`` or :class:`LocalModel`), one request per file."""
    if aligner is None:
        from preprocessing.alignment import PocketSphinxAligner
        aligner = PocketSphinxAligner()
    results = []
    for path in paths:
        utterance, result = prepare(path, transcript, aligner)
        if utterance is not None:
            try:
                [result.prediction] = model.predict_waveform([utterance])
            except OSError:
                raise  # the server is unreachable: every other file would fail the same way
            except Exception as error:  # the model's answer for this file: report, go on
                result.error, result.stage = getattr(error, "message", None) or str(error), "model"
        results.append(result)
    return results


def format_text(results: Sequence[Result]) -> str:
    """The human-readable report: emotion, probabilities, and each word's excitation."""
    lines = []
    for result in results:
        if result.error is not None:
            lines.append(f"{result.audio}: error ({result.stage}): {result.error}")
            continue
        prediction = result.prediction
        lines.append(f"{result.audio}: {prediction.emotion} "
                     f"(p = {prediction.probabilities.get(prediction.emotion, float('nan')):.3f}; "
                     f"{result.duration_s:.2f} s, {result.alignment_source} alignment)")
        lines.append("  probabilities: " + "  ".join(
            f"{name} {p:.3f}" for name, p in prediction.probabilities.items()))
        width = max([4] + [len(w.word) for w in prediction.words])
        lines.append(f"  {'word':<{width}}  start_s  end_s  acoustic_excitation  "
                     f"semantic_excitation")
        for w in prediction.words:
            lines.append(f"  {w.word:<{width}}  {w.start_s:7.2f}  {w.end_s:5.2f}  "
                         f"{w.acoustic_excitation:19.3f}  {w.semantic_excitation:19.3f}")
        for note in result.notes:
            lines.append(f"  note: {note}")
    return "\n".join(lines)
