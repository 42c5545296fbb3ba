"""``cme-ser reproduce --protocol nested``: nested cross-validation of a pre-registered choice.

The candidates to choose among (variant, seeds averaged, prior correction on/off) and the rule
that chooses are fixed in a selection file (``docs/selection.json``), committed before the run;
its sha256 goes into the results. For each outer fold ``k``:

- an *inner* cross-validation over the other folds only scores every candidate: inner unit
  ``(variant, seed, k, j)`` is ``trainer.train.train_fold`` on ``{j': files[j'] for j' != k}``
  holding out inner fold ``j`` (fold ``k``'s records are never even passed in);
- the rule picks the winner on those inner scores alone;
- the winner's models trained on all of fold ``k``'s training speakers -- the ordinary units
  ``(variant, seed, fold=k)`` of ``experiments.reproduce`` -- score fold ``k`` once.

The nested estimate is the mean of the outer scores over the outer folds with a Student-t 95% CI
(n = folds): an estimate of what the *rule* delivers, the choice included. The shipped default
is the same rule applied to the ordinary cross-validation over all folds; its own CV score was
seen while choosing, so it is reported as a development result, never as the estimate.

Units are resumable like ``reproduce``'s (JSON + ``.npz`` predictions under the work directory;
a unit whose configuration changed is trained again). Inner units live under
``<work>/nested/<variant>/seed<s>/outer<k>/inner<j>.json``, the ordinary ones where
``reproduce`` keeps them (``<work>/runs/...``), so the two share them. Every unit the results use
is archived beside them (``<dataset>-nested-units.jsonl``): a fresh checkout re-renders the
results from it (:func:`rerender`) and a re-run restores instead of training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from experiments import reproduce as repro
from experiments import tables
from experiments.statistics import mean_ci
from experiments.units import git_commit, planned_time, provenance, run_pool
from experiments.units import header as results_header
from trainer.config import VARIANTS, variant_config

DEFAULT_SELECTION = "docs/selection.json"
# CPU seconds of one unit on RAVDESS (one core, --jobs 2 --threads 1), when the work directory
# has no finished unit of the variant to measure it from.
SECONDS_PER_UNIT = 150.0
# The rule's score of a candidate on one inner held-out fold: its UA on the fold's speech, or
# the mean of its speech UA and its song UA (the same held-out speakers singing).
RULE_SCORES = ("inner_ua", "inner_ua_speech_song")
SCORED_CHANNELS = {"inner_ua": ("speech",), "inner_ua_speech_song": ("speech", "song")}
RULE_TIE_BREAKS = (["cost", "order"],)


# --- The selection file ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Candidate:
    name: str
    variant: str
    seeds: Tuple[int, ...]
    prior_correction: bool = False

    @property
    def cost(self) -> int:
        """Models trained per fold: 2 per seed for a refit variant (selection run + refit)."""
        return len(self.seeds) * (2 if VARIANTS[self.variant].get("refit") else 1)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "variant": self.variant,
            "seeds": list(self.seeds),
            "prior_correction": self.prior_correction,
            "cost": self.cost,
        }


@dataclasses.dataclass(frozen=True)
class Selection:
    path: str
    sha256: str
    text: str
    candidates: Tuple[Candidate, ...]
    score: str
    tie_tolerance: float
    tie_break: Tuple[str, ...]
    description: str = ""
    drafted_from: str = ""  # what the candidates were drafted from, in the file's own words

    @property
    def channels(self) -> Tuple[str, ...]:
        """The RAVDESS channels the records must hold: those the rule scores and those any
        candidate trains on."""
        needed = set(SCORED_CHANNELS[self.score])
        for c in self.candidates:
            needed |= set(variant_config(c.variant).train_channels)
        return tuple(sorted(needed, key=lambda ch: (ch != "speech", ch)))

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "text": self.text,
            "drafted_from": self.drafted_from,
            "rule": {
                "score": self.score,
                "tie_tolerance": self.tie_tolerance,
                "tie_break": list(self.tie_break),
            },
            "candidates": [c.to_dict() for c in self.candidates],
        }


def parse_selection(data: bytes, path: str = "") -> Selection:
    """Validates a selection file's bytes; the hash is of exactly these bytes."""
    where = path or "the selection file"
    try:
        spec = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{where} is not valid JSON: {error}") from error
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: expected a JSON object")
    rule = spec.get("rule")
    if not isinstance(rule, dict):
        raise ValueError(f"{where}: needs a 'rule' object")
    score, tie_break = rule.get("score"), rule.get("tie_break")
    tolerance = rule.get("tie_tolerance", 0.0)
    if score not in RULE_SCORES:
        raise ValueError(f"{where}: rule.score must be one of {RULE_SCORES}, got {score!r}")
    if tie_break not in RULE_TIE_BREAKS:
        raise ValueError(
            f"{where}: rule.tie_break must be one of {RULE_TIE_BREAKS}, got {tie_break!r}"
        )
    if not isinstance(tolerance, (int, float)) or isinstance(tolerance, bool) or tolerance < 0:
        raise ValueError(f"{where}: rule.tie_tolerance must be a number >= 0")
    raw = spec.get("candidates")
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{where}: needs a non-empty 'candidates' list")
    candidates = []
    for i, c in enumerate(raw):
        if not isinstance(c, dict):
            raise ValueError(f"{where}: candidate {i} is not an object")
        unknown = set(c) - {"name", "variant", "seeds", "prior_correction"}
        if unknown:
            raise ValueError(f"{where}: candidate {i} has unknown field(s) {sorted(unknown)}")
        name, variant, seeds = c.get("name"), c.get("variant"), c.get("seeds")
        prior = c.get("prior_correction", False)
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: candidate {i} needs a name")
        if variant not in VARIANTS:
            raise ValueError(
                f"{where}: candidate {name!r}: unknown variant {variant!r}; "
                f"known: {', '.join(VARIANTS)}"
            )
        if (
            not isinstance(seeds, list)
            or not seeds
            or len(set(seeds)) != len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
        ):
            raise ValueError(
                f"{where}: candidate {name!r}: seeds must be a non-empty list of "
                "distinct integers >= 0"
            )
        if not isinstance(prior, bool):
            raise ValueError(f"{where}: candidate {name!r}: prior_correction must be true/false")
        candidates.append(Candidate(name, variant, tuple(seeds), prior))
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: candidate names repeat: {names}")
    return Selection(
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        text=data.decode("utf-8"),
        candidates=tuple(candidates),
        score=score,
        tie_tolerance=float(tolerance),
        tie_break=tuple(tie_break),
        description=str(spec.get("description", "")),
        drafted_from=str(spec.get("drafted_from", "")),
    )


