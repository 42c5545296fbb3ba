"""Training: fit on training records with an inner validation split carved from the *training*
speakers (epoch selection, early stopping), then score held-out records once.

The held-out data is never looked at before the final evaluation (the paper's released code
picked each fold's best epoch on the test fold itself).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from preprocessing.corpora import is_augmented
from trainer.config import ModelConfig
from trainer.data import make_dataset, record_channels
from trainer.distribution import in_training_strategy
from trainer.metrics import confusion_matrix, unweighted_accuracy, weighted_accuracy
from trainer.model import FrameChunks, adapt_normalization, build_model, compile_model, valid_frames
from trainer.splits import validation_speakers


@dataclasses.dataclass
class FoldResult:
    fold: int
    wa: float
    ua: float
    confusion: List[List[int]]
    best_epoch: int
    epochs_run: int
    best_val_ua: Optional[float]  # validation UA at the selected epoch (None: no choice)
    num_train: int
    num_val: int
    num_test: int
    val_speakers: List[str]
    refit_epochs: int = 0
    num_final_train: int = 0
    train_class_counts: List[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class FitResult:
    model: keras.Model
    history: Dict[str, List[float]]
    best_epoch: int  # 1-based
    val_speakers: List[str]
    num_train: int
    num_val: int
    refit_epochs: int = 0  # > 0: the returned model was refit on all training speakers
    num_final_train: int = 0  # utterances the returned model was trained on
    class_counts: List[int] = dataclasses.field(default_factory=list)  # of those utterances
    # The selected (not refit) model's predictions on the inner validation speakers: evidence
    # for decisions taken after training (e.g. prior correction) that never touches test data.
    validation: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def speakers_in(files: Sequence[str]) -> List[str]:
    spec = {"speaker": tf.io.FixedLenFeature([], tf.string)}
    ds = tf.data.TFRecordDataset(list(files), compression_type="GZIP").map(
        lambda raw: tf.io.parse_single_example(raw, spec)["speaker"]
    )
    return sorted({s.decode("utf-8") for s in ds.as_numpy_iterator()})


def training_frames(dataset: tf.data.Dataset) -> FrameChunks:
    """The real (unpadded) filterbank frames of a dataset of ``(inputs, label)`` batches, as
    :func:`trainer.model.adapt_normalization` streams them: a function that reads the dataset
    anew each time it is called and yields each batch's frames, ``[n, C]``."""

    def chunks():
        for inputs, _ in dataset:
            yield valid_frames(inputs["fbank"].numpy(), inputs["num_frames"].numpy())

    return chunks


def count(dataset: tf.data.Dataset) -> int:
    return int(sum(int(label.shape[0]) for _, label in dataset))


def class_counts(dataset: tf.data.Dataset, num_classes: int) -> np.ndarray:
    """``[K]`` number of utterances of each class in a dataset of ``(inputs, label)`` batches."""
    labels = np.concatenate([label.numpy() for _, label in dataset])
    return np.bincount(labels, minlength=num_classes)


def class_weights(dataset: tf.data.Dataset, num_classes: int) -> Dict[int, float]:
    """``N / (K * n_k)`` per class ``k`` of the labels in ``dataset``: every class then carries
    the same total weight in the loss (what UA, the mean per-class recall, rewards)."""
    counts = class_counts(dataset, num_classes)
    missing = [k for k in range(num_classes) if counts[k] == 0]
    if missing:
        raise ValueError(f"class(es) {missing} have no training examples; cannot balance them")
    return {k: float(counts.sum() / (num_classes * counts[k])) for k in range(num_classes)}


