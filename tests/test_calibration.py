"""Calibration (issue 23): temperature scaling fitted on held-out answers, the expected
calibration error and its reliability bins, abstaining below a confidence, and the exported
SavedModel serving the temperature-scaled probabilities."""

import numpy as np
import pytest
import tensorflow as tf

from trainer.calibration import (
    ECE_BINS,
    calibration_report,
    check_min_confidence,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_bins,
    selective_scores,
    temperature_scaled,
)
from trainer.layers import TemperatureScaling


def sampled(n=20000, k=4, sharpen=3.0, seed=0):
    """Answers whose labels are drawn from softmax(z) (a calibrated model), reported as
    softmax(sharpen * z): over-confident by exactly the temperature ``sharpen``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.0, (n, k))
    true = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    labels = np.array([rng.choice(k, p=p) for p in true])
    reported = np.exp(sharpen * z) / np.exp(sharpen * z).sum(-1, keepdims=True)
    return true, reported, labels


def test_temperature_scaling_keeps_the_argmax_and_is_the_identity_at_1():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    np.testing.assert_allclose(temperature_scaled(p, 1.0), p, atol=1e-12)
    soft, sharp = temperature_scaled(p, 2.0), temperature_scaled(p, 0.5)
    assert (soft.argmax(-1) == p.argmax(-1)).all() and (sharp.argmax(-1) == p.argmax(-1)).all()
    assert (soft.max(-1) < p.max(-1)).all() and (sharp.max(-1) > p.max(-1)).all()
    # softmax(log p / T) by hand for the first row at T = 2
    expected = np.sqrt(p[0]) / np.sqrt(p[0]).sum()
    np.testing.assert_allclose(soft[0], expected, atol=1e-12)
    with pytest.raises(ValueError, match="> 0"):
        temperature_scaled(p, 0.0)


def test_the_fitted_temperature_undoes_a_known_over_confidence():
    true, reported, labels = sampled(sharpen=3.0)
    t = fit_temperature(reported, labels)
    assert t == pytest.approx(3.0, rel=0.05)
    calibrated = temperature_scaled(reported, t)
    np.testing.assert_allclose(calibrated, true, atol=0.03)
    assert negative_log_likelihood(calibrated, labels) < negative_log_likelihood(reported, labels)
    # A calibrated model needs no temperature.
    assert fit_temperature(true, labels) == pytest.approx(1.0, abs=0.05)


def test_ece_and_reliability_bins():
    true, reported, labels = sampled(sharpen=3.0)
    bins = reliability_bins(reported, labels)
    assert len(bins) == ECE_BINS and sum(b["count"] for b in bins) == len(labels)
    assert bins[0]["lower"] == 0.0 and bins[-1]["upper"] == 1.0
    for b in bins:
        if b["count"]:
            assert b["lower"] <= b["confidence"] <= b["upper"]
    # ECE by hand: the count-weighted gap between accuracy and confidence.
    confidence, correct = reported.max(-1), reported.argmax(-1) == labels
    index = np.minimum((np.ceil(confidence * ECE_BINS) - 1).astype(int), ECE_BINS - 1)
    by_hand = sum(
        abs(correct[index == b].mean() - confidence[index == b].mean()) * (index == b).sum()
        for b in range(ECE_BINS)
        if (index == b).any()
    )
    assert expected_calibration_error(reported, labels) == pytest.approx(by_hand / len(labels))
    assert expected_calibration_error(reported, labels) > 0.1  # over-confident
    assert expected_calibration_error(true, labels) < 0.02  # calibrated
    report = calibration_report(reported, labels, fit_temperature(reported, labels))
    assert report["after"]["ece"] < 0.02 < 0.1 < report["before"]["ece"]
    assert report["n"] == len(labels) and len(report["after"]["reliability"]) == ECE_BINS


def test_answering_only_above_a_confidence():
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.45, 0.55]])
    labels = np.array([0, 1, 1, 0])
    assert selective_scores(p, labels, 0.0) == {
        "min_confidence": 0.0,
        "answered": 4,
        "coverage": 1.0,
        "accuracy": 0.5,
    }
    assert selective_scores(p, labels, 0.65) == {
        "min_confidence": 0.65,
        "answered": 2,
        "coverage": 0.5,
        "accuracy": 1.0,
    }
    assert selective_scores(p, labels, 0.95)["accuracy"] is None
    assert check_min_confidence(0.5) == 0.5
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_min_confidence(1.5)


def test_the_layer_is_the_numpy_map_and_round_trips_its_config():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [1.0, 0.0, 0.0]], np.float32)
    layer = TemperatureScaling(1.7)
    np.testing.assert_allclose(layer(tf.constant(p)).numpy(), temperature_scaled(p, 1.7), atol=1e-6)
    again = TemperatureScaling.from_config(layer.get_config())
    assert again.temperature == 1.7
    with pytest.raises(ValueError, match="finite number > 0"):
        TemperatureScaling(float("nan"))


def test_cross_fitting_never_scores_a_fold_with_a_temperature_fitted_on_it():
    from trainer.calibration import cross_fitted

    held_out = {}
    for k, sharpen in enumerate((2.0, 3.0, 4.0)):  # folds over-confident by different T
        _, reported, labels = sampled(n=4000, sharpen=sharpen, seed=k)
        held_out[k] = (reported, labels)
    result = cross_fitted(held_out)
    for k in held_out:
        others = [j for j in held_out if j != k]
        expected = fit_temperature(
            np.concatenate([held_out[j][0] for j in others]),
            np.concatenate([held_out[j][1] for j in others]),
        )
        assert result["folds"][k]["temperature"] == pytest.approx(expected)
        assert result["folds"][k]["after"]["ece"] == pytest.approx(
            expected_calibration_error(temperature_scaled(held_out[k][0], expected), held_out[k][1])
        )
    everything = fit_temperature(
        np.concatenate([p for p, _ in held_out.values()]),
        np.concatenate([y for _, y in held_out.values()]),
    )
    assert result["temperature"] == pytest.approx(everything)
    assert 2.0 < result["temperature"] < 4.0
    assert result["pooled"]["after"]["ece"] < result["pooled"]["before"]["ece"]
    assert result["pooled"]["n"] == 12000
    with pytest.raises(ValueError, match="at least 2 folds"):
        cross_fitted({0: held_out[0]})


def test_channel_calibration_fits_on_one_channel_and_scores_each():
    from trainer.calibration import channel_calibration, cross_fitted

    answers = {}
    for k in range(3):
        _, speech, y_speech = sampled(n=2000, sharpen=2.0, seed=k)
        _, song, y_song = sampled(n=1000, sharpen=4.0, seed=10 + k)
        answers[k] = (
            np.concatenate([speech, song]),
            np.concatenate([y_speech, y_song]),
            np.array(["speech"] * 2000 + ["song"] * 1000),
        )
    result = channel_calibration(answers, "speech")
    speech_only = cross_fitted({k: (p[:2000], y[:2000]) for k, (p, y, _) in answers.items()})
    assert result["temperature"] == pytest.approx(speech_only["temperature"])
    song_after = np.concatenate(
        [
            temperature_scaled(p[2000:], result["folds"][k]["temperature"])
            for k, (p, _, _) in answers.items()
        ]
    )
    song_labels = np.concatenate([y[2000:] for _, y, _ in answers.values()])
    assert result["by_channel"]["song"]["after"]["ece"] == pytest.approx(
        expected_calibration_error(song_after, song_labels)
    )
    assert result["by_channel"]["song"]["n"] == 3000
    # A temperature fitted on speech (T ~ 2) leaves song (T = 4) over-confident, but less so.
    assert (
        result["by_channel"]["song"]["after"]["ece"] < result["by_channel"]["song"]["before"]["ece"]
    )
    assert channel_calibration(answers)["fit_channel"] is None
