"""``cme-ser reproduce``: Table 1 of Li et al. (2021) under our protocol.

Every variant (``trainer.config.VARIANTS``) goes through the same speaker-independent k-fold
cross-validation: the epoch is chosen on an inner validation split of the training speakers,
the held-out fold is scored once. One *unit* is (variant, seed, fold); each finished unit is a
JSON file (plus the held-out utterances' embeddings as ``.npz``) under the work directory, so a
re-run skips what is done (resumable) and re-trains a unit only if its configuration changed.
After every unit the results (``<results>/<dataset>.md`` / ``.json``) are rewritten from all
finished units, and every finished unit with its predictions is archived beside them
(``<dataset>-units.jsonl``): a run in a fresh checkout restores those units instead of training
them again. The t-SNE figure (the paper's Figure 2) is drawn at the end. Every mean and gain
is summarised over folds, a fold's seeds averaged first (``experiments.statistics``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np

from experiments import figures, tables
from experiments.statistics import correct_family, fold_means, mean_ci, paired_test
from experiments.units import config_hash, git_commit, provenance, run_pool
from experiments.units import header as results_header
from trainer.config import VARIANTS, variant_config

# Table 1 of Li et al. (2021): (WA, UA). None where the paper reports nothing.
PAPER_TABLE1 = {
    "ravdess": {
        "cnn_lstm_a": (0.640, 0.611),
        "lstm_attn_a": (0.665, 0.627),
        "lstm_attn_s": None,
        "utt_concat": (0.629, 0.615),
        "attn_fusion": (0.634, 0.593),
        "mha": (0.615, 0.572),
        "no_excite_a": (0.703, 0.683),
        "no_excite_s": (0.720, 0.696),
        "no_excite": (0.718, 0.700),
        "ctc_align": (0.582, 0.566),
        "cme": (0.720, 0.708),
        "cme_paper": (0.720, 0.708),
    },
    "iemocap": {
        "cnn_lstm_a": (0.635, 0.588),
        "lstm_attn_a": (0.573, 0.574),
        "lstm_attn_s": (0.640, 0.647),
        "utt_concat": (0.700, 0.677),
        "attn_fusion": (0.712, 0.725),
        "mha": (0.678, 0.688),
        "no_excite_a": (0.713, 0.722),
        "no_excite_s": (0.721, 0.732),
        "no_excite": (0.712, 0.720),
        "ctc_align": (0.657, 0.688),
        "cme": (0.727, 0.735),
        "cme_paper": (0.727, 0.735),
    },
}

DESCRIPTIONS = {
    "cme": "ours: mean-max alignment pooling + CME, our training recipe",
    "cme_paper": "the same model, the paper's recipe (Adam 5e-4 constant, no regularisation)",
    "no_excite_a": "w/o acoustic excitation",
    "no_excite_s": "w/o semantic excitation",
    "no_excite": "w/o both excitations",
    "mean_pool": "mean instead of mean-max alignment pooling",
    "ctc_align": "alignment predicted by a CTC module, not forced alignment",
    "cnn_lstm_a": "acoustic only: CNN + LSTM",
    "lstm_attn_a": "acoustic only: BiLSTM + attention",
    "lstm_attn_s": "text only: BiLSTM + attention",
    "utt_concat": "two BiLSTM encoders, utterance-level concatenation",
    "attn_fusion": "word-level multi-head attention fusion",
    "mha": "multi-hop attention (audio -> text -> audio)",
    "cme_no_dropout": "recipe ablation: `cme` without dropout 0.5",
    "cme_no_smoothing": "recipe ablation: `cme` without label smoothing 0.1",
    "cme_constant_lr": "recipe ablation: `cme` with a constant learning rate (no cosine decay)",
    "cme_no_decay": "recipe ablation: `cme` without weight decay 1e-4 (Adam, not AdamW)",
    "cme_specaug": "tried: `cme` + SpecAugment (2 frequency, 2 time masks)",
    "cme_stretch": "tried: `cme` + speed perturbation of the frames (factor 0.9-1.1)",
    "cme_utt_norm": "tried: `cme` + per-utterance mean normalisation of the filterbank",
    "cme_refit": "`cme`, then refit on all training speakers for the selected epochs",
    "cme_balanced": "tried: `cme` + loss weighted by inverse class frequency",
    "cme_speaker_norm": "tried: `cme` + filterbank standardised per speaker (unlabelled audio)",
    "cme_refit_bag": "`cme_refit` with each seed choosing its epochs on different speakers",
}

# The paper's Figure 2: embeddings without / with the excitation gates.
TSNE_PANELS = (
    ("no_excite", "w/o both excitations"),
    ("no_excite_s", "w/o semantic excitation"),
    ("no_excite_a", "w/o acoustic excitation"),
    ("cme", "with both excitations"),
)


@dataclasses.dataclass(frozen=True)
class Unit:
    variant: str
    seed: int
    fold: int

    def path(self, work_dir) -> Path:
        return Path(work_dir) / "runs" / self.variant / f"seed{self.seed}" / f"fold{self.fold}.json"

    def __str__(self):
        return f"{self.variant} seed {self.seed} fold {self.fold}"


def plan(variants: Sequence[str], seeds: int, folds: int) -> List[Unit]:
    """Seed-major order: every variant gets its first seed before any variant its second."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    return [Unit(v, s, k) for s in range(seeds) for v in variants for k in range(folds)]


