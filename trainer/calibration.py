"""Post-hoc calibration of class probabilities: temperature scaling (Guo et al., "On Calibration
of Modern Neural Networks", ICML 2017), the expected calibration error, the reliability diagram's
bins, and abstaining below a confidence.

Temperature scaling rescales the log-probabilities of every answer by one number ``T > 0``::

    q[k] = exp(log p[k] / T) / sum_j exp(log p[j] / T)

``T > 1`` softens over-confident answers, ``T < 1`` sharpens timid ones; the argmax, hence WA
and UA, never changes. ``T`` is fitted by minimising the negative log-likelihood of held-out
answers (speakers the model never trained on). NumPy and SciPy only: the exported model applies
the same map with ``trainer.layers.TemperatureScaling``.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
from scipy.optimize import minimize_scalar

# Equal-width confidence bins of the ECE and the reliability diagram (Guo et al. use 15).
ECE_BINS = 15
# The temperature is searched in [1/20, 20]: beyond, a model is no longer a classifier worth
# calibrating (all answers certain, or all uniform).
TEMPERATURE_RANGE = (0.05, 20.0)
_TINY = 1e-12  # log(0) guard: a softmax output is never exactly 0 in float64


def _log(probabilities) -> np.ndarray:
    return np.log(np.clip(np.asarray(probabilities, np.float64), _TINY, None))


def temperature_scaled(probabilities, temperature: float) -> np.ndarray:
    """``q = softmax(log p / T)`` row by row: ``[N, K] -> [N, K]``."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = _log(probabilities) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=-1, keepdims=True)


def negative_log_likelihood(probabilities, labels) -> float:
    """Mean ``-log p[label]`` over the answers."""
    probabilities, labels = np.asarray(probabilities), np.asarray(labels, np.int64)
    return float(-_log(probabilities[np.arange(len(labels)), labels]).mean())


def fit_temperature(probabilities, labels) -> float:
    """The ``T`` in ``TEMPERATURE_RANGE`` minimising the NLL of ``temperature_scaled`` answers
    (a convex problem in ``1 / T``; searched over ``log T``). ``[N, K]`` probabilities and
    ``[N]`` integer labels of held-out answers, N >= 1."""
    probabilities, labels = np.asarray(probabilities, np.float64), np.asarray(labels, np.int64)
    if probabilities.ndim != 2 or len(probabilities) != len(labels) or not len(labels):
        raise ValueError(
            f"need [N, K] probabilities and N labels, N >= 1; got "
            f"{probabilities.shape} and {labels.shape}"
        )
    low, high = np.log(TEMPERATURE_RANGE)
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(
            temperature_scaled(probabilities, float(np.exp(log_t))), labels
        ),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(result.x))


def reliability_bins(probabilities, labels, bins: int = ECE_BINS) -> List[Dict[str, float]]:
    """The reliability diagram: answers grouped by confidence (the top probability) into
    ``bins`` equal-width bins of ``(0, 1]``; per bin its edges, ``count``, mean ``confidence``
    and ``accuracy`` (None for both when empty)."""
    probabilities, labels = np.asarray(probabilities, np.float64), np.asarray(labels, np.int64)
    confidence = probabilities.max(axis=-1)
    correct = probabilities.argmax(axis=-1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin b holds confidences in (edges[b], edges[b + 1]]; the first also holds 0.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        mine = index == b
        n = int(mine.sum())
        out.append(
            {
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": n,
                "confidence": float(confidence[mine].mean()) if n else None,
                "accuracy": float(correct[mine].mean()) if n else None,
            }
        )
    return out


def expected_calibration_error(probabilities, labels, bins: int = ECE_BINS) -> float:
    """``ECE = sum_b (n_b / N) |accuracy_b - confidence_b|`` over the reliability bins."""
    table = reliability_bins(probabilities, labels, bins)
    total = sum(b["count"] for b in table)
    if not total:
        raise ValueError("no answers to compute a calibration error from")
    return float(
        sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in table if b["count"])
    )


def selective_scores(probabilities, labels, min_confidence: float) -> Dict[str, float]:
    """Answering only when the top probability is at least ``min_confidence`` ("uncertain"
    otherwise): ``coverage`` (the share answered), ``accuracy`` of those answers (None if
    none), and ``answered`` (their count)."""
    probabilities, labels = np.asarray(probabilities, np.float64), np.asarray(labels, np.int64)
    answered = probabilities.max(axis=-1) >= min_confidence
    n = int(answered.sum())
    return {
        "min_confidence": float(min_confidence),
        "answered": n,
        "coverage": float(n / len(labels)) if len(labels) else 0.0,
        "accuracy": (
            float((probabilities[answered].argmax(-1) == labels[answered]).mean()) if n else None
        ),
    }