def load_selection(path) -> Selection:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"selection file {path} does not exist")
    return parse_selection(path.read_bytes(), path.as_posix())


def choose(scores: Sequence[float], candidates: Sequence[Candidate], tolerance: float) -> int:
    """Index of the winner: the highest score; scores within ``tolerance`` of it tie, and ties
    go to the lower cost, then to the earlier candidate."""
    best = max(scores)
    tied = [i for i, s in enumerate(scores) if s >= best - tolerance]
    return min(tied, key=lambda i: (candidates[i].cost, i))


# --- Units -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class InnerUnit:
    """Inner fold ``fold`` held out, trained on every fold but it and the outer fold ``outer``."""

    variant: str
    seed: int
    outer: int
    fold: int

    def path(self, work_dir) -> Path:
        return (
            Path(work_dir)
            / "nested"
            / self.variant
            / f"seed{self.seed}"
            / f"outer{self.outer}"
            / f"inner{self.fold}.json"
        )

    def __str__(self):
        return f"{self.variant} seed {self.seed} outer {self.outer} inner {self.fold}"

    @property
    def partner(self) -> "InnerUnit":
        """The inner unit trained on the same folds (every fold but ``outer`` and ``fold``):
        outer fold ``fold``, inner fold ``outer``. One training serves both."""
        return InnerUnit(self.variant, self.seed, self.fold, self.outer)


def models(selection: Selection) -> List[Tuple[str, int]]:
    """The distinct (variant, seed) models the candidates need, seed-major."""
    pairs = []
    for c in selection.candidates:
        pairs += [(c.variant, s) for s in c.seeds if (c.variant, s) not in pairs]
    return sorted(pairs, key=lambda p: (p[1], pairs.index(p)))


def plan(
    selection: Selection, folds: int, outer_folds: Optional[Sequence[int]] = None
) -> Tuple[List[InnerUnit], List[repro.Unit]]:
    """Inner units (every model, outer fold k, inner fold j != k) and the ordinary units
    (every model, fold k): folds**2 units per (variant, seed). ``outer_folds`` restricts the
    plan to those outer folds (the shipped default then stays undecided)."""
    if folds < 3:
        raise ValueError(f"nested cross-validation needs >= 3 folds, got {folds}")
    chosen = sorted(set(range(folds) if outer_folds is None else outer_folds))
    if not chosen or not set(chosen) <= set(range(folds)):
        raise ValueError(f"outer folds must be among 0..{folds - 1}, got {outer_folds}")
    pairs = models(selection)
    inner = [
        InnerUnit(v, s, k, j) for v, s in pairs for k in chosen for j in range(folds) if j != k
    ]
    outer = [repro.Unit(v, s, k) for v, s in pairs for k in chosen]
    return inner, outer


