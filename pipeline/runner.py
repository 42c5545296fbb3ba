"""Arguments of the local pipeline, shared by ``cme-ser run`` and ``pipeline/local_runner.py``.

Output layout under ``<output>``:
``tfx/root`` (pipeline root: every artifact), ``tfx/metadata.sqlite`` (ML Metadata),
``serving_model/<model_name>/<version>/`` (what TF Serving loads). ``<output>`` and the corpus
may be object storage (``s3://``, ``gs://``: ``infra.filesystems``); ML Metadata's
SQLite file is then a local one given apart (``metadata_path``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import tensorflow as tf
from tfx import v1 as tfx

from infra import filesystems
from pipeline.components import encode_data_dirs
from pipeline.pipeline import create_pipeline
from pipeline.report import DEFAULT_BLESS_MIN_UA
from preprocessing.beam_pipeline import default_beam_args
from preprocessing.embeddings import DEFAULT_VOCAB_SIZE
from trainer.config import SHIPPED, ModelConfig, variant_config

PIPELINE_NAME = "cme_ser"
KUBEFLOW_PIPELINE_NAME = "cme-ser"  # Kubeflow names: [a-z0-9][a-z0-9-]*
MODEL_NAME = "cme"
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".aiff", ".aif")


def corpus_fingerprint(data_dir) -> str:
    """A digest of the corpus files' names, sizes and modification times: TFX's cache key for
    the preprocessing step (unchanged corpus -> the step is skipped on a re-run). ``data_dir``:
    a directory or file, or a list of them (each one's files prefixed by its position), local
    or object storage."""
    digest = hashlib.sha256()
    many = not isinstance(data_dir, (str, Path))
    for index, root in enumerate(list(data_dir) if many else [data_dir]):
        for name, size, mtime_ns in _corpus_files(root):
            digest.update(f"{f'{index}/' if many else ''}{name}\0{size}\0{mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _corpus_files(root) -> List[Tuple[str, int, int]]:
    """``(name relative to root, size, modification time in ns)`` of every file under
    ``root`` (or of ``root`` itself if it is a file), sorted by name."""
    if not filesystems.is_url(root):  # os.stat follows the symlinks a corpus may be made of
        root = Path(root)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        return [
            (
                str(p.relative_to(root)) if p != root else p.name,
                p.stat().st_size,
                p.stat().st_mtime_ns,
            )
            for p in files
        ]
    filesystems.enable(root)
    root = str(root).rstrip("/")
    if not tf.io.gfile.isdir(root):
        stat = tf.io.gfile.stat(root)
        return [(filesystems.basename(root), stat.length, stat.mtime_nsec)]
    found = []
    for directory, _, names in tf.io.gfile.walk(root):
        for name in names:
            path = filesystems.join(directory, name)
            stat = tf.io.gfile.stat(path)
            found.append((path[len(root) + 1 :], stat.length, stat.mtime_nsec))
    return sorted(found)


def metadata_file(output, metadata_path: Optional[str] = None) -> str:
    """ML Metadata's SQLite file: ``metadata_path``, else ``<output>/tfx/metadata.sqlite``.
    SQLite needs a local file, so an ``output`` in object storage needs ``metadata_path``."""
    if metadata_path:
        if filesystems.is_url(metadata_path):
            raise ValueError(f"the ML Metadata file must be local (SQLite), got {metadata_path}")
        return os.path.abspath(metadata_path)
    if filesystems.is_url(output):
        raise ValueError(
            f"--output {output} is object storage, where ML Metadata's SQLite "
            "file cannot live: pass --metadata PATH (a local file)"
        )
    return str(Path(output).resolve() / "tfx" / "metadata.sqlite")


def run_log_file(output: str, metadata: str) -> str:
    """Where a run's library messages go (``infra.console``): ``<output>/cme-ser-run.log``,
    or beside ML Metadata's local file when the output is a bucket."""
    return os.path.join(
        output if not filesystems.is_url(output) else os.path.dirname(metadata), "cme-ser-run.log"
    )


def output_dir(output) -> str:
    """``output`` as the pipeline uses it: a local path absolute, a URL as it is."""
    return str(output).rstrip("/") if filesystems.is_url(output) else str(Path(output).resolve())


def _read(path: str) -> str:
    with tf.io.gfile.GFile(path, "r") as f:
        return f.read()


def shipped_config() -> ModelConfig:
    """The shipped variant's configuration (``trainer.config.SHIPPED``)."""
    return variant_config(SHIPPED["variant"])


def local_pipeline(
    output,
    *,
    data_dir: Union[str, Path, Sequence[Union[str, Path]]],
    embeddings_path: str,
    dataset: str = "ravdess",
    config: Optional[ModelConfig] = None,
    num_folds: int = 5,
    ensemble_size: int = SHIPPED["ensemble"],
    prior_correction: bool = SHIPPED["prior_correction"],
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    enable_cache: bool = True,
    beam_pipeline_args: Optional[List[str]] = None,
    pipeline_name: str = PIPELINE_NAME,
    channels: Optional[Sequence[str]] = None,
    bless_min_ua: float = DEFAULT_BLESS_MIN_UA,
    metadata_path: Optional[str] = None,
) -> tfx.dsl.Pipeline:
    """``output`` (local or object storage) holds the pipeline root and the serving base path;
    ``metadata_path``: ML Metadata's local SQLite file (:func:`metadata_file`);
    ``data_dir``: the corpus directory, or several (RAVDESS speech and song);
    ``channels``: RAVDESS channels (None: speech); ``config`` (None: the shipped variant's),
    ``ensemble_size``, ``prior_correction``: as ``create_pipeline``, by default the shipped
    model (``trainer.config.SHIPPED``); ``bless_min_ua``: the cross-validated UA mean the final
    model needs to be pushed (``pipeline.report.blessing_decision``)."""
    metadata = metadata_file(output, metadata_path)
    output = output_dir(output)
    dirs = [data_dir] if isinstance(data_dir, (str, Path)) else list(data_dir)
    dirs = [output_dir(d) for d in dirs]
    filesystems.enable(output, *dirs)
    return create_pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=filesystems.join(output, "tfx", "root"),
        metadata_path=metadata,
        dataset=dataset,
        data_dir=encode_data_dirs(dirs),
        corpus_fingerprint=corpus_fingerprint(dirs[0] if len(dirs) == 1 else dirs),
        channels=channels,
        embeddings_path=str(embeddings_path),
        serving_model_dir=filesystems.join(output, "serving_model", MODEL_NAME),
        config=config or shipped_config(),
        num_folds=num_folds,
        ensemble_size=ensemble_size,
        prior_correction=prior_correction,
        vocab_size=vocab_size,
        enable_cache=enable_cache,
        bless_min_ua=bless_min_ua,
        # Beam workers open s3:// artifacts with tf.io.gfile too (TFMA loads the models).
        beam_pipeline_args=filesystems.beam_args(
            [output, *dirs], beam_pipeline_args or default_beam_args()
        ),
    )


