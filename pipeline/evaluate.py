"""``cme-ser evaluate``: how well a trained or served model does on a corpus.

Every utterance the corpus adapter (``preprocessing.corpora``) lists goes the way a served
request goes (``serving.predict``: decode -> PocketSphinx forced alignment of the corpus
transcript -> the model's ``predict_waveform`` signature, in-process or over REST), and the
answers are scored against the corpus labels. Written to the output directory:

=====================  ======================================================================
report.json            WA, UA, per-class recall, confusion matrix, counts, model, dataset,
                       channels (and the same per channel when there are several)
report.md              the same, for people
confusion.png          the cross-validation report's plot (``pipeline.report.plot_confusion``)
reliability.png        the reliability diagram: accuracy against confidence, as served and
                       (a calibrated model) before its temperature (:func:`calibration`)
predictions.jsonl      one line per scored file: id, path, label, prediction, probabilities
errors.jsonl           one line per input that could not be scored: id, path, stage, reason
=====================  ======================================================================

Every input is in ``predictions.jsonl`` or ``errors.jsonl``.

``--dataset segments`` scores long recordings instead (:func:`evaluate_segments`): a CSV of
labelled segments (``path, start, end, label`` and optionally ``transcript``, a WebVTT/SRT/
TextGrid of the recording), each recording turned into a timeline the way ``cme-ser predict
RECORDING`` does (``serving.timeline``), each labelled segment scored with the row that overlaps
it most (``pipeline.segment_evaluation``); the report adds the onset / offset F1 of the segments
found. The corpus is listed with the
model's own classes (it says them with every answer): RAVDESS / IEMOCAP utterances of other
emotions are not inputs; a manifest row with another label is an error. Word alignments a
corpus ships (IEMOCAP ``.wdseg``, manifest TextGrids) are not used: a served request carries a
transcript, and it is aligned here as serving aligns it.
"""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

import numpy as np

from pipeline.report import RELIABILITY_PNG, confusion_table, plot_confusion, plot_reliability
from pipeline.segment_evaluation import DEFAULT_TOLERANCE_S
from preprocessing import corpora
from serving.predict import model_class_names, predict_files
from trainer.metrics import confusion_matrix, unweighted_accuracy, weighted_accuracy

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
CONFUSION_PNG = "confusion.png"
PREDICTIONS_FILE = "predictions.jsonl"
ERRORS_FILE = "errors.jsonl"
CHUNK = 64  # files between progress lines


def scores(labels: Sequence[str], predicted: Sequence[str], class_names: Sequence[str]) -> dict:
    """``n``, WA, UA, per-class recall (None for a class without examples) and the confusion
    matrix (rows: true class, columns: predicted) of class-name pairs."""
    index = {name: k for k, name in enumerate(class_names)}
    confusion = confusion_matrix(
        [index[x] for x in labels], [index[x] for x in predicted], len(class_names)
    )
    support = confusion.sum(axis=1)
    return {
        "n": int(confusion.sum()),
        "wa": weighted_accuracy(confusion) if len(labels) else None,
        "ua": unweighted_accuracy(confusion) if len(labels) else None,
        "per_class_recall": {
            name: float(confusion[k, k] / support[k]) if support[k] else None
            for k, name in enumerate(class_names)
        },
        "support": {name: int(support[k]) for k, name in enumerate(class_names)},
        "confusion": confusion.tolist(),
    }


def calibration(
    rows: Sequence[dict],
    class_names: Sequence[str],
    temperature: Optional[float] = None,
    min_confidence: Optional[float] = None,
) -> Optional[dict]:
    """How far the answers' confidence is from their accuracy: ECE, NLL and the reliability
    bins of the probabilities as served (``served``), and, when the model says it serves them
    at ``temperature`` T != 1, of the uncalibrated ones it started from (``uncalibrated``:
    ``softmax(T log q)`` undoes ``softmax(log p / T)`` exactly); with ``min_confidence``, the
    coverage and accuracy of the answers at least that confident (``selective``). None
    without rows."""
    from trainer.calibration import calibration_scores, selective_scores, temperature_scaled

    if not rows:
        return None
    index = {name: k for k, name in enumerate(class_names)}
    labels = np.array([index[r["label"]] for r in rows])
    served = np.array([[r["probabilities"][c] for c in class_names] for r in rows])
    curves = {"served": served}
    if temperature is not None and temperature != 1.0:
        curves["uncalibrated"] = temperature_scaled(served, 1.0 / temperature)
    out = {
        "temperature": temperature,
        **{name: calibration_scores(p, labels) for name, p in curves.items()},
    }
    if min_confidence is not None:
        out["selective"] = selective_scores(served, labels, min_confidence)
    return out