@in_training_strategy  # build, adapt, compile and fit under the environment's strategy
def _train(
    config: ModelConfig,
    plain: tf.data.Dataset,
    shuffled: tf.data.Dataset,
    epochs: int,
    *,
    schedule_epochs: Optional[int] = None,
    validation: Optional[tf.data.Dataset] = None,
    callbacks=(),
    verbose: int = 0,
) -> Tuple[keras.Model, Dict[str, List[float]]]:
    """A fresh model (seeded), its normalisation adapted on ``plain``'s frames, trained on
    ``shuffled`` for up to ``epochs`` epochs (the learning-rate schedule spans
    ``schedule_epochs``, default ``epochs``)."""
    keras.utils.set_random_seed(config.seed)
    model = build_model(config)
    adapt_normalization(model, training_frames(plain))
    compile_model(
        model, config, steps_per_epoch=sum(1 for _ in plain), epochs=schedule_epochs or epochs
    )
    weights = class_weights(plain, config.num_classes) if config.class_balanced else None
    with warnings.catch_warnings():
        # The batches of a bucketed, filtered tf.data pipeline are not counted in advance, so
        # Keras learns an epoch's length when the first epoch ends and warns that the input
        # "ran out of data". That end is the epoch's end, not a failure.
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        history = model.fit(
            shuffled,
            validation_data=validation,
            epochs=epochs,
            class_weight=weights,
            callbacks=list(callbacks),
            verbose=verbose,
        ).history
    return model, history


def fit(
    train_files: Sequence[str],
    config: ModelConfig,
    *,
    log_dir: Optional[str] = None,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 0,
    channels: Optional[Sequence[str]] = None,
) -> FitResult:
    """Fits the model on ``train_files`` minus the inner validation speakers, selecting the
    epoch with the best validation score (``config.selection``: UA or loss; early stopping,
    best weights restored). With ``config.refit`` a fresh model is then trained on all of
    ``train_files`` for the selected number of epochs (on the selection run's learning-rate
    schedule), and that model is returned. ``channels`` trains (and selects the epoch) on
    those channels' records only (``make_dataset``). With ``config.selection == "fixed"``
    no epoch is chosen: the model trains on all of ``train_files`` for ``config.epochs``
    epochs and has no validation split. ``channels`` defaults to ``config.train_channels``."""
    channels = config.train_channels if channels is None else channels
    if config.selection == "fixed":
        return _fit_fixed(
            train_files,
            config,
            log_dir=log_dir,
            extra_callbacks=extra_callbacks,
            verbose=verbose,
            channels=channels,
        )
    val = validation_speakers(
        speakers_in(train_files),
        config.validation_fraction,
        offset=config.seed if config.rotate_validation else 0,
    )
    # Same seed, same records -> same model: seeded initialisers, data order and augmentation,
    # and TF kernels in their deterministic mode. (The global seed also fixes the datasets'
    # shuffle seeds, so it is set before they are made; ``_train`` re-seeds each new model.)
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()

    # The epoch is chosen on the validation speakers' real recordings, never on augmented
    # copies (which are for training only).
    real_channels = [c for c in channels if not is_augmented(c)]

    def make(
        shuffle: bool, speakers, exclude: bool, stretch: float = 0.0, read=channels
    ) -> tf.data.Dataset:
        return make_dataset(
            train_files,
            config.word_dim,
            config.batch_size,
            shuffle=shuffle,
            seed=config.seed,
            speakers=speakers,
            exclude_speakers=exclude,
            time_stretch=stretch,
            speaker_norm=config.speaker_norm,
            channels=read,
        )

    plain_train = make(False, val, True)
    val_ds = make(False, val, False, read=real_channels)
    monitor, mode = ("val_loss", "min") if config.selection == "val_loss" else ("val_ua", "max")
    callbacks = [
        keras.callbacks.EarlyStopping(
            monitor=monitor, mode=mode, patience=config.patience, restore_best_weights=True
        ),
        *extra_callbacks,
    ]
    if log_dir:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=log_dir, write_graph=False))
    model, history = _train(
        config,
        plain_train,
        make(True, val, True, config.time_stretch),
        config.epochs,
        validation=val_ds,
        callbacks=callbacks,
        verbose=verbose,
    )
    scores = np.asarray(history[monitor])
    best = int(np.argmin(scores) if mode == "min" else np.argmax(scores)) + 1
    validation = predict(
        model,
        make_dataset(
            train_files,
            config.word_dim,
            config.batch_size,
            speakers=val,
            with_ids=True,
            speaker_norm=config.speaker_norm,
            channels=real_channels,
        ),
    )
    refit_epochs, final_data = 0, plain_train
    if config.refit:
        plain_all = make(False, None, False)
        refit_callbacks = list(extra_callbacks)
        if log_dir:
            refit_callbacks.append(
                keras.callbacks.TensorBoard(
                    log_dir=os.path.join(log_dir, "refit"), write_graph=False
                )
            )
        # The learning-rate schedule is the selection run's (over config.epochs), stopped at
        # the selected epoch: compressing it to end at 0 there scored lower (seed 0, 4 folds:
        # WA 0.725 against 0.755).
        model, _ = _train(
            config,
            plain_all,
            make(True, None, False, config.time_stretch),
            best,
            schedule_epochs=config.epochs,
            callbacks=refit_callbacks,
            verbose=verbose,
        )
        refit_epochs, final_data = best, plain_all
    counts = class_counts(final_data, config.num_classes)
    return FitResult(
        model=model,
        history=history,
        best_epoch=best,
        val_speakers=val,
        num_train=count(plain_train),
        num_val=count(val_ds),
        refit_epochs=refit_epochs,
        num_final_train=int(counts.sum()),
        class_counts=counts.tolist(),
        validation=validation,
    )


