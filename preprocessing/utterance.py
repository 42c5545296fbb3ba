"""One utterance to one record: decode, filterbank, words with their frame spans, word vectors.

The per-utterance logic of the Beam job, kept free of Beam so it is testable on its own and
reusable by prediction. Each failure is an ``UtteranceError`` naming the stage it happened in.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from preprocessing import alignment, audio, augment
from preprocessing.corpora import PRIMARY_CHANNEL, Utterance, augmented_channel, copy_id
from preprocessing.embeddings import WordVectors
from preprocessing.features import log_mel_filterbank
from preprocessing.records import make_example

STAGES = ("decode", "features", "alignment", "label", augment.AUGMENT_STAGE)


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


def utterance_to_example(utterance: Utterance, **options) -> Tuple[tf.train.Example, str]:
    """(record, alignment source) of :func:`utterance_to_examples` with ``options`` (no
    copies), or raises ``UtteranceError``."""
    example, source, _ = utterance_to_examples(utterance, **options)
    return example, source


def utterance_to_examples(
    utterance: Utterance,
    *,
    aligner,
    vectors: WordVectors,
    class_names: Sequence[str],
    fold: int,
    max_seconds: float = 60.0,
    overlong: str = "truncate",
    augment_copies: int = 0,
) -> Tuple[tf.train.Example, str, List[Tuple[str, Union[tf.train.Example, UtteranceError]]]]:
    """The record of ``utterance`` and ``augment_copies`` augmented copies of it
    (``preprocessing.augment``): ``(record, alignment source, [(copy id, copy record or its
    UtteranceError), ...])``. A copy is the decoded waveform under its drawn condition, with
    its own filterbank and the source's words, spans, speaker, label and fold; its channel is
    the source's (speech when the corpus has none) + ``_aug``. Raises ``UtteranceError`` for
    the source only."""
    if augment_copies < 0:
        raise ValueError(f"augment_copies must be >= 0, got {augment_copies}")
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
    fbank = checked_filterbank(waveform)
    try:
        aligned = words_and_spans(utterance, waveform, fbank.shape[0], aligner)
    except alignment.AlignmentError as error:
        raise UtteranceError("alignment", str(error)) from error
    words = [w.word for w in aligned.words]
    embeddings, _ = vectors.lookup(words)
    transcript = utterance.transcript if utterance.transcript is not None else " ".join(words)

    def record(utterance_id, features, channel, condition=None):
        return make_example(
            utterance_id=utterance_id,
            speaker=utterance.speaker,
            label=list(class_names).index(utterance.label_name),
            label_name=utterance.label_name,
            fold=fold,
            fbank=features,
            words=words,
            word_embeddings=embeddings,
            word_start=[w.start for w in aligned.words],
            word_end=[w.end for w in aligned.words],
            transcript=transcript,
            alignment_source=aligned.source,
            channel=channel,
            augmentation=condition,
        )

    copies = []
    for number in range(1, augment_copies + 1):
        name = copy_id(utterance.utterance_id, number)
        condition = augment.draw(utterance.utterance_id, number)
        try:
            features = checked_filterbank(augment.apply(waveform, condition))
        except (UtteranceError, ValueError) as error:
            reason = error.reason if isinstance(error, UtteranceError) else str(error)
            copies.append(
                (name, UtteranceError(augment.AUGMENT_STAGE, f"{condition.describe()}: {reason}"))
            )
            continue
        channel = augmented_channel(utterance.channel or PRIMARY_CHANNEL)
        copies.append((name, record(name, features, channel, condition.describe())))
    return record(utterance.utterance_id, fbank, utterance.channel), aligned.source, copies


def checked_filterbank(waveform: np.ndarray) -> np.ndarray:
    """:func:`filterbank`, or ``UtteranceError("features")`` when it has no finite frames."""
    fbank = filterbank(waveform)
    if fbank.shape[0] == 0 or not np.all(np.isfinite(fbank)):
        raise UtteranceError("features", f"no finite filterbank frames ({fbank.shape[0]} frames)")
    return fbank
