"""``cme-ser run``, the main job: every option checked before any training starts
(:func:`check_run_config`), then the TFX pipeline on RAVDESS with ``LocalDagRunner``
(pipeline/runner.py), its stage lines, and the report."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from infra.usage_error import UsageError
from preprocessing import corpora
from preprocessing.corpora import PRIMARY_CHANNEL
from preprocessing.corpus_options import (
    corpus_items,
    find_data_dirs,
    parse_channels,
    parse_classes,
    resolve_embeddings,
)
from trainer.config import DEFAULT_CLASSES, ModelConfig, variant_config
from trainer.splits import fold_plan_problems


def epochs_override(epochs: Optional[int]) -> dict:
    """``--epochs``: given, it replaces the variant's epochs; unset, the variant keeps its own
    (a fixed-schedule variant's length is part of what was chosen)."""
    return {} if epochs is None else {"epochs": epochs}


def training_channels(
    config: ModelConfig, channels: Optional[Sequence[str]]
) -> Tuple[ModelConfig, Optional[tuple]]:
    """The channels to train on: ``--channels`` when given (the model then trains on those,
    plus the augmented copies of them that the variant trains on: the augmentation is part of
    the variant, as its epochs), else the variant's ``train_channels``. Returns the
    configuration that says so and the real channels to preprocess (None: the corpus default,
    speech, which keeps the preprocessing step's cache key); the copies to preprocess follow
    from the configuration (``preprocessing.corpora.records_for``, in ``create_pipeline``)."""
    if channels:
        channels = tuple(channels)
        copies = [corpora.augmented_channel(c) for c in channels]
        channels += tuple(c for c in copies if c in config.train_channels)
    else:
        channels = config.train_channels
    config = config.replace(train_channels=channels)
    real = corpus_channels(config)
    return config, None if real == (PRIMARY_CHANNEL,) else real


def corpus_channels(config: ModelConfig) -> tuple:
    """The RAVDESS channels whose files ``config`` trains on: its real ``train_channels`` and
    the sources of its augmented ones (what is found, checked and preprocessed)."""
    return corpora.records_for(config.train_channels)[0]


def check_run_config(args, config: ModelConfig) -> Tuple[List[Path], Optional[tuple]]:
    """Everything that can be wrong with a run is found here, before any training starts.
    Returns the corpus directories and their channels. ``config.train_channels`` are the
    channels read (see :func:`training_channels`)."""
    from preprocessing import embeddings

    channels = corpus_channels(config)
    data_dirs = find_data_dirs(args.data_dir, "ravdess", channels)
    if args.folds < 2:
        raise UsageError(f"--folds must be >= 2, got {args.folds}")
    if args.ensemble < 1:
        raise UsageError(f"--ensemble must be >= 1, got {args.ensemble}")
    if config.speaker_norm:
        raise UsageError(
            f"--variant {args.variant} standardises features per speaker, which "
            "a served model cannot do; use `cme-ser reproduce` for it"
        )
    check_fold_plan(data_dirs, config, args.folds, args.ensemble, args.prior_correction)
    try:
        embeddings.load(resolve_embeddings(args.embeddings))
    except embeddings.EmbeddingsError as error:
        raise UsageError(str(error)) from error
    return data_dirs, channels


def channels_present(data_dirs: Sequence, config: ModelConfig) -> tuple:
    """Which of ``config``'s corpus channels (:func:`corpus_channels`) the RAVDESS files in
    ``data_dirs`` hold (file names only), in the variant's order."""
    channels = corpus_channels(config)
    try:
        items = corpus_items("ravdess", list(data_dirs), list(config.class_names), channels)
    except UsageError:
        return ()  # nothing usable: check_fold_plan says why
    utterances, _ = corpora.partition(items)
    return tuple(c for c in channels if any(u.channel == c for u in utterances))


def check_fold_plan(
    data_dirs: Sequence, config: ModelConfig, num_folds: int, ensemble: int, prior: bool
) -> None:
    """Refuses (``UsageError``, one line per problem) a RAVDESS corpus too small for the
    plan: a fold without examples, or a Trainer of ``ensemble`` models that would lack
    training speakers or classes (``trainer.splits.fold_plan_problems``). Reads only the
    file names, so it runs before any training, for `cme-ser run` and the TFX CLI's runner."""
    channels = corpus_channels(config)
    utterances, _ = corpora.partition(
        corpus_items("ravdess", data_dirs, list(config.class_names), channels)
    )
    if PRIMARY_CHANNEL in channels and len(channels) > 1:
        # Folds are dealt on speech: an actor with only song would be dealt blind, which
        # happens when the song directory is another corpus than the speech one (e.g. a
        # subset of the actors' speech beside the default song directory).
        voiced = {u.speaker for u in utterances if u.channel == PRIMARY_CHANNEL}
        others = sorted({u.speaker for u in utterances} - voiced)
        if voiced and others:
            raise UsageError(
                f"{len(others)} speaker(s) ({', '.join(others[:4])}"
                f"{', ...' if len(others) > 4 else ''}) have {'/'.join(channels[1:])} files but "
                f"no {PRIMARY_CHANNEL} in {', '.join(map(str, data_dirs))}: give the directories "
                "of one corpus (--data-dir per channel; CME_SER_DATA and CME_SER_SONG_DATA for "
                f"the TFX CLI), or --channels {PRIMARY_CHANNEL}"
            )
    try:
        folds = corpora.assign_folds(utterances, num_folds)
    except ValueError as error:
        raise UsageError(str(error)) from error
    empty = [
        row["fold"] for row in corpora.fold_summary(utterances, folds) if not row["utterances"]
    ]
    if empty:
        raise UsageError(f"fold(s) {empty} would have no examples")
    problems = fold_plan_problems(
        corpora.labels_by_speaker(utterances),
        folds,
        config,
        ensemble_size=ensemble,
        prior_correction=prior,
    )
    if problems:
        raise UsageError(
            f"this corpus is too small for {num_folds} folds with {ensemble} model(s) per "
            "Trainer:\n  " + "\n  ".join(problems)
        )
    # A variant trained on speech and song must not quietly train on speech alone (and be
    # pushed as the shipped model) because the song files are elsewhere.
    missing = [c for c in channels if not any(u.channel == c for u in utterances)]
    if missing:
        raise UsageError(
            f"--variant {config.variant} trains on {', '.join(channels)}, but "
            f"{', '.join(map(str, data_dirs))} hold(s) no {' or '.join(missing)} files: give "
            "one --data-dir per channel (CME_SER_DATA, CME_SER_SONG_DATA for the TFX CLI), or "
            f"--channels {','.join(c for c in channels if c not in missing) or 'speech'} to "
            "train on what is there"
        )


def run(args) -> dict:
    """The main job: the TFX pipeline on RAVDESS with LocalDagRunner, then the report.
    ``args``: the parsed `cme-ser run` options (cli/main.py)."""
    from tfx import v1 as tfx

    from infra.console import library_output_to
    from pipeline.runner import local_pipeline, run_summary, stage_progress

    config = variant_config(
        args.variant,
        **epochs_override(args.epochs),
        batch_size=args.batch_size,
        seed=args.seed,
        class_names=tuple(parse_classes(args.classes) or DEFAULT_CLASSES),
    )
    config, channels = training_channels(config, parse_channels("ravdess", args.channels))
    if not math.isfinite(args.bless_min_ua):
        raise UsageError(f"--bless-min-ua must be a number, got {args.bless_min_ua}")
    from pipeline.runner import metadata_file, output_dir, run_log_file

    try:
        metadata = metadata_file(args.output, args.metadata)
    except ValueError as error:
        raise UsageError(str(error)) from error
    if args.data_dir and not args.channels:
        # Directories given without --channels: a variant trained on speech and song trains on
        # the channels they hold (as --channels would), and says so.
        given = find_data_dirs(args.data_dir, "ravdess", corpus_channels(config))
        present = channels_present(given, config)
        if present and present != corpus_channels(config):
            absent = [c for c in corpus_channels(config) if c not in present]
            print(
                f"== note: {', '.join(map(str, given))} hold(s) no {' or '.join(absent)} files: "
                f"--variant {args.variant} trains on {','.join(present)} only (as with "
                f"--channels {','.join(present)}); give the {' and '.join(absent)} directory "
                "as another --data-dir to train it on both"
            )
            config, channels = training_channels(config, present)
    data_dirs, _ = check_run_config(args, config)
    output = output_dir(args.output)
    # The libraries' messages go to a local file (beside ML Metadata's when the output is a
    # bucket); the terminal gets the stage lines, the training progress and the report.
    log = None if args.verbose else run_log_file(output, metadata)
    model = (
        f"{args.variant}"
        + (f" x{args.ensemble}" if args.ensemble > 1 else "")
        + (" +prior" if args.prior_correction else "")
    )
    copies = corpora.records_for(config.train_channels)[1]
    trained = (f", channels {','.join(channels)}" if channels else "") + (
        f", {copies} augmented cop{'y' if copies == 1 else 'ies'} per utterance for training"
        if copies
        else ""
    )
    print(
        f"== cme-ser run: {', '.join(map(str, data_dirs))} -> {output} ({model}, "
        f"{args.folds} folds, up to {config.epochs} epochs per model{trained})"
    )
    if log:
        print(f"   TensorFlow, Beam and TFX messages: {log} (--verbose shows them here)")
    t0 = time.time()
    with library_output_to(log), stage_progress():
        tfx.orchestration.LocalDagRunner().run(
            local_pipeline(
                output,
                data_dir=data_dirs[0] if len(data_dirs) == 1 else data_dirs,
                embeddings_path=resolve_embeddings(args.embeddings),
                config=config,
                num_folds=args.folds,
                ensemble_size=args.ensemble,
                prior_correction=args.prior_correction,
                channels=channels,
                bless_min_ua=args.bless_min_ua,
                metadata_path=args.metadata,
            )
        )
    report, text = run_summary(output, args.bless_min_ua, metadata_path=args.metadata)
    print(f"{text}\n== done in {time.time() - t0:.0f} s")
    return report