def _fit_fixed(
    train_files: Sequence[str],
    config: ModelConfig,
    *,
    log_dir: Optional[str],
    extra_callbacks: Sequence[keras.callbacks.Callback],
    verbose: int,
    channels: Optional[Sequence[str]],
) -> FitResult:
    """``fit`` without an epoch choice: all training speakers, ``config.epochs`` epochs."""
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()

    def make(shuffle: bool) -> tf.data.Dataset:
        return make_dataset(
            train_files,
            config.word_dim,
            config.batch_size,
            shuffle=shuffle,
            seed=config.seed,
            time_stretch=config.time_stretch if shuffle else 0.0,
            speaker_norm=config.speaker_norm,
            channels=channels,
        )

    plain = make(False)
    callbacks = list(extra_callbacks)
    if log_dir:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=log_dir, write_graph=False))
    model, history = _train(
        config, plain, make(True), config.epochs, callbacks=callbacks, verbose=verbose
    )
    counts = class_counts(plain, config.num_classes)
    return FitResult(
        model=model,
        history=history,
        best_epoch=config.epochs,
        val_speakers=[],
        num_train=int(counts.sum()),
        num_val=0,
        num_final_train=int(counts.sum()),
        class_counts=counts.tolist(),
    )


def evaluate(
    model: keras.Model, files: Sequence[str], config: ModelConfig
) -> Tuple[np.ndarray, int]:
    """Confusion matrix ``[K, K]`` of ``model`` on ``files`` and the number of utterances."""
    labels, predicted = [], []
    for inputs, label in make_dataset(
        files, config.word_dim, config.batch_size, speaker_norm=config.speaker_norm
    ):
        labels.append(label.numpy())
        predicted.append(np.argmax(model(inputs, training=False).numpy(), axis=-1))
    labels, predicted = np.concatenate(labels), np.concatenate(predicted)
    return confusion_matrix(labels, predicted, config.num_classes), int(labels.size)


def predict(
    model: keras.Model, dataset: tf.data.Dataset, embeddings: bool = False
) -> Dict[str, np.ndarray]:
    """Class probabilities of a dataset of ``(inputs, label, utterance_id)`` batches, in id
    order: ``probabilities [N, K]``, ``labels [N]``, ``utterance_ids [N]``, and with
    ``embeddings`` the utterance embeddings ``embeddings [N, D]`` (the ``utterance_embedding``
    layer, before the classifier)."""
    from trainer.model import EMBEDDING_LAYER

    outputs = [model.get_layer(EMBEDDING_LAYER).output] if embeddings else []
    net = keras.Model(model.inputs, outputs + [model.output])
    columns = {"probabilities": [], "labels": [], "utterance_ids": []}
    if embeddings:
        columns["embeddings"] = []
    for inputs, label, utterance_id in dataset:
        out = net(inputs, training=False)
        out = list(out) if isinstance(out, (list, tuple)) else [out]
        if embeddings:
            columns["embeddings"].append(np.asarray(out[0]))
        columns["probabilities"].append(np.asarray(out[-1]))
        columns["labels"].append(label.numpy())
        columns["utterance_ids"].append(utterance_id.numpy())
    columns = {k: np.concatenate(v) for k, v in columns.items()}
    order = np.argsort(columns["utterance_ids"], kind="stable")
    columns = {k: v[order] for k, v in columns.items()}
    columns["utterance_ids"] = columns["utterance_ids"].astype(str)
    return columns


