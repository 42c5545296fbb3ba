"""Metrics, the record input pipeline and one cross-validation fold on synthetic records."""

import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf

from pipeline.report import render_markdown, write_report
from preprocessing.records import make_example
from trainer.config import ModelConfig
from trainer.data import make_dataset, sorted_records, speaker_statistics, stretch_time
from trainer.metrics import (
    SmoothedSparseCrossentropy,
    UnweightedAccuracy,
    confusion_matrix,
    prior_corrected,
    unweighted_accuracy,
    weighted_accuracy,
)
from trainer.splits import fold_plan_problems, validation_speakers
from trainer.train import class_weights, train_fold

TINY = ModelConfig(
    word_dim=4,
    cnn_filters=(4, 8, 8),
    semantic_dim=8,
    lstm_units=4,
    fcn_units=4,
    class_names=("a", "b"),
    epochs=3,
    patience=2,
    batch_size=4,
)


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
            writer.write(
                make_example(
                    utterance_id=f"f{fold}-{i}",
                    speaker=speakers[i % len(speakers)],
                    label=label,
                    label_name="ab"[label],
                    fold=fold,
                    fbank=fbank,
                    words=["w1", "w2"],
                    word_embeddings=rng.normal(size=(2, 4)),
                    word_start=[0, frames // 2],
                    word_end=[frames // 2, frames],
                    transcript="w1 w2",
                    alignment_source="forced",
                ).SerializeToString()
            )


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
        assert inputs["fbank"].shape[0] == n
        assert inputs["fbank"].shape[1] == max(inputs["num_frames"])
        assert inputs["word_spans"].shape == (n, 2, 2)
        seen += [i.decode() for i in ids.numpy()]
    assert sorted(seen) == sorted(f"f0-{i}" for i in range(12))
    only_a = make_dataset(folds[0], 4, 5, speakers=["s0a"], with_ids=True)
    assert sum(int(labels.shape[0]) for _, labels, _ in only_a) == 6
    without_a = make_dataset(folds[0], 4, 5, speakers=["s0a"], exclude_speakers=True)
    assert sum(int(labels.shape[0]) for _, labels in without_a) == 6


def test_speaker_norm_standardises_each_speakers_frames(folds):
    from preprocessing.records import decode_example

    decoded = [decode_example(r) for r in sorted_records(folds[0])]
    stats = speaker_statistics(sorted_records(folds[0]))
    assert sorted(stats) == ["s0a", "s0b"]
    for speaker, (mean, std) in stats.items():
        frames = np.concatenate([d["fbank"] for d in decoded if d["speaker"] == speaker])
        np.testing.assert_allclose(mean, frames.mean(axis=0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(std, frames.std(axis=0), rtol=1e-4)
    by_speaker = {}
    for inputs, _, ids in make_dataset(folds[0], 4, 5, with_ids=True, speaker_norm=True):
        for row, n, utterance in zip(
            inputs["fbank"].numpy(), inputs["num_frames"].numpy(), ids.numpy()
        ):
            speaker = next(d["speaker"] for d in decoded if d["utterance_id"] == utterance.decode())
            by_speaker.setdefault(speaker, []).append(row[:n])
    for frames in by_speaker.values():
        frames = np.concatenate(frames)
        np.testing.assert_allclose(frames.mean(axis=0), 0.0, atol=1e-4)
        np.testing.assert_allclose(frames.std(axis=0), 1.0, rtol=1e-3)


def test_validation_speakers_are_a_deterministic_subset():
    speakers = [f"Actor_{i:02d}" for i in range(24, 0, -1)]
    chosen = validation_speakers(speakers, 0.2)
    assert chosen == ["Actor_01", "Actor_06", "Actor_11", "Actor_16", "Actor_21"]
    assert validation_speakers(["a", "b"], 0.2) == ["a"]
    assert validation_speakers(["a", "b"], 0.2, offset=1) == ["b"]
    # Rotated splits (one per seed with rotate_validation) are disjoint and cover everyone.
    splits = [validation_speakers(speakers, 0.2, offset=k) for k in range(5)]
    assert splits[1] == ["Actor_02", "Actor_07", "Actor_12", "Actor_17", "Actor_22"]
    assert sorted(sum(splits, [])) == sorted(speakers)
    assert validation_speakers(speakers, 0.2, offset=5) == chosen
    with pytest.raises(ValueError, match=">= 2 training speakers"):
        validation_speakers(["a"], 0.2)


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.2, 0.25, 1 / 3, 0.5, 0.9])
def test_validation_speakers_is_never_empty_nor_everyone(fraction):
    """Every (speakers, fraction, offset) over small speaker counts, exhaustively: the split is
    non-empty, leaves someone to train on, and a full cycle of offsets partitions the
    speakers. (Offsets past the speaker count once selected nobody: 2 speakers, offset 2.)"""
    for n in range(2, 13):
        speakers = [f"s{i:02d}" for i in range(n)]
        step = max(2, min(n, round(1 / fraction)))
        splits = [validation_speakers(speakers, fraction, offset=k) for k in range(3 * step)]
        for offset, chosen in enumerate(splits):
            assert chosen, (n, fraction, offset)
            assert len(chosen) < n, (n, fraction, offset)
            assert set(chosen) <= set(speakers)
            assert chosen == splits[offset % step]
        cycle = splits[:step]
        assert sorted(sum(cycle, [])) == speakers, (n, fraction)


def test_a_rotation_past_the_last_training_speaker_still_trains(folds):
    """The small-corpus crash: 2 training speakers, validation rotated by seed 2 (the third
    model of the shipped ensemble) selected nobody and `fit` died on a missing `val_ua`."""
    config = TINY.replace(rotate_validation=True, refit=True, seed=2)
    result = train_fold({0: folds[0], 1: folds[1]}, test_fold=0, config=config)
    assert result.val_speakers == ["s1a"]  # position 2 mod 2 of ["s1a", "s1b"]
    assert result.num_val == 6 and result.num_train == 6 and result.num_final_train == 12
    assert 1 <= result.best_epoch <= result.epochs_run <= TINY.epochs
    assert result.refit_epochs == result.best_epoch


def _four_speakers(missing=None):
    """4 speakers in 2 folds, each with every class of ("a", "b") unless ``missing`` names
    a speaker without "b"."""
    labels = {s: {"a": 3, "b": 3} for s in ("s1", "s2", "s3", "s4")}
    if missing:
        labels[missing] = {"a": 3}
    return labels, {"s1": 0, "s2": 0, "s3": 1, "s4": 1}


def test_the_shipped_plan_on_four_speakers_and_two_folds_trains():
    labels, folds = _four_speakers()
    shipped = TINY.replace(rotate_validation=True, refit=True)
    assert fold_plan_problems(labels, folds, shipped, ensemble_size=3, prior_correction=True) == []


def test_a_plan_that_cannot_train_is_described_before_training():
    labels, folds = _four_speakers()
    one_each = {"s1": 0, "s2": 1, "s3": 2, "s4": 2}
    problems = fold_plan_problems(labels, {**one_each}, TINY)
    assert problems == []  # 3 folds of 4 speakers: every training set has >= 2 speakers
    problems = fold_plan_problems(
        {"s1": {"a": 1, "b": 1}, "s2": {"a": 1, "b": 1}}, {"s1": 0, "s2": 1}, TINY
    )
    assert problems == [
        "held-out fold 0: 1 training speaker(s) ['s2']; epoch selection needs >= 2 (fewer "
        "folds, or more speakers)",
        "held-out fold 1: 1 training speaker(s) ['s1']; epoch selection needs >= 2 (fewer "
        "folds, or more speakers)",
    ]
    # s4 has no "b": with fold 0 held out, a model validating on s3 learns from s4 alone.
    labels, folds = _four_speakers(missing="s4")
    balanced = TINY.replace(class_balanced=True, rotate_validation=True)
    problems = fold_plan_problems(labels, folds, balanced, ensemble_size=2)
    assert problems == [
        "held-out fold 0, model 1/2 (seed 0) trains on speakers ['s4'], "
        "with no b utterances (validation speakers: ['s3'])"
    ]
    # The prior correction needs every class in the data the model ends on: the refit's
    # (all training speakers) has "b" from s3, the selection run's (s4 alone) does not.
    assert fold_plan_problems(labels, folds, TINY.replace(refit=True), prior_correction=True) == []
    assert len(fold_plan_problems(labels, folds, TINY, prior_correction=True)) == 1


def test_a_fixed_schedule_needs_no_validation_speakers():
    """A fixed schedule (``selection="fixed"``) chooses no epoch: one training speaker is
    enough, and its classes are those of every training speaker."""
    fixed = TINY.replace(selection="fixed", class_balanced=True)
    two = {"s1": {"a": 1, "b": 1}, "s2": {"a": 1, "b": 1}}
    assert fold_plan_problems(two, {"s1": 0, "s2": 1}, fixed, ensemble_size=3) == []
    labels, folds = _four_speakers(missing="s4")  # s3 still brings "b"
    assert fold_plan_problems(labels, folds, fixed, prior_correction=True) == []
    problems = fold_plan_problems(
        {"s1": {"a": 1}, "s2": {"a": 1, "b": 1}}, {"s1": 0, "s2": 1}, fixed
    )
    assert problems == [
        "held-out fold 1, model 1/1 (seed 0) trains on speakers ['s1'], with no b utterances "
        "(validation speakers: [])"
    ]


def test_train_fold_holds_out_the_test_fold_and_validates_on_training_speakers(folds, tmp_path):
    result = train_fold(
        folds,
        2,
        TINY.replace(validation_fraction=0.25),
        log_dir=str(tmp_path / "tb"),
        model_path=str(tmp_path / "m.keras"),
    )
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
    written = json.loads((tmp_path / "report" / "report.json").read_text())
    assert written["ua_mean"] == report["ua_mean"]
    assert (tmp_path / "report" / "confusion.png").stat().st_size > 1000


def test_refit_trains_on_every_training_speaker_for_the_selected_epochs(folds):
    config = TINY.replace(validation_fraction=0.25, epochs=4, patience=4)
    plain = train_fold(folds, 2, config)
    refit = train_fold(folds, 2, config.replace(refit=True))
    # Selection is the same run; then a fresh model learns from validation speakers too.
    assert refit.best_epoch == plain.best_epoch and refit.refit_epochs == plain.best_epoch
    assert (refit.num_train, refit.num_val, refit.num_final_train) == (18, 6, 24)
    assert (plain.refit_epochs, plain.num_final_train) == (0, 18)
    assert sum(refit.train_class_counts) == 24 and sum(plain.train_class_counts) == 18
    assert sum(map(sum, refit.confusion)) == 12
    rotated = train_fold(folds, 2, config.replace(rotate_validation=True, seed=1, epochs=1))
    assert rotated.val_speakers == ["s0b"]  # seed 1 starts the every-4th pattern at 1


def test_class_weights_balance_the_classes():
    labels = np.array([0, 0, 0, 1, 2, 2])
    ds = tf.data.Dataset.from_tensor_slices((np.zeros((6, 1)), labels)).batch(4)
    weights = class_weights(ds, 3)
    assert weights == pytest.approx({0: 6 / 9, 1: 2.0, 2: 1.0})
    # Each class then carries the same total weight.
    assert {k: weights[k] * int((labels == k).sum()) for k in weights} == pytest.approx(
        {0: 2.0, 1: 2.0, 2: 2.0}
    )
    with pytest.raises(ValueError, match=r"class\(es\) \[3\] have no training examples"):
        class_weights(ds, 4)


def test_prior_correction_against_numpy():
    p = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    counts = [4, 4, 2]  # prior 0.4, 0.4, 0.2
    expected = np.array([[1.25, 0.75, 1.0], [0.25, 0.25, 4.0]])
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(prior_corrected(p, counts), expected)
    np.testing.assert_allclose(prior_corrected(p, [1, 1, 1]), p)  # a uniform prior changes nothing
    with pytest.raises(ValueError, match="positive count for each of the 3 classes"):
        prior_corrected(p, [4, 0, 2])
    with pytest.raises(ValueError, match="positive count"):
        prior_corrected(p, [4, 4])


def test_train_fold_needs_the_test_fold(folds):
    with pytest.raises(ValueError, match="including 5"):
        train_fold(folds, 5, TINY)


def test_training_is_deterministic_and_ignores_record_order(folds, tmp_path):
    config = TINY.replace(
        spec_time_masks=1,
        spec_freq_masks=1,
        time_stretch=0.1,
        label_smoothing=0.1,
        lr_schedule="cosine",
        dropout=0.2,
    )
    first = train_fold(folds, 2, config)
    second = train_fold(folds, 2, config)
    # The same records written in another order (as a multi-process writer may leave them).
    reordered = {}
    for fold, paths in folds.items():
        raws = [r.numpy() for r in tf.data.TFRecordDataset(paths, compression_type="GZIP")]
        path = tmp_path / f"reordered{fold}.tfrecord.gz"
        with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
            for raw in raws[::-1]:
                writer.write(raw)
        reordered[fold] = [str(path)]
    third = train_fold(reordered, 2, config)
    assert dataclasses.asdict(first) == dataclasses.asdict(second) == dataclasses.asdict(third)


def test_time_stretch_resamples_frames_and_spans():
    fbank = np.tile(np.arange(100, dtype=np.float32)[:, None], (1, 40))
    parsed = {
        "fbank": tf.constant(fbank),
        "num_frames": tf.constant(100, tf.int64),
        "word_start": tf.constant([0, 40, 90, 50], tf.int64),
        "word_end": tf.constant([40, 90, 100, 50], tf.int64),
    }
    faster = stretch_time(parsed, tf.constant(1.25))
    assert int(faster["num_frames"]) == 80 and faster["fbank"].shape == (80, 40)
    np.testing.assert_array_equal(faster["word_start"], [0, 32, 72, 40])
    np.testing.assert_array_equal(faster["word_end"], [32, 72, 80, 40])  # empty stays empty
    # Linear interpolation of a ramp is a ramp with the same range.
    assert float(faster["fbank"][0, 0]) == pytest.approx(0.125, abs=0.2)
    assert np.all(np.diff(faster["fbank"].numpy()[:, 0]) > 0)
    slower = stretch_time(parsed, tf.constant(0.5))
    assert int(slower["num_frames"]) == 200
    np.testing.assert_array_equal(slower["word_end"], [80, 180, 200, 100])
    tiny = stretch_time(
        {
            **parsed,
            "word_start": tf.constant([10], tf.int64),
            "word_end": tf.constant([11], tf.int64),
        },
        tf.constant(1.9),
    )
    assert int(tiny["word_end"][0]) - int(tiny["word_start"][0]) == 1  # a word keeps a frame


def test_smoothed_crossentropy_against_numpy():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], np.float32)
    labels = np.array([0, 1])
    plain = SmoothedSparseCrossentropy(0.0)(labels, probs)
    assert float(plain) == pytest.approx(np.mean(-np.log([0.7, 0.1])), rel=1e-5)
    keras_ce = tf.keras.losses.SparseCategoricalCrossentropy()(labels, probs)
    assert float(plain) == pytest.approx(float(keras_ce), rel=1e-5)
    eps = 0.1
    smoothed = SmoothedSparseCrossentropy(eps)(labels, probs)
    target = (1 - eps) * np.eye(3)[labels] + eps / 3
    assert float(smoothed) == pytest.approx(np.mean(-(target * np.log(probs)).sum(1)), rel=1e-5)