def kubeflow_pipeline(
    *,
    pipeline_root: str,
    data_dir: Union[str, Sequence[str]],
    embeddings_path: str,
    serving_model_dir: str,
    dataset: str = "ravdess",
    channels: Optional[Sequence[str]] = None,
    config: Optional[ModelConfig] = None,
    num_folds: int = 5,
    ensemble_size: int = SHIPPED["ensemble"],
    prior_correction: bool = SHIPPED["prior_correction"],
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    pipeline_name: str = KUBEFLOW_PIPELINE_NAME,
    bless_min_ua: float = DEFAULT_BLESS_MIN_UA,
    trainer_job: Optional[dict] = None,
) -> tfx.dsl.Pipeline:
    """The same pipeline for Kubeflow Pipelines / Vertex AI: paths are the cluster's (e.g.
    gs://...), ML Metadata is the orchestrator's, Beam runs wherever beam_pipeline_args say;
    ``data_dir``: the corpus directory, or several (RAVDESS speech and song, with
    ``channels``); the model as :func:`local_pipeline`'s; ``trainer_job``: see
    ``pipeline.pipeline.create_pipeline``."""
    dirs = [data_dir] if isinstance(data_dir, (str, Path)) else [str(d) for d in data_dir]
    local = all(Path(d).exists() for d in dirs)
    fingerprint = corpus_fingerprint(dirs[0] if len(dirs) == 1 else dirs) if local else "remote"
    return create_pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        metadata_path=None,
        dataset=dataset,
        data_dir=encode_data_dirs(dirs),
        corpus_fingerprint=fingerprint,
        channels=channels,
        embeddings_path=embeddings_path,
        serving_model_dir=serving_model_dir,
        config=config or shipped_config(),
        num_folds=num_folds,
        ensemble_size=ensemble_size,
        prior_correction=prior_correction,
        vocab_size=vocab_size,
        bless_min_ua=bless_min_ua,
        beam_pipeline_args=["--runner=DirectRunner"],
        trainer_job=trainer_job,
    )