def evaluate(
    model,
    *,
    model_description: str,
    dataset: str,
    data: Union[Path, Sequence[Path]],
    out_dir,
    channels: Optional[Sequence[str]] = None,
    aligner=None,
    batch_size: int = 8,
    min_confidence: Optional[float] = None,
    log: Optional[Callable[[str], None]] = None,
) -> dict:
    """Scores ``model`` (anything with ``predict_waveform``: ``serving.predict.LocalModel``,
    ``serving.client.RestClient``) on ``dataset`` at ``data`` (RAVDESS: one directory or
    several; ``channels`` its vocal channels, None: speech). Writes the files above into
    ``out_dir`` and returns the report. Raises ValueError when the corpus cannot be listed
    with the model's classes, OSError when a served model cannot be reached."""
    started = time.time()
    log = log or (lambda line: None)
    class_names = model_class_names(model)
    data = [Path(d) for d in ([data] if isinstance(data, (str, Path)) else data)]
    items = corpora.items(
        dataset, data[0] if len(data) == 1 else data, class_names, channels=channels
    )
    utterances, rejected = corpora.partition(items)
    errors = [
        {"utterance_id": r.utterance_id, "path": r.path, "stage": r.stage, "reason": r.reason}
        for r in rejected
    ]
    log(
        f"== evaluate {model_description} on {dataset} ({', '.join(map(str, data))}): "
        f"{len(utterances)} files, {len(rejected)} rejected while listing"
    )
    results = []
    if utterances and aligner is None:
        from preprocessing.alignment import PocketSphinxAligner

        aligner = PocketSphinxAligner()
    for start in range(0, len(utterances), CHUNK):
        chunk = utterances[start : start + CHUNK]
        results += predict_files(
            [u.audio_path for u in chunk],
            model,
            transcripts=[u.transcript for u in chunk],
            aligner=aligner,
            batch_size=batch_size,
        )
        failed = sum(r.error is not None for r in results)
        log(
            f"[{time.time() - started:6.0f}s] {len(results)}/{len(utterances)} files "
            f"({failed} not usable)"
        )

    rows = []
    for u, result in zip(utterances, results):
        if result.error is None and list(result.prediction.probabilities) != class_names:
            result.error, result.stage = (
                f"the model answered with classes "
                f"{list(result.prediction.probabilities)}, not "
                f"{class_names} (a new version while evaluating?)",
                "model",
            )
        if result.error is not None:
            errors.append(
                {
                    "utterance_id": u.utterance_id,
                    "path": u.audio_path,
                    "stage": result.stage,
                    "reason": result.error,
                }
            )
            continue
        row = {
            "utterance_id": u.utterance_id,
            "path": u.audio_path,
            "speaker": u.speaker,
            "label": u.label_name,
            "prediction": result.prediction.emotion,
            "probabilities": result.prediction.probabilities,
            "alignment_source": result.alignment_source,
        }
        if u.channel is not None:
            row["channel"] = u.channel
        rows.append(row)
    errors.sort(key=lambda e: (e["stage"], e["utterance_id"]))

    report = {
        "model": model_description,
        "dataset": dataset,
        "data": [str(d) for d in data],
        "channels": list(channels or corpora.DEFAULT_CHANNELS) if dataset == "ravdess" else None,
        "classes": list(class_names),
        "inputs": len(utterances) + len(rejected),
        **scores([r["label"] for r in rows], [r["prediction"] for r in rows], class_names),
        "errors": len(errors),
        "errors_per_stage": dict(sorted(collections.Counter(e["stage"] for e in errors).items())),
        "alignment_sources": dict(
            sorted(collections.Counter(r["alignment_source"] for r in rows).items())
        ),
    }
    report["complete"] = report["n"] + report["errors"] == report["inputs"]
    temperature = getattr(model, "temperature", None)  # a served model does not say it
    report["calibration"] = calibration(rows, class_names, temperature, min_confidence)
    by_channel = sorted({r["channel"] for r in rows if "channel" in r})
    if len(by_channel) > 1:
        report["by_channel"] = {}
        for channel in by_channel:
            mine = [r for r in rows if r.get("channel") == channel]
            report["by_channel"][channel] = {
                **scores([r["label"] for r in mine], [r["prediction"] for r in mine], class_names),
                "calibration": calibration(mine, class_names, temperature, min_confidence),
            }
    report["seconds"] = round(time.time() - started, 1)
    write(report, rows, errors, out_dir)
    return report