def test_recipe_options_reach_the_optimizer_and_loss(folds):
    from trainer.model import build_model, compile_model

    model = build_model(TINY)
    compile_model(
        model,
        TINY.replace(lr_schedule="cosine", weight_decay=1e-4, label_smoothing=0.2),
        steps_per_epoch=5,
    )
    assert type(model.optimizer).__name__ == "AdamW"
    schedule = model.optimizer._learning_rate
    assert float(schedule(0)) == pytest.approx(TINY.learning_rate)
    assert float(schedule(TINY.epochs * 5)) == pytest.approx(0.0, abs=1e-9)
    assert model.loss.label_smoothing == 0.2
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        TINY.replace(lr_schedule="linear")
    with pytest.raises(ValueError, match="time_stretch must be in"):
        TINY.replace(time_stretch=1.5)


# (A bucketed tf.data pipeline is not counted in advance: Keras's end-of-epoch warning.)
@pytest.mark.filterwarnings("ignore:Your input ran out of data")
def test_the_optimizer_is_built_before_the_first_train_step(folds):
    """Its slots exist once the model is compiled, so the first traced train step creates no
    variables (which would make TensorFlow trace it a second time): a fit adds none."""
    from trainer.model import build_model

    model = build_model(TINY)
    assert model.optimizer.built
    before = [id(v) for v in model.optimizer.variables]
    assert len(before) > len(model.trainable_variables)  # the Adam moments are there
    model.fit(make_dataset(folds[0], TINY.word_dim, 4), epochs=1, verbose=0)
    assert [id(v) for v in model.optimizer.variables] == before


