"""Arguments of the local pipeline, shared by ``cme-ser run`` and ``pipeline/local_runner.py``.

Output layout under ``<output>``:
``tfx/root`` (pipeline root: every artifact), ``tfx/metadata.sqlite`` (ML Metadata),
``serving_model/<model_name>/<version>/`` (what TF Serving loads).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

from tfx import v1 as tfx

from pipeline.components import encode_data_dirs
from pipeline.pipeline import create_pipeline
from pipeline.report import DEFAULT_BLESS_MIN_UA
from preprocessing.beam_pipeline import default_beam_args
from preprocessing.embeddings import DEFAULT_VOCAB_SIZE
from trainer.config import ModelConfig, variant_config

PIPELINE_NAME = "cme_ser"
KUBEFLOW_PIPELINE_NAME = "cme-ser"  # Kubeflow names: [a-z0-9][a-z0-9-]*
MODEL_NAME = "cme"
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".aiff", ".aif")


def corpus_fingerprint(data_dir) -> str:
    """A digest of the corpus files' names, sizes and modification times: TFX's cache key for
    the preprocessing step (unchanged corpus -> the step is skipped on a re-run). ``data_dir``:
    a directory or file, or a list of them (each one's files prefixed by its position)."""
    digest = hashlib.sha256()
    many = not isinstance(data_dir, (str, Path))
    for index, root in enumerate([Path(d) for d in data_dir] if many else [Path(data_dir)]):
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            stat = path.stat()
            name = path.relative_to(root) if path != root else path.name
            digest.update(f"{f'{index}/' if many else ''}{name}\0"
                          f"{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def local_pipeline(output, *, data_dir: Union[str, Path, Sequence[Union[str, Path]]],
                   embeddings_path: str, dataset: str = "ravdess",
                   config: ModelConfig = variant_config("cme"), num_folds: int = 5,
                   ensemble_size: int = 1, prior_correction: bool = False,
                   vocab_size: int = DEFAULT_VOCAB_SIZE, enable_cache: bool = True,
                   beam_pipeline_args: Optional[List[str]] = None,
                   pipeline_name: str = PIPELINE_NAME,
                   channels: Optional[Sequence[str]] = None,
                   bless_min_ua: float = DEFAULT_BLESS_MIN_UA) -> tfx.dsl.Pipeline:
    """``data_dir``: the corpus directory, or several (RAVDESS speech and song);
    ``channels``: RAVDESS channels (None: speech); ``ensemble_size``, ``prior_correction``:
    as ``create_pipeline`` (``cme-ser run`` and ``local_runner.py`` pass the shipped ones,
    ``trainer.config.SHIPPED``); ``bless_min_ua``: the cross-validated UA mean the final model
    needs to be pushed (``pipeline.report.blessing_decision``)."""
    output = Path(output).resolve()
    dirs = [data_dir] if isinstance(data_dir, (str, Path)) else list(data_dir)
    return create_pipeline(
        pipeline_name=pipeline_name, pipeline_root=str(output / "tfx" / "root"),
        metadata_path=str(output / "tfx" / "metadata.sqlite"), dataset=dataset,
        data_dir=encode_data_dirs([str(Path(d).resolve()) for d in dirs]),
        corpus_fingerprint=corpus_fingerprint(dirs[0] if len(dirs) == 1 else dirs),
        channels=channels,
        embeddings_path=str(embeddings_path),
        serving_model_dir=str(output / "serving_model" / MODEL_NAME), config=config,
        num_folds=num_folds, ensemble_size=ensemble_size, prior_correction=prior_correction,
        vocab_size=vocab_size, enable_cache=enable_cache, bless_min_ua=bless_min_ua,
        beam_pipeline_args=beam_pipeline_args or default_beam_args())



def kubeflow_pipeline(*, pipeline_root: str, data_dir: str, embeddings_path: str,
                      serving_model_dir: str, dataset: str = "ravdess",
                      config: ModelConfig = variant_config("cme"), num_folds: int = 5,
                      ensemble_size: int = 1, prior_correction: bool = False,
                      vocab_size: int = DEFAULT_VOCAB_SIZE,
                      pipeline_name: str = KUBEFLOW_PIPELINE_NAME,
                      bless_min_ua: float = DEFAULT_BLESS_MIN_UA) -> tfx.dsl.Pipeline:
    """The same pipeline for Kubeflow Pipelines / Vertex AI: paths are the cluster's (e.g.
    gs://...), ML Metadata is the orchestrator's, Beam runs wherever beam_pipeline_args say."""
    fingerprint = corpus_fingerprint(data_dir) if Path(data_dir).exists() else "remote"
    return create_pipeline(
        pipeline_name=pipeline_name, pipeline_root=pipeline_root, metadata_path=None,
        dataset=dataset, data_dir=data_dir, corpus_fingerprint=fingerprint,
        embeddings_path=embeddings_path, serving_model_dir=serving_model_dir, config=config,
        num_folds=num_folds, ensemble_size=ensemble_size, prior_correction=prior_correction,
        vocab_size=vocab_size, bless_min_ua=bless_min_ua,
        beam_pipeline_args=["--runner=DirectRunner"])


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
            print(f"[{time.time() - self.started:6.0f}s] {record.args[0]}: {what}", file=self.out,
                  flush=True)


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


def _metadata_store(output):
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2 as mlmd

    config = mlmd.ConnectionConfig()
    config.sqlite.filename_uri = str(Path(output) / "tfx" / "metadata.sqlite")
    config.sqlite.connection_mode = mlmd.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(config)


def newest_run_started(output) -> Optional[float]:
    """When the newest run recorded under ``output`` started (epoch seconds), or None."""
    if not (Path(output) / "tfx" / "metadata.sqlite").exists():
        return None
    runs = _metadata_store(output).get_contexts_by_type("pipeline_run")
    return max(c.create_time_since_epoch for c in runs) / 1000.0 if runs else None


def run_outcome(output, pipeline_name: str = PIPELINE_NAME) -> List[Tuple[str, str]]:
    """``(component, what)`` for every component of the newest run recorded in
    ``<output>/tfx/metadata.sqlite`` (ML Metadata): "ran" (executed now), "cached" (reused
    from an earlier run), or the execution's state if it is neither (e.g. "FAILED")."""
    from ml_metadata.proto import metadata_store_pb2 as mlmd

    store = _metadata_store(output)
    types = {t.id: t.name for t in store.get_context_types()}
    runs = store.get_contexts_by_type("pipeline_run")  # one output dir, one pipeline
    if not runs:
        return []
    newest = max(runs, key=lambda c: c.create_time_since_epoch)
    words = {mlmd.Execution.COMPLETE: "ran", mlmd.Execution.CACHED: "cached"}
    outcome = []
    for execution in store.get_executions_by_context(newest.id):
        node = next((c.name for c in store.get_contexts_by_execution(execution.id)
                     if types.get(c.type_id) == "node"), "?")
        outcome.append((node[len(pipeline_name) + 1:] if node.startswith(pipeline_name + ".")
                        else node, words.get(execution.last_known_state,
                                             mlmd.Execution.State.Name(execution.last_known_state))))
    return sorted(outcome)


def run_summary(output, bless_min_ua: float = DEFAULT_BLESS_MIN_UA,
                pipeline_name: str = PIPELINE_NAME) -> Tuple[dict, str]:
    """``(report, text)`` after a local run: the cross-validation report, then which components
    ran and which came from the cache, where the report is, and what was pushed (or why
    not)."""
    output = Path(output)
    reports = sorted((output / "tfx" / "root" / "CrossValidationReport" / "report").glob(
        "*/report.md"), key=lambda p: int(p.parent.name))
    if not reports:
        raise FileNotFoundError(f"no cross-validation report under {output / 'tfx' / 'root'}")
    # This run's report: the newest one made with this bar (a cached run reuses an older one).
    ours = [p for p in reports if json.loads((p.parent / "report.json").read_text()).get(
        "blessing", {}).get("min_ua") == bless_min_ua]
    report_dir = (ours or reports)[-1].parent
    report = json.loads((report_dir / "report.json").read_text())
    blessing = report.get("blessing") or {"blessed": True, "reasons": []}
    serving = output / "serving_model" / MODEL_NAME
    if blessing["blessed"]:
        versions = sorted(serving.iterdir(), key=lambda p: p.name) if serving.is_dir() else []
        pushed = f"pushed model: {versions[-1]}" if versions else "pushed model: none found"
    else:
        pushed = (f"NOT PUSHED: the run was not blessed, the serving directory {serving} is "
                  "untouched:\n" + "\n".join(f"  - {reason}" for reason in blessing["reasons"]))
    outcome = run_outcome(output, pipeline_name)
    ran = [name for name, what in outcome if what == "ran"]
    cached = [name for name, what in outcome if what == "cached"]
    other = [f"{name} ({what})" for name, what in outcome if what not in ("ran", "cached")]
    lines = [(report_dir / "report.md").read_text().rstrip("\n"), "",
             f"ran: {', '.join(ran) or 'nothing'}",
             f"from the cache: {', '.join(cached) or 'nothing'}"]
    if other:
        lines.append(f"other: {', '.join(other)}")
    lines += [f"report: {report_dir}", pushed,
              f"TensorBoard: tensorboard --logdir {output / 'tfx' / 'root'}"]
    return report, "\n".join(lines)
