"""``cme-ser predict --plot FILE.png``: one utterance's per-word story as a picture.

Top: the log-mel filterbank the model hears (``preprocessing.features``), with each aligned
word's span. Below, one bar per word, as wide as the word: the mean acoustic excitation
(E^a, how much of the word's acoustic features its meaning lets through) and the mean semantic
excitation (E^s, how much of its word vector its sound lets through), the gates of the paper's
cross modality excitation. The title gives the emotion and the class probabilities.
"""

from __future__ import annotations

import math

import numpy as np

from preprocessing.features import FRAMES_PER_SECOND, log_mel_filterbank
from serving.client import Prediction


def plot_excitation(waveform: np.ndarray, prediction: Prediction, path: str, *, title: str = ""):
    """Draws ``prediction`` for the 16 kHz ``waveform`` into ``path`` (PNG); returns the
    matplotlib figure (closed: for reading back what was drawn)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    features = log_mel_filterbank(np.asarray(waveform, np.float32)).numpy()  # [frames, 40]
    seconds = features.shape[0] / FRAMES_PER_SECOND
    figure, (spectrum, acoustic, semantic) = plt.subplots(
        3, 1, figsize=(10, 6), sharex=True, gridspec_kw={"height_ratios": [2.2, 1, 1]}
    )
    spectrum.imshow(
        features.T,
        origin="lower",
        aspect="auto",
        cmap="magma",
        extent=(0.0, seconds, 0, features.shape[1]),
    )
    spectrum.set_ylabel("mel bin")
    for word in prediction.words:
        spectrum.axvspan(word.start_s, word.end_s, color="white", alpha=0.12, lw=0)
        spectrum.axvline(word.start_s, color="white", lw=0.6)
        spectrum.text(
            (word.start_s + word.end_s) / 2,
            features.shape[1] - 2,
            word.word,
            color="white",
            ha="center",
            va="top",
            fontsize=9,
        )
    for axis, field, label in (
        (acoustic, "acoustic_excitation", "acoustic\nexcitation"),
        (semantic, "semantic_excitation", "semantic\nexcitation"),
    ):
        values = [getattr(w, field) for w in prediction.words]
        drawn = [(w, v) for w, v in zip(prediction.words, values) if not math.isnan(v)]
        axis.bar(
            [w.start_s for w, _ in drawn],
            [v for _, v in drawn],
            width=[max(w.end_s - w.start_s, 1.0 / FRAMES_PER_SECOND) for w, _ in drawn],
            align="edge",
            color="tab:orange" if axis is acoustic else "tab:blue",
            edgecolor="black",
            lw=0.5,
        )
        for word, value in drawn:  # the means differ by little: the numbers say by how much
            axis.text(
                (word.start_s + word.end_s) / 2,
                value + 0.03,
                f"{value:.2f}",
                ha="center",
                va="bottom",
                fontsize=8,
            )
        axis.set_ylabel(label)
        axis.set_ylim(0, 1)
        if not drawn:  # a baseline variant has no excitation gates
            axis.text(seconds / 2, 0.5, "(this model has no excitation)", ha="center")
    semantic.set_xlabel("seconds")
    semantic.set_xlim(0, seconds)
    probabilities = ", ".join(f"{name} {p:.2f}" for name, p in prediction.probabilities.items())
    figure.suptitle(f"{title + ': ' if title else ''}{prediction.emotion} ({probabilities})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return figure
