"""The TFX Trainer's ``run_fn`` on its own: one model or a seed ensemble, prior-corrected or
not, exported as a serving SavedModel, with its fit summary."""

import json

import numpy as np
import pytest
import tensorflow as tf
from tfx import v1 as tfx

from preprocessing import embeddings
from trainer.config import ModelConfig
from trainer.metrics import prior_corrected
from trainer.module import pooled_class_counts, run_fn

TINY = ModelConfig(
    cnn_filters=(4, 8, 8),
    semantic_dim=8,
    lstm_units=4,
    fcn_units=4,
    epochs=2,
    patience=2,
    batch_size=4,
    seed=3,
)


def fn_args(tmp_path, records, ensemble_size, config=TINY, name=None, **custom):
    name = name or str(ensemble_size)
    return tfx.components.FnArgs(
        train_files=[
            str(records / "records" / "fold-0" / "*.tfrecord.gz"),
            str(records / "records" / "fold-1" / "*.tfrecord.gz"),
        ],
        serving_model_dir=str(tmp_path / f"serving{name}"),
        model_run_dir=str(tmp_path / f"run{name}"),
        custom_config={
            "model_config": config.to_json(),
            "vocab_size": 1000,
            "embeddings_path": str(embeddings.fetch_glove()),
            "ensemble_size": ensemble_size,
            **custom,
        },
    )


def probabilities(saved_model_dir, records):
    raws = [
        r.numpy()
        for r in tf.data.TFRecordDataset(
            [str(p) for p in sorted((records / "records" / "fold-0").glob("*.gz"))],
            compression_type="GZIP",
        )
    ]
    loaded = tf.saved_model.load(saved_model_dir)
    return loaded.signatures["serving_default"](examples=tf.constant(raws))["probabilities"].numpy()


def test_run_fn_exports_one_model_or_the_prior_corrected_mean_of_a_seed_ensemble(
    tmp_path, synthetic_records, capsys
):
    # 14 per fold: every speaker has 2 angry, happy and neutral utterances and 1 sad one, so
    # the training prior is not uniform and the correction changes what is served.
    records = synthetic_records(tmp_path / "prep", folds=2, per_fold=14)
    run_fn(fn_args(tmp_path, records, 1))
    run_fn(fn_args(tmp_path, records, 2, prior_correction=True, node_id="Trainer.fold7"))
    # The progress lines name the Trainer the pipeline says (custom_config), else "Trainer".
    shown = capsys.readouterr().out
    assert "Trainer model 1/1, training" in shown
    assert "Trainer.fold7 model 1/2" in shown and "Trainer.fold7 model 2/2" in shown
    one = json.loads((tmp_path / "run1" / "fit.json").read_text())
    two = json.loads((tmp_path / "run2" / "fit.json").read_text())
    assert one["ensemble_size"] == 1 and one["seed"] == 3 and "members" not in one
    assert one["prior_correction"] is False and one["prior_class_counts"] is None
    assert sum(one["class_counts"]) == one["num_final_train"] > 0
    assert [m["seed"] for m in two["members"]] == [3, 4] and two["seed"] == 3
    # The correction divides by the members' pooled final-training class counts.
    member_counts = [m["class_counts"] for m in two["members"]]
    assert member_counts[0] == one["class_counts"]  # seed 3 trained alone: the same data
    assert two["prior_correction"] is True
    assert two["prior_class_counts"] == np.sum(member_counts, axis=0).tolist()
    # The members are the models of seeds 3 and 4 trained alone (training is deterministic):
    # the ensemble serves the prior correction of the mean of their probabilities.
    run_fn(fn_args(tmp_path, records, 1, TINY.replace(seed=4), name="seed4"))
    seed3 = probabilities(str(tmp_path / "serving1"), records)
    seed4 = probabilities(str(tmp_path / "servingseed4"), records)
    ensemble = probabilities(str(tmp_path / "serving2"), records)
    assert ensemble.shape == (14, 4) and not np.allclose(seed3, seed4, atol=1e-4)
    expected = prior_corrected((seed3 + seed4) / 2, two["prior_class_counts"])
    np.testing.assert_allclose(ensemble, expected, atol=1e-6)
    assert two["prior_class_counts"] == [12, 12, 12, 6]  # 2 models x 3 speakers x [2, 2, 2, 1]
    assert not np.allclose(ensemble, (seed3 + seed4) / 2, atol=1e-4)
    for k in (0, 1):
        assert list((tmp_path / "run2" / f"member{k}" / "validation").glob("events.*"))
    bad = fn_args(tmp_path, records, 0)
    with pytest.raises(ValueError, match="ensemble_size must be >= 1"):
        run_fn(bad)
    bad = fn_args(tmp_path, records, 1, prior_correction="yes")
    with pytest.raises(ValueError, match="prior_correction must be true or false"):
        run_fn(bad)


def test_pooled_class_counts_sum_the_members_and_need_every_class():
    classes = ("angry", "happy", "neutral", "sad")
    assert pooled_class_counts([[88, 88, 44, 88]] * 3, classes) == [264, 264, 132, 264]
    assert pooled_class_counts([[3, 1, 2, 2], [2, 2, 2, 2]], classes) == [5, 3, 4, 4]
    with pytest.raises(ValueError, match=r"none of \['neutral'\]"):
        pooled_class_counts([[3, 1, 0, 2], [2, 2, 0, 2]], classes)
