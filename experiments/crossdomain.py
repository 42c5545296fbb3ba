"""``cme-ser reproduce --protocol cross-domain``: how a model trained on one domain scores another.

RAVDESS records read with ``--channels speech,song`` keep each actor's speech and song in one
fold. One *unit* is (training channels, variant, seed, held-out fold): the model is trained (and
its epoch chosen) on the other folds' records of the training channels only, then scores the
held-out fold's speakers on each channel separately. Two training conditions are compared on
the same held-out speakers: ``speech`` (what every other table trains on) and ``speech+song``.
Nothing is chosen here: the variant and seeds are fixed by the command, and every row is
reported. Scores are summarised over folds (a fold's seeds averaged first) with 95% t-intervals,
and ``speech+song`` is compared with ``speech`` on each test channel by a paired t-test over
folds (Holm-corrected over the channels). Each row is reported as the model outputs it and with
the prior correction (``trainer.metrics.prior_corrected``, the training class prior).

Finished units are JSON files under the work directory (resumable) and are archived, with their
held-out predictions, as ``<results>/<dataset>-cross-domain-units.jsonl``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from experiments import reproduce as repro
from experiments import tables
from experiments.statistics import correct_family, fold_means, mean_ci, paired_test
from experiments.units import config_hash, provenance, run_pool
from experiments.units import header as results_header
from trainer.config import variant_config

# Training conditions: name -> the channels whose records a model trains on.
CONDITIONS = {"speech": ("speech",), "speech+song": ("speech", "song")}
TEST_CHANNELS = ("speech", "song")
SUFFIX = "cross-domain"


@dataclasses.dataclass(frozen=True)
class Unit:
    train: str  # a key of CONDITIONS
    variant: str
    seed: int
    fold: int

    def path(self, work_dir) -> Path:
        return (
            Path(work_dir)
            / "cross-domain"
            / self.train
            / self.variant
            / f"seed{self.seed}"
            / f"fold{self.fold}.json"
        )

    def __str__(self):
        return f"train {self.train}: {self.variant} seed {self.seed} fold {self.fold}"


def plan(variants: Sequence[str], seeds: int, folds: int) -> List[Unit]:
    """Seed-major, as ``reproduce.plan``: both conditions get a seed before either its next."""
    return [
        Unit(train, u.variant, u.seed, u.fold)
        for u in repro.plan(variants, seeds, folds)
        for train in CONDITIONS
    ]


def channels_of(files: Sequence[str]) -> Dict[str, str]:
    """utterance id -> channel of every record in ``files``."""
    from trainer.data import record_channels

    return record_channels(files)


def run_unit(
    records_dir: str,
    work_dir: str,
    unit: Unit,
    overrides: Optional[dict] = None,
    commit: Optional[str] = None,
) -> dict:
    """Trains one unit on its training channels and predicts every held-out utterance; writes
    the unit's JSON (scores per test channel, and the predictions). Runs in a worker process."""
    from experiments.folds import files_by_fold, word_dim_of
    from trainer.data import make_dataset
    from trainer.train import fit, predict

    files = files_by_fold(records_dir)
    config = variant_config(
        unit.variant, seed=unit.seed, word_dim=word_dim_of(records_dir), **(overrides or {})
    )
    train_files = [f for k in sorted(files) if k != unit.fold for f in files[k]]
    started = time.time()
    result = fit(train_files, config, channels=CONDITIONS[unit.train])
    held_out = files[unit.fold]
    out = predict(
        result.model,
        make_dataset(
            held_out,
            config.word_dim,
            config.batch_size,
            with_ids=True,
            speaker_norm=config.speaker_norm,
        ),
    )
    channel = channels_of(held_out)
    row = {
        **dataclasses.asdict(unit),
        "channels": list(CONDITIONS[unit.train]),
        "best_epoch": result.best_epoch,
        "refit_epochs": result.refit_epochs,
        "num_train": result.num_train,
        "num_val": result.num_val,
        "train_class_counts": result.class_counts,
        "seconds": round(time.time() - started, 1),
        "config": config.to_dict(),
        **provenance(config, commit),
        "predictions": {
            "utterance_ids": out["utterance_ids"].tolist(),
            "channels": [channel[i] for i in out["utterance_ids"]],
            "labels": out["labels"].tolist(),
            "probabilities": [
                [float(str(x)) for x in r] for r in out["probabilities"].astype(np.float32)
            ],
        },
    }
    row["scores"] = unit_scores(row, config.num_classes)
    path = unit.path(work_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(row))
    tmp.replace(path)  # a unit is done only once its file is complete
    return row


