"""One utterance to one record: decode, filterbank, words with their frame spans, word vectors.

The per-utterance logic of the Beam job, kept free of Beam so it is testable on its own and
reusable by prediction. Each failure is an ``UtteranceError`` naming the stage it happened in.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import tensorflow as tf

from preprocessing import alignment, audio
from preprocessing.corpora import Utterance
from preprocessing.embeddings import WordVectors
from preprocessing.features import log_mel_filterbank
from preprocessing.records import make_example

STAGES = ("decode", "features", "alignment", "label")


class UtteranceError(ValueError):
    def __init__(self, stage: str, reason: str):
        self.stage, self.reason = stage, reason
        super().__init__(f"{stage}: {reason}")


# Traced once for any length: the eager op-by-op path costs several times more per utterance.
_filterbank_graph = tf.function(
    log_mel_filterbank, input_signature=[tf.TensorSpec([None], tf.float32)]
)


def filterbank(waveform: np.ndarray) -> np.ndarray:
    """``[frames, 40]`` log-mel filterbank of a 16 kHz waveform (the shared definition)."""
    return _filterbank_graph(tf.constant(waveform, tf.float32)).numpy()


def words_and_spans(
    utterance: Utterance,
    waveform: np.ndarray,
    num_frames: int,
    aligner: "alignment.PocketSphinxAligner",
) -> alignment.Alignment:
    """Given alignment if the corpus ships one, else forced alignment of the transcript, else
    ASR. Raises ``AlignmentError`` when no usable word comes out."""
    if utterance.alignment_path:
        reader = {"textgrid": alignment.read_textgrid, "wdseg": alignment.read_wdseg}[
            utterance.alignment_format
        ]
        words = alignment.check_within(reader(utterance.alignment_path), num_frames)
        result = alignment.Alignment(words=tuple(words), source="given")
    elif utterance.transcript is not None:
        result = aligner.align(waveform, utterance.transcript)
    else:
        result = aligner.recognize(waveform)
    if not result.words:
        raise alignment.AlignmentError("no words could be aligned or recognised")
    return result


def utterance_to_example(
    utterance: Utterance,
    *,
    aligner,
    vectors: WordVectors,
    class_names: Sequence[str],
    fold: int,
    max_seconds: float = 60.0,
    overlong: str = "truncate",
) -> Tuple[tf.train.Example, str]:
    """Returns (record, alignment source) or raises ``UtteranceError``."""
    if utterance.label_name not in class_names:
        raise UtteranceError(
            "label", f"unknown label {utterance.label_name!r} (classes: {', '.join(class_names)})"
        )
    try:
        waveform, _ = audio.load_audio(
            utterance.audio_path, max_seconds=max_seconds, overlong=overlong
        )
    except audio.AudioError as error:
        raise UtteranceError("decode", error.reason) from error
    fbank = filterbank(waveform)
    if fbank.shape[0] == 0 or not np.all(np.isfinite(fbank)):
        raise UtteranceError("features", f"no finite filterbank frames ({fbank.shape[0]} frames)")
    try:
        aligned = words_and_spans(utterance, waveform, fbank.shape[0], aligner)
    except alignment.AlignmentError as error:
        raise UtteranceError("alignment", str(error)) from error
    words = [w.word for w in aligned.words]
    embeddings, _ = vectors.lookup(words)
    transcript = utterance.transcript if utterance.transcript is not None else " ".join(words)
    example = make_example(
        utterance_id=utterance.utterance_id,
        speaker=utterance.speaker,
        label=list(class_names).index(utterance.label_name),
        label_name=utterance.label_name,
        fold=fold,
        fbank=fbank,
        words=words,
        word_embeddings=embeddings,
        word_start=[w.start for w in aligned.words],
        word_end=[w.end for w in aligned.words],
        transcript=transcript,
        alignment_source=aligned.source,
        channel=utterance.channel,
    )
    return example, aligned.source
