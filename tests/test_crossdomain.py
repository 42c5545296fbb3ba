"""``cme-ser reproduce --protocol cross-domain``: training restricted to channels, per-channel
scores of the held-out speakers, fold statistics, archive and resume."""

import json

import numpy as np
import pytest

from experiments import crossdomain
from trainer.data import make_dataset
from trainer.metrics import confusion_matrix, prior_corrected, unweighted_accuracy

TINY = {
    "cnn_filters": (4, 8, 8),
    "semantic_dim": 8,
    "lstm_units": 4,
    "fcn_units": 4,
    "epochs": 1,
    "patience": 1,
    "batch_size": 8,
}


def record_files(root):
    return sorted(str(p) for p in (root / "records").glob("fold-*/*.tfrecord.gz"))


def test_make_dataset_keeps_only_the_given_channels(tmp_path, synthetic_records):
    root = synthetic_records(tmp_path / "prep", folds=2, per_fold=16, channels=True)
    files = record_files(root)

    def ids(channels):
        ds = make_dataset(files, 50, 4, with_ids=True, channels=channels)
        return sorted(i.decode() for _, _, batch in ds for i in batch.numpy())

    everything = ids(None)
    speech, song = ids(["speech"]), ids(["song"])
    assert len(everything) == 32 and len(speech) == len(song) == 16
    assert sorted(speech + song) == everything
    assert all(int(i[-2:]) < 8 for i in speech) and all(int(i[-2:]) >= 8 for i in song)
    assert ids(["speech", "song"]) == everything
    with pytest.raises(ValueError, match=r"channel\(s\) \['chant'\]"):
        make_dataset(files, 50, 4, channels=["chant"])


def test_records_without_song_are_refused(tmp_path, synthetic_records):
    root = synthetic_records(tmp_path / "prep", folds=2, per_fold=16)
    with pytest.raises(ValueError, match="--channels speech,song"):
        crossdomain.check_channels(root)


def test_cross_domain_run_scores_each_channel_and_resumes(tmp_path, synthetic_records):
    root = synthetic_records(tmp_path / "prep", folds=2, per_fold=16, channels=True)
    work, results = tmp_path / "work", tmp_path / "results"
    log = []
    summary = crossdomain.run_cross_domain(
        root,
        work,
        results,
        dataset="toy",
        variants=["cme"],
        seeds=1,
        folds=2,
        jobs=1,
        threads=1,
        command="cme-ser reproduce --protocol cross-domain",
        overrides=TINY,
        log=log.append,
    )
    assert any("4 to run" in line for line in log)
    rows = crossdomain.finished_rows(work)
    assert sorted((r["train"], r["fold"]) for r in rows) == [
        ("speech", 0),
        ("speech", 1),
        ("speech+song", 0),
        ("speech+song", 1),
    ]
    for row in rows:
        # The training data is the other fold's records of the training channels only: 8 per
        # channel, 2 speakers, one of whom validates; the counts are of the records trained on.
        per_channel = 8 if row["train"] == "speech" else 16
        assert row["num_train"] + row["num_val"] == per_channel
        assert sum(row["train_class_counts"]) == row["num_train"]
        pred = row["predictions"]
        # Every held-out utterance is predicted, and tagged with its own channel.
        assert len(pred["utterance_ids"]) == 16
        assert all(
            (c == "speech") == (int(i[-2:]) < 8)
            for i, c in zip(pred["utterance_ids"], pred["channels"])
        )
        # The per-channel scores are those of the stored predictions.
        probabilities = np.asarray(pred["probabilities"])
        labels, channels = np.asarray(pred["labels"]), np.asarray(pred["channels"])
        for channel in ("speech", "song"):
            keep = channels == channel
            raw = confusion_matrix(labels[keep], probabilities[keep].argmax(-1), 4)
            fixed = confusion_matrix(
                labels[keep],
                prior_corrected(probabilities[keep], row["train_class_counts"]).argmax(-1),
                4,
            )
            assert row["scores"]["none"][channel]["n"] == 8
            assert row["scores"]["none"][channel]["ua"] == pytest.approx(unweighted_accuracy(raw))
            assert row["scores"]["prior"][channel]["confusion"] == fixed.tolist()
    # Summary: one row per (correction, training condition, test channel), the mean over the
    # two folds of the units' scores; one paired gain per (correction, test channel).
    assert len(summary["table"]) == 8 and len(summary["gains"]) == 4
    cell = next(
        t
        for t in summary["table"]
        if t["correction"] == "none" and t["train"] == "speech" and t["test"] == "song"
    )
    expected = np.mean([r["scores"]["none"]["song"]["ua"] for r in rows if r["train"] == "speech"])
    assert cell["ua"]["mean"] == pytest.approx(expected) and cell["ua"]["n_folds"] == 2
    gain = next(g for g in summary["gains"] if g["correction"] == "none" and g["test"] == "song")
    diffs = [
        next(
            r["scores"]["none"]["song"]["ua"]
            for r in rows
            if r["train"] == "speech+song" and r["fold"] == k
        )
        - next(
            r["scores"]["none"]["song"]["ua"]
            for r in rows
            if r["train"] == "speech" and r["fold"] == k
        )
        for k in (0, 1)
    ]
    assert gain["mean"] == pytest.approx(np.mean(diffs)) and "p_holm" in gain
    markdown = (results / "toy-cross-domain.md").read_text()
    assert "| cme | none | speech | song |" in markdown
    # Archived with predictions: a fresh work directory restores every unit and trains none.
    archived = (results / "toy-cross-domain-units.jsonl").read_text().splitlines()
    assert len(archived) == 4 and all(
        "probabilities" in json.loads(a)["predictions"] for a in archived
    )
    log.clear()
    again = crossdomain.run_cross_domain(
        root,
        tmp_path / "fresh",
        results,
        dataset="toy",
        variants=["cme"],
        seeds=1,
        folds=2,
        overrides=TINY,
        log=log.append,
    )
    assert any("restored 4" in line for line in log) and any("0 to run" in line for line in log)
    assert again["table"] == json.loads(json.dumps(summary["table"]))
    # Re-rendered from the archive alone: the same tables, the run's header kept.
    before = (results / "toy-cross-domain.md").read_text()
    crossdomain.rerender(results, "toy")
    assert (results / "toy-cross-domain.md").read_text() == before


def test_records_without_a_channel_are_speech(tmp_path, synthetic_records):
    """A corpus with one channel writes no channel feature: its records count as speech, so
    the default ``train_channels`` (speech) trains on all of them."""
    from trainer.data import record_channels

    root = synthetic_records(tmp_path / "prep", folds=2, per_fold=8)
    files = record_files(root)
    assert set(record_channels(files).values()) == {"speech"}
    ds = make_dataset(files, 50, 4, with_ids=True, channels=["speech"])
    assert sum(int(batch.shape[0]) for _, _, batch in ds) == 16


def test_a_model_is_refused_records_without_a_channel_it_trains_on(tmp_path, synthetic_records):
    from trainer.config import variant_config
    from trainer.train import fit

    root = synthetic_records(tmp_path / "prep", folds=2, per_fold=8)
    with pytest.raises(ValueError, match="hold speech: preprocess with --channels speech,song"):
        fit(record_files(root), variant_config("cme_fixed20_song", **TINY))