# --- What a local run shows its user (``cme-ser run`` and ``tfx run create`` alike) -----------


class StageLog(logging.Handler):
    """Prints the orchestrator's per-component progress lines, and nothing else of its INFO."""

    PATTERN = ("Component %s is running.", "Component %s is finished.", "Skipping component %s.")

    def __init__(self, out=sys.stdout):
        super().__init__(logging.INFO)
        self.out, self.started = out, time.time()

    def emit(self, record):
        if record.msg in self.PATTERN:
            what = record.msg.split()[-1].rstrip(".") if "Skipping" not in record.msg else "skipped"
            print(
                f"[{time.time() - self.started:6.0f}s] {record.args[0]}: {what}",
                file=self.out,
                flush=True,
            )


@contextlib.contextmanager
def stage_progress():
    """Shows the orchestrator's stage lines (absl INFO) while the pipeline runs.

    Library code run inside the Trainer resets the absl logger's level to WARNING (seen with
    TF 2.16 / TFX 1.16), which would silence them, so the level is pinned until the end."""
    logger = logging.getLogger("absl")
    handler, level = StageLog(), logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    logger.setLevel = lambda _level: None  # instance attribute shadows the method
    try:
        yield
    finally:
        del logger.setLevel
        logger.removeHandler(handler)
        logger.setLevel(level)


def _metadata_store(output, metadata_path: Optional[str] = None):
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2 as mlmd

    config = mlmd.ConnectionConfig()
    config.sqlite.filename_uri = metadata_file(output, metadata_path)
    # READWRITE opens only an existing file. Not READONLY: a run killed inside a transaction
    # leaves a hot journal, which only a writer can roll back ("attempt to write a readonly
    # database" otherwise, e.g. in `tfx pipeline create` after an interrupted run).
    config.sqlite.connection_mode = mlmd.SqliteMetadataSourceConfig.READWRITE
    return metadata_store.MetadataStore(config)


def newest_run_started(output, metadata_path: Optional[str] = None) -> Optional[float]:
    """When the newest run recorded under ``output`` started (epoch seconds), or None."""
    if not os.path.exists(metadata_file(output, metadata_path)):
        return None
    runs = _metadata_store(output, metadata_path).get_contexts_by_type("pipeline_run")
    return max(c.create_time_since_epoch for c in runs) / 1000.0 if runs else None


def run_outcome(
    output, pipeline_name: str = PIPELINE_NAME, metadata_path: Optional[str] = None
) -> List[Tuple[str, str]]:
    """``(component, what)`` for every component of the newest run recorded in
    ``<output>/tfx/metadata.sqlite`` (ML Metadata): "ran" (executed now), "cached" (reused
    from an earlier run), or the execution's state if it is neither (e.g. "FAILED")."""
    from ml_metadata.proto import metadata_store_pb2 as mlmd

    store = _metadata_store(output, metadata_path)
    types = {t.id: t.name for t in store.get_context_types()}
    runs = store.get_contexts_by_type("pipeline_run")  # one output dir, one pipeline
    if not runs:
        return []
    newest = max(runs, key=lambda c: c.create_time_since_epoch)
    words = {mlmd.Execution.COMPLETE: "ran", mlmd.Execution.CACHED: "cached"}
    outcome = []
    for execution in store.get_executions_by_context(newest.id):
        node = next(
            (
                c.name
                for c in store.get_contexts_by_execution(execution.id)
                if types.get(c.type_id) == "node"
            ),
            "?",
        )
        outcome.append(
            (
                node[len(pipeline_name) + 1 :] if node.startswith(pipeline_name + ".") else node,
                words.get(
                    execution.last_known_state,
                    mlmd.Execution.State.Name(execution.last_known_state),
                ),
            )
        )
    return sorted(outcome)