def test_a_fixed_schedule_trains_every_speaker_for_exactly_its_epochs(folds, tmp_path):
    config = TINY.replace(selection="fixed", epochs=3)
    result = train_fold(
        folds, test_fold=2, config=config, embeddings_path=str(tmp_path / "fold2.npz")
    )
    assert result.val_speakers == [] and result.num_val == 0 and result.best_val_ua is None
    assert result.epochs_run == result.best_epoch == 3 and result.refit_epochs == 0
    assert result.num_train == result.num_final_train == 24  # folds 0 and 1, no one held back
    assert result.num_test == 12 and result.train_class_counts == [12, 12]
    saved = np.load(tmp_path / "fold2.npz")
    assert saved["probabilities"].shape == (12, 2)
    assert not any(k.startswith("val_") for k in saved.files)
    with pytest.raises(ValueError, match="nothing to refit"):
        TINY.replace(selection="fixed", refit=True)


# (A bucketed tf.data pipeline is not counted in advance: Keras's end-of-epoch warning.)
@pytest.mark.filterwarnings("ignore:Your input ran out of data")
def test_ema_trains_a_model_whose_weights_are_the_optimizers_average(folds):
    """With ``ema_momentum`` the fitted model holds the optimizer's moving average of its
    weights (Keras writes it in when ``fit`` ends), not the last iterate: the same seed without
    EMA ends elsewhere."""
    from trainer.train import fit

    files = folds[0] + folds[1]
    config = TINY.replace(selection="fixed", epochs=2, ema_momentum=0.9)
    averaged = fit(files, config).model
    optimizer = averaged.optimizer
    assert optimizer.use_ema and optimizer.ema_momentum == pytest.approx(0.9)
    averages = optimizer._model_variables_moving_average
    assert len(averages) == len(averaged.trainable_variables)
    for weight, average in zip(averaged.trainable_variables, averages):
        np.testing.assert_array_equal(weight.numpy(), average.numpy())
    last = fit(files, config.replace(ema_momentum=0.0)).model
    assert not last.optimizer.use_ema
    differences = [
        float(np.max(np.abs(a.numpy() - b.numpy())))
        for a, b in zip(averaged.trainable_variables, last.trainable_variables)
    ]
    assert max(differences) > 1e-4
    # The field round-trips, and is refused where an epoch choice would score raw weights.
    assert ModelConfig.from_json(config.to_json()) == config
    assert ModelConfig.from_json(config.to_json()).ema_momentum == 0.9
    with pytest.raises(ValueError, match="ema_momentum must be in"):
        TINY.replace(selection="fixed", ema_momentum=1.0)
    with pytest.raises(ValueError, match="ema_momentum needs selection 'fixed'"):
        TINY.replace(ema_momentum=0.99)


def test_the_ema_variant_is_the_song_variant_with_averaged_weights():
    from trainer.config import variant_config

    ema, plain = variant_config("cme_fixed20_song_ema"), variant_config("cme_fixed20_song")
    assert ema.ema_momentum == 0.99 and plain.ema_momentum == 0.0
    assert ema.replace(variant=plain.variant, ema_momentum=0.0) == plain
