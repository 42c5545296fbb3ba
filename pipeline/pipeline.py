"""The TFX pipeline: corpus -> fold splits -> statistics/schema/validation -> one Trainer and
one Evaluator per fold -> cross-validation report (+ its ModelBlessing); a final Trainer on every
fold -> ModelLoadValidator -> Pusher, which pushes only when the report blessed the run (UA
mean >= ``bless_min_ua`` and no ExampleValidator anomaly) and a fresh process loaded the final
model the way the model server does and answered its warm-up requests
(``pipeline.infra_validation``).

A model trained on augmented channels (``config.train_channels`` holding ``speech_aug``, ..)
gets its copies from the corpus step (``preprocessing.corpora.records_for``: how many), in
splits of their own (``fold<K>_aug``, ``pipeline.splits``). Only the Trainers read
them, each the copies of its training folds; the Evaluators, the Calibrator and the statistics
(hence the schema and ExampleValidator's anomalies, which gate the push) see the corpus's
records only, as for a model without copies.

``create_pipeline`` is a pure function of its arguments (the penguin example's shape); the
runners (``pipeline/local_runner.py``, ``cme-ser run``, ``cme-ser compile``) only pick the
arguments and the orchestrator.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import tensorflow_model_analysis as tfma
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from tfx import v1 as tfx

from pipeline.calibrator import Calibrator
from pipeline.components import MAX_FOLDS, CorpusExampleGen, CrossValidationReport
from pipeline.infra_validation import ModelLoadValidator
from pipeline.report import DEFAULT_BLESS_MIN_UA
from pipeline.splits import augmented_split, augmented_split_names, split_names
from pipeline.tfma_metrics import metric_configs
from preprocessing.corpora import records_for
from preprocessing.embeddings import DEFAULT_VOCAB_SIZE
from trainer.config import ModelConfig
from trainer.signature_names import SERVING_DEFAULT

RUN_FN = "trainer.module.run_fn"
# StatisticsGen's and the Evaluators' inputs are small (the corpus's features, one fold's
# records): on the DirectRunner they run Beam in process, since starting multi-processing
# workers (each imports TensorFlow) takes longer than their work (24 utterances: 16 -> 5 s and
# 19 -> 7 s). The corpus step (decoding, alignment) keeps the workers the pipeline asks for.
IN_PROCESS_BEAM_ARGS = ["--direct_running_mode=in_memory"]


def runs_direct(beam_pipeline_args: Optional[Sequence[str]]) -> bool:
    """Whether ``beam_pipeline_args`` leave Beam on its DirectRunner (the default), as Beam
    itself parses them (``--runner=X`` or ``--runner X``; the last one wins)."""
    runner = PipelineOptions(list(beam_pipeline_args or [])).view_as(StandardOptions).runner
    return runner in (None, "DirectRunner", "direct")


def eval_config(
    class_names: Sequence[str], channels: Optional[Sequence[str]] = None
) -> tfma.EvalConfig:
    """WA, UA, per-class recall and the confusion matrix, computed by TFMA with our metrics
    (``pipeline.tfma_metrics``) on the arg-max of ``probabilities``: over the whole held-out
    fold and, with records of several RAVDESS ``channels``, per channel (speech is the
    paper's task; a score over speech and song together is neither)."""
    by_channel = [tfma.SlicingSpec(feature_keys=["channel"])] if len(channels or ()) > 1 else []
    return tfma.EvalConfig(
        model_specs=[
            tfma.ModelSpec(
                signature_name=SERVING_DEFAULT, label_key="label", prediction_key="probabilities"
            )
        ],
        slicing_specs=[tfma.SlicingSpec(), *by_channel],
        metrics_specs=[
            tfma.MetricsSpec(
                metrics=[
                    tfma.MetricConfig(class_name="ExampleCount"),
                    tfma.MetricConfig(class_name="MultiClassConfusionMatrixPlot"),
                    *metric_configs(len(class_names)),
                ]
            )
        ],
    )


def create_pipeline(
    *,
    pipeline_name: str,
    pipeline_root: str,
    metadata_path: Optional[str],
    dataset: str,
    data_dir: str,
    corpus_fingerprint: str,
    embeddings_path: str,
    serving_model_dir: str,
    config: ModelConfig,
    ensemble_size: int,
    prior_correction: bool,
    num_folds: int = 5,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    max_seconds: float = 60.0,
    beam_pipeline_args: Optional[List[str]] = None,
    enable_cache: bool = True,
    channels: Optional[Sequence[str]] = None,
    bless_min_ua: float = DEFAULT_BLESS_MIN_UA,
    trainer_job: Optional[dict] = None,
) -> tfx.dsl.Pipeline:
    """``config``, ``ensemble_size``, ``prior_correction``: the model, which the caller says
    (the runners default to ``trainer.config.SHIPPED``);
    ``data_dir``: a directory, or a JSON list of them (``components.encode_data_dirs``);
    ``channels``: RAVDESS channels, None or ("speech",) for the default (the preprocessing
    step then has the same parameters, hence the same cache key, as before channels existed),
    the real ones: the augmented copies preprocessed are those ``config.train_channels`` need
    (``preprocessing.corpora.records_for``);
    ``ensemble_size``: models (seeds) per Trainer, exported as one averaging model;
    ``prior_correction``: every Trainer's export divides that mean by its training class prior
    (``trainer.module``), so the folds' evaluations score what the final Trainer pushes;
    the final Trainer's export is also temperature-scaled, with the temperature
    ``pipeline.calibrator.Calibrator`` fitted on the fold models' held-out answers (the fold
    models stay uncalibrated: the report scores each fold with the other folds' temperature);
    ``bless_min_ua``: the cross-validated UA mean the final model needs to be pushed;
    ``trainer_job``: None, or the Trainers' cluster job as TFX's Google Cloud Trainer extension
    takes it (``pipeline.vertex_training.TrainerResources.custom_config``): every Trainer is
    then that extension's, and runs as a Vertex AI job of that many workers."""
    if not 2 <= num_folds <= MAX_FOLDS:
        raise ValueError(f"num_folds must be in [2, {MAX_FOLDS}], got {num_folds}")
    if ensemble_size < 1:
        raise ValueError(f"ensemble_size must be >= 1, got {ensemble_size}")
    splits = split_names(num_folds)
    augment_copies = records_for(config.train_channels)[1]

    def training_splits(folds: List[str]) -> List[str]:
        # The folds' records, then their augmented copies when the model trains on them.
        return folds + ([augmented_split(s) for s in folds] if augment_copies else [])

    classes = ",".join(config.class_names)
    custom_config = {
        "model_config": config.to_json(),
        "embeddings_path": embeddings_path,
        "vocab_size": vocab_size,
        "ensemble_size": ensemble_size,
        "prior_correction": bool(prior_correction),
    }

    channel_arg = (
        {} if not channels or tuple(channels) == ("speech",) else {"channels": ",".join(channels)}
    )
    # Unset without copies: the step's parameters, hence its cache key, stay as they were.
    copies_arg = {"augment_copies": augment_copies} if augment_copies else {}
    example_gen = CorpusExampleGen(
        dataset=dataset,
        data_dir=data_dir,
        classes=classes,
        embeddings_path=embeddings_path,
        num_folds=num_folds,
        corpus_fingerprint=corpus_fingerprint,
        max_seconds=max_seconds,
        **channel_arg,
        **copies_arg,
    )
    examples = example_gen.outputs["examples"]
    small = IN_PROCESS_BEAM_ARGS if runs_direct(beam_pipeline_args) else []
    # Statistics of the corpus's records only: the copies add a feature (``augmentation``)
    # that SchemaGen, which merges every split's statistics, would put into the schema, and
    # ExampleValidator would then find it missing from every real split, an anomaly that
    # withholds the push. The copies are a seeded function of records validated here.
    # (Without copies the list is empty, TFX's default: the same execution properties.)
    statistics = tfx.components.StatisticsGen(
        examples=examples, exclude_splits=augmented_split_names(num_folds) if augment_copies else []
    ).with_beam_pipeline_args(small)
    schema = tfx.components.SchemaGen(
        statistics=statistics.outputs["statistics"], infer_feature_shape=False
    )
    validator = tfx.components.ExampleValidator(
        statistics=statistics.outputs["statistics"], schema=schema.outputs["schema"]
    )
    components = [example_gen, statistics, schema, validator]

    def trainer(train_splits: List[str], eval_split: str, node_id: str, hyperparameters=None):
        # eval_args only names the held-out split for the record; run_fn never reads it.
        component = (
            tfx.components.Trainer
            if trainer_job is None
            else tfx.extensions.google_cloud_ai_platform.Trainer
        )
        return component(
            run_fn=RUN_FN,
            examples=examples,
            schema=schema.outputs["schema"],
            hyperparameters=hyperparameters,
            train_args=tfx.proto.TrainArgs(splits=train_splits),
            eval_args=tfx.proto.EvalArgs(splits=[eval_split]),
            custom_config={**custom_config, "node_id": node_id, **(trainer_job or {})},
        ).with_id(node_id)

    evaluations, fold_models = [], {}
    for fold, split in enumerate(splits):
        fold_trainer = trainer(
            training_splits([s for s in splits if s != split]), split, f"Trainer.fold{fold}"
        )
        evaluator = (
            tfx.components.Evaluator(
                examples=examples,
                model=fold_trainer.outputs["model"],
                eval_config=eval_config(config.class_names, channels),
                example_splits=[split],  # the held-out records, never copies (fold<K>_aug)
            )
            .with_id(f"Evaluator.fold{fold}")
            .with_beam_pipeline_args(small)
        )
        evaluations.append(evaluator.outputs["evaluation"])
        fold_models[f"model_{fold}"] = fold_trainer.outputs["model"]
        components += [fold_trainer, evaluator]
    # The final model's temperature: fitted on the fold models' held-out answers.
    calibrator = Calibrator(examples=examples, **fold_models)
    components.append(calibrator)

    report = CrossValidationReport(
        class_names=classes,
        bless_min_ua=float(bless_min_ua),
        anomalies=validator.outputs["anomalies"],
        calibration=calibrator.outputs["calibration"],
        **{f"evaluation_{fold}": evaluation for fold, evaluation in enumerate(evaluations)},
    )
    final_trainer = trainer(
        training_splits(splits),
        splits[0],
        "Trainer.final",
        hyperparameters=calibrator.outputs["calibration"],
    )
    # The blessing is the recipe's (the folds' models); the final model is that recipe on
    # every fold, so it inherits it, as TFX pushes what its Evaluator blessed.
    final_model = final_trainer.outputs["model"]
    infra = ModelLoadValidator(model=final_model)
    pusher = tfx.components.Pusher(
        model=final_model,
        model_blessing=report.outputs["blessing"],
        infra_blessing=infra.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=serving_model_dir)
        ),
    )
    components += [report, final_trainer, infra, pusher]

    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=components,
        enable_cache=enable_cache,
        # None on Kubeflow / Vertex AI, whose orchestrator brings its own ML Metadata.
        metadata_connection_config=(
            tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path)
            if metadata_path
            else None
        ),
        beam_pipeline_args=beam_pipeline_args or [],
    )
