"""TFX Trainer module file: ``run_fn`` and nothing else of note.

The Trainer hands over the training splits (every fold but the held-out one); the inner
validation split is carved from their speakers inside ``trainer.train.fit``. The held-out
split (``fn_args.eval_files``) is deliberately never read here: only the Evaluator sees it.

``custom_config`` keys: ``model_config`` (``ModelConfig`` as JSON), ``embeddings_path`` (word
vectors for the in-graph vocabulary of the ``predict_waveform`` signature), ``vocab_size``,
``ensemble_size`` (default 1: with N > 1, N models of seeds ``seed .. seed + N - 1`` are trained
and exported as one averaging model, ``trainer.model.average_models``).
"""

from __future__ import annotations

import json
import os

import tensorflow as tf
from tfx import v1 as tfx

from trainer.config import ModelConfig
from trainer.model import average_models
from trainer.train import fit


def _expand(patterns):
    files = sorted(f for pattern in patterns for f in tf.io.gfile.glob(pattern))
    if not files:
        raise ValueError(f"no training files match {patterns}")
    return files


def _word_dim(files) -> int:
    spec = {"word_embeddings": tf.io.VarLenFeature(tf.float32),
            "num_words": tf.io.FixedLenFeature([], tf.int64)}
    raw = next(iter(tf.data.TFRecordDataset(files[:1], compression_type="GZIP")))
    parsed = tf.io.parse_single_example(raw, spec)
    return int(tf.size(parsed["word_embeddings"].values)) // max(int(parsed["num_words"]), 1)


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    from preprocessing.embeddings import load
    from serving.signatures import export_saved_model

    custom = fn_args.custom_config or {}
    train_files = _expand(fn_args.train_files)
    config = ModelConfig.from_json(custom["model_config"])
    config = config.replace(word_dim=_word_dim(train_files))
    if config.speaker_norm:
        # The serving signatures see one utterance, not its speaker's other audio.
        raise ValueError(f"variant {config.variant!r} standardises features per speaker "
                         "(speaker_norm), which the exported model cannot do at serving time; "
                         "evaluate it with `cme-ser reproduce` instead")
    size = int(custom.get("ensemble_size", 1))
    if size < 1:
        raise ValueError(f"ensemble_size must be >= 1, got {size}")
    summaries, members = [], []
    for k in range(size):
        member = config.replace(seed=config.seed + k)
        log_dir = (os.path.join(fn_args.model_run_dir, f"member{k}") if size > 1
                   else fn_args.model_run_dir)
        result = fit(train_files, member, log_dir=log_dir, verbose=2)
        members.append(result.model)
        summaries.append({
            "seed": member.seed, "best_epoch": result.best_epoch,
            "epochs_run": len(result.history["val_ua"]),
            "best_val_ua": result.history["val_ua"][result.best_epoch - 1],
            "val_speakers": result.val_speakers, "num_train": result.num_train,
            "num_val": result.num_val, "refit_epochs": result.refit_epochs,
            "num_final_train": result.num_final_train})
    export_saved_model(average_models(members), fn_args.serving_model_dir,
                       class_names=config.class_names, vectors=load(custom["embeddings_path"]),
                       vocab_size=int(custom.get("vocab_size", 50000)))
    summary = {**summaries[0], "ensemble_size": size, "config": config.to_dict()}
    if size > 1:
        summary["members"] = summaries
    tf.io.gfile.makedirs(fn_args.model_run_dir)
    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, "fit.json"), "w") as f:
        f.write(json.dumps(summary, indent=2))
