"""The project's custom TFX components.

- ``CorpusExampleGen``: the Beam preprocessing job as an ExampleGen: a corpus in, an
  ``Examples`` artifact out with one split per fold (``fold0`` .. ``foldK-1``), plus the fold
  plan, ``errors.jsonl`` and ``summary.json`` beside the splits.
- ``CrossValidationReport``: gathers the per-fold TFMA evaluations into mean +- std WA and UA,
  per-fold rows and the summed confusion matrix (``report.json``, ``report.md``,
  ``confusion.png``).
"""

# No `from __future__ import annotations`: TFX reads the signatures' real type objects.
import json
from pathlib import Path
from typing import List, Sequence, TypedDict, Union

import apache_beam as beam
from tfx import v1 as tfx
from tfx.types import artifact_utils, standard_artifacts
from tfx.components.util import examples_utils
from tfx.proto import example_gen_pb2

SPLIT_LAYOUT = "Split-fold{fold}"


class CrossValidationResult(tfx.dsl.Artifact):
    """A directory with ``report.json``, ``report.md`` and ``confusion.png``."""

    TYPE_NAME = "cme_ser.CrossValidationResult"  # <namespace>.<Name>, as Kubeflow requires


class PreprocessCounts(TypedDict):
    records: int
    errors: int


class CrossValidationMeans(TypedDict):
    wa_mean: float
    ua_mean: float


def split_names(num_folds: int) -> List[str]:
    return [f"fold{k}" for k in range(num_folds)]


def encode_data_dirs(data_dirs: Union[str, Sequence[str]]) -> str:
    """The ``data_dir`` parameter: one directory as itself (what a single-directory pipeline
    always had), several as a JSON list (RAVDESS speech and song directories)."""
    if isinstance(data_dirs, str):
        return data_dirs
    data_dirs = [str(d) for d in data_dirs]
    return data_dirs[0] if len(data_dirs) == 1 else json.dumps(data_dirs)


def decode_data_dirs(data_dir: str) -> List[str]:
    """The inverse of :func:`encode_data_dirs`."""
    return json.loads(data_dir) if data_dir.startswith("[") else [data_dir]


@tfx.dsl.components.component(use_beam=True)
def CorpusExampleGen(
    examples: tfx.dsl.components.OutputArtifact[standard_artifacts.Examples],
    dataset: tfx.dsl.components.Parameter[str],
    data_dir: tfx.dsl.components.Parameter[str],
    classes: tfx.dsl.components.Parameter[str],
    embeddings_path: tfx.dsl.components.Parameter[str],
    num_folds: tfx.dsl.components.Parameter[int],
    corpus_fingerprint: tfx.dsl.components.Parameter[str],
    channels: tfx.dsl.components.Parameter[str] = None,
    max_seconds: tfx.dsl.components.Parameter[float] = 60.0,
    overlong: tfx.dsl.components.Parameter[str] = "truncate",
    beam_pipeline: tfx.dsl.components.BeamComponentParameter[beam.Pipeline] = None,
) -> PreprocessCounts:
    """Preprocesses ``data_dir`` into speaker-independent fold splits (see
    ``preprocessing.beam_pipeline``). ``corpus_fingerprint`` (names, sizes and times of the
    corpus files) is a parameter so that TFX's cache reruns this only when the data changed.
    ``data_dir`` is one directory or a JSON list of them (:func:`encode_data_dirs`);
    ``channels`` the RAVDESS channels ("speech,song"; unset: the corpus default, speech).
    Fails when a fold ends up with no examples."""
    del corpus_fingerprint  # only there for the cache key
    from preprocessing import beam_pipeline as job
    from preprocessing import corpora

    class_names = [c for c in classes.split(",") if c]
    dirs = [Path(d) for d in decode_data_dirs(data_dir)]
    items = corpora.items(dataset, dirs[0] if len(dirs) == 1 else dirs, class_names,
                          channels=channels or None)
    summary = job.run(dataset=dataset, items=items, out_dir=examples.uri,
                      class_names=class_names, embeddings_path=embeddings_path,
                      num_folds=num_folds, fold_by="group" if dataset == "iemocap" else "speaker",
                      max_seconds=max_seconds, overlong=overlong, overwrite=True,
                      pipeline=beam_pipeline, layout=SPLIT_LAYOUT)
    examples.split_names = artifact_utils.encode_split_names(split_names(num_folds))
    examples_utils.set_payload_format(examples, example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE)
    examples_utils.set_file_format(examples, "tfrecords_gzip")
    empty = [k for k in range(num_folds)
             if summary["records_per_fold"].get(SPLIT_LAYOUT.format(fold=k), 0) == 0]
    if empty:
        raise ValueError(f"fold(s) {empty} got no examples ({summary['records']} records, "
                         f"{summary['errors']} errors): see {examples.uri}/errors.jsonl")
    return {"records": summary["records"], "errors": summary["errors"]}


MAX_FOLDS = 10
_Evaluation = tfx.dsl.components.InputArtifact[standard_artifacts.ModelEvaluation]


# One optional input per fold rather than a union of channels: Kubeflow's compiler takes only
# single channels, and the pipeline must compile there unchanged.
@tfx.dsl.components.component
def CrossValidationReport(
    report: tfx.dsl.components.OutputArtifact[CrossValidationResult],
    class_names: tfx.dsl.components.Parameter[str],
    evaluation_0: _Evaluation = None, evaluation_1: _Evaluation = None,
    evaluation_2: _Evaluation = None, evaluation_3: _Evaluation = None,
    evaluation_4: _Evaluation = None, evaluation_5: _Evaluation = None,
    evaluation_6: _Evaluation = None, evaluation_7: _Evaluation = None,
    evaluation_8: _Evaluation = None, evaluation_9: _Evaluation = None,
) -> CrossValidationMeans:
    """Writes ``report.json``, ``report.md`` and ``confusion.png`` into ``report.uri`` from
    the TFMA evaluations of folds 0, 1, ... (``evaluation_<fold>``)."""
    from pipeline.report import write_report
    from pipeline.tfma_metrics import read_fold_metrics

    names = [c for c in class_names.split(",") if c]
    evaluations = [evaluation_0, evaluation_1, evaluation_2, evaluation_3, evaluation_4,
                   evaluation_5, evaluation_6, evaluation_7, evaluation_8, evaluation_9]
    rows = [{"fold": fold, "evaluation": evaluation.uri,
             **read_fold_metrics(evaluation.uri, len(names))}
            for fold, evaluation in enumerate(evaluations) if evaluation is not None]
    summary = write_report(rows, names, report.uri)
    return {"wa_mean": summary["wa_mean"], "ua_mean": summary["ua_mean"]}