def embed(model: keras.Model, files: Sequence[str], config: ModelConfig) -> Dict[str, np.ndarray]:
    """:func:`predict` with embeddings for the utterances of ``files``."""
    return predict(
        model,
        make_dataset(
            files,
            config.word_dim,
            config.batch_size,
            with_ids=True,
            speaker_norm=config.speaker_norm,
        ),
        embeddings=True,
    )


def train_fold(
    files_by_fold: Dict[int, Sequence[str]],
    test_fold: int,
    config: ModelConfig,
    *,
    log_dir: Optional[str] = None,
    model_path: Optional[str] = None,
    embeddings_path: Optional[str] = None,
    verbose: int = 0,
) -> FoldResult:
    """Trains on every fold but ``test_fold``, then scores ``test_fold`` once (and, with
    ``embeddings_path``, saves the held-out utterances' embeddings and probabilities there as
    ``.npz``, with the selected model's validation predictions as ``val_*``)."""
    if test_fold not in files_by_fold or len(files_by_fold) < 2:
        raise ValueError(f"need >= 2 folds including {test_fold}; got {sorted(files_by_fold)}")
    return train_folds(
        files_by_fold,
        [test_fold],
        config,
        log_dir=log_dir,
        model_path=model_path,
        verbose=verbose,
        embeddings_paths={test_fold: embeddings_path} if embeddings_path else None,
    )[test_fold]


def train_folds(
    files_by_fold: Dict[int, Sequence[str]],
    test_folds: Sequence[int],
    config: ModelConfig,
    *,
    log_dir: Optional[str] = None,
    model_path: Optional[str] = None,
    embeddings_paths: Optional[Dict[int, str]] = None,
    verbose: int = 0,
) -> Dict[int, FoldResult]:
    """Trains one model on every fold not in ``test_folds`` and scores each of those folds
    once: ``{fold: FoldResult}``. The model is the one :func:`train_fold` would train holding
    out any single one of them with the others absent (the same training files in the same
    order), so the nested protocol's inner units of outer fold o / inner fold i and of outer
    fold i / inner fold o share one training. ``embeddings_paths``: per test fold, where its
    ``.npz`` goes (as in :func:`train_fold`), with each utterance's channel (``channels``).
    The model trains on ``config.train_channels``; the test folds are scored on every channel
    they hold but the augmented ones (``make_dataset``: augmented copies are never scored)."""
    test_folds = list(dict.fromkeys(test_folds))
    missing = [k for k in test_folds if k not in files_by_fold]
    train = [k for k in sorted(files_by_fold) if k not in test_folds]
    if missing or not test_folds or not train:
        raise ValueError(
            f"need the test folds {test_folds} among {sorted(files_by_fold)} and "
            "at least one fold to train on"
        )
    train_files = [f for k in train for f in files_by_fold[k]]
    result = fit(train_files, config, log_dir=log_dir, verbose=verbose)
    if model_path:
        Path(model_path).parent.mkdir(parents=True, exist_ok=True)
        result.model.save(model_path)
    val_ua = result.history.get("val_ua")  # none without an epoch choice ("fixed")
    epochs_run = len(result.history["loss"])
    scored = {}
    for fold in test_folds:
        confusion, num_test = evaluate(result.model, files_by_fold[fold], config)
        path = (embeddings_paths or {}).get(fold)
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            scored_out = embed(result.model, files_by_fold[fold], config)
            channel = record_channels(files_by_fold[fold])
            np.savez_compressed(
                path,
                **scored_out,
                channels=np.asarray([channel[i] for i in scored_out["utterance_ids"]]),
                **{f"val_{k}": v for k, v in result.validation.items()},
            )
        scored[fold] = FoldResult(
            fold=fold,
            wa=weighted_accuracy(confusion),
            ua=unweighted_accuracy(confusion),
            confusion=confusion.tolist(),
            best_epoch=result.best_epoch,
            epochs_run=epochs_run,
            best_val_ua=float(val_ua[result.best_epoch - 1]) if val_ua else None,
            num_train=result.num_train,
            num_val=result.num_val,
            num_test=num_test,
            val_speakers=result.val_speakers,
            refit_epochs=result.refit_epochs,
            num_final_train=result.num_final_train,
            train_class_counts=result.class_counts,
        )
    return scored
