"""Speech emotion recognition metrics: WA (overall accuracy) and UA (mean per-class recall)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """``[K, K]`` counts, rows = true class, columns = predicted class."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    predictions = np.asarray(predictions, dtype=np.int64).reshape(-1)
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def weighted_accuracy(confusion: np.ndarray) -> float:
    """WA: correct / total."""
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total else 0.0


def unweighted_accuracy(confusion: np.ndarray) -> float:
    """UA: mean over the classes present in the labels of their recall."""
    support = confusion.sum(axis=1)
    present = support > 0
    if not present.any():
        return 0.0
    return float(np.mean(np.diag(confusion)[present] / support[present]))


def prior_corrected(probabilities, class_counts) -> np.ndarray:
    """Class probabilities ``[..., K]`` divided by the training class prior ``n_k / N`` and
    renormalised: ``q_k = (p_k / pi_k) / sum_j (p_j / pi_j)``.

    If ``p`` is the posterior under the training prior, ``argmax q`` is the decision a model
    trained on balanced classes would make, the one that maximises expected UA (mean per-class
    recall) rather than WA. RAVDESS has half as many neutral utterances as each other class.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.shape != probabilities.shape[-1:] or (counts <= 0).any():
        raise ValueError(
            f"need a positive count for each of the {probabilities.shape[-1]} "
            f"classes, got {counts.tolist()}"
        )
    scaled = probabilities / (counts / counts.sum())
    return scaled / scaled.sum(axis=-1, keepdims=True)


@keras.saving.register_keras_serializable(package="cme_ser")
class UnweightedAccuracy(keras.metrics.Metric):
    """UA as a streaming Keras metric: mean over classes seen so far of their recall.

    Accumulates a ``[K, K]`` confusion matrix from integer labels ``[B]`` and class
    probabilities ``[B, K]``; ``result()`` is ``mean_k(C[k, k] / sum_j C[k, j])`` over the
    classes with at least one label.
    """

    def __init__(self, num_classes: int, name: str = "ua", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.confusion = self.add_variable(
            shape=(self.num_classes, self.num_classes),
            initializer="zeros",
            dtype="float32",
            name="confusion",
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = tf.reshape(tf.cast(y_true, tf.int32), [-1])
        predicted = tf.argmax(
            tf.reshape(y_pred, [-1, self.num_classes]), axis=-1, output_type=tf.int32
        )
        weights = None if sample_weight is None else tf.reshape(sample_weight, [-1])
        batch = tf.math.confusion_matrix(
            labels, predicted, self.num_classes, weights=weights, dtype=tf.float32
        )
        self.confusion.assign_add(batch)

    def result(self):
        support = tf.reduce_sum(self.confusion, axis=1)
        recall = tf.math.divide_no_nan(tf.linalg.diag_part(self.confusion), support)
        present = tf.cast(support > 0, tf.float32)
        return tf.math.divide_no_nan(tf.reduce_sum(recall * present), tf.reduce_sum(present))

    def reset_state(self):
        self.confusion.assign(tf.zeros_like(self.confusion))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


@keras.saving.register_keras_serializable(package="cme_ser")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Cross-entropy of integer labels against probabilities, with label smoothing::

        loss = -(1 - eps) * log p[y] - (eps / K) * sum_k log p[k]

    ``eps = 0`` is the plain sparse categorical cross-entropy (the paper's loss).
    Inputs: labels ``[B]`` int, probabilities ``[B, K]``. Output: ``[B]`` per-example losses.
    """

    def __init__(self, label_smoothing: float = 0.0, name: str = "smoothed_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        log_p = tf.math.log(tf.clip_by_value(y_pred, 1e-7, 1.0))
        labels = tf.reshape(tf.cast(y_true, tf.int32), [-1])
        nll = -tf.gather(log_p, labels, axis=-1, batch_dims=1)
        if not self.label_smoothing:
            return nll
        return (1.0 - self.label_smoothing) * nll - self.label_smoothing * tf.reduce_mean(
            log_p, axis=-1
        )

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}