def calibration_scores(probabilities, labels, bins: int = ECE_BINS) -> Dict[str, object]:
    """``ece``, ``nll`` and the ``reliability`` bins of one set of answers."""
    return {
        "ece": expected_calibration_error(probabilities, labels, bins),
        "nll": negative_log_likelihood(probabilities, labels),
        "reliability": reliability_bins(probabilities, labels, bins),
    }


def calibration_report(
    probabilities, labels, temperature: float, bins: int = ECE_BINS
) -> Dict[str, object]:
    """ECE, NLL and the reliability bins of ``probabilities`` (``before``) and of their
    ``temperature``-scaled answers (``after``)."""
    after = temperature_scaled(probabilities, temperature)
    return {
        "temperature": float(temperature),
        "bins": bins,
        "n": int(len(labels)),
        **{
            name: calibration_scores(p, labels, bins)
            for name, p in (("before", probabilities), ("after", after))
        },
    }


def check_min_confidence(value: float) -> float:
    """``--min-confidence``: a probability (0: always answer)."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"--min-confidence must be a probability in [0, 1], got {value}")
    return float(value)


def cross_fitted(held_out: Dict[int, tuple]) -> Dict[str, object]:
    """Temperature scaling fitted across the folds of a cross-validation, never on the fold it
    is scored on. ``held_out``: fold -> ``(probabilities [N, K], labels [N])``, each fold's
    answers from the model that did not train on it.

    Returns ``temperature`` (fitted on every fold's answers: the one for a model trained on all
    folds), and per fold the temperature fitted on the *other* folds with that fold's
    ``calibration_report`` at it (so the "after" score of a fold never saw the fold), plus the
    answers of all folds pooled, each scaled by its own fold's temperature (``pooled``)."""
    if len(held_out) < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds, got {len(held_out)}")
    folds, per_fold, pooled_before, pooled_after, pooled_labels = sorted(held_out), {}, [], [], []
    for k in folds:
        others = [j for j in folds if j != k]
        t = fit_temperature(
            np.concatenate([held_out[j][0] for j in others]),
            np.concatenate([held_out[j][1] for j in others]),
        )
        probabilities, labels = held_out[k]
        report = calibration_report(probabilities, labels, t)
        per_fold[k] = {
            "temperature": t,
            "n": report["n"],
            **{side: {m: report[side][m] for m in ("ece", "nll")} for side in ("before", "after")},
        }
        pooled_before.append(np.asarray(probabilities))
        pooled_after.append(temperature_scaled(probabilities, t))
        pooled_labels.append(np.asarray(labels))
    labels = np.concatenate(pooled_labels)
    before, after = np.concatenate(pooled_before), np.concatenate(pooled_after)
    return {
        "temperature": fit_temperature(before, labels),
        "folds": per_fold,
        "pooled": {
            "n": int(len(labels)),
            **{
                side: calibration_scores(p, labels)
                for side, p in (("before", before), ("after", after))
            },
        },
    }


def channel_calibration(
    answers: Dict[int, tuple], fit_channel: Optional[str] = None
) -> Dict[str, object]:
    """:func:`cross_fitted` on the folds' answers of ``fit_channel`` (None: every answer), and
    per channel the ECE and NLL of all folds' answers pooled, before and after each fold's
    answers are scaled by the temperature of the other folds. ``answers``: fold ->
    ``(probabilities [N, K], labels [N], channels [N])``."""
    answers = {
        k: (np.asarray(p, np.float64), np.asarray(y), np.asarray(c))
        for k, (p, y, c) in answers.items()
    }
    result = cross_fitted(
        {
            k: (p, y) if fit_channel is None else (p[c == fit_channel], y[c == fit_channel])
            for k, (p, y, c) in answers.items()
        }
    )
    by_channel = {}
    for channel in sorted({ch for _, _, c in answers.values() for ch in c.tolist()}):
        sides = {"before": [], "after": []}
        labels = []
        for k, (p, y, c) in answers.items():
            mine = c == channel
            sides["before"].append(p[mine])
            sides["after"].append(temperature_scaled(p[mine], result["folds"][k]["temperature"]))
            labels.append(y[mine])
        labels = np.concatenate(labels)
        by_channel[channel] = {
            "n": int(len(labels)),
            **{
                side: {
                    key: value
                    for key, value in calibration_scores(np.concatenate(p), labels).items()
                    if key != "reliability"
                }
                for side, p in sides.items()
            },
        }
    return {**result, "fit_channel": fit_channel, "by_channel": by_channel}
