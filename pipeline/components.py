"""The project's custom TFX components.

- ``CorpusExampleGen``: the Beam preprocessing job as an ExampleGen: a corpus in, an
  ``Examples`` artifact out with one split per fold (``fold0`` .. ``foldK-1``), plus the fold
  plan, ``errors.jsonl`` and ``summary.json`` beside the splits; with augmented copies, each
  fold's copies in a split of their own (``fold0_aug`` ..), which only Trainers read.
- ``CrossValidationReport``: gathers the per-fold TFMA evaluations into mean +- std WA and UA,
  per-fold rows and the summed confusion matrix (``report.json``, ``report.md``,
  ``confusion.png``), and, like TFX's Evaluator, a ``ModelBlessing`` for the Pusher: blessed
  when the UA mean reaches ``bless_min_ua`` and ExampleValidator found no anomaly.
"""

# No `from __future__ import annotations`: TFX reads the signatures' real type objects.
import json
from typing import List, Sequence, TypedDict, Union

import apache_beam as beam
from tfx import v1 as tfx
from tfx.components.util import examples_utils
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_artifacts

from pipeline.splits import (
    AUGMENTED_SPLIT_LAYOUT,
    SPLIT_LAYOUT,
    augmented_split_names,
    split_names,
)


class CrossValidationResult(tfx.dsl.Artifact):
    """A directory with ``report.json``, ``report.md`` and ``confusion.png``."""

    TYPE_NAME = "cme_ser.CrossValidationResult"  # <namespace>.<Name>, as Kubeflow requires


class PreprocessCounts(TypedDict):
    records: int
    errors: int


class CrossValidationMeans(TypedDict):
    wa_mean: float
    ua_mean: float
    blessed: int


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
    augment_copies: tfx.dsl.components.Parameter[int] = None,
    beam_pipeline: tfx.dsl.components.BeamComponentParameter[beam.Pipeline] = None,
) -> PreprocessCounts:
    """Preprocesses ``data_dir`` into speaker-independent fold splits (see
    ``preprocessing.beam_pipeline``). ``corpus_fingerprint`` (names, sizes and times of the
    corpus files) is a parameter so that TFX's cache reruns this only when the data changed.
    ``data_dir`` is one directory or a JSON list of them (:func:`encode_data_dirs`);
    ``channels`` the RAVDESS channels ("speech,song"; unset: the corpus default, speech);
    ``augment_copies`` augmented copies per utterance (unset: none), on the channels
    ``<channel>_aug``, each fold's in the split ``fold<K>_aug`` (``pipeline.splits``), so
    that the fold splits the Evaluators score hold the corpus's records only. Fails when a
    fold ends up with no examples."""
    del corpus_fingerprint  # only there for the cache key
    from preprocessing import beam_pipeline as job
    from preprocessing import corpora

    class_names = [c for c in classes.split(",") if c]
    dirs = decode_data_dirs(data_dir)  # local paths or object storage (s3://, gs://)
    items = corpora.items(
        dataset, dirs[0] if len(dirs) == 1 else dirs, class_names, channels=channels or None
    )
    summary = job.run(
        dataset=dataset,
        items=items,
        out_dir=examples.uri,
        class_names=class_names,
        embeddings_path=embeddings_path,
        num_folds=num_folds,
        fold_by="group" if dataset == "iemocap" else "speaker",
        max_seconds=max_seconds,
        overlong=overlong,
        overwrite=True,
        pipeline=beam_pipeline,
        layout=SPLIT_LAYOUT,
        augment_copies=augment_copies or 0,
        augmented_layout=AUGMENTED_SPLIT_LAYOUT,
    )
    examples.split_names = artifact_utils.encode_split_names(
        split_names(num_folds) + (augmented_split_names(num_folds) if augment_copies else [])
    )
    examples_utils.set_payload_format(examples, example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE)
    examples_utils.set_file_format(examples, "tfrecords_gzip")
    empty = [
        k
        for k in range(num_folds)
        if summary["records_per_fold"].get(SPLIT_LAYOUT.format(fold=k), 0) == 0
    ]
    if empty:
        raise ValueError(
            f"fold(s) {empty} got no examples ({summary['records']} records, "
            f"{summary['errors']} errors): see {examples.uri}/errors.jsonl"
        )
    return {"records": summary["records"], "errors": summary["errors"]}


MAX_FOLDS = 10
_Evaluation = tfx.dsl.components.InputArtifact[standard_artifacts.ModelEvaluation]
BLESSED_PROPERTY = "blessed"  # what tfx.components.Pusher reads (1: push)
BLESSING_FILE = "blessing.json"


