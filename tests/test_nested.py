"""`cme-ser reproduce --protocol nested`: the pre-registered selection, per-outer-fold winners,
the archive, resuming, and a proof that the outer fold is never read while choosing."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from cli.main import main
from experiments import nested

ROOT = Path(__file__).resolve().parents[1]

SELECTION = {
    "description": "test selection",
    "rule": {"score": "inner_ua", "tie_tolerance": 1e-9, "tie_break": ["cost", "order"]},
    "candidates": [
        {"name": "cme", "variant": "cme", "seeds": [0], "prior_correction": False},
        {"name": "cme+prior", "variant": "cme", "seeds": [0], "prior_correction": True},
    ],
}


def permuted_copy(records: Path, dest: Path, fold: int, seed: int = 1) -> Path:
    """A copy of ``records`` whose ``fold`` has its labels permuted among each speaker's
    utterances (each speaker keeps its class counts)."""
    shutil.copytree(records, dest)
    [path] = (dest / "records" / f"fold-{fold}").glob("*.tfrecord.gz")
    examples = [
        tf.train.Example.FromString(raw.numpy())
        for raw in tf.data.TFRecordDataset(str(path), compression_type="GZIP")
    ]

    def feature(example, name):
        return example.features.feature[name]

    labels = np.asarray([feature(e, "label").int64_list.value[0] for e in examples])
    names = {
        int(label): feature(e, "label_name").bytes_list.value[0]
        for e, label in zip(examples, labels)
    }
    speakers = np.asarray([feature(e, "speaker").bytes_list.value[0] for e in examples])
    rng, permuted = np.random.default_rng(seed), labels.copy()
    for speaker in set(speakers):
        mine = np.flatnonzero(speakers == speaker)
        permuted[mine] = rng.permutation(labels[mine])
    assert (permuted != labels).any()
    with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
        for example, label in zip(examples, permuted):
            example.features.feature["label"].int64_list.value[:] = [int(label)]
            example.features.feature["label_name"].bytes_list.value[:] = [names[int(label)]]
            writer.write(example.SerializeToString())
    return dest


# Enough to learn the synthetic classes a little (9 s a unit), so the candidates' scores differ.
OVERRIDES = {"epochs": 8, "batch_size": 4, "learning_rate": 0.005}


def run(records, work, results, selection, **kwargs):
    log = []
    nested.run_nested(
        records,
        work,
        results,
        dataset="ravdess",
        selection_path=selection,
        folds=3,
        overrides=OVERRIDES,
        log=log.append,
        **kwargs,
    )
    return json.loads((results / "ravdess-nested.json").read_text()), "\n".join(log)


def rule_winner(names, scores, tolerance=SELECTION["rule"]["tie_tolerance"]):
    """The selection rule for candidates of equal cost: the highest score, where scores within
    ``tolerance`` of it tie and the first listed wins. (A plain argmax would differ when the
    prior correction moves UA by a rounding error: such near-ties are ties.)"""
    best = max(scores)
    return next(n for n, score in zip(names, scores) if score >= best - tolerance)


def test_nested_run_chooses_on_inner_folds_only(tmp_path, synthetic_records):
    records = synthetic_records(tmp_path / "prep", folds=3)
    selection = tmp_path / "selection.json"
    selection.write_text(json.dumps(SELECTION, indent=1))
    names = [c["name"] for c in SELECTION["candidates"]]

    # Two worker processes here; the runs below train in this process (one job): the same
    # units come out bit for bit either way.
    result, out = run(records, tmp_path / "work", tmp_path / "results", selection, jobs=2)
    assert "9 units: 6 inner (0 done, 6 to run) + 3 outer (0 done, 3 to run)" in out
    assert "CPU hours" in out
    assert result["selection"]["sha256"] == hashlib.sha256(selection.read_bytes()).hexdigest()
    assert result["header"]["commit"] and result["complete"]
    rows = result["outer_folds"]
    assert [r["fold"] for r in rows] == [0, 1, 2]
    for row in rows:
        assert row["inner_folds"] == [j for j in range(3) if j != row["fold"]]
        inner = [row["inner"][n]["ua"] for n in names]
        assert row["winner"] == rule_winner(names, inner)
        for n in names:
            s = row["inner"][n]
            assert s["ua"] == pytest.approx(np.mean(s["per_fold"]["ua"]), abs=1e-15)
    outer_ua = [r["outer"]["ua"] for r in rows]
    assert result["estimate"]["ua"]["mean"] == pytest.approx(np.mean(outer_ua), abs=1e-12)
    assert result["estimate"]["ua"]["ci95"] == pytest.approx(
        list(stats.t.interval(0.95, 2, loc=np.mean(outer_ua), scale=stats.sem(outer_ua))), abs=1e-12
    )
    cv = result["shipped_default"]["cv"]
    assert result["shipped_default"]["candidate"] == rule_winner(
        names, [cv[n]["ua"] for n in names]
    )
    # The winner's outer score is its ordinary unit's (a single model, no correction: its UA).
    for row in rows:
        if row["winner"] == "cme":
            unit = json.loads(
                (
                    tmp_path / "work" / "runs" / "cme" / "seed0" / f"fold{row['fold']}.json"
                ).read_text()
            )
            assert row["outer"]["ua"] == pytest.approx(unit["ua"])
    markdown = (tmp_path / "results" / "ravdess-nested.md").read_text()
    assert result["selection"]["sha256"] in markdown and "n = 3 outer folds" in markdown
    assert "held-out folds seen while choosing" in markdown

    # Every number's unit is archived with its predictions, and the results re-render from the
    # archive alone (nothing retrained) to the same numbers.
    archived = {}
    for line in (tmp_path / "results" / "ravdess-nested-units.jsonl").read_text().splitlines():
        row = json.loads(line)
        unit = (
            nested.InnerUnit(row["variant"], row["seed"], row["outer"], row["fold"])
            if row["kind"] == "inner"
            else nested.repro.Unit(row["variant"], row["seed"], row["fold"])
        )
        archived[str(unit)] = row
    assert len(archived) == 9
    for row in rows:
        for unit in row["units"]["inner"] + row["units"]["outer"]:
            assert len(archived[unit]["predictions"]["probabilities"]) == 12
    shutil.copytree(tmp_path / "results", tmp_path / "fresh")
    again = nested.rerender(tmp_path / "fresh", "ravdess")
    for key in ("outer_folds", "estimate", "shipped_default", "winners", "selection"):
        assert again[key] == result[key]
    assert (
        "Re-rendered from the archived units"
        in (tmp_path / "fresh" / "ravdess-nested.md").read_text()
    )

    # An inner unit and its partner (outer 0 / inner 1 and outer 1 / inner 0: both train on
    # fold 2 alone) share one training, counted once; its model is the one an unshared
    # training gives, bit for bit.
    work = tmp_path / "work"
    pair = [
        json.loads((work / "nested" / "cme" / "seed0" / f"outer{o}" / f"inner{i}.json").read_text())
        for o, i in ((0, 1), (1, 0))
    ]
    assert pair[0]["shared_training"] == "cme seed 0 outer 1 inner 0"
    assert pair[1]["shared_training"] == "cme seed 0 outer 0 inner 1"
    assert pair[0]["seconds"] == pair[1]["seconds"]
    units = result["units"]
    assert units["trained"] == 9 and units["restored"] == 0 and units["shared_trainings"] == 3
    outer_rows = [json.loads(p.read_text()) for p in (work / "runs").rglob("fold*.json")]
    inner_rows = [json.loads(p.read_text()) for p in (work / "nested").rglob("inner*.json")]
    assert units["train_seconds"] == pytest.approx(
        sum(r["seconds"] for r in outer_rows)
        + sum(r["seconds"] for r in inner_rows if r["outer"] < r["fold"]),
        abs=0.2,
    )
    from experiments.folds import files_by_fold
    from experiments.reproduce import unit_config
    from preprocessing.records import word_dim_of_files
    from trainer.train import train_fold

    files = {k: v for k, v in files_by_fold(records).items() if k != 0}
    config = unit_config(nested.InnerUnit("cme", 0, 0, 1), word_dim_of_files(files[1]), OVERRIDES)
    alone = train_fold(files, 1, config, embeddings_path=str(tmp_path / "alone.npz"))
    shared = np.load(work / "nested" / "cme" / "seed0" / "outer0" / "inner1.npz")
    np.testing.assert_array_equal(
        np.load(tmp_path / "alone.npz")["probabilities"], shared["probabilities"]
    )
    assert alone.best_epoch == pair[0]["best_epoch"]

    # Resumed: nothing is retrained.
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "work").rglob("*.json")}
    resumed, out = run(records, tmp_path / "work", tmp_path / "results", selection)
    assert "6 inner (6 done, 0 to run) + 3 outer (3 done, 0 to run)" in out
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert resumed["outer_folds"] == rows

    # The outer fold's labels permuted, in a fresh work and results dir: the inner scores and
    # the choice for that outer fold are identical, bit for bit; its outer score may differ.
    # (Only outer fold 0's units are trained, to keep the test short.)
    permuted = permuted_copy(records, tmp_path / "permuted", fold=0)
    other, out = run(
        permuted, tmp_path / "work2", tmp_path / "results2", selection, outer_folds=[0]
    )
    assert "2 inner (0 done, 2 to run) + 1 outer (0 done, 1 to run)" in out
    assert other["outer_folds"][0]["outer"] is not None
    assert other["outer_folds"][0]["inner"] == rows[0]["inner"]
    assert other["outer_folds"][0]["winner"] == rows[0]["winner"]
    for j in (1, 2):
        a, b = (
            np.load(tmp_path / w / "nested" / "cme" / "seed0" / "outer0" / f"inner{j}.npz")
            for w in ("work", "work2")
        )
        for key in ("probabilities", "labels", "val_probabilities"):
            np.testing.assert_array_equal(a[key], b[key])
    a, b = (
        np.load(tmp_path / w / "runs" / "cme" / "seed0" / "fold0.npz") for w in ("work", "work2")
    )
    assert (a["labels"] != b["labels"]).any()  # the permutation reached the outer fold


def test_choose_breaks_ties_by_cost_then_order():
    cands = [
        nested.Candidate("bag", "cme_refit_bag", (0,)),  # cost 2
        nested.Candidate("a", "cme", (0,)),
        nested.Candidate("b", "cme", (0,), True),
        nested.Candidate("x3", "cme", (0, 1, 2)),
    ]
    assert [c.cost for c in cands] == [2, 1, 1, 3]
    assert nested.choose([0.7, 0.6, 0.6, 0.6], cands, 1e-9) == 0
    assert nested.choose([0.7, 0.7 - 1e-12, 0.7, 0.7], cands, 1e-9) == 1
    assert nested.choose([0.7, 0.6, 0.7, 0.7 + 1e-12], cands, 1e-9) == 2
    assert nested.choose([0.7, 0.6, 0.7, 0.71], cands, 1e-9) == 3


def test_the_committed_selection_file(tmp_path):
    selection = nested.load_selection(ROOT / "docs" / "selection.json")
    assert (
        selection.sha256
        == hashlib.sha256((ROOT / "docs" / "selection.json").read_bytes()).hexdigest()
    )
    assert 2 <= len(selection.candidates) <= 6
    inner, outer = nested.plan(selection, 5)
    assert len(outer) == 5 * len(nested.models(selection))
    assert len(inner) + len(outer) <= 120  # a few CPU hours at ~150 s a unit
    bad = {**SELECTION, "candidates": [{"name": "x", "variant": "nope", "seeds": [0]}]}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="unknown variant 'nope'"):
        nested.load_selection(tmp_path / "bad.json")
    assert (
        main(["reproduce", "--protocol", "nested", "--selection", str(tmp_path / "bad.json")]) == 2
    )


def test_cli_runs_the_nested_protocol(tmp_path, monkeypatch, synthetic_records):
    records = synthetic_records(tmp_path / "prep", folds=3)
    calls = []
    monkeypatch.chdir(ROOT)  # the default --selection is docs/selection.json
    monkeypatch.setattr(nested, "run_nested", lambda *a, **k: calls.append((a, k)) or {})
    assert (
        main(
            [
                "reproduce",
                "--protocol",
                "nested",
                "--folds",
                "3",
                "--epochs",
                "2",
                "--jobs",
                "2",
                "--records",
                str(records),
                "--work-dir",
                str(tmp_path / "w"),
                "--results-dir",
                str(tmp_path / "r"),
            ]
        )
        == 0
    )
    [(args, kwargs)] = calls
    assert [str(a) for a in args] == [str(records), str(tmp_path / "w"), str(tmp_path / "r")]
    assert kwargs["selection_path"] == "docs/selection.json" and kwargs["folds"] == 3
    assert kwargs["jobs"] == 2 and kwargs["overrides"] == {"epochs": 2}
    assert kwargs["command"].startswith("cme-ser reproduce --protocol nested")
    assert main(["reproduce", "--protocol", "nested", "--variants", "cme"]) == 2


TINY = {
    "cnn_filters": (4, 8, 8),
    "semantic_dim": 8,
    "lstm_units": 4,
    "fcn_units": 4,
    "epochs": 1,
    "patience": 1,
    "batch_size": 8,
}


def test_a_speech_and_song_rule_scores_both_channels_of_the_held_out_speakers(
    tmp_path, synthetic_records
):
    """Rule ``inner_ua_speech_song``: every unit scores its held-out fold's speech and song
    (whatever it trained on), a candidate's inner score is the mean of the two UAs, and a
    speech-only variant never trains on song."""
    selection = {
        "description": "two channels",
        "drafted_from": "a test",
        "rule": {**SELECTION["rule"], "score": "inner_ua_speech_song"},
        "candidates": [
            {"name": "speech", "variant": "cme_fixed30", "seeds": [0]},
            {"name": "song", "variant": "cme_fixed20_song", "seeds": [0], "prior_correction": True},
        ],
    }
    path = tmp_path / "selection.json"
    path.write_text(json.dumps(selection))
    assert nested.load_selection(path).channels == ("speech", "song")
    speech_only = synthetic_records(tmp_path / "speech", folds=3, per_fold=8)
    with pytest.raises(ValueError, match="--channels speech,song"):
        nested.run_nested(
            speech_only,
            tmp_path / "w0",
            tmp_path / "r0",
            dataset="ravdess",
            selection_path=path,
            folds=3,
            overrides=TINY,
            log=lambda _: None,
        )
    records = synthetic_records(tmp_path / "prep", folds=3, per_fold=8, channels=True)
    work, results = tmp_path / "work", tmp_path / "results"
    summary = nested.run_nested(
        records,
        work,
        results,
        dataset="ravdess",
        selection_path=path,
        folds=3,
        overrides=TINY,
        log=lambda _: None,
    )
    assert summary["complete"]
    for unit_json in work.glob("runs/*/seed0/fold*.json"):
        row = json.loads(unit_json.read_text())
        # 2 training folds of 4 utterances per channel
        assert sum(row["train_class_counts"]) == (8 if row["variant"] == "cme_fixed30" else 16)
        data = np.load(unit_json.with_suffix(".npz"))
        assert sorted(set(data["channels"].tolist())) == ["song", "speech"]
    candidates = {
        c["name"]: nested.Candidate(c["name"], c["variant"], (0,), c.get("prior_correction", False))
        for c in selection["candidates"]
    }
    for row in summary["outer_folds"]:
        for name, scores in row["inner"].items():
            c = candidates[name]
            per_fold = [
                nested.members_scores(
                    [nested.InnerUnit(c.variant, 0, row["fold"], j)], work, c, lambda unit: True
                )
                for j in row["inner_folds"]
            ]
            assert scores["per_fold"]["score"] == [
                pytest.approx((s["speech"][1] + s["song"][1]) / 2) for s in per_fold
            ]
            assert scores["per_fold"]["ua"] == [pytest.approx(s["speech"][1]) for s in per_fold]
            assert scores["score"] == pytest.approx(np.mean(scores["per_fold"]["score"]))
    assert "song" in summary["estimate"]
    text = (results / "ravdess-nested.md").read_text()
    assert "held-out song UA" in text and "outer song UA" in text
