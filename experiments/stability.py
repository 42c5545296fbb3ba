"""``cme-ser reproduce --protocol stability``: how much the shipped model moves between runs.

The shipped configuration (``trainer.config.SHIPPED``: a variant, an ensemble of that many
seeds, the prior correction) is trained ``runs`` times with disjoint seed sets -- run ``r``
uses seeds ``first_seed + r * E .. first_seed + r * E + E - 1`` for an ensemble of ``E`` -- on
the same folds and records. Each run is scored as ``make run`` scores it (its members' class
probabilities averaged, divided by their pooled training prior with the correction), fold by
fold; the report gives, per fold and over the cross-validation, every run's WA and UA, their
spread (max - min over runs), and every member's chosen and refit epochs.

A unit is an ordinary ``reproduce`` unit (one variant, seed and fold), kept in the work
directory and archived beside the results (``<dataset>-stability-units.jsonl``) with its
predictions and the machine it ran on. Units restored from that archive are counted and named
in the results; training seconds count trained units only. The report also compares every
unit with the same (variant, seed, fold, configuration) in earlier archives: identical
predictions mean the run reproduces them; different ones are listed with their epochs.
"""

from __future__ import annotations

import itertools
import json
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from experiments import nested, tables
from experiments import reproduce as repro
from experiments.statistics import mean_ci
from experiments.units import config_hash, git_commit, planned_time, run_pool
from experiments.units import header as results_header
from trainer.config import SHIPPED, variant_config

DEFAULT_RUNS = 3
# What a run must hold to count as stable (issue 22): re-runs agree on the CV UA within this,
# and no fold of any run falls below this WA.
TARGET = {"cv_ua_spread_max": 0.02, "fold_wa_min": 0.60}
# Earlier archives of the same units under the results directory, compared unit by unit
# (Table 1; the 5-seed ensembles).
COMPARE_WITH = ("{dataset}-units.jsonl", "ensembles/{dataset}-units.jsonl")
# The expected range (max - min) of three independent draws from a normal distribution, in
# standard deviations (the d2(3) constant of range charts).
EXPECTED_RANGE_OF_3 = 1.6926
RERENDER_COMMAND = (
    "python -c \"from experiments.stability import rerender; "
    "rerender('{results_dir}', '{dataset}')\""
)


def seed_sets(ensemble: int, runs: int, first_seed: int = 0) -> List[List[int]]:
    """Disjoint seed sets, one per run, of ``ensemble`` consecutive seeds each."""
    if ensemble < 1 or runs < 2:
        raise ValueError(f"need an ensemble >= 1 and >= 2 runs, got {ensemble} and {runs}")
    if first_seed < 0:
        raise ValueError(f"seeds must be >= 0, got first seed {first_seed}")
    return [[first_seed + r * ensemble + k for k in range(ensemble)] for r in range(runs)]


def plan(variant: str, seeds: Sequence[Sequence[int]], folds: int) -> List[repro.Unit]:
    """Run-major: every fold of run 0's models before run 1's."""
    return [repro.Unit(variant, s, k) for run in seeds for s in run for k in range(folds)]


def _row(unit: repro.Unit, work_dir) -> dict:
    return json.loads(unit.path(work_dir).read_text())


def _archived(paths: Sequence) -> Dict[tuple, List[dict]]:
    """``{(variant, seed, fold, config sha256): [row per archive]}`` of the units archived in
    ``paths``."""
    rows: Dict[tuple, List[dict]] = {}
    for path in paths:
        path = Path(path)
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                key = (row["variant"], row["seed"], row["fold"], config_hash(row["config"]))
                rows.setdefault(key, []).append({**row, "archive": path.as_posix()})
    return rows


