"""`cme-ser reproduce --protocol stability`: the shipped model trained several times with
disjoint seed sets, its run-to-run spread, each model's epochs, the archive and what was
restored, and the machine every unit ran on."""

import json
import shutil

import numpy as np
import pytest

from cli.main import main
from experiments import stability

# The synthetic records' classes are learnable a little in a few epochs (as in test_nested).
OVERRIDES = {"epochs": 3, "batch_size": 4, "learning_rate": 0.005}


def test_seed_sets_are_disjoint_runs_of_the_ensemble():
    assert stability.seed_sets(3, 3) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert stability.seed_sets(2, 2, first_seed=100) == [[100, 101], [102, 103]]
    with pytest.raises(ValueError, match=">= 2 runs"):
        stability.seed_sets(3, 1)
    units = stability.plan("cme_refit_bag", [[0, 1], [2, 3]], folds=3)
    assert len(units) == 12 and units[0].seed == 0 and units[-1].seed == 3


def test_stability_run_reports_the_spread_of_independent_runs(tmp_path, synthetic_records):
    records = synthetic_records(tmp_path / "prep", folds=3)
    results, log = tmp_path / "results", []
    summary = stability.run_stability(
        records,
        tmp_path / "work",
        results,
        dataset="ravdess",
        folds=3,
        runs=2,
        variant="cme_refit_bag",
        ensemble=1,
        prior_correction=True,
        overrides=OVERRIDES,
        archives=(),
        log=log.append,
    )
    out = "\n".join(log)
    assert "6 units, 0 done, 6 to run" in out and "CPU hours" in out
    assert summary["seeds"] == [[0], [1]] and summary["runs_complete"] == 2
    work = tmp_path / "work"
    for run in summary["runs"]:
        for fold in run["folds"]:
            # A run's fold score is its members' mean probabilities over their pooled prior.
            data = [
                np.load(work / "runs" / "cme_refit_bag" / f"seed{s}" / f"fold{fold['fold']}.npz")
                for s in run["seeds"]
            ]
            counts = np.sum(
                [
                    json.loads(
                        (
                            work
                            / "runs"
                            / "cme_refit_bag"
                            / f"seed{s}"
                            / f"fold{fold['fold']}.json"
                        ).read_text()
                    )["train_class_counts"]
                    for s in run["seeds"]
                ],
                axis=0,
            )
            mean = np.mean([d["probabilities"] for d in data], axis=0) / (counts / counts.sum())
            wa = float(np.mean(mean.argmax(-1) == data[0]["labels"]))
            assert fold["wa"] == pytest.approx(wa)
            assert [m["seed"] for m in fold["members"]] == run["seeds"]
            for m in fold["members"]:
                assert 1 <= m["best_epoch"] <= m["epochs_run"] <= 3
                assert m["refit_epochs"] == m["best_epoch"]  # cme_refit_bag refits
        assert run["cv"]["wa"]["mean"] == pytest.approx(np.mean([f["wa"] for f in run["folds"]]))
    spread = summary["spread"]
    for k in range(3):
        was = [run["folds"][k]["wa"] for run in summary["runs"]]
        assert spread["folds"][k]["wa"] == pytest.approx(max(was) - min(was))
    cv_ua = [run["cv"]["ua"]["mean"] for run in summary["runs"]]
    assert spread["cv_ua"] == pytest.approx(max(cv_ua) - min(cv_ua))
    assert spread["cv_ua_of_runs"] == cv_ua
    # Two single-model runs: one pair of disjoint "ensembles" of one, the SD from their gap.
    [by_size] = summary["by_ensemble_size"]
    assert (by_size["ensemble"], by_size["groups"], by_size["disjoint_pairs"]) == (1, 2, 1)
    assert by_size["cv_ua_sd"] == pytest.approx(abs(cv_ua[0] - cv_ua[1]) / np.sqrt(2))
    assert by_size["expected_spread_of_3_runs"] == pytest.approx(1.6926 * by_size["cv_ua_sd"])
    target = summary["target"]
    assert target["met"] == (spread["cv_ua"] <= 0.02 and target["fold_wa_lowest"] >= 0.60)
    assert summary["units"]["trained"] == 6 and summary["units"]["restored"] == 0
    machine = summary["machines"][0]["machine"]
    assert summary["machines"][0]["units"] == 6
    assert machine["tensorflow"] and machine["cpu"] and isinstance(machine["onednn"], bool)
    markdown = (results / "ravdess-stability.md").read_text()
    assert "spread (max − min)" in markdown and "6 trained by this run" in markdown
    assert "## What the spread is made of" in markdown

    # The archive re-renders the same numbers, training nothing.
    shutil.copytree(results, tmp_path / "fresh")
    again = stability.rerender(tmp_path / "fresh", "ravdess")
    assert again["runs"] == summary["runs"] and again["spread"] == spread

    # A fresh work directory resumes the same run from its own archive: nothing retrained,
    # the units still this run's own.
    log.clear()
    resumed = stability.run_stability(
        records,
        tmp_path / "work2",
        results,
        dataset="ravdess",
        folds=3,
        runs=2,
        variant="cme_refit_bag",
        ensemble=1,
        prior_correction=True,
        overrides=OVERRIDES,
        archives=(),
        log=log.append,
    )
    assert "resumed 6 unit(s) this run trained earlier" in "\n".join(log)
    assert resumed["units"]["restored"] == 0 and resumed["units"]["trained"] == 6
    assert resumed["runs"] == summary["runs"]

    # Another run reusing those units (e.g. a nested run's winner as one of its runs) restores
    # them: counted, named, not retrained, their time not counted.
    log.clear()
    reused = stability.run_stability(
        records,
        tmp_path / "work3",
        tmp_path / "results3",
        dataset="ravdess",
        folds=3,
        runs=2,
        variant="cme_refit_bag",
        ensemble=1,
        prior_correction=True,
        overrides=OVERRIDES,
        archives=(),
        reuse=[results / "ravdess-stability-units.jsonl"],
        log=log.append,
    )
    assert "restored 6 finished unit(s)" in "\n".join(log)
    assert reused["units"]["restored"] == 6 and reused["units"]["trained"] == 0
    assert reused["units"]["train_seconds"] == 0
    assert "6 restored from" in (tmp_path / "results3" / "ravdess-stability.md").read_text()
    assert reused["runs"] == summary["runs"]

    # Units that an earlier archive also holds are compared: the same predictions are
    # identical, a changed one is reported with its epochs.
    lines = (results / "ravdess-stability-units.jsonl").read_text().splitlines()
    changed = json.loads(lines[0])
    changed["predictions"]["probabilities"][0][0] += 0.25
    edited = tmp_path / "edited.jsonl"
    edited.write_text("\n".join([json.dumps(changed)] + lines[1:]) + "\n")
    units = stability.plan("cme_refit_bag", [[0], [1]], folds=3)
    comparisons = {c["unit"]: c for c in stability.compare(work, units, [edited])}
    assert len(comparisons) == 6
    other = comparisons.pop(f"cme_refit_bag seed {changed['seed']} fold {changed['fold']}")
    assert not other["identical"] and other["max_abs_difference"] == pytest.approx(0.25)
    assert all(c["identical"] and c["max_abs_difference"] == 0 for c in comparisons.values())


def test_stability_options_are_checked(tmp_path, capsys):
    for argv, message in (
        (["--runs", "1"], "--runs must be >= 2"),
        (["--variants", "cme,cme_refit"], "measures one variant"),
    ):
        assert (
            main(["reproduce", "--protocol", "stability", "--work-dir", str(tmp_path), *argv]) == 2
        )
        assert message in capsys.readouterr().err