def _infra_refusal(output) -> str:
    """Why the newest ``ModelLoadValidator`` refused the final model ("" if it did not)."""
    from pipeline.infra_validation import REASON_FILE

    blessings = sorted(
        (
            p.rstrip("/")
            for p in tf.io.gfile.glob(
                filesystems.join(
                    output_dir(output), "tfx", "root", "ModelLoadValidator", "blessing", "*"
                )
            )
        ),
        key=lambda p: int(filesystems.basename(p)) if filesystems.basename(p).isdigit() else -1,
    )
    newest = filesystems.join(blessings[-1], REASON_FILE) if blessings else None
    return (
        f"the final model did not pass the model-server load check: {_read(newest)}"
        if newest and tf.io.gfile.exists(newest)
        else ""
    )


def run_summary(
    output,
    bless_min_ua: float = DEFAULT_BLESS_MIN_UA,
    pipeline_name: str = PIPELINE_NAME,
    metadata_path: Optional[str] = None,
) -> Tuple[dict, str]:
    """``(report, text)`` after a local run: the cross-validation report, then which components
    ran and which came from the cache, where the report is, and what was pushed (or why
    not)."""
    output = output_dir(output)
    filesystems.enable(output)
    root = filesystems.join(output, "tfx", "root")
    reports = sorted(
        tf.io.gfile.glob(
            filesystems.join(root, "CrossValidationReport", "report", "*", "report.md")
        ),
        key=lambda p: int(filesystems.basename(filesystems.dirname(p))),
    )
    if not reports:
        raise FileNotFoundError(f"no cross-validation report under {root}")
    # This run's report: the newest one made with this bar (a cached run reuses an older one).
    ours = [
        p
        for p in reports
        if json.loads(_read(filesystems.join(filesystems.dirname(p), "report.json")))
        .get("blessing", {})
        .get("min_ua")
        == bless_min_ua
    ]
    report_dir = filesystems.dirname((ours or reports)[-1])
    report = json.loads(_read(filesystems.join(report_dir, "report.json")))
    blessing = report.get("blessing") or {"blessed": True, "reasons": []}
    serving = filesystems.join(output, "serving_model", MODEL_NAME)
    refused = _infra_refusal(output)
    if refused:
        blessing = {"blessed": False, "reasons": [*blessing.get("reasons", []), refused]}
    if blessing["blessed"]:
        versions = (
            sorted(name.rstrip("/") for name in tf.io.gfile.listdir(serving))
            if tf.io.gfile.isdir(serving)
            else []
        )
        pushed = (
            f"pushed model: {filesystems.join(serving, versions[-1])}"
            if versions
            else "pushed model: none found"
        )
    else:
        pushed = (
            f"NOT PUSHED: the run was not blessed, the serving directory {serving} is "
            "untouched:\n" + "\n".join(f"  - {reason}" for reason in blessing["reasons"])
        )
    outcome = run_outcome(output, pipeline_name, metadata_path)
    ran = [name for name, what in outcome if what == "ran"]
    cached = [name for name, what in outcome if what == "cached"]
    other = [f"{name} ({what})" for name, what in outcome if what not in ("ran", "cached")]
    lines = [
        _read(filesystems.join(report_dir, "report.md")).rstrip("\n"),
        "",
        f"ran: {', '.join(ran) or 'nothing'}",
        f"from the cache: {', '.join(cached) or 'nothing'}",
    ]
    if other:
        lines.append(f"other: {', '.join(other)}")
    lines += [f"report: {report_dir}", pushed, f"TensorBoard: tensorboard --logdir {root}"]
    return report, "\n".join(lines)
