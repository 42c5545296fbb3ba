"""``cme-ser compile``: the pipeline as another orchestrator's job spec (Kubeflow Pipelines v2 /
Vertex AI Pipelines JSON, from ``runner.kubeflow_pipeline``)."""

from __future__ import annotations

from pathlib import Path

from infra.usage_error import UsageError
from pipeline.run_command import corpus_channels, epochs_override, training_channels
from preprocessing.corpus_options import parse_channels, parse_classes
from trainer.config import DEFAULT_CLASSES, variant_config


def compile_pipeline(args) -> None:
    """Writes the pipeline as a Kubeflow Pipelines v2 / Vertex AI job spec (JSON).
    ``args``: the parsed `cme-ser compile` options (cli/main.py)."""
    from tfx import v1 as tfx

    from pipeline.runner import kubeflow_pipeline

    if args.folds < 2:
        raise UsageError(f"--folds must be >= 2, got {args.folds}")
    if args.ensemble < 1:
        raise UsageError(f"--ensemble must be >= 1, got {args.ensemble}")
    config = variant_config(
        args.variant,
        **epochs_override(args.epochs),
        class_names=tuple(parse_classes(args.classes) or DEFAULT_CLASSES),
    )
    # A variant trained on speech and song reads both corpora, as `cme-ser run` does.
    config, channels = training_channels(config, parse_channels("ravdess", args.channels))
    trainer_job = _trainer_job(args)
    root = args.pipeline_root.rstrip("/")
    read = corpus_channels(config)  # an augmented channel's copies come from its source's
    data_dirs = args.data_dir or [f"{root}/data/ravdess-{c}" for c in read]
    if len(data_dirs) != len(read):
        raise UsageError(
            f"{len(data_dirs)} --data-dir for the channels {','.join(read)}: "
            "give one directory per channel, in that order"
        )
    pipeline = kubeflow_pipeline(
        pipeline_root=root,
        data_dir=data_dirs,
        channels=channels,
        embeddings_path=args.embeddings or f"{root}/embeddings/glove-6b-50d",
        serving_model_dir=f"{root}/serving_model/cme",
        config=config,
        num_folds=args.folds,
        ensemble_size=args.ensemble,
        prior_correction=args.prior_correction,
        trainer_job=trainer_job,
    )
    output = Path(args.output)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=args.image),
        output_dir=str(output.parent.resolve()),
        output_filename=output.name,
    )
    runner.run(pipeline, write_out=True)
    print(output)


def _trainer_job(args):
    """The Trainers' Vertex AI job (``pipeline.vertex_training``) when the options ask for more
    than the pipeline's own container (several workers, a machine type or an accelerator);
    None otherwise."""
    from pipeline.vertex_training import DEFAULT_MACHINE_TYPE, TrainerResources, parse_accelerator

    if args.trainer_workers < 1:
        raise UsageError(f"--trainer-workers must be >= 1, got {args.trainer_workers}")
    if args.trainer_workers == 1 and not args.trainer_machine_type and not args.trainer_accelerator:
        return None
    if not args.project:
        raise UsageError(
            "--trainer-workers/--trainer-machine-type/--trainer-accelerator run "
            "each Trainer as a Vertex AI job, which needs --project"
        )
    try:
        kind, count = parse_accelerator(args.trainer_accelerator)
        resources = TrainerResources(
            project=args.project,
            region=args.region,
            workers=args.trainer_workers,
            machine_type=args.trainer_machine_type or DEFAULT_MACHINE_TYPE,
            accelerator_type=kind,
            accelerator_count=count,
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
    return resources.custom_config(args.image)
