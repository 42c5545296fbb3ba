"""Arguments of the local pipeline, shared by ``cme-ser run`` and ``pipeline/local_runner.py``.

Output layout under ``<output>``:
``tfx/root`` (pipeline root: every artifact), ``tfx/metadata.sqlite`` (ML Metadata),
``serving_model/<model_name>/<version>/`` (what TF Serving loads).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import List, Optional, Sequence, Union

from tfx import v1 as tfx

from pipeline.components import encode_data_dirs
from pipeline.pipeline import create_pipeline
from pipeline.report import DEFAULT_BLESS_MIN_UA
from preprocessing.beam_pipeline import default_beam_args
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
                   ensemble_size: int = 1, vocab_size: int = 50000, enable_cache: bool = True,
                   beam_pipeline_args: Optional[List[str]] = None,
                   pipeline_name: str = PIPELINE_NAME,
                   channels: Optional[Sequence[str]] = None,
                   bless_min_ua: float = DEFAULT_BLESS_MIN_UA) -> tfx.dsl.Pipeline:
    """``data_dir``: the corpus directory, or several (RAVDESS speech and song);
    ``channels``: RAVDESS channels (None: speech); ``bless_min_ua``: the cross-validated UA
    mean the final model needs to be pushed (``pipeline.report.blessing_decision``)."""
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
        num_folds=num_folds, ensemble_size=ensemble_size, vocab_size=vocab_size,
        enable_cache=enable_cache, bless_min_ua=bless_min_ua,
        beam_pipeline_args=beam_pipeline_args or default_beam_args())



def kubeflow_pipeline(*, pipeline_root: str, data_dir: str, embeddings_path: str,
                      serving_model_dir: str, dataset: str = "ravdess",
                      config: ModelConfig = variant_config("cme"), num_folds: int = 5,
                      ensemble_size: int = 1, vocab_size: int = 50000,
                      pipeline_name: str = KUBEFLOW_PIPELINE_NAME,
                      bless_min_ua: float = DEFAULT_BLESS_MIN_UA) -> tfx.dsl.Pipeline:
    """The same pipeline for Kubeflow Pipelines / Vertex AI: paths are the cluster's (e.g.
    gs://...), ML Metadata is the orchestrator's, Beam runs wherever beam_pipeline_args say."""
    fingerprint = corpus_fingerprint(data_dir) if Path(data_dir).exists() else "remote"
    return create_pipeline(
        pipeline_name=pipeline_name, pipeline_root=pipeline_root, metadata_path=None,
        dataset=dataset, data_dir=data_dir, corpus_fingerprint=fingerprint,
        embeddings_path=embeddings_path, serving_model_dir=serving_model_dir, config=config,
        num_folds=num_folds, ensemble_size=ensemble_size, vocab_size=vocab_size,
        bless_min_ua=bless_min_ua, beam_pipeline_args=["--runner=DirectRunner"])