def unit_config(unit: Unit, word_dim: int, overrides: Optional[dict] = None):
    return variant_config(unit.variant, seed=unit.seed, word_dim=word_dim, **(overrides or {}))


def is_done(unit: Unit, work_dir, config) -> bool:
    """Whether ``unit`` finished with ``config``. A field the unit's stored configuration lacks
    (added to ``ModelConfig`` later) counts as equal when ``config`` has its default value."""
    path = unit.path(work_dir)
    if not path.exists():
        return False
    stored = json.loads(path.read_text()).get("config")
    if not isinstance(stored, dict):
        return False
    current = json.loads(config.to_json())  # compared as JSON (tuples come back as lists)
    defaults = json.loads(type(config)().to_json())
    for name in set(current) - set(stored):
        if current[name] == defaults[name]:
            stored[name] = current[name]
    return stored == current


def run_unit(
    records_dir: str,
    work_dir: str,
    unit: Unit,
    overrides: Optional[dict] = None,
    commit: Optional[str] = None,
) -> dict:
    """Trains and scores one unit; writes its JSON and embeddings. Runs in a worker process."""
    from experiments.folds import files_by_fold, word_dim_of
    from trainer.train import train_fold

    files = files_by_fold(records_dir)
    config = unit_config(unit, word_dim_of(records_dir), overrides)
    path = unit.path(work_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    result = train_fold(files, unit.fold, config, embeddings_path=str(path.with_suffix(".npz")))
    row = {
        **dataclasses.asdict(unit),
        **dataclasses.asdict(result),
        "seconds": round(time.time() - started, 1),
        "config": config.to_dict(),
        **provenance(config, commit),
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(row, indent=2))
    tmp.replace(path)  # a unit is done only once its file is complete
    return row


def finished_rows(work_dir, variants: Optional[Iterable[str]] = None) -> List[dict]:
    rows = []
    for path in sorted(Path(work_dir).glob("runs/*/seed*/fold*.json")):
        row = json.loads(path.read_text())
        if variants is None or row["variant"] in variants:
            rows.append(row)
    return rows


# What a unit's ``.npz`` holds besides embeddings, archived with the results: its predictions
# on the held-out fold and (``val_``) on the inner validation speakers, with their dtypes.
PREDICTION_KEYS = {
    **{
        f"{prefix}{name}": dtype
        for prefix in ("", "val_")
        for name, dtype in (
            ("probabilities", np.float32),
            ("labels", np.int64),
            ("utterance_ids", str),
        )
    },
    "channels": str,
}  # the held-out utterances' channels (speech, song)


def archive_units(work_dir, path) -> int:
    """Writes every finished unit (its JSON row plus the predictions of its ``.npz``, without
    embeddings) as one line of ``path`` (JSON lines). Committed beside the results, it lets a
    fresh checkout re-render them, and a re-run skip those units, without the work directory.
    Probabilities are stored as the shortest decimals that round-trip their float32 values."""
    lines = []
    for row in finished_rows(work_dir):
        unit = Unit(row["variant"], row["seed"], row["fold"])
        npz = unit.path(work_dir).with_suffix(".npz")
        predictions = {}
        if npz.exists():
            data = np.load(npz)
            for key in PREDICTION_KEYS:
                if key not in data.files:
                    continue
                value = data[key]
                predictions[key] = (
                    [[float(str(x)) for x in r] for r in value.astype(np.float32)]
                    if value.dtype.kind == "f"
                    else value.tolist()
                )
        lines.append(json.dumps({**row, "predictions": predictions}, separators=(",", ":")))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    tmp.replace(path)
    return len(lines)


def restore_units(path, work_dir, mark: bool = False) -> int:
    """Writes the units archived in ``path`` that ``work_dir`` lacks back into it (JSON row and
    predictions ``.npz``); returns how many. A restored unit counts as done only if its stored
    configuration still matches (``is_done``). ``mark``: each restored row records
    ``restored_from`` (a row restored earlier keeps its mark)."""
    path = Path(path)
    if not path.exists():
        return 0
    restored = 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        predictions = row.pop("predictions", {})
        unit = Unit(row["variant"], row["seed"], row["fold"])
        target = unit.path(work_dir)
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if predictions:
            np.savez_compressed(
                target.with_suffix(".npz"),
                **{k: np.asarray(v, dtype=PREDICTION_KEYS[k]) for k, v in predictions.items()},
            )
        if mark:
            row.setdefault("restored_from", path.as_posix())
        target.write_text(json.dumps(row, indent=2))
        restored += 1
    return restored


def _fold_summary(pairs) -> dict:
    """Mean [95% CI] over folds of ``(fold, value)`` pairs, a fold's seeds averaged first."""
    return mean_ci(fold_means(pairs)[1])


def _paired(rows: List[dict], better: str, worse: str, metric: str) -> Optional[dict]:
    """Gain ``better - worse`` in ``metric``, paired over folds: the differences of the (seed,
    fold) units both variants have, averaged within each fold, then t-tested over the folds."""
    a = {(r["seed"], r["fold"]): r[metric] for r in rows if r["variant"] == better}
    b = {(r["seed"], r["fold"]): r[metric] for r in rows if r["variant"] == worse}
    keys = sorted(set(a) & set(b))
    test = paired_test(fold_means((fold, a[seed, fold] - b[seed, fold]) for seed, fold in keys)[1])
    if test is None:
        return None
    return {"better": better, "worse": worse, "metric": metric, "units": len(keys), **test}


# The claims of the paper's ablation study, each tested by paired differences.
CLAIMS = (
    ("excitation helps (both gates vs none)", "cme", "no_excite"),
    ("both gates beat acoustic-only excitation (w/o semantic)", "cme", "no_excite_s"),
    ("both gates beat semantic-only excitation (w/o acoustic)", "cme", "no_excite_a"),
    ("mean-max pooling beats mean pooling", "cme", "mean_pool"),
    ("forced alignment beats CTC-predicted alignment", "cme", "ctc_align"),
    ("our recipe beats the paper's recipe", "cme", "cme_paper"),
    ("refitting on all training speakers helps", "cme_refit", "cme"),
)


def _scores(labels, probabilities) -> tuple:
    """(WA, UA) of the argmax decisions."""
    from trainer.metrics import confusion_matrix, unweighted_accuracy, weighted_accuracy

    confusion = confusion_matrix(
        labels, np.asarray(probabilities).argmax(-1), np.shape(probabilities)[-1]
    )
    return weighted_accuracy(confusion), unweighted_accuracy(confusion)


def _class_counts(work_dir, unit: Unit) -> Optional[np.ndarray]:
    """The unit's training class counts; None if not recorded or a class had no example (its
    prior, and so the correction, is undefined)."""
    counts = json.loads(unit.path(work_dir).read_text()).get("train_class_counts")
    return np.asarray(counts, dtype=float) if counts and min(counts) > 0 else None


def seed_ensemble(
    work_dir, variant: str, seeds: Sequence[int], folds: int, prior_correction: bool = False
) -> Optional[dict]:
    """WA/UA of averaging the class probabilities of ``variant``'s models of ``seeds``, fold by
    fold (each model trained and selected on its own; the held-out fold is still scored once);
    with ``prior_correction`` the mean is divided by the members' pooled training class prior
    (``trainer.metrics.prior_corrected``). Each fold is one observation: mean [95% CI] over
    folds, the per-fold scores, and the fold-paired ``gain`` over the mean of the same seeds'
    single models (with ``prior_correction``: over the same ensemble without the correction).
    None unless every (seed, fold) unit saved its probabilities (and, for the correction, its
    class counts)."""
    from trainer.metrics import prior_corrected

    if len(seeds) < 2:
        return None
    scores, baselines = [], []
    for fold in range(folds):
        members, counts = [], []
        for seed in seeds:
            path = Unit(variant, seed, fold).path(work_dir).with_suffix(".npz")
            data = np.load(path) if path.exists() else None
            if data is None or "probabilities" not in data.files:
                return None
            members.append(data)
            if prior_correction:
                counts.append(_class_counts(work_dir, Unit(variant, seed, fold)))
                if counts[-1] is None:
                    return None
        ids, labels = members[0]["utterance_ids"], members[0]["labels"]
        if any(not np.array_equal(m["utterance_ids"], ids) for m in members):
            raise ValueError(f"{variant} fold {fold}: the seeds scored different utterances")
        mean = np.mean([m["probabilities"] for m in members], axis=0)
        if prior_correction:
            baselines.append(_scores(labels, mean))
            mean = prior_corrected(mean, np.sum(counts, axis=0))
        else:
            baselines.append(
                tuple(np.mean([_scores(labels, m["probabilities"]) for m in members], axis=0))
            )
        scores.append(_scores(labels, mean))
    scores, baselines = np.asarray(scores, dtype=float), np.asarray(baselines, dtype=float)
    return {
        "seeds": list(seeds),
        "wa": mean_ci(scores[:, 0]),
        "ua": mean_ci(scores[:, 1]),
        "per_fold": {"wa": scores[:, 0].tolist(), "ua": scores[:, 1].tolist()},
        "gain_over": (
            "the same ensemble without the correction"
            if prior_correction
            else "the mean of the same seeds' single models"
        ),
        "gain": {
            "wa": paired_test(scores[:, 0] - baselines[:, 0]),
            "ua": paired_test(scores[:, 1] - baselines[:, 1]),
        },
    }


def prior_correction_test(work_dir, variant: str, units: Sequence[Unit]) -> Optional[dict]:
    """Whether dividing ``variant``'s probabilities by the training class prior is worth it,
    decided on the inner validation predictions of its selected models only (adopted if it
    raises their mean UA, the seeds of a fold averaged first); the held-out scores with and
    without it are reported beside, not used. ``ua_gain`` is the validation gain paired over
    folds (None for one fold). None if no unit saved validation predictions."""
    from trainer.metrics import prior_corrected

    folds, val, test = [], [], []
    for unit in units:
        path = unit.path(work_dir).with_suffix(".npz")
        if not path.exists():
            continue
        data = np.load(path)
        counts = _class_counts(work_dir, unit)
        if "val_probabilities" not in data.files or counts is None:
            continue
        folds.append(unit.fold)
        val.append(
            _scores(data["val_labels"], data["val_probabilities"])
            + _scores(data["val_labels"], prior_corrected(data["val_probabilities"], counts))
        )
        test.append(
            _scores(data["labels"], data["probabilities"])
            + _scores(data["labels"], prior_corrected(data["probabilities"], counts))
        )
    if not val:
        return None
    names = ("wa", "ua", "corrected_wa", "corrected_ua")
    val, test = (fold_means(zip(folds, np.asarray(x)))[1] for x in (val, test))
    gain = val[:, 3] - val[:, 1]
    return {
        "variant": variant,
        "units": len(folds),
        "n_folds": len(gain),
        "validation": {
            **{name: mean_ci(val[:, i]) for i, name in enumerate(names)},
            "ua_gain": paired_test(gain),
        },
        "adopted": bool(gain.mean() > 0),
        "test": {name: mean_ci(test[:, i]) for i, name in enumerate(names)},
    }


def summarize(rows: List[dict], dataset: str, folds: int, work_dir=None) -> dict:
    """Every variant's mean [95% CI] over folds (a fold's seeds averaged first), its seed
    ensembles and prior correction (with ``work_dir``), and the claims. Every gain is a t-test
    paired over folds; Holm's correction runs over each table's gains as one family: the
    claims, the ensemble gains, the validation gains of the prior correction, and the gains of
    the corrected ensembles."""
    paper = PAPER_TABLE1.get(dataset, {})
    table = []
    for variant in VARIANTS:
        mine = [r for r in rows if r["variant"] == variant]
        if not mine:
            continue
        seeds = sorted({r["seed"] for r in mine})
        table.append(
            {
                "variant": variant,
                "description": DESCRIPTIONS.get(variant, ""),
                "wa": _fold_summary((r["fold"], r["wa"]) for r in mine),
                "ua": _fold_summary((r["fold"], r["ua"]) for r in mine),
                "paper": dict(zip(("wa", "ua"), paper[variant])) if paper.get(variant) else None,
                "units": len(mine),
                "seeds": seeds,
                "units_per_seed": {str(s): sum(r["seed"] == s for r in mine) for s in seeds},
                "complete_seeds": [s for s in seeds if sum(r["seed"] == s for r in mine) == folds],
                "train_seconds": round(sum(r["seconds"] for r in mine), 1),
                "config": mine[0]["config"],
            }
        )
        complete = table[-1]["complete_seeds"]
        if work_dir is None:
            continue
        # All complete seeds, and their first 3 and 5 (comparable across variants).
        sizes = sorted({n for n in (3, 5) if n < len(complete)} | {len(complete)})
        if len(complete) >= 2:
            ensembles = [seed_ensemble(work_dir, variant, complete[:n], folds) for n in sizes]
            if all(ensembles):
                table[-1]["ensemble"] = ensembles[-1]
                table[-1]["ensembles"] = ensembles
        test = prior_correction_test(
            work_dir, variant, [Unit(variant, r["seed"], r["fold"]) for r in mine]
        )
        if test:
            corrected = [
                seed_ensemble(work_dir, variant, complete[:n], folds, prior_correction=True)
                for n in sizes
                if n >= 2
            ]
            test["ensembles"] = [e for e in corrected if e]
            table[-1]["prior_correction"] = test
    if work_dir is not None:
        same = identical_variants(work_dir, rows)
        for row in table:
            if row["variant"] in same:
                row["same_models_as"] = same[row["variant"]]
    claims = []
    for claim, better, worse in CLAIMS:
        for metric in ("wa", "ua"):
            test = _paired(rows, better, worse, metric)
            if test:
                claims.append({"claim": claim, **test})
    corrections = [r["prior_correction"] for r in table if r.get("prior_correction")]
    for family in (
        claims,
        [e["gain"][m] for r in table for e in r.get("ensembles", []) for m in ("wa", "ua")],
        [c["validation"]["ua_gain"] for c in corrections],
        [e["gain"][m] for c in corrections for e in c["ensembles"] for m in ("wa", "ua")],
    ):
        correct_family([test for test in family if test])
    return {
        "dataset": dataset,
        "folds": folds,
        "rows": table,
        "claims": claims,
        "tried": tried(rows, folds),
    }


def identical_variants(work_dir, rows: List[dict]) -> Dict[str, str]:
    """``{variant: earlier variant}`` for a variant whose every unit has the held-out
    predictions of the earlier variant's unit of the same seed and fold (two names for one set
    of models at these seeds: ``cme_refit_bag`` at seed 0 validates on ``cme_refit``'s
    speakers)."""
    units: Dict[str, Dict[tuple, Path]] = {}
    for row in rows:
        path = Unit(row["variant"], row["seed"], row["fold"]).path(work_dir).with_suffix(".npz")
        units.setdefault(row["variant"], {})[(row["seed"], row["fold"])] = path
    order = [v for v in VARIANTS if v in units]
    same = {}
    for i, variant in enumerate(order):
        for earlier in order[:i]:
            if set(units[earlier]) != set(units[variant]) or earlier in same:
                continue
            if all(
                a.exists()
                and b.exists()
                and np.array_equal(np.load(a)["probabilities"], np.load(b)["probabilities"])
                for a, b in ((units[earlier][k], units[variant][k]) for k in units[variant])
            ):
                same[variant] = earlier
                break
    return same


def tried(rows: List[dict], folds: int) -> List[dict]:
    """Every (variant, configuration) with finished units in the work directory, whatever the
    tables show: a variant since removed from ``trainer.config.VARIANTS``, or units of an older
    configuration of a current one, are listed here, never silently dropped."""
    groups: dict = {}
    for row in rows:
        digest = row.get("config_sha256") or config_hash(row.get("config") or {})
        groups.setdefault((row["variant"], digest), []).append(row)
    out = []
    for (variant, digest), mine in sorted(groups.items()):
        out.append(
            {
                "variant": variant,
                "config_sha256": digest,
                "units": len(mine),
                "seeds": sorted({r["seed"] for r in mine}),
                "in_variants": variant in VARIANTS,
                "commits": sorted({r.get("commit", "unrecorded") for r in mine}),
                "wa": _fold_summary((r["fold"], r["wa"]) for r in mine),
                "ua": _fold_summary((r["fold"], r["ua"]) for r in mine),
            }
        )
    return out


def draw_tsne(work_dir, out_path, seed: int = 0, fold: int = 0) -> Optional[dict]:
    """Figure 2 (``experiments.figures.tsne``) from the held-out embeddings of ``seed`` on ``fold``,
    one panel per excitation setting; None if none of those units kept its embeddings."""
    panels = []
    for variant, title in TSNE_PANELS:
        path = Unit(variant, seed, fold).path(work_dir).with_suffix(".npz")
        data = np.load(path) if path.exists() else None
        if data is not None and "embeddings" in data.files:  # restored units have none
            panels.append((variant, title, data))
    if not panels:
        return None
    classes = json.loads(Unit(panels[0][0], seed, fold).path(work_dir).read_text())["config"][
        "class_names"
    ]
    info = figures.tsne(panels, classes, out_path)
    return {"figure": Path(out_path).name, "seed": seed, "fold": fold, "panels": info}


def write_results(
    work_dir, results_dir, dataset: str, folds: int, header: dict, tsne: Optional[dict] = None
) -> dict:
    summary = summarize(finished_rows(work_dir), dataset, folds, work_dir=work_dir)
    previous = Path(results_dir) / f"{dataset}.json"
    if tsne is None and previous.exists():
        tsne = json.loads(previous.read_text()).get("tsne")
    if tsne:
        summary["tsne"] = tsne
    summary["header"] = header
    Path(results_dir).mkdir(parents=True, exist_ok=True)
    previous.write_text(json.dumps(summary, indent=2))
    (Path(results_dir) / f"{dataset}.md").write_text(tables.table1_markdown(summary, header))
    archive_units(work_dir, Path(results_dir) / f"{dataset}-units.jsonl")
    return summary


RERENDER_COMMAND = (
    "python -c \"from experiments.reproduce import rerender; "
    "rerender('{results_dir}', '{dataset}')\""
)


def rerender(results_dir, dataset: str = "ravdess") -> dict:
    """Rewrites ``<results_dir>/<dataset>.md`` / ``.json`` from the units archived beside them
    (``<dataset>-units.jsonl``), training nothing and needing no records: the units are restored
    into a temporary work directory and summarised by this checkout's code. The header keeps how
    the units were produced and records the re-rendering."""
    import tempfile

    results_dir = Path(results_dir)
    archive = results_dir / f"{dataset}-units.jsonl"
    if not archive.exists():
        raise FileNotFoundError(
            f"{archive} does not exist: these results cannot be re-rendered "
            "without training their units again"
        )
    previous = json.loads((results_dir / f"{dataset}.json").read_text())
    header = {
        **previous["header"],
        "rerendered": {
            "command": RERENDER_COMMAND.format(results_dir=results_dir.as_posix(), dataset=dataset),
            "commit": git_commit(results_dir),
            "date": time.strftime("%Y-%m-%d"),
        },
    }
    with tempfile.TemporaryDirectory() as work:
        restore_units(archive, work)
        return write_results(work, results_dir, dataset, previous["folds"], header)


def reproduce(
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
    """Runs every unfinished unit (``jobs`` worker processes), rewriting the results as units
    finish; returns the summary."""
    from experiments.folds import files_by_fold, word_dim_of

    available = len(files_by_fold(records_dir))
    if folds != available:
        raise ValueError(f"the records in {records_dir} have {available} folds, not {folds}")
    word_dim = word_dim_of(records_dir)
    restored = restore_units(Path(results_dir) / f"{dataset}-units.jsonl", work_dir)
    if restored:
        log(f"== restored {restored} finished unit(s) from {results_dir}/{dataset}-units.jsonl")
    units = plan(variants, seeds, folds)
    todo = [u for u in units if not is_done(u, work_dir, unit_config(u, word_dim, overrides))]
    log(
        f"== reproduce {dataset}: {len(units)} units ({len(variants)} variants x {seeds} seeds "
        f"x {folds} folds), {len(units) - len(todo)} already done, {len(todo)} to run, "
        f"{jobs} job(s)"
    )
    commands_file = Path(work_dir) / "commands.json"
    commands = json.loads(commands_file.read_text()) if commands_file.exists() else []
    if command and command not in commands:
        commands.append(command)
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    commands_file.write_text(json.dumps(commands, indent=2))
    header = results_header(
        command, results_dir, commands=commands, plan={"variants": list(variants), "seeds": seeds}
    )
    run_pool(
        todo,
        lambda u: (run_unit, (str(records_dir), str(work_dir), u, overrides, header["commit"])),
        jobs=jobs,
        threads=threads,
        log=log,
        describe=lambda row: (
            f"WA {row['wa']:.3f} UA {row['ua']:.3f} (epoch {row['best_epoch']}/{row['epochs_run']})"
        ),
        after_each=lambda row: write_results(work_dir, results_dir, dataset, folds, header),
    )
    tsne = draw_tsne(work_dir, Path(results_dir) / f"{dataset}-tsne.png")
    summary = write_results(work_dir, results_dir, dataset, folds, header, tsne=tsne)
    missing = [u for u in units if not u.path(work_dir).exists()]
    if missing:
        log(f"== {len(missing)} unit(s) failed; re-run the same command to retry them")
    log(f"== results: {Path(results_dir) / (dataset + '.md')}")
    return summary