def read_anomalies(anomalies) -> dict:
    """``{split: ["feature: description", ...]}`` from an ExampleAnomalies artifact (each
    split's ``SchemaDiff.pb``); splits without anomalies map to []."""
    import tensorflow as tf
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    found = {}
    for split in artifact_utils.decode_split_names(anomalies.split_names):
        path = tf.io.gfile.join(artifact_utils.get_split_uri([anomalies], split), "SchemaDiff.pb")
        diff = anomalies_pb2.Anomalies()
        if tf.io.gfile.exists(path):
            diff.ParseFromString(tf.io.gfile.GFile(path, "rb").read())
        lines = [
            f"{name}: {info.short_description or info.description}"
            for name, info in sorted(diff.anomaly_info.items())
        ]
        if diff.HasField("dataset_anomaly_info"):
            info = diff.dataset_anomaly_info
            lines.append(f"(dataset): {info.short_description or info.description}")
        found[split] = lines
    return found


# One optional input per fold rather than a union of channels: Kubeflow's compiler takes only
# single channels, and the pipeline must compile there unchanged.
@tfx.dsl.components.component
def CrossValidationReport(
    report: tfx.dsl.components.OutputArtifact[CrossValidationResult],
    blessing: tfx.dsl.components.OutputArtifact[standard_artifacts.ModelBlessing],
    class_names: tfx.dsl.components.Parameter[str],
    bless_min_ua: tfx.dsl.components.Parameter[float] = 0.0,
    anomalies: tfx.dsl.components.InputArtifact[standard_artifacts.ExampleAnomalies] = None,
    calibration: tfx.dsl.components.InputArtifact[standard_artifacts.HyperParameters] = None,
    evaluation_0: _Evaluation = None,
    evaluation_1: _Evaluation = None,
    evaluation_2: _Evaluation = None,
    evaluation_3: _Evaluation = None,
    evaluation_4: _Evaluation = None,
    evaluation_5: _Evaluation = None,
    evaluation_6: _Evaluation = None,
    evaluation_7: _Evaluation = None,
    evaluation_8: _Evaluation = None,
    evaluation_9: _Evaluation = None,
) -> CrossValidationMeans:
    """Writes ``report.json``, ``report.md`` and ``confusion.png`` into ``report.uri`` from
    the TFMA evaluations of folds 0, 1, ... (``evaluation_<fold>``), and the push decision
    (``pipeline.report.blessing_decision``: UA mean >= ``bless_min_ua`` and no anomaly in
    ``anomalies``) as the ``blessing`` ModelBlessing (custom property ``blessed`` 1 or 0, a
    ``BLESSED`` or ``NOT_BLESSED`` file and ``blessing.json``, as TFX's Evaluator writes) and
    as a section of both reports."""
    import tensorflow as tf

    from pipeline.report import blessing_decision, summarize, write_report
    from pipeline.tfma_metrics import read_metrics_by_slice

    names = [c for c in class_names.split(",") if c]
    evaluations = [
        evaluation_0,
        evaluation_1,
        evaluation_2,
        evaluation_3,
        evaluation_4,
        evaluation_5,
        evaluation_6,
        evaluation_7,
        evaluation_8,
        evaluation_9,
    ]
    rows = []
    for fold, evaluation in enumerate(evaluations):
        if evaluation is not None:
            slices = read_metrics_by_slice(evaluation.uri, len(names))
            overall = slices.pop(None)
            # by_channel: per channel, when the records hold several (speech and song).
            rows.append(
                {"fold": fold, "evaluation": evaluation.uri, **overall, "by_channel": slices}
            )
    decision = blessing_decision(
        summarize(rows, names)["ua_mean"] if rows else None,
        bless_min_ua,
        read_anomalies(anomalies) if anomalies else None,
    )
    extra = {"blessing": decision}
    if calibration is not None:  # pipeline.calibrator.Calibrator's
        from pipeline.calibrator import read_calibration

        extra["calibration"] = read_calibration(calibration.uri)
    summary = write_report(rows, names, report.uri, **extra)
    blessed = int(decision["blessed"])
    blessing.set_int_custom_property(BLESSED_PROPERTY, blessed)
    blessing.set_string_custom_property("reasons", " | ".join(decision["reasons"]))
    tf.io.gfile.makedirs(blessing.uri)
    for name, text in (
        (BLESSING_FILE, json.dumps(decision, indent=2)),
        ("BLESSED" if blessed else "NOT_BLESSED", ""),
    ):
        with tf.io.gfile.GFile(tf.io.gfile.join(blessing.uri, name), "w") as f:
            f.write(text)
    return {"wa_mean": summary["wa_mean"], "ua_mean": summary["ua_mean"], "blessed": blessed}
