"""Speaker-independent k-fold cross-validation over preprocessed records, in plain Python (no
orchestrator): the TFX pipeline's per-fold recipe, for quick experiments and sweeps."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Dict, List

from preprocessing.beam_pipeline import FOLD_PLAN_FILE, record_files
from pipeline.report import write_report
from preprocessing.records import word_dim_of_files
from trainer.config import ModelConfig
from trainer.train import FoldResult, train_fold, write_result


def files_by_fold(records_dir) -> Dict[int, List[str]]:
    plan = json.loads((Path(records_dir) / FOLD_PLAN_FILE).read_text())
    files = {k: record_files(records_dir, k) for k in range(plan["num_folds"])}
    empty = [k for k, v in files.items() if not v]
    if empty:
        raise ValueError(f"fold(s) {empty} have no records in {records_dir}: every fold needs "
                         "examples (fewer folds, or more speakers)")
    return files


def word_dim_of(records_dir) -> int:
    return word_dim_of_files(record_files(records_dir))


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
    return write_report([dataclasses.asdict(r) for r in results], config.class_names, output_dir,
                        config=config.to_dict(), seconds=round(time.time() - started, 1))
