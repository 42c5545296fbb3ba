"""The Apache Beam job that turns a speech corpus into aligned, gzipped TFRecords.

    utterances --Reshuffle--> ProcessUtterance (decode, filterbank, align, word vectors)
        --> records: one TFRecord set per fold   (<out>/records/fold-K/part-*.tfrecord.gz)
        --> errors:  one JSON line per failure    (<out>/errors.jsonl: id, path, stage, reason)

Every input utterance ends up as exactly one record or one error line; the summary
(``summary.json``) counts both. With ``augment_copies`` > 0 each record is followed by that many
augmented copies (``preprocessing.augment``: the same speaker, label, fold and word spans, the
waveform under a drawn recording condition) on the channel ``<channel>_aug``, in the same fold
files; the summary counts them apart (``augmented_records``), and a copy that fails is an error
line of stage ``augment`` (its source's record stands); with ``augmented_layout`` the copies go
to files of their own instead (per fold, e.g. the TFX pipeline's ``Split-fold<K>_aug``). The
job runs on any Beam runner:
DirectRunner with multi-processing by default, Dataflow / Flink / Spark through ``beam_args``.
Inputs and outputs may be object storage (``s3://``, ``gs://``; ``infra.filesystems``): the
driver's files go through ``tf.io.gfile``, the workers read audio and write records through Beam's
``FileSystems``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import tempfile
import time
from typing import Dict, Iterable, List, Optional, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from infra import filesystems
from preprocessing import corpora

LOG = logging.getLogger("cme_ser.preprocess")
RECORDS_DIR = "records"
# Where fold K's files go, relative to the output dir. TFX's Examples artifacts use
# "Split-fold{fold}" instead, and "Split-fold{fold}_aug" for copies (see pipeline.splits).
DEFAULT_LAYOUT = RECORDS_DIR + "/fold-{fold}"
ERRORS_FILE = "errors.jsonl"
SUMMARY_FILE = "summary.json"
FOLD_PLAN_FILE = "fold_plan.json"
RECORD_SUFFIX = ".tfrecord.gz"
OUTPUTS = (RECORDS_DIR, ERRORS_FILE, SUMMARY_FILE, FOLD_PLAN_FILE)


@dataclasses.dataclass(frozen=True)
class ProcessingOptions:
    """What each worker needs to turn an utterance into a record."""

    class_names: Sequence[str]
    embeddings_path: str
    folds: Dict[str, int]  # speaker -> fold
    max_seconds: float = 60.0
    overlong: str = "truncate"
    augment_copies: int = 0  # augmented copies per utterance (0: the records alone)


def error_line(utterance_id: str, path: str, stage: str, reason: str) -> str:
    return json.dumps(
        {"utterance_id": utterance_id, "path": path, "stage": stage, "reason": reason},
        sort_keys=True,
    )


class ProcessUtterance(beam.DoFn):
    """Utterance -> (fold, serialized tf.Example), or an error line on the ``errors`` output.

    The aligner and the word vectors are loaded once per worker in ``setup``.
    """

    ERRORS = "errors"
    COPIES = "copies"  # (fold, serialized copy): augmented copies, apart from the records

    def __init__(self, options: ProcessingOptions):
        self.options = options
        self.count = 0

    def setup(self):
        # Imported here so that the driver never pays for TensorFlow/PocketSphinx start-up.
        from preprocessing import alignment, embeddings, utterance

        self._utterance = utterance
        self._vectors = embeddings.load(self.options.embeddings_path)
        self._aligner = alignment.PocketSphinxAligner()
        self._started = time.time()

    def process(self, utterance: corpora.Utterance):
        try:
            with local_copy(utterance) as local:
                example, source, copies = self._utterance.utterance_to_examples(
                    local,
                    aligner=self._aligner,
                    vectors=self._vectors,
                    class_names=self.options.class_names,
                    fold=self.options.folds[utterance.speaker],
                    max_seconds=self.options.max_seconds,
                    overlong=self.options.overlong,
                    augment_copies=self.options.augment_copies,
                )
        except self._utterance.UtteranceError as error:
            beam.metrics.Metrics.counter("cme_ser", f"error_{error.stage}").inc()
            yield beam.pvalue.TaggedOutput(
                self.ERRORS,
                error_line(utterance.utterance_id, utterance.audio_path, error.stage, error.reason),
            )
            return
        except Exception as error:  # noqa: BLE001 - one bad file must never stop the job
            LOG.exception("unexpected failure on %s", utterance.audio_path)
            yield beam.pvalue.TaggedOutput(
                self.ERRORS,
                error_line(
                    utterance.utterance_id,
                    utterance.audio_path,
                    "internal",
                    f"{type(error).__name__}: {error}",
                ),
            )
            return
        beam.metrics.Metrics.counter("cme_ser", f"records_{source}").inc()
        self.count += 1
        if self.count % 50 == 0:
            rate = self.count / max(time.time() - self._started, 1e-9)
            LOG.warning(
                "worker %d: %d utterances processed (%.1f/s)", os.getpid(), self.count, rate
            )
        # deterministic: the features map in one order, so a record's bytes do not depend on
        # the process that wrote it (same bytes on every runner and run).
        fold = self.options.folds[utterance.speaker]
        yield fold, example.SerializeToString(deterministic=True)
        for copy_id, copy in copies:
            if isinstance(copy, self._utterance.UtteranceError):
                beam.metrics.Metrics.counter("cme_ser", f"error_{copy.stage}").inc()
                yield beam.pvalue.TaggedOutput(
                    self.ERRORS, error_line(copy_id, utterance.audio_path, copy.stage, copy.reason)
                )
                continue
            beam.metrics.Metrics.counter("cme_ser", "records_augmented").inc()
            yield beam.pvalue.TaggedOutput(
                self.COPIES, (fold, copy.SerializeToString(deterministic=True))
            )


@contextlib.contextmanager
def local_copy(utterance: corpora.Utterance):
    """``utterance`` with its object-storage files (``s3://``, ``gs://``) copied to a temporary
    directory through Beam's ``FileSystems`` (the decoder and the alignment readers read local
    files); local paths are used as they are. A missing remote file becomes a missing local
    path, so it fails in the same stage with the same reason as a missing local file."""
    remote = {
        field: getattr(utterance, field)
        for field in ("audio_path", "alignment_path")
        if getattr(utterance, field) and filesystems.is_url(getattr(utterance, field))
    }
    if not remote:
        yield utterance
        return
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    with tempfile.TemporaryDirectory(prefix="cme-ser-") as tmp:
        local = {}
        for field, url in remote.items():
            local[field] = os.path.join(tmp, field, filesystems.basename(url))
            os.makedirs(os.path.dirname(local[field]))
            if FileSystems.exists(url):
                with (
                    FileSystems.open(url, compression_type=CompressionTypes.UNCOMPRESSED) as src,
                    open(local[field], "wb") as dst,
                ):
                    dst.write(src.read())
        yield dataclasses.replace(utterance, **local)


def build(
    p: beam.Pipeline,
    utterances: Sequence[corpora.Utterance],
    options: ProcessingOptions,
    out_dir: str,
    num_folds: int,
    layout: str = DEFAULT_LAYOUT,
    augmented_layout: Optional[str] = None,
):
    """Adds the job to ``p``; returns the (records, errors) PCollections. Augmented copies are
    written with ``augmented_layout`` (per fold), or with their records when it is None."""
    results = (
        p
        | "Utterances" >> beam.Create(list(utterances), reshuffle=False)
        | "Spread" >> beam.Reshuffle()
        | "Process"
        >> beam.ParDo(ProcessUtterance(options)).with_outputs(
            ProcessUtterance.ERRORS, ProcessUtterance.COPIES, main="records"
        )
    )
    records, errors = results.records, results[ProcessUtterance.ERRORS]
    copies = results[ProcessUtterance.COPIES]
    if options.augment_copies and augmented_layout is None:
        records = (records, copies) | "WithCopies" >> beam.Flatten()
    _write_by_fold(records, out_dir, num_folds, layout, "")
    if options.augment_copies and augmented_layout is not None:
        _write_by_fold(copies, out_dir, num_folds, augmented_layout, "Copies")
    (
        errors
        | "ErrorsOneFile" >> beam.combiners.ToList()
        | "SortErrors" >> beam.FlatMap(sorted)
        # No file for no errors: S3 refuses the empty multipart upload Beam would make for one.
        | "WriteErrors"
        >> beam.io.WriteToText(
            filesystems.join(out_dir, ERRORS_FILE),
            shard_name_template="",
            append_trailing_newlines=True,
            skip_if_empty=True,
        )
    )
    return records, errors


def _write_by_fold(keyed, out_dir: str, num_folds: int, layout: str, label: str) -> None:
    """Writes ``(fold, serialized)`` pairs as fold K's gzipped TFRecords under ``layout``
    (every fold gets its files, empty ones included)."""
    by_fold = keyed | f"{label}ByFold" >> beam.Partition(lambda kv, n: kv[0], num_folds)
    for fold, pcoll in enumerate(by_fold):
        (
            pcoll
            | f"{label}Serialized{fold}" >> beam.Values()
            | f"{label}Write{fold}"
            >> beam.io.WriteToTFRecord(
                filesystems.join(out_dir, layout.format(fold=fold), "part"),
                file_name_suffix=RECORD_SUFFIX,
                compression_type=beam.io.filesystem.CompressionTypes.GZIP,
            )
        )


def default_beam_args() -> List[str]:
    return [
        "--runner=DirectRunner",
        "--direct_running_mode=multi_processing",
        f"--direct_num_workers={max(1, os.cpu_count() or 1)}",
    ]


def prepare_output_dir(
    out_dir: str, overwrite: bool, layout: str = DEFAULT_LAYOUT, *more_layouts: str
) -> None:
    """Refuses to mix runs: an output dir holding a previous run needs ``overwrite``."""
    import tensorflow as tf

    filesystems.enable(out_dir)
    tops = {form.split("/")[0].replace("{fold}", "*") for form in (layout, *more_layouts)}
    previous = sorted(
        {
            filesystems.basename(p)
            for top in tops
            for p in tf.io.gfile.glob(filesystems.join(out_dir, top))
        }
        | {name for name in OUTPUTS if tf.io.gfile.exists(filesystems.join(out_dir, name))}
    )
    if previous and not overwrite:
        raise FileExistsError(
            f"{out_dir} already holds preprocessed output ({', '.join(previous)}); "
            "pass --overwrite to replace it or choose another --out"
        )
    for name in previous:
        target = filesystems.join(out_dir, name)
        tf.io.gfile.rmtree(target) if tf.io.gfile.isdir(target) else tf.io.gfile.remove(target)
    tf.io.gfile.makedirs(out_dir)


def record_files(out_dir, fold: Optional[int] = None, layout: str = DEFAULT_LAYOUT) -> List[str]:
    import tensorflow as tf

    filesystems.enable(out_dir)
    pattern = layout.format(fold=fold if fold is not None else "*")
    return sorted(tf.io.gfile.glob(filesystems.join(str(out_dir), pattern, f"*{RECORD_SUFFIX}")))


def _read_text(path: str) -> str:
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "r") as f:
        return f.read()


def _write_text(path: str, text: str) -> None:
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "w") as f:
        f.write(text)


def run(
    *,
    dataset: str,
    items: Iterable[corpora.Item],
    out_dir,
    class_names: Sequence[str],
    embeddings_path: str,
    num_folds: int = 5,
    fold_by: str = "speaker",
    max_seconds: float = 60.0,
    overlong: str = "truncate",
    overwrite: bool = False,
    beam_args: Optional[Sequence[str]] = None,
    pipeline: Optional[beam.Pipeline] = None,
    layout: str = DEFAULT_LAYOUT,
    augment_copies: int = 0,
    augmented_layout: Optional[str] = None,
) -> dict:
    """Runs the whole job and returns the summary (also written to ``summary.json``).

    ``pipeline``: an unstarted Beam pipeline to run in (TFX hands one over, configured with
    the TFX pipeline's Beam arguments); otherwise one is made from ``beam_args``.
    ``augment_copies``: augmented copies written per utterance (module docstring);
    ``augmented_layout``: where fold K's copies go (None: into fold K's record files).
    """
    if augment_copies < 0:
        raise ValueError(f"augment_copies must be >= 0, got {augment_copies}")
    # Workers of a portable / cluster runner run in other directories: no relative paths.
    out_dir = filesystems.absolute(out_dir)
    embeddings_path = filesystems.absolute(embeddings_path)
    utterances, rejected = corpora.partition(items)
    utterances = [
        dataclasses.replace(
            u,
            audio_path=filesystems.absolute(u.audio_path),
            alignment_path=u.alignment_path and filesystems.absolute(u.alignment_path),
        )
        for u in utterances
    ]
    if not utterances:
        raise ValueError(
            f"no usable utterances found for dataset {dataset!r} ({len(rejected)} rejected)"
        )
    folds = corpora.assign_folds(utterances, num_folds, by=fold_by)
    apart = (augmented_layout,) if augmented_layout else ()
    prepare_output_dir(out_dir, overwrite, layout, *apart)
    plan = {
        "dataset": dataset,
        "num_folds": num_folds,
        "by": fold_by,
        "folds": folds,
        "summary": corpora.fold_summary(utterances, folds),
    }
    _write_text(
        filesystems.join(out_dir, FOLD_PLAN_FILE), json.dumps(plan, indent=2, sort_keys=True)
    )

    options = ProcessingOptions(
        class_names=tuple(class_names),
        embeddings_path=str(embeddings_path),
        folds=folds,
        max_seconds=max_seconds,
        overlong=overlong,
        augment_copies=augment_copies,
    )
    started = time.time()
    LOG.warning(
        "preprocessing %d utterances (%d rejected while listing) into %s",
        len(utterances),
        len(rejected),
        out_dir,
    )
    if pipeline is None:
        pipeline = beam.Pipeline(options=PipelineOptions(list(beam_args or default_beam_args())))
    with pipeline as p:
        build(p, utterances, options, out_dir, num_folds, layout, augmented_layout)
    elapsed = time.time() - started

    errors_path = filesystems.join(out_dir, ERRORS_FILE)
    import tensorflow as tf

    errors = (
        [json.loads(line) for line in _read_text(errors_path).splitlines() if line.strip()]
        if tf.io.gfile.exists(errors_path)
        else []
    )
    errors += [dataclasses.asdict(r) for r in rejected]
    errors.sort(key=lambda e: (e["stage"], e["utterance_id"]))
    _write_text(errors_path, "".join(json.dumps(e, sort_keys=True) + "\n" for e in errors))
    summary = summarize(
        out_dir,
        dataset=dataset,
        class_names=class_names,
        num_inputs=len(utterances) + len(rejected),
        errors=errors,
        seconds=elapsed,
        layouts=(layout, *apart),
    )
    if augment_copies:
        summary["augment_copies"] = augment_copies
    _write_text(
        filesystems.join(out_dir, SUMMARY_FILE), json.dumps(summary, indent=2, sort_keys=True)
    )
    return summary


def summarize(
    out_dir: str,
    *,
    dataset: str,
    class_names: Sequence[str],
    num_inputs: int,
    errors: List[dict],
    seconds: float,
    layouts: Sequence[str] = (DEFAULT_LAYOUT,),
) -> dict:
    """Counts what the job produced by reading it back (so the numbers are the files' under
    ``layouts``). Augmented copies are counted per channel and in ``augmented_records`` only,
    their errors in ``augment_errors``: the other counts are of the corpus's utterances."""
    import tensorflow as tf

    from preprocessing.augment import AUGMENT_STAGE
    from preprocessing.corpora import is_augmented
    from preprocessing.records import decode_example

    per_fold, per_source, per_label, per_channel, oov, augmented = {}, {}, {}, {}, 0, 0
    paths = sorted({p for form in layouts for p in record_files(out_dir, layout=form)})
    for path in paths:
        fold = filesystems.basename(filesystems.dirname(path))
        for raw in tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator():
            record = decode_example(raw)
            if is_augmented(record["channel"]):
                per_channel[record["channel"]] = per_channel.get(record["channel"], 0) + 1
                augmented += 1
                continue
            per_fold[fold] = per_fold.get(fold, 0) + 1
            source = record["alignment_source"]
            per_source[source] = per_source.get(source, 0) + 1
            per_label[record["label_name"]] = per_label.get(record["label_name"], 0) + 1
            if record["channel"]:
                per_channel[record["channel"]] = per_channel.get(record["channel"], 0) + 1
            oov += int(sum(not vec.any() for vec in record["word_embeddings"]))
    num_records = sum(per_fold.values())
    per_stage: Dict[str, int] = {}
    for e in errors:
        per_stage[e["stage"]] = per_stage.get(e["stage"], 0) + 1
    copy_errors = [e for e in errors if e["stage"] == AUGMENT_STAGE]
    errors = [e for e in errors if e["stage"] != AUGMENT_STAGE]
    channels = {"records_per_channel": per_channel} if per_channel else {}
    copies = (
        {"augmented_records": augmented, "augment_errors": len(copy_errors)}
        if augmented or copy_errors
        else {}
    )
    return {
        **channels,
        **copies,
        "dataset": dataset,
        "classes": list(class_names),
        "inputs": num_inputs,
        "records": num_records,
        "errors": len(errors),
        "records_per_fold": per_fold,
        "records_per_alignment_source": per_source,
        "records_per_label": per_label,
        "errors_per_stage": per_stage,
        "oov_words": oov,
        "seconds": round(seconds, 2),
        "utterances_per_second": round(num_records / seconds, 2) if seconds else None,
        "complete": num_records + len(errors) == num_inputs,
    }