def unit_scores(row: dict, num_classes: int) -> dict:
    """``{correction: {test channel: {"wa", "ua", "n", "confusion"}}}`` of one unit, for the
    model's probabilities (``none``) and their prior-corrected form (``prior``)."""
    from trainer.metrics import (
        confusion_matrix,
        prior_corrected,
        unweighted_accuracy,
        weighted_accuracy,
    )

    pred = row["predictions"]
    probabilities = np.asarray(pred["probabilities"], dtype=np.float64)
    labels = np.asarray(pred["labels"], dtype=np.int64)
    channels = np.asarray(pred["channels"])
    out = {}
    for correction in ("none", "prior"):
        p = (
            prior_corrected(probabilities, row["train_class_counts"])
            if correction == "prior"
            else probabilities
        )
        out[correction] = {}
        for channel in TEST_CHANNELS:
            keep = channels == channel
            if not keep.any():
                continue
            confusion = confusion_matrix(labels[keep], np.argmax(p[keep], axis=-1), num_classes)
            out[correction][channel] = {
                "wa": weighted_accuracy(confusion),
                "ua": unweighted_accuracy(confusion),
                "n": int(keep.sum()),
                "confusion": confusion.tolist(),
            }
    return out


def finished_rows(work_dir) -> List[dict]:
    return [
        json.loads(p.read_text())
        for p in sorted(Path(work_dir).glob("cross-domain/*/*/seed*/fold*.json"))
    ]


def is_done(unit: Unit, work_dir, config) -> bool:
    path = unit.path(work_dir)
    return path.exists() and json.loads(path.read_text()).get("config_sha256") == config_hash(
        config
    )


def archive(work_dir, path) -> int:
    """Every finished unit as one JSON line of ``path``: a fresh checkout restores them."""
    rows = finished_rows(work_dir)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows))
    tmp.replace(path)
    return len(rows)


def restore(path, work_dir) -> int:
    """Writes the archived units that ``work_dir`` lacks back into it; returns how many."""
    path, restored = Path(path), 0
    if not path.exists():
        return 0
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            target = Unit(row["train"], row["variant"], row["seed"], row["fold"]).path(work_dir)
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(line)
                restored += 1
    return restored


def summarize(rows: List[dict]) -> dict:
    """Per (variant, correction, training condition, test channel): mean WA / UA over folds
    with 95% CIs; per (variant, correction, test channel): the paired gain of ``speech+song``
    over ``speech`` in UA, Holm-corrected over the test channels."""
    table, gains = [], []
    variants = sorted({r["variant"] for r in rows})
    for variant in variants:
        for correction in ("none", "prior"):
            family = []
            for channel in TEST_CHANNELS:
                per_condition = {}
                for train in CONDITIONS:
                    units = [
                        r
                        for r in rows
                        if r["variant"] == variant
                        and r["train"] == train
                        and channel in r["scores"][correction]
                    ]
                    if not units:
                        continue
                    pairs = [
                        (
                            r["fold"],
                            (
                                r["scores"][correction][channel]["wa"],
                                r["scores"][correction][channel]["ua"],
                            ),
                        )
                        for r in units
                    ]
                    folds, means = fold_means(pairs)
                    per_condition[train] = dict(zip(folds, means[:, 1]))
                    table.append(
                        {
                            "variant": variant,
                            "correction": correction,
                            "train": train,
                            "test": channel,
                            "seeds": sorted({r["seed"] for r in units}),
                            "folds": folds,
                            "wa": mean_ci(means[:, 0]),
                            "ua": mean_ci(means[:, 1]),
                            "n": int(
                                sum(
                                    r["scores"][correction][channel]["n"]
                                    for r in units
                                    if r["seed"] == units[0]["seed"]
                                )
                            ),
                        }
                    )
                if len(per_condition) == len(CONDITIONS):
                    both = sorted(set(per_condition["speech"]) & set(per_condition["speech+song"]))
                    test = paired_test(
                        [per_condition["speech+song"][k] - per_condition["speech"][k] for k in both]
                    )
                    if test:
                        family.append(test)
                        test.update(
                            {
                                "variant": variant,
                                "correction": correction,
                                "test": channel,
                                "metric": "ua",
                            }
                        )
            correct_family(family)  # adds p_holm / verdict to each test, in place
            gains += family
    return {"table": table, "gains": gains}


def render_markdown(summary: dict, header: dict) -> str:
    lines = [
        "# Cross-domain: RAVDESS speech and song, speaker-independent",
        "",
        f"Command: `{header.get('command', '')}` (commit {header.get('commit')}, "
        f"{header.get('date')}, {header.get('machine')}).",
        "",
        "Each model is trained (its epoch chosen on validation speakers of the same "
        "training channels) on the training folds' **speech** only, or on their **speech + "
        "song**, and scores the held-out fold's speakers on speech and on song separately. "
        "An actor's speech and song are always in the same fold. Means over folds (n = "
        "folds, a fold's seeds averaged first) with 95% t-intervals. Nothing here was "
        "chosen by looking at these scores: the variant and seeds are the command's, and "
        "every row is shown. *prior*: the class probabilities divided by the training class "
        "prior (the correction the shipped model applies).",
        "",
    ]
    lines += tables.table(
        ["variant", "output", "trained on", "scored on", "WA", "UA", "utterances", "folds x seeds"],
        [
            [
                r["variant"],
                r["correction"],
                r["train"],
                r["test"],
                tables.ci(r["wa"]),
                tables.ci(r["ua"]),
                r["n"],
                f"{len(r['folds'])} x {len(r['seeds'])}",
            ]
            for r in summary["table"]
        ],
    )
    lines += ["", "## What training on song as well buys (UA, paired over folds)", ""]
    lines += tables.table(
        [
            "variant",
            "output",
            "scored on",
            "gain of speech+song over speech",
            "folds won / lost",
            "p (Holm over the two test channels)",
            "verdict",
        ],
        [
            [
                g["variant"],
                g["correction"],
                g["test"],
                tables.signed_ci(g),
                f"{g['wins']} / {g['losses']}",
                tables.p_value(g["p_holm"]),
                g["verdict"],
            ]
            for g in summary["gains"]
        ],
    )
    lines += [
        "",
        f"Every unit, with its held-out predictions, is archived in `{header.get('archive', '')}`.",
        "",
    ]
    return "\n".join(lines)