def compare(work_dir, units: Sequence[repro.Unit], archives: Sequence) -> List[dict]:
    """Every finished unit against each earlier archive that holds it (same configuration):
    whether their held-out predictions are identical, and both runs' epochs and scores."""
    earlier = _archived(archives)
    out = []
    for unit in units:
        if not unit.path(work_dir).exists():
            continue
        row = _row(unit, work_dir)
        new_p = np.load(unit.path(work_dir).with_suffix(".npz"))["probabilities"]
        for old in earlier.get(
            (unit.variant, unit.seed, unit.fold, config_hash(row["config"])), []
        ):
            old_p = np.asarray(old["predictions"]["probabilities"], np.float32)
            same_shape = new_p.shape == old_p.shape
            out.append(
                {
                    "unit": str(unit),
                    "archive": old["archive"],
                    "archive_commit": old.get("commit", "not recorded"),
                    "identical": bool(
                        same_shape and np.array_equal(new_p.astype(np.float32), old_p)
                    ),
                    "max_abs_difference": (
                        float(np.max(np.abs(new_p - old_p))) if same_shape else None
                    ),
                    "best_epoch": [old["best_epoch"], row["best_epoch"]],
                    "wa": [old["wa"], row["wa"]],
                    "ua": [old["ua"], row["ua"]],
                }
            )
    return out


def summarize(
    work_dir,
    variant: str,
    seeds: Sequence[Sequence[int]],
    folds: int,
    prior_correction: bool,
    usable: Optional[Callable] = None,
) -> dict:
    """Every run's per-fold and CV scores, the spreads over runs, each member's epochs and
    the target check; runs with a missing unit are left out of the spreads."""
    usable = usable or (lambda unit: True)
    runs = []
    for r, run_seeds in enumerate(seeds):
        candidate = nested.Candidate(f"run {r}", variant, tuple(run_seeds), prior_correction)
        per_fold = []
        for k in range(folds):
            units = [repro.Unit(variant, s, k) for s in run_seeds]
            scores = nested.members_scores(units, work_dir, candidate, usable)
            score = scores and scores["speech"]  # held-out speech: (WA, UA)
            song = scores and scores.get("song")  # the same speakers singing, if recorded
            members = []
            for unit in units:
                if unit.path(work_dir).exists():
                    row = _row(unit, work_dir)
                    alone = nested.members_scores(
                        [unit], work_dir, nested.Candidate("", variant, (unit.seed,)), usable
                    )
                    if alone and len(alone) > 1:  # on held-out speech, as the runs are scored
                        row = {**row, "wa": alone["speech"][0], "ua": alone["speech"][1]}
                    members.append(
                        {
                            key: row[key]
                            for key in (
                                "seed",
                                "best_epoch",
                                "epochs_run",
                                "refit_epochs",
                                "best_val_ua",
                                "wa",
                                "ua",
                                "val_speakers",
                            )
                        }
                    )
            per_fold.append(
                {
                    "fold": k,
                    "wa": score and score[0],
                    "ua": score and score[1],
                    "members": members,
                    **({"song": {"wa": song[0], "ua": song[1]}} if song else {}),
                }
            )
        complete = all(f["wa"] is not None for f in per_fold)
        cv = None
        if complete:
            cv = {
                "wa": mean_ci([f["wa"] for f in per_fold]),
                "ua": mean_ci([f["ua"] for f in per_fold]),
            }
            if all("song" in f for f in per_fold):
                cv["song"] = {m: mean_ci([f["song"][m] for f in per_fold]) for m in ("wa", "ua")}
        runs.append(
            {"run": r, "seeds": list(run_seeds), "folds": per_fold, "complete": complete, "cv": cv}
        )
    done = [run for run in runs if run["complete"]]
    spread = None
    if len(done) >= 2:
        spread = {
            "folds": [
                {
                    "fold": k,
                    "wa": float(np.ptp([run["folds"][k]["wa"] for run in done])),
                    "ua": float(np.ptp([run["folds"][k]["ua"] for run in done])),
                }
                for k in range(folds)
            ],
            "cv_wa": float(np.ptp([run["cv"]["wa"]["mean"] for run in done])),
            "cv_ua": float(np.ptp([run["cv"]["ua"]["mean"] for run in done])),
            # the runs' CV means the spreads are taken over, in run order
            "cv_wa_of_runs": [run["cv"]["wa"]["mean"] for run in done],
            "cv_ua_of_runs": [run["cv"]["ua"]["mean"] for run in done],
            **(
                {
                    "cv_song_ua": float(np.ptp([run["cv"]["song"]["ua"]["mean"] for run in done])),
                    "cv_song_ua_of_runs": [run["cv"]["song"]["ua"]["mean"] for run in done],
                }
                if all("song" in run["cv"] for run in done)
                else {}
            ),
            "single_models_wa": [  # one model, one fold: the spread an ensemble averages out
                {
                    "fold": k,
                    "min": float(min(m["wa"] for run in done for m in run["folds"][k]["members"])),
                    "max": float(max(m["wa"] for run in done for m in run["folds"][k]["members"])),
                }
                for k in range(folds)
            ],
        }
    target = None
    if spread:
        lowest = min(f["wa"] for run in done for f in run["folds"])
        target = {
            **TARGET,
            "cv_ua_spread": spread["cv_ua"],
            "fold_wa_lowest": lowest,
            "met": spread["cv_ua"] <= TARGET["cv_ua_spread_max"]
            and lowest >= TARGET["fold_wa_min"],
        }
    by_size = (
        spread_by_ensemble_size(
            work_dir, variant, [s for r in seeds for s in r], folds, prior_correction, usable
        )
        if len(done) == len(runs) >= 2
        else []
    )
    return {
        "protocol": "stability",
        "folds": folds,
        "variant": variant,
        "ensemble": len(seeds[0]),
        "prior_correction": prior_correction,
        "seeds": [list(s) for s in seeds],
        "runs": runs,
        "runs_complete": len(done),
        "spread": spread,
        "target": target,
        "by_ensemble_size": by_size,
    }


