"""Arguments of the local pipeline, shared by ``cme-ser run`` and ``pipeline/local_runner.py``.

Output layout under ``<output>``:
``tfx/root`` (pipeline root: every artifact), ``tfx/metadata.sqlite`` (ML Metadata),
``serving_model/<model_name>/<version>/`` (what TF Serving loads).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import List, Optional

from tfx import v1 as tfx

from pipeline.pipeline import create_pipeline
from preprocessing.beam_pipeline import default_beam_args
from trainer.config import ModelConfig

PIPELINE_NAME = "cme_ser"
MODEL_NAME = "cme"
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".aiff", ".aif")


def corpus_fingerprint(data_dir) -> str:
    """A digest of the corpus files' names, sizes and modification times: TFX's cache key for
    the preprocessing step (unchanged corpus -> the step is skipped on a re-run)."""
    digest = hashlib.sha256()
    root = Path(data_dir)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(root) if path != root else path.name}\0"
                      f"{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def local_pipeline(output, *, data_dir, embeddings_path: str, dataset: str = "ravdess",
                   config: ModelConfig = ModelConfig(), num_folds: int = 5,
                   vocab_size: int = 50000, enable_cache: bool = True,
                   beam_pipeline_args: Optional[List[str]] = None,
                   pipeline_name: str = PIPELINE_NAME) -> tfx.dsl.Pipeline:
    output = Path(output).resolve()
    return create_pipeline(
        pipeline_name=pipeline_name, pipeline_root=str(output / "tfx" / "root"),
        metadata_path=str(output / "tfx" / "metadata.sqlite"), dataset=dataset,
        data_dir=str(Path(data_dir).resolve()), corpus_fingerprint=corpus_fingerprint(data_dir),
        embeddings_path=str(embeddings_path),
        serving_model_dir=str(output / "serving_model" / MODEL_NAME), config=config,
        num_folds=num_folds, vocab_size=vocab_size, enable_cache=enable_cache,
        beam_pipeline_args=beam_pipeline_args or default_beam_args())

