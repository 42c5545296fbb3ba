"""Training one cross-validation fold: fit on the training folds, select the epoch on an inner
validation split of *training* speakers, then score the held-out fold once.

The held-out fold is never looked at before the final evaluation (the paper's released code
picked each fold's best epoch on the test fold itself).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from trainer.config import ModelConfig
from trainer.data import make_dataset
from trainer.metrics import confusion_matrix, unweighted_accuracy, weighted_accuracy
from trainer.model import adapt_normalization, build_model


@dataclasses.dataclass
class FoldResult:
    fold: int
    wa: float
    ua: float
    confusion: List[List[int]]
    best_epoch: int
    epochs_run: int
    best_val_ua: float
    num_train: int
    num_val: int
    num_test: int
    val_folds: List[int]


def training_frames(dataset: tf.data.Dataset) -> np.ndarray:
    """All real (unpadded) filterbank frames of a dataset of ``(inputs, label)`` batches."""
    chunks = []
    for inputs, _ in dataset:
        fbank, lengths = inputs["fbank"].numpy(), inputs["num_frames"].numpy()
        chunks.extend(fbank[i, :n] for i, n in enumerate(lengths))
    return np.concatenate(chunks, axis=0)


def predict_labels(model: keras.Model, dataset: tf.data.Dataset):
    labels, predicted = [], []
    for inputs, label in dataset:
        labels.append(label.numpy())
        predicted.append(np.argmax(model(inputs, training=False).numpy(), axis=-1))
    return np.concatenate(labels), np.concatenate(predicted)


def count(dataset: tf.data.Dataset) -> int:
    return int(sum(int(label.shape[0]) for _, label in dataset))


def train_fold(files_by_fold: Dict[int, Sequence[str]], test_fold: int, config: ModelConfig, *,
               log_dir: Optional[str] = None,
               model_path: Optional[str] = None, verbose: int = 0) -> FoldResult:
    """Trains with fold ``test_fold`` held out and the next fold as inner validation."""
    folds = sorted(files_by_fold)
    if test_fold not in folds or len(folds) < 3:
        raise ValueError(f"need >= 3 folds including {test_fold} (train, validation, test); "
                         f"got {folds}")
    val_fold = folds[(folds.index(test_fold) + 1) % len(folds)]
    train_files = [f for k in folds if k not in (test_fold, val_fold) for f in files_by_fold[k]]

    keras.utils.set_random_seed(config.seed)
    make = lambda files, shuffle=False: make_dataset(files, config.word_dim, config.batch_size,
                                                     shuffle=shuffle, seed=config.seed)
    train_ds, val_ds = make(train_files, shuffle=True), make(files_by_fold[val_fold])
    test_ds = make(files_by_fold[test_fold])

    model = build_model(config)
    adapt_normalization(model, training_frames(make(train_files)))
    callbacks = [keras.callbacks.EarlyStopping(monitor="val_ua", mode="max", patience=config.patience,
                                               restore_best_weights=True)]
    if log_dir:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=log_dir, write_graph=False))
    history = model.fit(train_ds, validation_data=val_ds, epochs=config.epochs,
                        callbacks=callbacks, verbose=verbose)
    val_ua = history.history["val_ua"]
    best_epoch = int(np.argmax(val_ua))

    labels, predicted = predict_labels(model, test_ds)
    confusion = confusion_matrix(labels, predicted, config.num_classes)
    if model_path:
        Path(model_path).parent.mkdir(parents=True, exist_ok=True)
        model.save(model_path)
    return FoldResult(fold=test_fold, wa=weighted_accuracy(confusion),
                      ua=unweighted_accuracy(confusion), confusion=confusion.tolist(),
                      best_epoch=best_epoch + 1, epochs_run=len(val_ua),
                      best_val_ua=float(val_ua[best_epoch]), num_train=count(make(train_files)),
                      num_val=count(val_ds), num_test=int(len(labels)), val_folds=[val_fold])


def write_result(result: FoldResult, path) -> None:
    Path(path).write_text(json.dumps(dataclasses.asdict(result), indent=2))
