"""`cme-ser reproduce`: resumable units, results files, the paired claims, on synthetic records."""

import json

import numpy as np
import pytest

from cli.main import main
from experiments import reproduce as repro
from experiments import tables


def test_reproduce_writes_results_and_resumes(tmp_path, capsys, synthetic_records):
    records = synthetic_records(tmp_path / "prep")
    common = [
        "reproduce",
        "--folds",
        "2",
        "--epochs",
        "1",
        "--records",
        str(records),
        "--work-dir",
        str(tmp_path / "work"),
        "--results-dir",
        str(tmp_path / "results"),
    ]
    assert main(common + ["--variants", "cme,no_excite", "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    assert "4 units (2 variants x 1 seeds x 2 folds), 0 already done, 4 to run" in out
    result = json.loads((tmp_path / "results" / "ravdess.json").read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert set(rows) == {"cme", "no_excite"}
    assert rows["cme"]["units"] == 2 and rows["cme"]["seeds"] == [0]
    assert rows["cme"]["paper"] == {"wa": 0.720, "ua": 0.708}
    units = [
        json.loads(p.read_text())
        for p in (tmp_path / "work" / "runs" / "cme").glob("seed0/fold*.json")
    ]
    assert rows["cme"]["wa"]["mean"] == pytest.approx(np.mean([u["wa"] for u in units]))
    assert all(u["config"]["epochs"] == 1 and u["num_test"] == 12 for u in units)
    # Every unit carries the command's commit, taken before any results were written.
    assert {u["commit"] for u in units} == {result["header"]["commit"]}
    embeddings = np.load(tmp_path / "work" / "runs" / "cme" / "seed0" / "fold0.npz")
    assert embeddings["embeddings"].shape == (12, 128)
    np.testing.assert_allclose(embeddings["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
    assert rows["cme"].get("ensemble") is None  # one seed: no ensemble
    assert list(embeddings["utterance_ids"]) == [f"f0-{i:02d}" for i in range(12)]
    # The selected model's predictions on the inner validation speakers (s10: 6 of fold 1's 12).
    assert embeddings["val_probabilities"].shape == (6, 4)
    assert list(embeddings["val_utterance_ids"]) == [f"f1-{i:02d}" for i in range(0, 12, 2)]
    assert list(embeddings["val_labels"]) == [0, 1, 2, 3, 0, 1]
    assert all(u["train_class_counts"] == [2, 2, 1, 1] for u in units)  # s11 (or s01)
    correction = rows["cme"]["prior_correction"]
    assert correction["units"] == 2 and isinstance(correction["adopted"], bool)
    claim = [c for c in result["claims"] if c["worse"] == "no_excite" and c["metric"] == "ua"]
    assert len(claim) == 1 and claim[0]["units"] == 2 and claim[0]["n_folds"] == 2
    assert {"mean", "ci95", "t", "p", "p_holm", "holds"} <= set(claim[0])
    assert set(rows["cme"]["wa"]) == {"mean", "sd", "ci95", "n_folds"}
    assert rows["cme"]["wa"]["n_folds"] == 2
    markdown = (tmp_path / "results" / "ravdess.md").read_text()
    assert (f"Produced by `cme-ser reproduce --folds 2 --epochs 1 --records {records} ") in markdown
    assert "| `cme` | ours" in markdown and "| 0.720 | 0.708 | 2 (1) |" in markdown
    assert "Finished 4 of the 4 units this command plans." in markdown
    assert "mean [95% CI] over n = 2 folds (seeds averaged within each fold first" in markdown
    assert "+-" not in markdown
    assert (tmp_path / "results" / "ravdess-tsne.png").stat().st_size > 10000
    assert [p["variant"] for p in result["tsne"]["panels"]] == ["no_excite", "cme"]

    # Same command again: nothing is recomputed.
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "work").glob("runs/*/*/*.json")}
    assert main(common + ["--variants", "cme,no_excite", "--seeds", "1"]) == 0
    assert "4 already done, 0 to run" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in before} == before

    # The archive beside the results restores every unit into an empty work dir (a fresh
    # checkout): nothing is retrained, predictions come back bit for bit, the tables agree.
    assert len((tmp_path / "results" / "ravdess-units.jsonl").read_text().splitlines()) == 4
    fresh = [a if a != str(tmp_path / "work") else str(tmp_path / "work2") for a in common]
    assert main(fresh + ["--variants", "cme,no_excite", "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    assert "restored 4 finished unit(s)" in out and "4 already done, 0 to run" in out
    for name in ("fold0.npz", "fold1.npz"):
        old, new = (
            np.load(tmp_path / w / "runs" / "cme" / "seed0" / name) for w in ("work", "work2")
        )
        for key in repro.PREDICTION_KEYS:
            np.testing.assert_array_equal(old[key], new[key])
    again = json.loads((tmp_path / "results" / "ravdess.json").read_text())
    assert [(r["variant"], r["wa"], r["ua"], r["prior_correction"]) for r in again["rows"]] == [
        (r["variant"], r["wa"], r["ua"], r["prior_correction"]) for r in result["rows"]
    ]
    assert again["tsne"] == result["tsne"]  # restored units have no embeddings to redraw

    # A second seed for one variant trains only the new units; both commands are listed.
    assert main(common + ["--variants", "cme", "--seeds", "2"]) == 0
    assert "2 already done, 2 to run" in capsys.readouterr().out
    result = json.loads((tmp_path / "results" / "ravdess.json").read_text())
    assert {r["variant"]: r["seeds"] for r in result["rows"]} == {"cme": [0, 1], "no_excite": [0]}
    assert len(result["header"]["commands"]) == 2
    # Two complete seeds of `cme`: the seed ensemble averages their probabilities per fold.
    ensemble = {r["variant"]: r for r in result["rows"]}["cme"]["ensemble"]
    was = []
    for fold in range(2):
        members = [
            np.load(tmp_path / "work" / "runs" / "cme" / f"seed{s}" / f"fold{fold}.npz")
            for s in range(2)
        ]
        mean = (members[0]["probabilities"] + members[1]["probabilities"]) / 2
        was.append(np.mean(mean.argmax(1) == members[0]["labels"]))
    assert ensemble["seeds"] == [0, 1]
    assert {r["variant"]: r for r in result["rows"]}["cme"]["ensembles"] == [ensemble]
    assert ensemble["wa"]["mean"] == pytest.approx(np.mean(was))
    assert ensemble["per_fold"]["wa"] == pytest.approx(was)
    # Its gain is paired over folds, against the mean of the same seeds' single models.
    singles = [
        np.mean(
            [
                json.loads(
                    (tmp_path / "work" / "runs" / "cme" / f"seed{s}" / f"fold{k}.json").read_text()
                )["wa"]
                for s in range(2)
            ]
        )
        for k in range(2)
    ]
    gain = ensemble["gain"]["wa"]
    assert gain["n_folds"] == 2 and gain["mean"] == pytest.approx(np.mean(was) - np.mean(singles))
    assert {"p", "p_holm", "holds", "ci95"} <= set(gain)
    assert "## Seed ensembles" in (tmp_path / "results" / "ravdess.md").read_text()
    # An interrupted command says how far it got.
    (tmp_path / "work" / "runs" / "cme" / "seed1" / "fold1.json").unlink()
    summary = repro.write_results(
        tmp_path / "work", tmp_path / "results", "ravdess", 2, result["header"]
    )
    assert "Finished 3 of the 4 units this command plans (re-run it" in tables.table1_markdown(
        summary, result["header"]
    )


def test_reproduce_rejects_bad_requests(tmp_path, capsys, synthetic_records):
    records = synthetic_records(tmp_path / "prep")
    assert main(["reproduce", "--variants", "cme,nope", "--records", str(records)]) == 2
    assert "unknown variant(s) ['nope']" in capsys.readouterr().err
    assert (
        main(
            [
                "reproduce",
                "--folds",
                "5",
                "--records",
                str(records),
                "--work-dir",
                str(tmp_path / "w"),
                "--results-dir",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    assert "have 2 folds, not 5" in capsys.readouterr().err
    assert main(["reproduce", "--records", str(tmp_path / "nothing")]) == 2
    assert "holds no preprocessed records" in capsys.readouterr().err


def test_paired_claims_over_folds():
    from scipy import stats

    def rows(variant, values, seed=0):
        return [
            {"variant": variant, "seed": seed, "fold": k, "ua": v} for k, v in enumerate(values)
        ]

    better = rows("cme", [0.80, 0.82, 0.78, 0.81])
    test = repro._paired(
        better + rows("no_excite", [0.70, 0.71, 0.69, 0.72]), "cme", "no_excite", "ua"
    )
    assert test["wins"] == 4 and test["n_folds"] == 4 and test["df"] == 3
    assert test["mean"] == pytest.approx(0.0975)
    reference = stats.ttest_rel([0.80, 0.82, 0.78, 0.81], [0.70, 0.71, 0.69, 0.72])
    assert test["p"] == pytest.approx(reference.pvalue, abs=1e-12)
    assert test["ci95"][0] > 0
    mixed = repro._paired(
        better + rows("no_excite", [0.85, 0.75, 0.80, 0.80]), "cme", "no_excite", "ua"
    )
    assert (mixed["wins"], mixed["losses"]) == (2, 2) and mixed["p"] > 0.5
    assert repro._paired(better[:1] + rows("no_excite", [0.7]), "cme", "no_excite", "ua") is None
    # A second seed on every fold adds units, not observations: the folds' means are tested.
    seed1 = rows("cme", [0.76, 0.80, 0.80, 0.79], seed=1) + rows(
        "no_excite", [0.70, 0.74, 0.70, 0.70], seed=1
    )
    two = repro._paired(
        better + seed1 + rows("no_excite", [0.70, 0.71, 0.69, 0.72]), "cme", "no_excite", "ua"
    )
    assert two["units"] == 8 and two["n_folds"] == 4 and two["df"] == 3
    diffs = np.array([[0.10, 0.11, 0.09, 0.09], [0.06, 0.06, 0.10, 0.09]]).mean(axis=0)
    assert two["mean"] == pytest.approx(diffs.mean())
    assert two["p"] == pytest.approx(stats.ttest_1samp(diffs, 0.0).pvalue, abs=1e-12)


def test_summary_averages_seeds_per_fold_and_holm_corrects_the_claims():
    from scipy import stats

    def row(variant, seed, fold, wa, ua):
        return {
            "variant": variant,
            "seed": seed,
            "fold": fold,
            "wa": wa,
            "ua": ua,
            "seconds": 1.0,
            "config": {},
        }

    rng = np.random.default_rng(3)
    rows = []
    for variant, shift in (("cme", 0.05), ("no_excite", 0.0), ("cme_paper", 0.04)):
        for fold in range(5):
            base = 0.6 + 0.02 * fold
            for seed in range(2 if variant != "cme_paper" or fold else 1):  # cme_paper: 9 units
                rows.append(
                    row(
                        variant,
                        seed,
                        fold,
                        base + shift + rng.normal(0, 0.01),
                        base + shift + rng.normal(0, 0.02),
                    )
                )
    summary = repro.summarize(rows, "ravdess", folds=5)
    paper = {r["variant"]: r for r in summary["rows"]}["cme_paper"]
    fold_wa = [
        np.mean([r["wa"] for r in rows if r["variant"] == "cme_paper" and r["fold"] == k])
        for k in range(5)
    ]
    assert paper["units"] == 9 and paper["wa"]["n_folds"] == 5
    assert paper["wa"]["mean"] == pytest.approx(np.mean(fold_wa), abs=1e-12)
    assert paper["wa"]["sd"] == pytest.approx(np.std(fold_wa, ddof=1), abs=1e-12)
    assert paper["wa"]["ci95"] == pytest.approx(
        list(stats.t.interval(0.95, 4, loc=np.mean(fold_wa), scale=stats.sem(fold_wa))), abs=1e-12
    )
    claims = summary["claims"]
    assert [(c["better"], c["worse"], c["metric"]) for c in claims] == [
        ("cme", "no_excite", "wa"),
        ("cme", "no_excite", "ua"),
        ("cme", "cme_paper", "wa"),
        ("cme", "cme_paper", "ua"),
    ]
    p = [c["p"] for c in claims]
    m = len(p)
    order = np.argsort(p)
    expected = np.minimum(1, np.maximum.accumulate([(m - i) * p[j] for i, j in enumerate(order)]))
    assert [claims[j]["p_holm"] for j in order] == pytest.approx(list(expected), abs=1e-12)
    assert all(c["holds"] == (c["p_holm"] < 0.05 and c["mean"] > 0) for c in claims)
    assert claims[0]["holds"]  # +0.05 on every fold
    markdown = tables.table1_markdown(
        summary, {"command": "x", "commit": "c", "date": "d", "machine": "m"}
    )
    assert "over n = 5 folds (seeds averaged within each fold first; Student t, df = 4)" in markdown
    assert "| excitation helps (both gates vs none) | WA | +0.0" in markdown
    assert "| 5 (10) | 5/0 | holds |" in markdown


def test_every_configuration_run_is_listed_as_tried_and_results_are_labelled_development():
    """Nothing in a work dir is silently dropped: a variant since removed from VARIANTS and an
    older configuration of a current variant both appear in the "tried" section."""

    def row(variant, fold, wa, config, commit="abc"):
        return {
            "variant": variant,
            "seed": 0,
            "fold": fold,
            "wa": wa,
            "ua": wa - 0.01,
            "seconds": 1.0,
            "config": config,
            "commit": commit,
        }

    rows = (
        [row("cme", k, 0.7, {"epochs": 40}) for k in range(3)]
        + [row("cme", k, 0.6, {"epochs": 10}, commit="old") for k in range(3)]
        + [row("cme_refit_patient", k, 0.65, {"patience": 20}) for k in range(3)]
    )
    summary = repro.summarize(rows, "ravdess", folds=3)
    assert [r["variant"] for r in summary["rows"]] == ["cme"]  # the table: current variants
    tried = {(t["variant"], t["commits"][0]): t for t in summary["tried"]}
    assert set(tried) == {("cme", "abc"), ("cme", "old"), ("cme_refit_patient", "abc")}
    assert tried[("cme_refit_patient", "abc")]["in_variants"] is False
    assert tried[("cme", "old")]["wa"]["mean"] == pytest.approx(0.6)
    assert tried[("cme", "abc")]["config_sha256"] != tried[("cme", "old")]["config_sha256"]
    markdown = tables.table1_markdown(
        summary, {"command": "x", "commit": "c", "date": "d", "machine": "m"}
    )
    assert tables.DEVELOPMENT_LABEL.format(dataset="ravdess") in markdown
    assert "`ravdess-nested.md`" in markdown
    assert "| `cme_refit_patient` |" in markdown.split("## Tried")[1]
    assert "no (removed)" in markdown


def test_plan_is_seed_major_and_checks_variants():
    units = repro.plan(["cme", "no_excite"], seeds=2, folds=2)
    assert [str(u) for u in units[:4]] == [
        "cme seed 0 fold 0",
        "cme seed 0 fold 1",
        "no_excite seed 0 fold 0",
        "no_excite seed 0 fold 1",
    ]
    assert len(units) == 8 and units[4].seed == 1
    with pytest.raises(ValueError, match="unknown variant"):
        repro.plan(["bogus"], 1, 2)


def test_seed_ensemble_needs_every_member(tmp_path):
    def unit(seed, fold, probabilities, ids=("a", "b", "c")):
        path = repro.Unit("cme", seed, fold).path(tmp_path).with_suffix(".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        fields = {"labels": np.array([0, 1, 1]), "utterance_ids": np.array(ids)}
        if probabilities is not None:
            fields["probabilities"] = np.array(probabilities, np.float32)
        np.savez(path, **fields)

    # Seed 0 gets utterance c wrong, seed 1 gets a wrong: their average gets all three right.
    unit(0, 0, [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    unit(1, 0, [[0.4, 0.6], [0.3, 0.7], [0.1, 0.9]])
    result = repro.seed_ensemble(tmp_path, "cme", [0, 1], folds=1)
    assert result["wa"] == {"mean": 1.0, "sd": None, "ci95": None, "n_folds": 1}
    assert result["ua"]["mean"] == 1.0 and result["per_fold"]["ua"] == [1.0]
    assert result["gain"] == {"wa": None, "ua": None}  # one fold: nothing to test over
    assert repro.seed_ensemble(tmp_path, "cme", [0], folds=1) is None
    unit(1, 0, None)  # a unit from before probabilities were saved
    assert repro.seed_ensemble(tmp_path, "cme", [0, 1], folds=1) is None
    unit(1, 0, [[0.4, 0.6], [0.3, 0.7], [0.1, 0.9]], ids=("a", "b", "d"))
    with pytest.raises(ValueError, match="different utterances"):
        repro.seed_ensemble(tmp_path, "cme", [0, 1], folds=1)


def test_prior_correction_is_decided_on_validation_predictions(tmp_path):
    def unit(seed, val_probabilities, val_labels, probabilities, labels, fold=0):
        u = repro.Unit("cme", seed, fold)
        u.path(tmp_path).parent.mkdir(parents=True, exist_ok=True)
        u.path(tmp_path).write_text(json.dumps({"train_class_counts": [2, 1]}))
        np.savez(
            u.path(tmp_path).with_suffix(".npz"),
            utterance_ids=np.array(["a", "b"]),
            probabilities=np.array(probabilities, np.float32),
            labels=np.array(labels),
            val_probabilities=np.array(val_probabilities, np.float32),
            val_labels=np.array(val_labels),
        )
        return u

    # Prior (2/3, 1/3): 0.6 / 0.4 becomes 0.43 / 0.57, so the minority class 1 is chosen.
    units = [
        unit(0, [[0.6, 0.4], [0.9, 0.1]], [1, 0], [[0.6, 0.4], [0.7, 0.3]], [0, 1]),
        unit(1, [[0.6, 0.4], [0.8, 0.2]], [1, 0], [[0.8, 0.2], [0.3, 0.7]], [0, 1]),
    ]
    test = repro.prior_correction_test(tmp_path, "cme", units)
    assert test["adopted"] and test["units"] == 2 and test["n_folds"] == 1
    assert test["validation"]["ua"]["mean"] == 0.5
    assert test["validation"]["corrected_ua"]["mean"] == 1.0
    assert test["validation"]["ua_gain"] is None  # two seeds of one fold: one observation
    # Held-out: the correction flips both of unit 0's decisions, both wrong (reported, not used).
    assert test["test"]["ua"]["mean"] == 0.75 and test["test"]["corrected_ua"]["mean"] == 0.5
    assert test["test"]["wa"]["mean"] == 0.75 and test["test"]["corrected_wa"]["mean"] == 0.5
    ensemble = repro.seed_ensemble(tmp_path, "cme", [0, 1], folds=1, prior_correction=True)
    assert ensemble["ua"]["mean"] == 1.0  # mean (0.7, 0.3), (0.5, 0.5) -> corrected 0.54, 0.67
    assert ensemble["gain_over"] == "the same ensemble without the correction"
    # A second fold where the correction changes nothing on validation: gain 0.5, then 0.
    more = units + [
        unit(s, [[0.9, 0.1], [0.9, 0.1]], [1, 0], [[0.6, 0.4], [0.7, 0.3]], [0, 1], fold=1)
        for s in (0, 1)
    ]
    gain = repro.prior_correction_test(tmp_path, "cme", more)["validation"]["ua_gain"]
    assert gain["n_folds"] == 2 and (gain["wins"], gain["losses"]) == (1, 0)
    assert gain["mean"] == pytest.approx(0.25) and gain["t"] == pytest.approx(1.0)
    assert gain["p"] == pytest.approx(0.5)  # t(1) = 1: two-sided p 0.5
    # Against the validation evidence: not adopted.
    units = [unit(0, [[0.6, 0.4], [0.9, 0.1]], [0, 0], [[0.6, 0.4]] * 2, [0, 1])]
    assert not repro.prior_correction_test(tmp_path, "cme", units)["adopted"]
    assert repro.prior_correction_test(tmp_path, "cme", [repro.Unit("cme", 7, 0)]) is None


def test_units_from_before_a_new_config_field_stay_done(tmp_path):
    unit = repro.Unit("cme", 0, 0)
    config = repro.unit_config(unit, word_dim=50)
    stored = json.loads(config.to_json())
    del stored["refit"]  # written before ModelConfig had the field
    unit.path(tmp_path).parent.mkdir(parents=True)
    unit.path(tmp_path).write_text(json.dumps({"config": stored}))
    assert repro.is_done(unit, tmp_path, config)
    assert not repro.is_done(unit, tmp_path, config.replace(refit=True))
    assert not repro.is_done(unit, tmp_path, config.replace(dropout=0.1))
    assert not repro.is_done(repro.Unit("cme", 1, 0), tmp_path, config)


def test_tsne_figure_has_a_panel_per_excitation_setting(tmp_path):
    """Figure 2 from held-out embeddings: one panel per variant that kept its embeddings, each
    scored by the silhouette of the true classes (better separated classes score higher)."""
    assert repro.draw_tsne(tmp_path, tmp_path / "none.png") is None  # no unit has embeddings
    rng = np.random.default_rng(0)
    for separation, (variant, _) in enumerate(repro.TSNE_PANELS[:3]):
        path = repro.Unit(variant, 0, 0).path(tmp_path)
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"config": {"class_names": ["angry", "happy", "sad"]}}))
        labels = rng.integers(0, 3, 60)
        np.savez(
            path.with_suffix(".npz"),
            labels=labels,
            embeddings=rng.normal(size=(60, 8)) + 2.0 * separation * labels[:, None],
        )
    info = repro.draw_tsne(tmp_path, tmp_path / "figs" / "tsne.png")
    assert (tmp_path / "figs" / "tsne.png").stat().st_size > 0
    assert info["figure"] == "tsne.png" and (info["seed"], info["fold"]) == (0, 0)
    assert [p["variant"] for p in info["panels"]] == [v for v, _ in repro.TSNE_PANELS[:3]]
    scores = [p["silhouette"] for p in info["panels"]]
    assert abs(scores[0]) < 0.1 and scores[0] < scores[1] < scores[2]


def test_reproduce_preprocesses_a_corpus_quietly(tmp_path):
    """Without --records, the corpus is preprocessed into the work dir first; Beam's and
    TensorFlow's messages go to the work dir's log file, the terminal gets our lines only."""
    import subprocess
    import sys
    from pathlib import Path

    from conftest import small_ravdess_corpus

    from preprocessing.embeddings import fetch_glove

    corpus = small_ravdess_corpus(tmp_path / "corpus")  # skips without the data
    fetch_glove()
    work = tmp_path / "work"
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "cme-ser"),
            "reproduce",
            "--data-dir",
            str(corpus),
            "--folds",
            "2",
            "--epochs",
            "1",
            "--variants",
            "cme",
            "--seeds",
            "1",
            "--work-dir",
            str(work),
            "--results-dir",
            str(tmp_path / "results"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    log = work / "cme-ser-reproduce.log"
    summary = json.loads((work / "records" / "summary.json").read_text())
    assert done.stdout.splitlines()[:3] == [
        f"== Beam's and TensorFlow's messages: {log} (--verbose shows them here)",
        f"== preprocessing ravdess into {work / 'records'}",
        f"   24 records of 24 utterances, 0 errors, in {summary['seconds']:.0f} s "
        f"({work / 'records' / 'summary.json'})",
    ]
    assert "2 units (1 variants x 1 seeds x 2 folds), 0 already done, 2 to run" in done.stdout
    assert done.stderr == ""
    assert "apache_beam" not in done.stdout and "apache_beam" in log.read_text()
    result = json.loads((tmp_path / "results" / "ravdess.json").read_text())
    assert [(r["variant"], r["units"]) for r in result["rows"]] == [("cme", 2)]