def write_results(work_dir, results_dir, dataset: str, header: dict) -> dict:
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    units = results_dir / f"{dataset}-{SUFFIX}-units.jsonl"
    header = {**header, "archive": units.as_posix()}
    summary = {"protocol": SUFFIX, **summarize(finished_rows(work_dir)), "header": header}
    (results_dir / f"{dataset}-{SUFFIX}.json").write_text(json.dumps(summary, indent=2))
    (results_dir / f"{dataset}-{SUFFIX}.md").write_text(render_markdown(summary, header))
    archive(work_dir, units)
    return summary


def rerender(results_dir, dataset: str = "ravdess") -> dict:
    """Rewrites the results from their archived units (training nothing), keeping the header of
    the run that produced them."""
    import tempfile

    previous = json.loads((Path(results_dir) / f"{dataset}-{SUFFIX}.json").read_text())
    header = {k: v for k, v in previous["header"].items() if k != "archive"}
    with tempfile.TemporaryDirectory() as work:
        restore(Path(results_dir) / f"{dataset}-{SUFFIX}-units.jsonl", work)
        return write_results(work, results_dir, dataset, header)


def check_channels(records_dir) -> None:
    """The records must hold both channels, or there is nothing to compare."""
    from preprocessing.beam_pipeline import record_files

    seen = set(channels_of(record_files(records_dir)).values())
    missing = [c for c in TEST_CHANNELS if c not in seen]
    if missing:
        raise ValueError(
            f"the records in {records_dir} have no {'/'.join(missing)} utterances: "
            "preprocess them with --channels speech,song"
        )


def run_cross_domain(
    records_dir,
    work_dir,
    results_dir,
    *,
    dataset: str,
    variants: Sequence[str],
    seeds: int,
    folds: int,
    jobs: int = 1,
    threads: int = 0,
    command: str = "",
    overrides: Optional[dict] = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Trains every unfinished unit (``jobs`` worker processes), rewriting the results as units
    finish; returns the summary."""
    from experiments.folds import files_by_fold, word_dim_of

    available = len(files_by_fold(records_dir))
    if folds != available:
        raise ValueError(f"the records in {records_dir} have {available} folds, not {folds}")
    check_channels(records_dir)
    word_dim = word_dim_of(records_dir)
    archived = Path(results_dir) / f"{dataset}-{SUFFIX}-units.jsonl"
    restored = restore(archived, work_dir)
    if restored:
        log(f"== restored {restored} finished unit(s) from {archived}")
    units = plan(variants, seeds, folds)
    todo = [
        u
        for u in units
        if not is_done(
            u,
            work_dir,
            variant_config(u.variant, seed=u.seed, word_dim=word_dim, **(overrides or {})),
        )
    ]
    log(
        f"== cross-domain {dataset}: {len(units)} units ({len(CONDITIONS)} training conditions "
        f"x {len(variants)} variant(s) x {seeds} seed(s) x {folds} folds), "
        f"{len(units) - len(todo)} done, {len(todo)} to run, {jobs} job(s)"
    )
    header = results_header(
        command,
        results_dir,
        plan={
            "variants": list(variants),
            "seeds": seeds,
            "conditions": {k: list(v) for k, v in CONDITIONS.items()},
        },
    )

    def describe(row):
        return ", ".join(
            f"{c} UA {row['scores']['none'][c]['ua']:.3f}"
            for c in TEST_CHANNELS
            if c in row["scores"]["none"]
        )

    run_pool(
        todo,
        lambda u: (run_unit, (str(records_dir), str(work_dir), u, overrides, header["commit"])),
        jobs=jobs,
        threads=threads,
        describe=describe,
        log=log,
        after_each=lambda row: write_results(work_dir, results_dir, dataset, header),
    )
    summary = write_results(work_dir, results_dir, dataset, header)
    missing = [u for u in units if not u.path(work_dir).exists()]
    if missing:
        log(f"== {len(missing)} unit(s) failed; re-run the same command to retry them")
    log(f"== results: {Path(results_dir) / f'{dataset}-{SUFFIX}.md'}")
    return summary
