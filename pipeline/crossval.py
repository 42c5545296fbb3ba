"""Speaker-independent k-fold cross-validation over preprocessed records, and its report."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

from preprocessing.beam_pipeline import FOLD_PLAN_FILE, record_files
from preprocessing.records import decode_example
from trainer.config import ModelConfig
from trainer.metrics import unweighted_accuracy, weighted_accuracy
from trainer.train import FoldResult, train_fold, write_result

# Table 1 of Li et al. (2021), RAVDESS 4-class, for the report.
PAPER_RAVDESS = {"wa": 0.720, "ua": 0.708}


def files_by_fold(records_dir) -> Dict[int, List[str]]:
    plan = json.loads((Path(records_dir) / FOLD_PLAN_FILE).read_text())
    files = {k: record_files(records_dir, k) for k in range(plan["num_folds"])}
    empty = [k for k, v in files.items() if not v]
    if empty:
        raise ValueError(f"fold(s) {empty} have no records in {records_dir}: every fold needs "
                         "examples (fewer folds, or more speakers)")
    return files


def word_dim_of(records_dir) -> int:
    import tensorflow as tf
    first = record_files(records_dir)[0]
    raw = next(iter(tf.data.TFRecordDataset(first, compression_type="GZIP")))
    return int(decode_example(raw.numpy())["word_embeddings"].shape[1])


def cross_validate(records_dir, output_dir, config: ModelConfig, log=print) -> dict:
    """Trains and scores every fold; writes ``report.json`` / ``report.md`` to ``output_dir``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    files = files_by_fold(records_dir)
    config = config.replace(word_dim=word_dim_of(records_dir))
    results: List[FoldResult] = []
    started = time.time()
    for fold in sorted(files):
        log(f"[fold {fold}] training (held out: fold {fold})")
        t0 = time.time()
        result = train_fold(files, fold, config, log_dir=str(output_dir / "tensorboard" / f"fold{fold}"),
                            model_path=str(output_dir / "models" / f"fold{fold}.keras"))
        write_result(result, output_dir / f"fold{fold}.json")
        log(f"[fold {fold}] WA {result.wa:.3f}  UA {result.ua:.3f}  best epoch {result.best_epoch}"
            f"/{result.epochs_run} (val UA {result.best_val_ua:.3f})  {time.time() - t0:.0f}s")
        results.append(result)
    report = build_report(results, config, seconds=time.time() - started)
    (output_dir / "report.json").write_text(json.dumps(report, indent=2))
    (output_dir / "report.md").write_text(render_markdown(report))
    return report


def build_report(results: List[FoldResult], config: ModelConfig, seconds: float) -> dict:
    wa = np.array([r.wa for r in results])
    ua = np.array([r.ua for r in results])
    confusion = np.sum([np.array(r.confusion) for r in results], axis=0)
    return {
        "classes": list(config.class_names), "config": config.to_dict(),
        "folds": [dataclasses.asdict(r) for r in results],
        "wa_mean": float(wa.mean()), "wa_std": float(wa.std()),
        "ua_mean": float(ua.mean()), "ua_std": float(ua.std()),
        "pooled_wa": weighted_accuracy(confusion), "pooled_ua": unweighted_accuracy(confusion),
        "confusion": confusion.tolist(), "seconds": round(seconds, 1), "paper_ravdess": PAPER_RAVDESS,
    }


def render_markdown(report: dict) -> str:
    classes = report["classes"]
    lines = ["# Cross-validation report", "",
             f"WA {report['wa_mean']:.3f} +- {report['wa_std']:.3f}, "
             f"UA {report['ua_mean']:.3f} +- {report['ua_std']:.3f} "
             f"(paper, RAVDESS: WA {PAPER_RAVDESS['wa']:.3f}, UA {PAPER_RAVDESS['ua']:.3f}); "
             f"{report['seconds']:.0f} s.", "",
             "| fold | WA | UA | best epoch | train | val | test |", "|---|---|---|---|---|---|---|"]
    for f in report["folds"]:
        lines.append(f"| {f['fold']} | {f['wa']:.3f} | {f['ua']:.3f} | {f['best_epoch']} | "
                     f"{f['num_train']} | {f['num_val']} | {f['num_test']} |")
    lines += ["", "Summed confusion matrix (rows true, columns predicted):", "",
              "| | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
    for name, row in zip(classes, report["confusion"]):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"
