"""Metrics, the record input pipeline and one cross-validation fold on synthetic records."""

import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf

from pipeline.report import render_markdown, write_report
from preprocessing.records import make_example
from trainer.config import ModelConfig
from trainer.data import make_dataset
from trainer.metrics import (UnweightedAccuracy, confusion_matrix, unweighted_accuracy,
                             weighted_accuracy)
from trainer.train import train_fold, validation_speakers

TINY = ModelConfig(word_dim=4, cnn_filters=(4, 8, 8), semantic_dim=8, lstm_units=4,
                   fcn_units=4, class_names=("a", "b"), epochs=3, patience=2, batch_size=4)


def test_wa_ua_against_hand_computed_values():
    labels = [0, 0, 0, 0, 1, 1, 2]
    predicted = [0, 0, 0, 1, 1, 0, 0]
    confusion = confusion_matrix(labels, predicted, 3)
    np.testing.assert_array_equal(confusion, [[3, 1, 0], [1, 1, 0], [1, 0, 0]])
    assert weighted_accuracy(confusion) == pytest.approx(4 / 7)
    assert unweighted_accuracy(confusion) == pytest.approx((3 / 4 + 1 / 2 + 0) / 3)
    metric = UnweightedAccuracy(3)
    probs = np.eye(3, dtype=np.float32)[predicted]
    metric.update_state(np.array(labels[:4]), probs[:4])
    metric.update_state(np.array(labels[4:]), probs[4:])
    assert float(metric.result()) == pytest.approx((3 / 4 + 1 / 2 + 0) / 3)
    metric.reset_state()
    metric.update_state(np.array([1]), np.eye(3, dtype=np.float32)[[1]])
    assert float(metric.result()) == pytest.approx(1.0)  # absent classes are not averaged in


def write_fold(path, rng, fold, speakers, n=12):
    with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
        for i in range(n):
            label = i % 2
            frames = int(rng.integers(20, 60))
            fbank = rng.normal(size=(frames, 40)).astype(np.float32) + (2.0 if label else -2.0)
            writer.write(make_example(
                utterance_id=f"f{fold}-{i}", speaker=speakers[i % len(speakers)], label=label,
                label_name="ab"[label], fold=fold, fbank=fbank, words=["w1", "w2"],
                word_embeddings=rng.normal(size=(2, 4)), word_start=[0, frames // 2],
                word_end=[frames // 2, frames], transcript="w1 w2",
                alignment_source="forced").SerializeToString())


@pytest.fixture
def folds(tmp_path):
    rng = np.random.default_rng(0)
    files = {}
    for fold in range(3):
        path = tmp_path / f"fold{fold}.tfrecord.gz"
        write_fold(path, rng, fold, [f"s{fold}a", f"s{fold}b"])
        files[fold] = [str(path)]
    return files


def test_dataset_pads_batches_and_filters_speakers(folds):
    ds = make_dataset(folds[0], word_dim=4, batch_size=5, with_ids=True)
    seen = []
    for inputs, labels, ids in ds:
        n = int(labels.shape[0])
        assert inputs["fbank"].shape[0] == n and inputs["fbank"].shape[1] == max(inputs["num_frames"])
        assert inputs["word_spans"].shape == (n, 2, 2)
        seen += [i.decode() for i in ids.numpy()]
    assert sorted(seen) == sorted(f"f0-{i}" for i in range(12))
    only_a = make_dataset(folds[0], 4, 5, speakers=["s0a"], with_ids=True)
    assert sum(int(l.shape[0]) for _, l, _ in only_a) == 6
    without_a = make_dataset(folds[0], 4, 5, speakers=["s0a"], exclude_speakers=True)
    assert sum(int(l.shape[0]) for _, l in without_a) == 6


def test_validation_speakers_are_a_deterministic_subset():
    speakers = [f"Actor_{i:02d}" for i in range(24, 0, -1)]
    chosen = validation_speakers(speakers, 0.2)
    assert chosen == ["Actor_01", "Actor_06", "Actor_11", "Actor_16", "Actor_21"]
    assert validation_speakers(["a", "b"], 0.2) == ["a"]
    with pytest.raises(ValueError, match=">= 2 training speakers"):
        validation_speakers(["a"], 0.2)


def test_train_fold_holds_out_the_test_fold_and_validates_on_training_speakers(folds, tmp_path):
    result = train_fold(folds, 2, TINY.replace(validation_fraction=0.25),
                        log_dir=str(tmp_path / "tb"), model_path=str(tmp_path / "m.keras"))
    # Training folds 0 and 1 hold speakers s0a s0b s1a s1b; every 4th sorted one validates.
    assert result.val_speakers == ["s0a"] and result.fold == 2
    assert (result.num_train, result.num_val, result.num_test) == (18, 6, 12)
    confusion = np.array(result.confusion)
    assert confusion.sum() == 12
    assert result.wa == pytest.approx(weighted_accuracy(confusion))
    assert 1 <= result.best_epoch <= result.epochs_run <= 3
    assert (tmp_path / "m.keras").exists()
    assert list((tmp_path / "tb" / "validation").glob("events.out.tfevents.*"))
    report = write_report([dataclasses.asdict(result)], TINY.class_names, tmp_path / "report")
    assert report["wa_mean"] == pytest.approx(result.wa) and report["wa_std"] == 0.0
    assert report["confusion"] == result.confusion
    assert f"| 2 | 12 | {result.wa:.3f} |" in render_markdown(report)
    assert json.loads((tmp_path / "report" / "report.json").read_text())["ua_mean"] == report["ua_mean"]
    assert (tmp_path / "report" / "confusion.png").stat().st_size > 1000


def test_train_fold_needs_the_test_fold(folds):
    with pytest.raises(ValueError, match="including 5"):
        train_fold(folds, 5, TINY)
