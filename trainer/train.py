"""Training: fit on training records with an inner validation split carved from the *training*
speakers (epoch selection, early stopping), then score held-out records once.

The held-out data is never looked at before the final evaluation (the paper's released code
picked each fold's best epoch on the test fold itself).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from trainer.config import ModelConfig
from trainer.data import make_dataset
from trainer.metrics import confusion_matrix, unweighted_accuracy, weighted_accuracy
from trainer.model import adapt_normalization, build_model, compile_model


@dataclasses.dataclass
class FoldResult:
    fold: int
    wa: float
    ua: float
    confusion: List[List[int]]
    best_epoch: int
    epochs_run: int
    best_val_ua: float  # validation UA at the selected epoch
    num_train: int
    num_val: int
    num_test: int
    val_speakers: List[str]


@dataclasses.dataclass
class FitResult:
    model: keras.Model
    history: Dict[str, List[float]]
    best_epoch: int  # 1-based
    val_speakers: List[str]
    num_train: int
    num_val: int


def speakers_in(files: Sequence[str]) -> List[str]:
    spec = {"speaker": tf.io.FixedLenFeature([], tf.string)}
    ds = tf.data.TFRecordDataset(list(files), compression_type="GZIP").map(
        lambda raw: tf.io.parse_single_example(raw, spec)["speaker"])
    return sorted({s.decode("utf-8") for s in ds.as_numpy_iterator()})


def validation_speakers(speakers: Sequence[str], fraction: float) -> List[str]:
    """Every k-th speaker in sorted order, k = round(1 / fraction), at least one speaker and
    never all of them. Deterministic; on RAVDESS (odd actors male, even female) it picks both
    genders."""
    speakers = sorted(speakers)
    if len(speakers) < 2:
        raise ValueError(f"need >= 2 training speakers to carve a validation split, "
                         f"got {speakers}")
    step = max(2, int(round(1.0 / fraction)))
    return speakers[::step]


def training_frames(dataset: tf.data.Dataset) -> np.ndarray:
    """All real (unpadded) filterbank frames of a dataset of ``(inputs, label)`` batches."""
    chunks = []
    for inputs, _ in dataset:
        fbank, lengths = inputs["fbank"].numpy(), inputs["num_frames"].numpy()
        chunks.extend(fbank[i, :n] for i, n in enumerate(lengths))
    return np.concatenate(chunks, axis=0)


def count(dataset: tf.data.Dataset) -> int:
    return int(sum(int(label.shape[0]) for _, label in dataset))


def fit(train_files: Sequence[str], config: ModelConfig, *, log_dir: Optional[str] = None,
        extra_callbacks: Sequence[keras.callbacks.Callback] = (), verbose: int = 0) -> FitResult:
    """Fits the model on ``train_files`` minus the inner validation speakers, selecting the
    epoch with the best validation score (``config.selection``: UA or loss; early stopping,
    best weights restored)."""
    val = validation_speakers(speakers_in(train_files), config.validation_fraction)
    # Same seed, same records -> same model: seeded initialisers, data order and augmentation,
    # and TF kernels in their deterministic mode.
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()

    def make(shuffle: bool, exclude: bool, stretch: float = 0.0) -> tf.data.Dataset:
        return make_dataset(train_files, config.word_dim, config.batch_size, shuffle=shuffle,
                            seed=config.seed, speakers=val, exclude_speakers=exclude,
                            time_stretch=stretch)

    plain_train = make(shuffle=False, exclude=True)
    train_ds = make(shuffle=True, exclude=True, stretch=config.time_stretch)
    val_ds = make(shuffle=False, exclude=False)
    model = build_model(config)
    adapt_normalization(model, training_frames(plain_train))
    compile_model(model, config, steps_per_epoch=sum(1 for _ in plain_train))
    monitor, mode = ("val_loss", "min") if config.selection == "val_loss" else ("val_ua", "max")
    callbacks = [keras.callbacks.EarlyStopping(monitor=monitor, mode=mode,
                                               patience=config.patience,
                                               restore_best_weights=True), *extra_callbacks]
    if log_dir:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=log_dir, write_graph=False))
    history = model.fit(train_ds, validation_data=val_ds, epochs=config.epochs,
                        callbacks=callbacks, verbose=verbose).history
    scores = np.asarray(history[monitor])
    best = int(np.argmin(scores) if mode == "min" else np.argmax(scores))
    return FitResult(model=model, history=history, best_epoch=best + 1, val_speakers=val,
                     num_train=count(plain_train), num_val=count(val_ds))


def evaluate(model: keras.Model, files: Sequence[str], config: ModelConfig) -> Tuple[np.ndarray, int]:
    """Confusion matrix ``[K, K]`` of ``model`` on ``files`` and the number of utterances."""
    labels, predicted = [], []
    for inputs, label in make_dataset(files, config.word_dim, config.batch_size):
        labels.append(label.numpy())
        predicted.append(np.argmax(model(inputs, training=False).numpy(), axis=-1))
    labels, predicted = np.concatenate(labels), np.concatenate(predicted)
    return confusion_matrix(labels, predicted, config.num_classes), int(labels.size)


def embed(model: keras.Model, files: Sequence[str], config: ModelConfig) -> Dict[str, np.ndarray]:
    """Utterance embeddings (the ``utterance_embedding`` layer, before the classifier) of
    ``files``: ``embeddings [N, D]``, ``labels [N]``, ``utterance_ids [N]``, in id order."""
    from trainer.model import EMBEDDING_LAYER
    embedder = keras.Model(model.inputs, model.get_layer(EMBEDDING_LAYER).output)
    chunks, labels, ids = [], [], []
    for inputs, label, utterance_id in make_dataset(files, config.word_dim, config.batch_size,
                                                    with_ids=True):
        chunks.append(np.asarray(embedder(inputs, training=False)))
        labels.append(label.numpy())
        ids.append(utterance_id.numpy())
    ids = np.concatenate(ids)
    order = np.argsort(ids, kind="stable")
    return {"embeddings": np.concatenate(chunks)[order], "labels": np.concatenate(labels)[order],
            "utterance_ids": ids[order].astype(str)}


def train_fold(files_by_fold: Dict[int, Sequence[str]], test_fold: int, config: ModelConfig, *,
               log_dir: Optional[str] = None, model_path: Optional[str] = None,
               embeddings_path: Optional[str] = None, verbose: int = 0) -> FoldResult:
    """Trains on every fold but ``test_fold``, then scores ``test_fold`` once (and, with
    ``embeddings_path``, saves the held-out utterances' embeddings there as ``.npz``)."""
    if test_fold not in files_by_fold or len(files_by_fold) < 2:
        raise ValueError(f"need >= 2 folds including {test_fold}; got {sorted(files_by_fold)}")
    train_files = [f for k in sorted(files_by_fold) if k != test_fold for f in files_by_fold[k]]
    result = fit(train_files, config, log_dir=log_dir, verbose=verbose)
    confusion, num_test = evaluate(result.model, files_by_fold[test_fold], config)
    if model_path:
        Path(model_path).parent.mkdir(parents=True, exist_ok=True)
        result.model.save(model_path)
    if embeddings_path:
        Path(embeddings_path).parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(embeddings_path, **embed(result.model, files_by_fold[test_fold], config))
    val_ua = result.history["val_ua"]
    return FoldResult(fold=test_fold, wa=weighted_accuracy(confusion),
                      ua=unweighted_accuracy(confusion), confusion=confusion.tolist(),
                      best_epoch=result.best_epoch, epochs_run=len(val_ua),
                      best_val_ua=float(val_ua[result.best_epoch - 1]),
                      num_train=result.num_train, num_val=result.num_val, num_test=num_test,
                      val_speakers=result.val_speakers)


def write_result(result: FoldResult, path) -> None:
    Path(path).write_text(json.dumps(dataclasses.asdict(result), indent=2))