def run_inner_units(
    records_dir: str,
    work_dir: str,
    units: Sequence[InnerUnit],
    overrides: Optional[dict] = None,
    commit: Optional[str] = None,
) -> dict:
    """Trains one model for inner units that share their training folds (a unit and its
    ``partner``: every fold but o and i), scores each unit's inner fold and writes its row;
    returns the first unit's row. A unit's choice never reads its outer fold: fold o's records
    are read here only to score the partner unit, whose outer fold is i. Runs in a worker
    process."""
    from experiments.folds import files_by_fold
    from preprocessing.records import word_dim_of_files
    from trainer.train import train_folds

    first = units[0]
    if any(u not in (first, first.partner) for u in units):
        raise ValueError(f"units {[str(u) for u in units]} do not share their training folds")
    files = files_by_fold(records_dir)
    train = [k for k in sorted(files) if k not in (first.outer, first.fold)]
    config = repro.unit_config(first, word_dim_of_files(files[train[0]]), overrides)
    for unit in units:
        unit.path(work_dir).parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results = train_folds(
        {k: files[k] for k in train + [u.fold for u in units]},
        [u.fold for u in units],
        config,
        embeddings_paths={u.fold: str(u.path(work_dir).with_suffix(".npz")) for u in units},
    )
    seconds = round(time.time() - started, 1)
    rows = []
    for unit in units:
        row = {
            **dataclasses.asdict(unit),
            **dataclasses.asdict(results[unit.fold]),
            "seconds": seconds,
            "config": config.to_dict(),
            **provenance(config, commit),
        }
        if len(units) > 1:
            row["shared_training"] = str(first.partner if unit == first else first)
        tmp = unit.path(work_dir).with_suffix(".json.tmp")
        tmp.write_text(json.dumps(row, indent=2))
        tmp.replace(unit.path(work_dir))
        rows.append(row)
    return rows[0]


def training_jobs(units: Sequence) -> List[Tuple]:
    """``units`` as training jobs: an inner unit and its partner, when both are to run, form
    one job (one training); every other unit is a job of its own."""
    jobs, seen = [], set()
    pending = set(units)
    for unit in units:
        if unit in seen:
            continue
        group = (unit,)
        if isinstance(unit, InnerUnit) and unit.partner in pending and unit.partner != unit:
            group = (unit, unit.partner)
        seen.update(group)
        jobs.append(group)
    return jobs


# --- Scores ----------------------------------------------------------------------------------


def _scores(labels, probabilities) -> Tuple[float, float]:
    """(WA, UA) of the argmax decisions."""
    from trainer.metrics import confusion_matrix, unweighted_accuracy, weighted_accuracy

    probabilities = np.asarray(probabilities)
    confusion = confusion_matrix(labels, probabilities.argmax(-1), probabilities.shape[-1])
    return weighted_accuracy(confusion), unweighted_accuracy(confusion)


def load_member(unit, work_dir, usable: Callable) -> Optional[Tuple[dict, Optional[list]]]:
    """A finished unit's held-out predictions (its ``.npz`` arrays) and training class counts;
    None if it is missing, unusable or has no probabilities."""
    path = unit.path(work_dir)
    npz = path.with_suffix(".npz")
    if not (path.exists() and npz.exists() and usable(unit)):
        return None
    with np.load(npz) as data:
        if "probabilities" not in data.files:
            return None
        arrays = {key: data[key] for key in data.files}
    return arrays, json.loads(path.read_text()).get("train_class_counts")


def members_scores(
    units: Sequence,
    work_dir,
    candidate: Candidate,
    usable: Callable,
    load: Callable = load_member,
) -> Optional[Dict[str, Tuple[float, float]]]:
    """Per channel of the held-out fold, (WA, UA) of ``candidate`` from its members'
    predictions: the mean of their class probabilities, divided by their pooled training class
    prior with the correction (as ``reproduce.seed_ensemble``). Predictions without channels
    (every archive before channels were kept) are speech. None if a member is missing.
    ``load(unit, work_dir, usable)`` reads a member (:func:`load_member`; a caller scoring
    many groups of the same units passes a cached one)."""
    from trainer.metrics import prior_corrected

    members, counts = [], []
    for unit in units:
        loaded = load(unit, work_dir, usable)
        if loaded is None:
            return None
        members.append(loaded[0])
        counts.append(loaded[1])
    ids, labels = members[0]["utterance_ids"], members[0]["labels"]
    if any(not np.array_equal(m["utterance_ids"], ids) for m in members):
        raise ValueError(
            f"{candidate.name}: the members {', '.join(map(str, units))} scored "
            "different utterances"
        )
    mean = np.mean([m["probabilities"] for m in members], axis=0)
    if candidate.prior_correction:
        if any(not c or min(c) <= 0 for c in counts):
            raise ValueError(
                f"{candidate.name}: a member of {', '.join(map(str, units))} has "
                "no training example of some class: the prior correction is "
                "undefined"
            )
        mean = prior_corrected(mean, np.sum(counts, axis=0))
    channels = members[0]["channels"] if "channels" in members[0] else np.full(len(ids), "speech")
    return {
        str(ch): _scores(labels[channels == ch], mean[channels == ch])
        for ch in sorted(set(channels.tolist()))
    }