def evaluate_segments(
    model,
    *,
    model_description: str,
    manifest: Path,
    out_dir,
    aligner=None,
    batch_size: int = 8,
    min_confidence: Optional[float] = None,
    log: Optional[Callable[[str], None]] = None,
) -> dict:
    """Scores ``model`` on the labelled segments of long recordings listed in ``manifest``
    (``pipeline.segment_evaluation.read_segment_manifest``). Writes the files above into
    ``out_dir`` and returns the report. Raises ValueError for an unusable manifest, OSError
    when a served model cannot be reached."""
    from pipeline.segment_evaluation import match, read_segment_manifest, segment_scores
    from preprocessing.audio import AudioError
    from preprocessing.timed_transcripts import TranscriptError, read_timed_transcript
    from serving.timeline import predict_timeline

    started = time.time()
    log = log or (lambda line: None)
    class_names = model_class_names(model)
    labelled = read_segment_manifest(manifest)
    bad_labels = sorted({s.label for s in labelled} - set(class_names))
    if bad_labels:
        raise ValueError(
            f"{manifest}: labels {bad_labels} are not the model's classes {class_names}"
        )
    if aligner is None and labelled:
        from preprocessing.alignment import PocketSphinxAligner

        aligner = PocketSphinxAligner()
    recordings = list(dict.fromkeys((s.audio, s.transcript_file) for s in labelled))
    log(
        f"== evaluate {model_description} on {len(labelled)} labelled segments of "
        f"{len(recordings)} recordings ({manifest})"
    )
    rows, errors = [], []
    hits = {"onset": [0, 0, 0], "offset": [0, 0, 0]}  # hits, reference, detected
    for audio, transcript_file in recordings:
        mine = [s for s in labelled if (s.audio, s.transcript_file) == (audio, transcript_file)]
        try:
            words = read_timed_transcript(transcript_file) if transcript_file else None
            timeline = predict_timeline(
                audio, model, transcript_words=words, aligner=aligner, batch_size=batch_size
            )
        except (AudioError, TranscriptError) as error:
            stage = "decode" if isinstance(error, AudioError) else "transcript"
            errors += [
                {"utterance_id": s.where, "path": audio, "stage": stage, "reason": str(error)}
                for s in mine
            ]
            continue
        reference = [(s.start_s, s.end_s) for s in mine]
        for side, score in segment_scores(reference, timeline.rows).items():
            for k, key in enumerate(("hits", "reference", "detected")):
                hits[side][k] += score[key]
        for s, found in zip(mine, match(reference, timeline.rows)):
            row = timeline.rows[found] if found is not None else None
            if row is None or row.prediction is None:
                errors.append(
                    {
                        "utterance_id": s.where,
                        "path": audio,
                        "stage": "segmentation" if row is None else row.stage,
                        "reason": f"no speech segment found at {s.start_s:.2f}-{s.end_s:.2f} s"
                        if row is None
                        else row.error,
                    }
                )
                continue
            rows.append(
                {
                    "utterance_id": s.where,
                    "path": audio,
                    "start_s": s.start_s,
                    "end_s": s.end_s,
                    "label": s.label,
                    "prediction": row.emotion,
                    "probabilities": row.prediction.probabilities,
                    "segment": [row.start_s, row.end_s],
                    "alignment_source": row.alignment_source,
                }
            )
        log(
            f"[{time.time() - started:6.0f}s] {audio}: {len(timeline.rows)} segments, "
            f"{len(timeline.unreadable)} unreadable spans"
        )
    errors.sort(key=lambda e: (e["stage"], e["utterance_id"]))
    report = {
        "model": model_description,
        "dataset": "segments",
        "data": [str(manifest)],
        "channels": None,
        "classes": list(class_names),
        "inputs": len(labelled),
        **scores([r["label"] for r in rows], [r["prediction"] for r in rows], class_names),
        "errors": len(errors),
        "errors_per_stage": dict(sorted(collections.Counter(e["stage"] for e in errors).items())),
        "alignment_sources": dict(
            sorted(collections.Counter(r["alignment_source"] for r in rows).items())
        ),
        "segments": {
            side: {
                "f1": 2 * h / (r + d) if r + d else None,
                "hits": h,
                "reference": r,
                "detected": d,
            }
            for side, (h, r, d) in hits.items()
        },
    }
    report["complete"] = report["n"] + report["errors"] == report["inputs"]
    report["calibration"] = calibration(
        rows, class_names, getattr(model, "temperature", None), min_confidence
    )
    report["seconds"] = round(time.time() - started, 1)
    write(report, rows, errors, out_dir)
    return report


