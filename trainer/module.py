"""TFX Trainer module file: ``run_fn`` and nothing else of note.

The Trainer hands over the training splits (every fold but the held-out one, and for a model
on augmented channels those folds' copies' splits, ``fold<K>_aug``); ``fit`` reads the
channels of ``config.train_channels`` from them, and the inner validation split is carved from
their speakers inside ``trainer.train.fit``. The held-out
split (``fn_args.eval_files``) is deliberately never read here: only the Evaluator sees it.

``custom_config`` keys: ``model_config`` (``ModelConfig`` as JSON), ``embeddings_path`` (word
vectors for the in-graph vocabulary of the ``predict_waveform`` signature), ``vocab_size``,
``ensemble_size`` (default 1: with N > 1, N models of seeds ``seed .. seed + N - 1`` are trained
and exported as one averaging model, ``trainer.model.average_models``), ``prior_correction``
(default false: with true, the export serves the model's -- the ensemble mean's -- probabilities
divided by the training class prior, ``trainer.layers.PriorCorrection``, with the members' pooled
final-training class counts, as ``experiments.nested`` scores the candidates), ``node_id``
(the Trainer's, e.g. ``Trainer.fold0``, which names its progress line; default ``Trainer``).

``fn_args.hyperparameters``: the final Trainer's come from ``pipeline.calibrator.Calibrator``;
their ``temperature`` is exported (``trainer.layers.TemperatureScaling``, after the prior
correction). Without hyperparameters the export is uncalibrated.

``fit.json`` in the model run directory: the first member's fit (and every member's under
``members``), ``ensemble_size``, ``prior_correction`` and ``prior_class_counts`` (the counts
the export divides by; null without the correction), ``temperature`` (null: uncalibrated), the
configuration, and ``replicas`` (how many replicas trained it).

Training runs under the strategy the environment asks for (``trainer.distribution``): with a
``TF_CONFIG`` naming several workers, every worker runs ``run_fn`` and only the chief's export,
logs and ``fit.json`` remain.
"""

from __future__ import annotations

import json
import os
from typing import List, Sequence

import numpy as np
import tensorflow as tf
from tfx import v1 as tfx

from preprocessing.records import word_dim_of_files
from trainer.config import ModelConfig
from trainer.distribution import chief_writes, training_strategy
from trainer.model import average_models
from trainer.progress import EpochProgress
from trainer.train import fit


def _expand(patterns):
    files = sorted(f for pattern in patterns for f in tf.io.gfile.glob(pattern))
    if not files:
        raise ValueError(f"no training files match {patterns}")
    return files


def pooled_class_counts(
    member_counts: Sequence[Sequence[int]], class_names: Sequence[str]
) -> List[int]:
    """The members' final-training class counts summed (their pooled prior, as
    ``experiments.nested`` scores an ensemble: members that trained on the same utterances, as the
    refit variants' do, give the same prior as one of them); an error if a class never occurs,
    for which the prior correction is undefined."""
    counts = np.sum(np.asarray(member_counts, np.int64), axis=0)
    if counts.shape != (len(class_names),):
        raise ValueError(f"class counts {counts.tolist()} for {len(class_names)} classes")
    missing = [name for name, count in zip(class_names, counts) if count <= 0]
    if missing:
        raise ValueError(
            f"prior_correction needs training examples of every class; the final "
            f"training data has none of {missing} (class counts "
            f"{counts.tolist()} for classes {list(class_names)})"
        )
    return counts.tolist()


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    # Before any TensorFlow operation: a multi-worker strategy cannot join its cluster later.
    strategy = training_strategy()
    with (
        chief_writes(fn_args.serving_model_dir) as serving_model_dir,
        chief_writes(fn_args.model_run_dir) as model_run_dir,
    ):
        _run(fn_args, serving_model_dir, model_run_dir, strategy.num_replicas_in_sync)


def _run(
    fn_args: tfx.components.FnArgs, serving_model_dir: str, model_run_dir: str, replicas: int
) -> None:
    """``run_fn`` writing into ``serving_model_dir`` and ``model_run_dir`` (``fn_args``'s own
    on the chief, scratch directories on the other workers)."""
    from preprocessing.embeddings import DEFAULT_VOCAB_SIZE, load
    from trainer.export import export_saved_model

    custom = fn_args.custom_config or {}
    train_files = _expand(fn_args.train_files)
    config = ModelConfig.from_json(custom["model_config"])
    config = config.replace(word_dim=word_dim_of_files(train_files))
    if config.speaker_norm:
        # The serving signatures see one utterance, not its speaker's other audio.
        raise ValueError(
            f"variant {config.variant!r} standardises features per speaker "
            "(speaker_norm), which the exported model cannot do at serving time; "
            "evaluate it with `cme-ser reproduce` instead"
        )
    size = int(custom.get("ensemble_size", 1))
    if size < 1:
        raise ValueError(f"ensemble_size must be >= 1, got {size}")
    prior_correction = custom.get("prior_correction", False)
    if not isinstance(prior_correction, bool):
        raise ValueError(f"prior_correction must be true or false, got {prior_correction!r}")
    summaries, members = [], []
    node = custom.get("node_id", "Trainer")  # names its progress line
    for k in range(size):
        member = config.replace(seed=config.seed + k)
        log_dir = os.path.join(model_run_dir, f"member{k}") if size > 1 else model_run_dir
        progress = EpochProgress(
            f"{node} model {k + 1}/{size}",
            ("selecting the epoch", "refit on all training speakers")
            if member.refit
            else ("training",),
        )
        result = fit(train_files, member, log_dir=log_dir, extra_callbacks=[progress])
        members.append(result.model)
        summaries.append(
            {
                "seed": member.seed,
                "best_epoch": result.best_epoch,
                "epochs_run": len(result.history["loss"]),
                "best_val_ua": (
                    result.history["val_ua"][result.best_epoch - 1]
                    if "val_ua" in result.history
                    else None
                ),
                "val_speakers": result.val_speakers,
                "num_train": result.num_train,
                "num_val": result.num_val,
                "refit_epochs": result.refit_epochs,
                "num_final_train": result.num_final_train,
                "class_counts": result.class_counts,
                "loss": result.history["loss"],
            }
        )  # training loss per epoch of the selection fit
    prior_counts = (
        pooled_class_counts([s["class_counts"] for s in summaries], config.class_names)
        if prior_correction
        else None
    )
    # The Calibrator's temperature (the final Trainer's hyperparameters); the fold Trainers
    # have none and export uncalibrated models.
    temperature = (fn_args.hyperparameters or {}).get("temperature")
    export_saved_model(
        average_models(members),
        serving_model_dir,
        class_names=config.class_names,
        vectors=load(custom["embeddings_path"]),
        vocab_size=int(custom.get("vocab_size", DEFAULT_VOCAB_SIZE)),
        prior_class_counts=prior_counts,
        temperature=temperature,
    )
    summary = {
        **summaries[0],
        "ensemble_size": size,
        "prior_correction": prior_correction,
        "prior_class_counts": prior_counts,
        "temperature": temperature,
        "config": config.to_dict(),
        "replicas": replicas,
    }
    if size > 1:
        summary["members"] = summaries
    tf.io.gfile.makedirs(model_run_dir)
    with tf.io.gfile.GFile(os.path.join(model_run_dir, "fit.json"), "w") as f:
        f.write(json.dumps(summary, indent=2))