def rule_score(scores: Dict[str, Tuple[float, float]], score: str) -> float:
    """The rule's score of one held-out fold's per-channel (WA, UA): speech UA, or the mean of
    speech and song UA."""
    missing = [ch for ch in SCORED_CHANNELS[score] if ch not in scores]
    if missing:
        raise ValueError(
            f"rule score {score!r} needs held-out {' and '.join(missing)} "
            f"records; the fold holds {sorted(scores)}"
        )
    return float(np.mean([scores[ch][1] for ch in SCORED_CHANNELS[score]]))


def _channel_means(per_fold: Sequence[Dict[str, Tuple[float, float]]]) -> dict:
    """{"wa", "ua"} (speech) over the folds, and per other channel present in every fold."""
    out = {
        "wa": float(np.mean([s["speech"][0] for s in per_fold])),
        "ua": float(np.mean([s["speech"][1] for s in per_fold])),
    }
    for ch in sorted(set.intersection(*(set(s) for s in per_fold)) - {"speech"}):
        out[ch] = {
            "wa": float(np.mean([s[ch][0] for s in per_fold])),
            "ua": float(np.mean([s[ch][1] for s in per_fold])),
        }
    return out


def summarize(
    work_dir, selection: Selection, folds: int, usable: Optional[Callable] = None
) -> dict:
    """Per outer fold every candidate's inner-CV scores, the winner and its outer score; the
    nested estimate; the shipped default. ``usable(unit)`` says whether a finished unit counts
    (e.g. its configuration is the current one); by default every finished unit does. Scores
    ``wa`` / ``ua`` are of the held-out speech; ``score`` is the rule's; other channels held
    out (song) are reported under their name."""
    usable = usable or (lambda unit: True)
    candidates = selection.candidates
    two_channel = SCORED_CHANNELS[selection.score] != ("speech",)
    rows = []
    for k in range(folds):
        inner_folds = [j for j in range(folds) if j != k]
        inner, inner_units = {}, []
        for c in candidates:
            per_fold = []
            for j in inner_folds:
                units = [InnerUnit(c.variant, s, k, j) for s in c.seeds]
                inner_units += [str(u) for u in units if str(u) not in inner_units]
                per_fold.append(members_scores(units, work_dir, c, usable))
            if None in per_fold:
                inner[c.name] = None
                continue
            fold_scores = [rule_score(s, selection.score) for s in per_fold]
            means = _channel_means(per_fold)
            inner[c.name] = {
                "ua": means.pop("ua"),
                "wa": means.pop("wa"),
                **means,
                "per_fold": {
                    "fold": inner_folds,
                    "wa": [s["speech"][0] for s in per_fold],
                    "ua": [s["speech"][1] for s in per_fold],
                },
            }
            if two_channel:
                inner[c.name]["score"] = float(np.mean(fold_scores))
                inner[c.name]["per_fold"]["score"] = fold_scores
        row = {
            "fold": k,
            "inner_folds": inner_folds,
            "inner": inner,
            "winner": None,
            "outer": None,
            "units": {"inner": inner_units, "outer": []},
        }
        if all(inner.values()):
            winner = candidates[
                choose(
                    [_score_of(inner[c.name]) for c in candidates],
                    candidates,
                    selection.tie_tolerance,
                )
            ]
            units = [repro.Unit(winner.variant, s, k) for s in winner.seeds]
            row["winner"] = winner.name
            row["units"]["outer"] = [str(u) for u in units]
            scores = members_scores(units, work_dir, winner, usable)
            if scores:
                row["outer"] = _channel_means([scores])
        rows.append(row)
    scored = [r for r in rows if r["outer"]]
    estimate = None
    if scored:
        estimate = {
            "wa": mean_ci([r["outer"]["wa"] for r in scored]),
            "ua": mean_ci([r["outer"]["ua"] for r in scored]),
            "folds": [r["fold"] for r in scored],
        }
        for ch in sorted(set.intersection(*(set(r["outer"]) for r in scored)) - {"wa", "ua"}):
            estimate[ch] = {m: mean_ci([r["outer"][ch][m] for r in scored]) for m in ("wa", "ua")}
    # The shipped default: the rule on the ordinary cross-validation over all folds.
    cv = {}
    for c in candidates:
        per_fold = [
            members_scores([repro.Unit(c.variant, s, k) for s in c.seeds], work_dir, c, usable)
            for k in range(folds)
        ]
        if None in per_fold:
            cv[c.name] = None
            continue
        means = _channel_means(per_fold)
        cv[c.name] = {
            "ua": means.pop("ua"),
            "wa": means.pop("wa"),
            **means,
            "per_fold": {
                "wa": [s["speech"][0] for s in per_fold],
                "ua": [s["speech"][1] for s in per_fold],
            },
        }
        if two_channel:
            cv[c.name]["score"] = float(np.mean([rule_score(s, selection.score) for s in per_fold]))
    default = None
    if all(cv.values()):
        default = candidates[
            choose([_score_of(cv[c.name]) for c in candidates], candidates, selection.tie_tolerance)
        ].name
    winners = {c.name: sum(r["winner"] == c.name for r in rows) for c in candidates}
    return {
        "protocol": "nested",
        "folds": folds,
        "selection": selection.to_dict(),
        "outer_folds": rows,
        "winners": winners,
        "estimate": estimate,
        "complete": len(scored) == folds and default is not None,
        "shipped_default": {
            "candidate": default,
            "cv": cv,
            "note": "development results: held-out folds seen while "
            "choosing; the estimate of this rule is the nested one",
        },
    }