def spread_by_ensemble_size(
    work_dir,
    variant: str,
    seeds: Sequence[int],
    folds: int,
    prior_correction: bool,
    usable: Optional[Callable] = None,
) -> List[dict]:
    """How much the CV UA (held-out speech) of an ensemble of ``k`` of ``seeds`` moves from
    run to run, for every ``k`` up to half the seeds, from the models already trained.

    Every group of ``k`` seeds is scored as a run is (members' probabilities averaged,
    prior-corrected if asked); two disjoint groups are two independent runs, so over every
    unordered pair of disjoint groups ``(a, b)``, ``sd_k = sqrt(mean((a - b)^2) / 2)``. The
    expected spread of three runs is ``EXPECTED_RANGE_OF_3 * sd_k`` (normal approximation).
    Groups overlap across pairs, so the estimates are correlated; with few seeds they are
    rough. Empty if a unit is missing.
    """
    usable = usable or (lambda unit: True)
    seeds = sorted(seeds)
    loaded: dict = {}

    def load(unit, work_dir, usable):  # each unit read once, however many groups hold it
        if unit not in loaded:
            loaded[unit] = nested.load_member(unit, work_dir, usable)
        return loaded[unit]

    out = []
    for k in range(1, len(seeds) // 2 + 1):
        ua = {}
        for group in itertools.combinations(seeds, k):
            candidate = nested.Candidate("", variant, group, prior_correction)
            per_fold = [
                nested.members_scores(
                    [repro.Unit(variant, s, f) for s in group], work_dir, candidate, usable, load
                )
                for f in range(folds)
            ]
            if any(s is None for s in per_fold):
                return []
            ua[group] = float(np.mean([s["speech"][1] for s in per_fold]))
        squares = [
            (ua[a] - ua[b]) ** 2 / 2
            for a, b in itertools.combinations(ua, 2)
            if not set(a) & set(b)
        ]
        sd = float(np.sqrt(np.mean(squares)))
        out.append(
            {
                "ensemble": k,
                "groups": len(ua),
                "disjoint_pairs": len(squares),
                "cv_ua_sd": sd,
                "expected_spread_of_3_runs": EXPECTED_RANGE_OF_3 * sd,
            }
        )
    return out


def _f(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def render_markdown(summary: dict, header: dict, dataset: str) -> str:
    model = f"`{summary['variant']}` x{summary['ensemble']}" + (
        " +prior" if summary["prior_correction"] else ""
    )
    folds = summary["folds"]
    lines = [
        f"# Run-to-run stability of the shipped model on {dataset.upper()}",
        "",
        f"Produced by `{header['command']}` at commit `{header['commit']}` on "
        f"{header['date']} ({header['machine']}).",
        "",
    ]
    lines += tables.rerendered_lines(header)
    units = summary["units"]
    lines += [
        f"The model: {model}, trained {len(summary['runs'])} times with disjoint seed "
        f"sets ({'; '.join(', '.join(map(str, s)) for s in summary['seeds'])}) on the "
        f"same {folds} speaker-independent folds and records, each run scored as "
        "`make run` scores it (members' probabilities averaged, prior-corrected). "
        f"Units: {units['done']} of {units['planned']} finished; "
        f"{units['trained']} trained by this run ({units['train_seconds'] / 60:.0f} min of "
        f"training), {units['restored']} restored"
        + (f" from `{units['restored_from']}`" if units["restored"] else "")
        + ".",
        "",
        "## Per fold",
        "",
    ]
    header_cells = (
        ["run (seeds)"]
        + [f"fold {k} WA / UA" for k in range(folds)]
        + ["CV WA [95% CI]", "CV UA [95% CI]"]
    )
    rows = []
    for run in summary["runs"]:
        rows.append(
            [f"{run['run']} ({', '.join(map(str, run['seeds']))})"]
            + [f"{_f(f['wa'])} / {_f(f['ua'])}" for f in run["folds"]]
            + (
                [tables.ci(run["cv"]["wa"]), tables.ci(run["cv"]["ua"])]
                if run["cv"]
                else ["–", "–"]
            )
        )
    spread = summary["spread"]
    if spread:
        rows.append(
            ["**spread (max − min)**"]
            + [f"{f['wa']:.3f} / {f['ua']:.3f}" for f in spread["folds"]]
            + [f"{spread['cv_wa']:.3f}", f"{spread['cv_ua']:.3f}"]
        )
    lines += tables.table(header_cells, rows)
    if spread and "cv_song_ua" in spread:
        lines += [
            "",
            "Held-out song (the same speakers singing): CV UA "
            + ", ".join(
                f"run {run['run']} {tables.ci(run['cv']['song']['ua'])}"
                for run in summary["runs"]
                if run["cv"]
            )
            + f"; spread {spread['cv_song_ua']:.3f}.",
        ]
    lines += [
        "",
        "## Each model's epochs",
        "",
        "Chosen epoch (best validation UA on the model's inner validation speakers) / "
        "epochs run / refit epochs, and the model's own held-out WA (on speech, as the runs)."
        + (
            " A fixed schedule chooses no epoch: every model runs its configured epochs."
            if variant_config(summary["variant"]).selection == "fixed"
            else ""
        ),
        "",
    ]
    member_rows = []
    for run in summary["runs"]:
        for k, fold in enumerate(run["folds"]):
            for m in fold["members"]:
                member_rows.append(
                    [
                        run["run"],
                        m["seed"],
                        k,
                        m["best_epoch"],
                        m["epochs_run"],
                        m["refit_epochs"],
                        _f(m["best_val_ua"]),
                        _f(m["wa"]),
                    ]
                )
    lines += tables.table(
        ["run", "seed", "fold", "chosen", "run", "refit", "val UA", "held-out WA"], member_rows
    )
    if spread:
        lines += [
            "",
            "Single models, one fold, every seed of every run: held-out WA "
            + ", ".join(
                f"fold {f['fold']} {f['min']:.3f}–{f['max']:.3f}"
                for f in spread["single_models_wa"]
            )
            + ".",
        ]
    target = summary["target"]
    if target:
        lines += [
            "",
            "## Target",
            "",
            f"CV UA spread {target['cv_ua_spread']:.3f} (target ≤ "
            f"{target['cv_ua_spread_max']:.2f}); lowest fold WA of any run "
            f"{target['fold_wa_lowest']:.3f} (target ≥ {target['fold_wa_min']:.2f}): "
            + ("**met**." if target["met"] else "**not met**."),
        ]
    by_size = summary.get("by_ensemble_size")
    if by_size:
        seeds = sum(len(s) for s in summary["seeds"])
        lines += [
            "",
            "## What the spread is made of",
            "",
            f"Every group of k of the {seeds} seeds' models, scored as a run is, is a run that "
            "could have been; two disjoint groups are two independent runs. Over every pair of "
            "disjoint groups, the run-to-run standard deviation of the CV UA (held-out speech) "
            "and the spread three runs would show on average (x "
            f"{EXPECTED_RANGE_OF_3}, normal approximation). Development figures on the "
            "held-out folds: they describe the recipe and choose nothing.",
            "",
        ]
        lines += tables.table(
            ["ensemble k", "groups", "disjoint pairs", "SD of CV UA", "expected spread of 3 runs"],
            [
                [
                    b["ensemble"],
                    b["groups"],
                    b["disjoint_pairs"],
                    f"{b['cv_ua_sd']:.4f}",
                    f"{b['expected_spread_of_3_runs']:.4f}",
                ]
                for b in by_size
            ],
        )
    comparisons = summary["reproducibility"]
    if comparisons:
        same = sum(c["identical"] for c in comparisons)
        lines += [
            "",
            "## The same units in earlier archives",
            "",
            f"{same} of {len(comparisons)} comparisons of a unit with the same unit "
            "(variant, seed, fold and configuration) in an earlier archive find "
            "identical held-out predictions.",
            "",
        ]
        lines += tables.table(
            [
                "unit",
                "archive (commit)",
                "identical",
                "max |Δp|",
                "chosen epoch then / now",
                "WA then / now",
            ],
            [
                [
                    c["unit"],
                    f"`{c['archive']}` ({c['archive_commit']})",
                    "yes" if c["identical"] else "no",
                    _f(c["max_abs_difference"], 4),
                    f"{c['best_epoch'][0]} / {c['best_epoch'][1]}",
                    f"{c['wa'][0]:.3f} / {c['wa'][1]:.3f}",
                ]
                for c in comparisons
            ],
        )
    machines = summary.get("machines")
    if machines:
        lines += ["", "## Machines", ""]
        lines += [
            f"- {m['units']} unit(s): `{json.dumps(m['machine'], sort_keys=True)}`"
            for m in machines
        ]
    return "\n".join(lines) + "\n"


def _machines(work_dir, units: Sequence[repro.Unit]) -> List[dict]:
    counts: Dict[str, int] = {}
    for unit in units:
        if unit.path(work_dir).exists():
            key = json.dumps(_row(unit, work_dir).get("machine"), sort_keys=True)
            counts[key] = counts.get(key, 0) + 1
    return [{"machine": json.loads(k), "units": n} for k, n in counts.items()]


def write_results(
    work_dir,
    results_dir,
    dataset: str,
    spec: dict,
    header: dict,
    restored_from: str = "",
    usable: Optional[Callable] = None,
) -> dict:
    """Writes ``<dataset>-stability.json`` / ``.md`` and archives the finished units."""
    results_dir = Path(results_dir)
    units = plan(spec["variant"], spec["seeds"], spec["folds"])
    summary = summarize(
        work_dir, spec["variant"], spec["seeds"], spec["folds"], spec["prior_correction"], usable
    )
    done = [u for u in units if u.path(work_dir).exists()]
    name = f"{dataset}-stability-units.jsonl"
    nested.archive(work_dir, results_dir / name, done)
    rows = [_row(u, work_dir) for u in done]
    trained = [r for r in rows if not r.get("restored_from")]
    summary["units"] = {
        "planned": len(units),
        "done": len(done),
        "trained": len(trained),
        "restored": len(rows) - len(trained),
        "restored_from": restored_from,
        "train_seconds": round(sum(r.get("seconds", 0) for r in trained), 1),
        "archive": name,
        "rerender": RERENDER_COMMAND.format(results_dir=results_dir.as_posix(), dataset=dataset),
    }
    summary["reproducibility"] = compare(work_dir, done, spec["compare_with"])
    summary["machines"] = _machines(work_dir, done)
    summary.update(dataset=dataset, header=header, spec=spec)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{dataset}-stability.json").write_text(json.dumps(summary, indent=2))
    (results_dir / f"{dataset}-stability.md").write_text(render_markdown(summary, header, dataset))
    return summary


def rerender(results_dir, dataset: str = "ravdess") -> dict:
    """Rewrites the stability results from their archived units, training nothing."""
    results_dir = Path(results_dir)
    previous = json.loads((results_dir / f"{dataset}-stability.json").read_text())
    header = {
        **previous["header"],
        "rerendered": {
            "command": RERENDER_COMMAND.format(results_dir=results_dir.as_posix(), dataset=dataset),
            "commit": git_commit(results_dir),
            "date": time.strftime("%Y-%m-%d"),
        },
    }
    with tempfile.TemporaryDirectory() as work:
        nested.restore(results_dir / f"{dataset}-stability-units.jsonl", work)
        return write_results(
            work,
            results_dir,
            dataset,
            previous["spec"],
            header,
            restored_from=previous["units"]["restored_from"],
        )


def run_stability(
    records_dir,
    work_dir,
    results_dir,
    *,
    dataset: str,
    folds: int,
    runs: int = DEFAULT_RUNS,
    first_seed: int = 0,
    variant: str = SHIPPED["variant"],
    ensemble: int = SHIPPED["ensemble"],
    prior_correction: bool = SHIPPED["prior_correction"],
    jobs: int = 1,
    threads: int = 0,
    command: str = "",
    overrides: Optional[dict] = None,
    archives: Optional[Sequence] = None,
    reuse: Sequence = (),
    log: Callable[[str], None] = print,
) -> dict:
    """Trains every unfinished unit of the plan, then writes the results; returns the
    summary. ``archives``: earlier unit archives to compare with (default ``COMPARE_WITH``
    under ``results_dir``). ``reuse``: other archives (e.g. a nested run's, whose ordinary
    units are a run of its winner) whose units of this plan are restored instead of trained,
    marked and named as restored in the results."""
    from experiments.folds import files_by_fold, word_dim_of

    available = len(files_by_fold(records_dir))
    if folds != available:
        raise ValueError(f"the records in {records_dir} have {available} folds, not {folds}")
    seeds = seed_sets(ensemble, runs, first_seed)
    results_dir = Path(results_dir)
    if archives is None:
        archives = [
            (results_dir / name.format(dataset=dataset)).as_posix() for name in COMPARE_WITH
        ]
    spec = {
        "variant": variant,
        "seeds": seeds,
        "folds": folds,
        "prior_correction": prior_correction,
        "overrides": overrides or {},
        "compare_with": [str(a) for a in archives],
    }
    word_dim = word_dim_of(records_dir)
    archived = results_dir / f"{dataset}-stability-units.jsonl"
    # This run's own archive (the same plan) resumes it; any other archive's units are marked
    # restored and named.
    previous = results_dir / f"{dataset}-stability.json"
    own = (
        previous.exists()
        and json.loads(previous.read_text()).get("spec", {}).get("seeds") == seeds
        and json.loads(previous.read_text())["spec"]["variant"] == variant
    )
    sources = []
    for source in [archived, *map(Path, reuse)]:
        restored = nested.restore(source, work_dir, mark=not (source == archived and own))
        if restored and source == archived and own:
            log(f"== resumed {restored} unit(s) this run trained earlier, from {source}")
        elif restored:
            sources.append(source.as_posix())
            log(
                f"== restored {restored} finished unit(s) from {source} (named as restored "
                "in the results; their training time is not counted)"
            )
    units = plan(variant, seeds, folds)

    def usable(unit):
        return repro.is_done(unit, work_dir, repro.unit_config(unit, word_dim, overrides))

    todo = [u for u in units if not usable(u)]
    seconds = nested.estimate_seconds(work_dir, todo)
    log(
        f"== stability {dataset}: {variant} x{ensemble}{' +prior' if prior_correction else ''}"
        f", {runs} runs (seeds {'; '.join(', '.join(map(str, s)) for s in seeds)}), "
        f"{folds} folds: {len(units)} units, {len(units) - len(todo)} done, {len(todo)} to "
        f"run; {planned_time(seconds, jobs)}"
    )
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    header = results_header(command, results_dir)

    def write():
        return write_results(
            work_dir,
            results_dir,
            dataset,
            spec,
            header,
            restored_from=", ".join(sources),
            usable=usable,
        )

    run_pool(
        todo,
        lambda u: (
            repro.run_unit,
            (str(records_dir), str(work_dir), u, overrides, header["commit"]),
        ),
        jobs=jobs,
        threads=threads,
        log=log,
        describe=lambda row: (
            f"WA {row['wa']:.3f} UA {row['ua']:.3f} (epoch "
            f"{row['best_epoch']}/{row['epochs_run']}, refit "
            f"{row['refit_epochs']})"
        ),
        after_each=lambda row: write(),
    )
    summary = write()
    for run in summary["runs"]:
        if run["cv"]:
            log(
                f"run {run['run']} (seeds {run['seeds']}): CV WA {tables.ci(run['cv']['wa'])} "
                f"UA {tables.ci(run['cv']['ua'])}"
            )
    if summary["target"]:
        t = summary["target"]
        log(
            f"== CV UA spread {t['cv_ua_spread']:.3f}, lowest fold WA {t['fold_wa_lowest']:.3f}"
            f": target {'met' if t['met'] else 'not met'}"
        )
    log(f"== results: {results_dir / (dataset + '-stability.md')}")
    return summary