def write(report: dict, rows: List[dict], errors: List[dict], out_dir) -> None:
    """The files above into ``out_dir``, a local directory or object storage."""
    import tensorflow as tf

    from infra import filesystems

    out_dir = str(out_dir)
    filesystems.enable(out_dir)
    tf.io.gfile.makedirs(out_dir)
    texts = {
        REPORT_JSON: json.dumps(report, indent=2),
        REPORT_MD: render_markdown(report),
        PREDICTIONS_FILE: "".join(json.dumps(r) + "\n" for r in rows),
        ERRORS_FILE: "".join(json.dumps(e, sort_keys=True) + "\n" for e in errors),
    }
    for name, text in texts.items():
        with tf.io.gfile.GFile(filesystems.join(out_dir, name), "w") as f:
            f.write(text)
    plot_confusion(
        report["confusion"],
        report["classes"],
        filesystems.join(out_dir, CONFUSION_PNG),
        title=f"{report['dataset']}"
        + (f" {'+'.join(report['channels'])}" if report["channels"] else "")
        + f", n = {report['n']}",
    )
    if report.get("calibration"):
        curves = {
            name: report["calibration"][name]["reliability"]
            for name in ("uncalibrated", "served")
            if name in report["calibration"]
        }
        plot_reliability(
            curves,
            filesystems.join(out_dir, RELIABILITY_PNG),
            title=f"reliability, ECE {report['calibration']['served']['ece']:.3f}",
        )


def _num(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.3f}"


def render_markdown(report: dict) -> str:
    classes = report["classes"]
    channels = f" ({', '.join(report['channels'])})" if report["channels"] else ""
    lines = [
        f"# Evaluation on {report['dataset']}{channels}",
        "",
        f"Model: `{report['model']}`. Data: {', '.join(f'`{d}`' for d in report['data'])}.",
        "",
        f"WA {_num(report['wa'])}, UA {_num(report['ua'])} over {report['n']} "
        f"{'labelled segments' if report['dataset'] == 'segments' else 'files'} "
        f"({report['inputs']} inputs, {report['errors']} not usable: see {ERRORS_FILE}"
        + (f"; {report['errors_per_stage']}" if report["errors"] else "")
        + ").",
        "",
        "| class | files | recall |",
        "|---|---|---|",
    ]
    for name in classes:
        lines.append(
            f"| {name} | {report['support'][name]} | {_num(report['per_class_recall'][name])} |"
        )
    if "segments" in report:
        lines += [
            "",
            "Speech segments found (boundaries within "
            f"{DEFAULT_TOLERANCE_S:g} s of a labelled one):",
            "",
        ]
        for side, s in report["segments"].items():
            lines.append(
                f"- {side} F1 {_num(s['f1'])} ({s['hits']} of {s['reference']} "
                f"labelled, {s['detected']} found)"
            )
    cal = report.get("calibration")
    if cal:
        if "uncalibrated" in cal:
            note = (
                f"; before the model's temperature T = {cal['temperature']:.3f}: ECE "
                f"{cal['uncalibrated']['ece']:.3f}, NLL {cal['uncalibrated']['nll']:.3f}"
            )
        elif cal["temperature"] is None:
            note = " (a served model does not say its temperature)"
        else:
            note = " (the model serves no calibration temperature)"
        lines += [
            "",
            f"Calibration ({RELIABILITY_PNG}): ECE {cal['served']['ece']:.3f}, NLL "
            f"{cal['served']['nll']:.3f} as served{note}.",
        ]
        if "selective" in cal:
            sel = cal["selective"]
            lines += [
                "",
                f"At --min-confidence {sel['min_confidence']:g}: coverage "
                f"{sel['coverage']:.3f} ({sel['answered']} answered), accuracy "
                f"{_num(sel['accuracy'])} (all answers: "
                f"{_num(report['wa'])}).",
            ]
    lines += ["", "Confusion matrix (rows: true class, columns: predicted):", ""]
    lines += confusion_table(report["confusion"], classes)
    if "by_channel" in report:
        lines += [
            "",
            "By channel:",
            "",
            "| channel | files | WA | UA | ECE | "
            + " | ".join(f"recall {c}" for c in classes)
            + " |",
            "|---" * (5 + len(classes)) + "|",
        ]
        for channel, s in report["by_channel"].items():
            ece = s["calibration"]["served"]["ece"] if s.get("calibration") else None
            lines.append(
                f"| {channel} | {s['n']} | {_num(s['wa'])} | {_num(s['ua'])} | "
                f"{_num(ece)} | "
                + " | ".join(_num(s["per_class_recall"][c]) for c in classes)
                + " |"
            )
    return "\n".join(lines) + "\n"


def default_out_dir(dataset: str, data: Sequence[Path], channels: Optional[Sequence[str]]) -> Path:
    """``output/evaluate/<dataset>-<channels>`` (a manifest: ``<its name>``)."""
    if dataset in ("manifest", "segments"):
        return Path("output") / "evaluate" / Path(data[0]).stem
    return (
        Path("output")
        / "evaluate"
        / (
            f"{dataset}-{'-'.join(channels or corpora.DEFAULT_CHANNELS)}"
            if dataset == "ravdess"
            else dataset
        )
    )