def _score_of(scores: dict) -> float:
    """The rule's score in a summary entry: ``score`` when the rule scores two channels, else
    the speech UA."""
    return scores.get("score", scores["ua"])


# --- Archive ---------------------------------------------------------------------------------


def _predictions(npz: Path) -> dict:
    out = {}
    if npz.exists():
        data = np.load(npz)
        for key in repro.PREDICTION_KEYS:
            if key in data.files:
                value = data[key]
                out[key] = (
                    [[float(str(x)) for x in r] for r in value.astype(np.float32)]
                    if value.dtype.kind == "f"
                    else value.tolist()
                )
    return out


def archive(work_dir, path, units: Sequence) -> int:
    """Writes the finished ``units`` (inner and ordinary) with their predictions, one JSON line
    each (``kind``: inner/outer), float32 probabilities as round-tripping decimals."""
    lines = []
    for unit in units:
        if not unit.path(work_dir).exists():
            continue
        row = json.loads(unit.path(work_dir).read_text())
        kind = "inner" if isinstance(unit, InnerUnit) else "outer"
        lines.append(
            json.dumps(
                {
                    "kind": kind,
                    **row,
                    "predictions": _predictions(unit.path(work_dir).with_suffix(".npz")),
                },
                separators=(",", ":"),
            )
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    tmp.replace(path)
    return len(lines)


def restore(path, work_dir, mark: bool = False) -> int:
    """Writes the units archived in ``path`` that ``work_dir`` lacks back into it; returns how
    many. A restored unit counts as done only if its configuration still matches. ``mark``:
    each restored row records ``restored_from`` (the results then count it as restored, not
    trained); a row restored earlier keeps the mark it has."""
    path = Path(path)
    if not path.exists():
        return 0
    restored = 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        predictions, kind = row.pop("predictions", {}), row.pop("kind")
        unit = (
            InnerUnit(row["variant"], row["seed"], row["outer"], row["fold"])
            if kind == "inner"
            else repro.Unit(row["variant"], row["seed"], row["fold"])
        )
        target = unit.path(work_dir)
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if predictions:
            np.savez_compressed(
                target.with_suffix(".npz"),
                **{
                    k: np.asarray(v, dtype=repro.PREDICTION_KEYS[k]) for k, v in predictions.items()
                },
            )
        if mark:
            row.setdefault("restored_from", path.as_posix())
        target.write_text(json.dumps(row, indent=2))
        restored += 1
    return restored


# --- Results ---------------------------------------------------------------------------------


def render_markdown(summary: dict, header: dict, dataset: str) -> str:
    folds, sel = summary["folds"], summary["selection"]
    names = [c["name"] for c in sel["candidates"]]
    lines = [
        f"# Nested cross-validation on {dataset.upper()}: the estimate of the selection rule",
        "",
        f"Produced by `{header['command']}` at commit `{header['commit']}` on "
        f"{header['date']} ({header['machine']}). Selection file `{sel['path']}`, "
        f"sha256 `{sel['sha256']}`.",
        "",
    ]
    lines += tables.rerendered_lines(header)
    if header.get("history"):
        lines += [f"**History.** {header['history']}", ""]
    est = summary["estimate"]
    two_channel = SCORED_CHANNELS[sel["rule"]["score"]] != ("speech",)
    measure = "inner score" if two_channel else "inner UA"
    if est:
        n = len(est["folds"])
        song = (
            f"; held-out song UA {tables.ci(est['song']['ua'])} (WA {tables.ci(est['song']['wa'])})"
            if "song" in est
            else ""
        )
        lines += [
            f"**Nested estimate of the selection rule: WA {tables.ci(est['wa'])}, UA "
            f"{tables.ci(est['ua'])}**"
            + (" on held-out speech" + song if song else "")
            + ": "
            + (
                f"mean [95% CI] over n = {n} outer folds (Student t, df = {n - 1})"
                if n > 1
                else "one outer fold, no interval"
            )
            + (
                "."
                if n == folds
                else f"; only {n} of the {folds} outer folds are finished (re-run the "
                "command to finish the rest)."
            ),
            "",
        ]
    else:
        lines += ["No outer fold is finished yet (re-run the same command).", ""]
    rule = sel["rule"]
    lines += [
        f"Protocol: {folds}-fold speaker-independent nested cross-validation. For each outer "
        f"fold, an inner {folds - 1}-fold cross-validation over the other folds' speakers only "
        "scores every candidate (each inner unit trains on the inner-training folds, choosing "
        "its epoch on a validation split of their speakers or training a fixed number of "
        "epochs, as its variant says, and scores its inner fold once); "
        + (
            "the rule picks the candidate with the highest mean inner-CV score, a fold's "
            "score being the mean of its speech UA and its song UA (the same held-out speakers "
            "singing)"
            if two_channel
            else "the rule picks the candidate with the highest mean inner-CV UA"
        )
        + f" (ties within "
        f"{rule['tie_tolerance']:g} go to the lower cost, then to the earlier candidate); the "
        "winner's models, trained on all the outer fold's training speakers, score the outer "
        "fold once. The rule never reads the outer fold; the candidates are the selection "
        "file's, drafted before the run (below, what they were drafted from). A candidate "
        "averages the "
        "class probabilities of its seeds' models; \"prior\" divides that by their pooled "
        "training class prior (`trainer.metrics.prior_corrected`).",
        "",
        "## Candidates (pre-registered)",
        "",
    ]
    lines += [f"Drafted from: {sel.get('drafted_from') or 'not stated in the selection file'}.", ""]
    lines += tables.table(
        [
            "candidate",
            "variant",
            "seeds",
            "prior correction",
            "cost (models per fold)",
            "outer folds won",
        ],
        [
            [
                c["name"],
                f"`{c['variant']}`",
                ", ".join(map(str, c["seeds"])),
                "yes" if c["prior_correction"] else "no",
                c["cost"],
                summary["winners"][c["name"]],
            ]
            for c in sel["candidates"]
        ],
    )
    lines += [
        "",
        "## Per outer fold",
        "",
        f"{measure[0].upper() + measure[1:]} of every candidate (mean over the inner "
        "folds; the winner's in bold), the winner, and its scores on the outer fold.",
        "",
    ]
    rows = []
    for row in summary["outer_folds"]:
        cells = []
        for name in names:
            s = row["inner"][name]
            text = "-" if s is None else f"{_score_of(s):.3f}"
            cells.append(f"**{text}**" if name == row["winner"] else text)
        outer = row["outer"]
        song = (
            [f"{outer['song']['ua']:.3f}" if outer and "song" in outer else "-"]
            if two_channel
            else []
        )
        rows.append(
            [row["fold"], *cells, row["winner"] or "-"]
            + ([f"{outer['wa']:.3f}", f"{outer['ua']:.3f}"] if outer else ["-", "-"])
            + song
        )
    lines += tables.table(
        ["outer fold", *(f"{measure}: {n}" for n in names), "winner", "outer WA", "outer UA"]
        + (["outer song UA"] if two_channel else []),
        rows,
    )
    default = summary["shipped_default"]
    lines += [
        "",
        "## The shipped default",
        "",
        "The same rule applied to the ordinary cross-validation over all folds (all "
        "speakers) chooses what `cme-ser run` should train and push: "
        + (
            f"**{default['candidate']}**."
            if default["candidate"]
            else "not decided yet (units missing)."
        )
        + " Its estimate is the nested one above. The scores below are *development "
        "results: held-out folds seen while choosing*; they are not estimates.",
        "",
    ]
    rows = []
    for name in names:
        s = default["cv"][name]
        cells = [f"{s['wa']:.3f}", f"{s['ua']:.3f}"] if s else ["-", "-"]
        if two_channel:
            cells += [f"{s['song']['ua']:.3f}", f"{s['score']:.3f}"] if s else ["-", "-"]
        rows.append([name] + cells)
    lines += tables.table(
        ["candidate", "CV WA", "CV UA"] + (["CV song UA", "CV score"] if two_channel else []), rows
    )
    units = summary["units"]
    trained = units.get("trained", units["inner_done"] + units["outer_done"])
    restored = units.get("restored", 0)
    lines += [
        "",
        "## Units",
        "",
        f"{units['inner_done']} of {units['inner']} inner and {units['outer_done']} of "
        f"{units['outer']} ordinary units finished: {trained} trained "
        f"({units['train_seconds'] / 60:.0f} min of training"
        + (
            f"; {units['shared_trainings']} pairs of inner units shared one training"
            if units.get("shared_trainings")
            else ""
        )
        + ")"
        + (
            f", {restored} restored from "
            + ", ".join(f"`{f}`" for f in units["restored_from"])
            + " (trained by an earlier run, not by this one)"
            if restored
            else ""
        )
        + f". Every one is archived with its predictions in `{units['archive']}`; "
        f"re-render without training: `{units['rerender']}`.",
    ]
    return "\n".join(lines) + "\n"


RERENDER_COMMAND = (
    "python -c \"from experiments.nested import rerender; rerender('{results_dir}', '{dataset}')\""
)


def write_results(
    work_dir,
    results_dir,
    dataset: str,
    folds: int,
    selection: Selection,
    header: dict,
    usable: Optional[Callable] = None,
) -> dict:
    """Writes ``<dataset>-nested.json`` / ``.md`` and archives every unit of the full plan that
    finished (``<dataset>-nested-units.jsonl``); returns the summary."""
    results_dir = Path(results_dir)
    summary = summarize(work_dir, selection, folds, usable)
    inner, outer = plan(selection, folds)
    done = [u for u in inner + outer if u.path(work_dir).exists()]
    name = f"{dataset}-nested-units.jsonl"
    archive(work_dir, results_dir / name, done)
    rows = {str(u): json.loads(u.path(work_dir).read_text()) for u in done}
    trained = {k: r for k, r in rows.items() if not r.get("restored_from")}
    # A shared training's time is in both of its units' rows: counted once.
    seconds = sum(
        r.get("seconds", 0)
        for k, r in trained.items()
        if not (r.get("shared_training") in trained and r["shared_training"] < k)
    )
    summary["units"] = {
        "inner": len(inner),
        "outer": len(outer),
        "inner_done": sum(isinstance(u, InnerUnit) for u in done),
        "outer_done": sum(not isinstance(u, InnerUnit) for u in done),
        "trained": len(trained),
        "restored": len(rows) - len(trained),
        "restored_from": sorted(
            {r["restored_from"] for r in rows.values() if r.get("restored_from")}
        ),
        "shared_trainings": sum(
            1
            for k, r in trained.items()
            if r.get("shared_training") in trained and r["shared_training"] < k
        ),
        "train_seconds": round(seconds, 1),
        "archive": name,
        "rerender": RERENDER_COMMAND.format(results_dir=results_dir.as_posix(), dataset=dataset),
    }
    summary["dataset"] = dataset
    summary["header"] = header
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{dataset}-nested.json").write_text(json.dumps(summary, indent=2))
    (results_dir / f"{dataset}-nested.md").write_text(render_markdown(summary, header, dataset))
    return summary


def rerender(results_dir, dataset: str = "ravdess") -> dict:
    """Rewrites ``<dataset>-nested.md`` / ``.json`` from the archived units and the selection
    file's text stored in the results (its hash checked), training nothing."""
    results_dir = Path(results_dir)
    units = results_dir / f"{dataset}-nested-units.jsonl"
    if not units.exists():
        raise FileNotFoundError(
            f"{units} does not exist: these results cannot be re-rendered "
            "without training their units again"
        )
    previous = json.loads((results_dir / f"{dataset}-nested.json").read_text())
    stored = previous["selection"]
    selection = parse_selection(stored["text"].encode("utf-8"), stored["path"])
    if selection.sha256 != stored["sha256"]:
        raise ValueError("the stored selection text does not match its recorded sha256")
    header = {
        **previous["header"],
        "rerendered": {
            "command": RERENDER_COMMAND.format(results_dir=results_dir.as_posix(), dataset=dataset),
            "commit": git_commit(results_dir),
            "date": time.strftime("%Y-%m-%d"),
        },
    }
    with tempfile.TemporaryDirectory() as work:
        restore(units, work)
        return write_results(work, results_dir, dataset, previous["folds"], selection, header)


# --- The run ---------------------------------------------------------------------------------


def estimate_seconds(work_dir, units: Sequence, default: float = SECONDS_PER_UNIT) -> float:
    """CPU seconds to train ``units``: per variant, the mean of its finished units' times in the
    work directory (ordinary and inner), else ``default`` per unit."""
    measured: Dict[str, List[float]] = {}
    for pattern in ("runs/*/seed*/fold*.json", "nested/*/seed*/outer*/inner*.json"):
        for path in Path(work_dir).glob(pattern):
            row = json.loads(path.read_text())
            if row.get("seconds"):
                measured.setdefault(row["variant"], []).append(float(row["seconds"]))
    return float(
        sum(np.mean(measured[u.variant]) if u.variant in measured else default for u in units)
    )


def run_nested(
    records_dir,
    work_dir,
    results_dir,
    *,
    dataset: str,
    selection_path,
    folds: int,
    jobs: int = 1,
    threads: int = 0,
    command: str = "",
    overrides: Optional[dict] = None,
    outer_folds: Optional[Sequence[int]] = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Trains every unfinished unit of the plan (``jobs`` worker processes; only the units of
    ``outer_folds`` if given), then writes the results; returns the summary."""
    from experiments.folds import files_by_fold, word_dim_of

    selection = load_selection(selection_path)
    available = len(files_by_fold(records_dir))
    if folds != available:
        raise ValueError(f"the records in {records_dir} have {available} folds, not {folds}")
    word_dim = word_dim_of(records_dir)
    from trainer.data import preprocess_options, record_channels

    held = set(
        record_channels([f for fs in files_by_fold(records_dir).values() for f in fs]).values()
    )
    missing = [ch for ch in selection.channels if ch not in held]
    if missing:
        raise ValueError(
            f"the selection needs {', '.join(selection.channels)} records; those in "
            f"{records_dir} have no {', '.join(missing)} (preprocess with "
            f"{preprocess_options(selection.channels)})"
        )
    results_dir = Path(results_dir)
    # This run's own archive (same selection file) resumes it: its units were trained by this
    # run. Units from any other archive are marked restored and named in the results.
    previous = results_dir / f"{dataset}-nested.json"
    own = (
        previous.exists()
        and json.loads(previous.read_text()).get("selection", {}).get("sha256") == selection.sha256
    )
    for archived in (
        results_dir / f"{dataset}-nested-units.jsonl",
        results_dir / f"{dataset}-units.jsonl",
    ):
        nested_archive = archived.name.endswith("nested-units.jsonl")
        restored = (restore if nested_archive else repro.restore_units)(
            archived, work_dir, mark=not (nested_archive and own)
        )
        if restored and nested_archive and own:
            log(f"== resumed {restored} unit(s) this run trained earlier, from {archived}")
        elif restored:
            log(
                f"== restored {restored} finished unit(s) from {archived} (named as restored "
                "in the results; their training time is not counted)"
            )
    inner, outer = plan(selection, folds, outer_folds)

    def config_of(unit):
        return repro.unit_config(unit, word_dim, overrides)

    def usable(unit):
        return repro.is_done(unit, work_dir, config_of(unit))

    todo = [u for u in inner + outer if not usable(u)]
    todo_inner = sum(isinstance(u, InnerUnit) for u in todo)
    # A missing partner of a planned inner unit (outside ``outer_folds``) comes free with it.
    jobs_todo = training_jobs(
        todo
        + [
            u.partner
            for u in todo
            if isinstance(u, InnerUnit) and u.partner not in todo and not usable(u.partner)
        ]
    )
    seconds = estimate_seconds(work_dir, [job[0] for job in jobs_todo])
    log(
        f"== nested {dataset}: selection {selection.path} (sha256 {selection.sha256[:12]}), "
        f"{len(selection.candidates)} candidates over {len(models(selection))} (variant, seed) "
        f"models, {folds} outer folds"
    )
    log(
        f"== {len(inner) + len(outer)} units: {len(inner)} inner ({len(inner) - todo_inner} "
        f"done, {todo_inner} to run) + {len(outer)} outer ({len(outer) - len(todo) + todo_inner} "
        f"done, {len(todo) - todo_inner} to run) in {len(jobs_todo)} trainings (an inner unit "
        f"and its partner share one); {planned_time(seconds, jobs)}"
    )
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    header = results_header(command, results_dir)

    # Results and archive after every unit: a run stopped anywhere (or a lost work dir)
    # resumes from the committed archive.
    def work(job):
        if isinstance(job[0], InnerUnit):
            return run_inner_units, (
                str(records_dir),
                str(work_dir),
                job,
                overrides,
                header["commit"],
            )
        return repro.run_unit, (
            str(records_dir),
            str(work_dir),
            job[0],
            overrides,
            header["commit"],
        )

    run_pool(
        jobs_todo,
        work,
        jobs=jobs,
        threads=threads,
        log=log,
        describe=lambda row: f"WA {row['wa']:.3f} UA {row['ua']:.3f}",
        after_each=lambda row: write_results(
            work_dir, results_dir, dataset, folds, selection, header, usable
        ),
    )
    summary = write_results(work_dir, results_dir, dataset, folds, selection, header, usable)
    missing = [u for u in inner + outer if not usable(u)]
    if missing:
        log(f"== {len(missing)} unit(s) failed; re-run the same command to retry them")
    for row in summary["outer_folds"]:
        if row["outer"]:
            log(
                f"outer fold {row['fold']}: winner {row['winner']} (inner UA "
                f"{row['inner'][row['winner']]['ua']:.3f}), outer WA {row['outer']['wa']:.3f} "
                f"UA {row['outer']['ua']:.3f}"
            )
    if summary["estimate"]:
        est = summary["estimate"]
        log(
            f"== nested estimate: WA {tables.ci(est['wa'])} UA {tables.ci(est['ua'])} "
            f"(n = {len(est['folds'])} outer folds); shipped default: "
            f"{summary['shipped_default']['candidate']}"
        )
    log(f"== results: {results_dir / (dataset + '-nested.md')}")
    return summary
