"""The TFX Trainer's ``run_fn`` on its own: one model or a seed ensemble, exported as a serving
SavedModel, with its fit summary."""

import json

import numpy as np
import pytest
import tensorflow as tf
from tfx import v1 as tfx

from preprocessing import embeddings
from preprocessing.records import to_model_inputs, parse_examples
from trainer.config import ModelConfig
from trainer.module import run_fn

TINY = ModelConfig(cnn_filters=(4, 8, 8), semantic_dim=8, lstm_units=4, fcn_units=4,
                   epochs=2, patience=2, batch_size=4, seed=3)


def fn_args(tmp_path, records, ensemble_size, config=TINY, name=None):
    name = name or str(ensemble_size)
    return tfx.components.FnArgs(
        train_files=[str(records / "records" / "fold-0" / "*.tfrecord.gz"),
                     str(records / "records" / "fold-1" / "*.tfrecord.gz")],
        serving_model_dir=str(tmp_path / f"serving{name}"),
        model_run_dir=str(tmp_path / f"run{name}"),
        custom_config={"model_config": config.to_json(), "vocab_size": 1000,
                       "embeddings_path": str(embeddings.fetch_glove()),
                       "ensemble_size": ensemble_size})


def probabilities(saved_model_dir, records):
    raws = [r.numpy() for r in tf.data.TFRecordDataset(
        [str(p) for p in sorted((records / "records" / "fold-0").glob("*.gz"))],
        compression_type="GZIP")]
    loaded = tf.saved_model.load(saved_model_dir)
    return loaded.signatures["serving_default"](examples=tf.constant(raws))["probabilities"].numpy()


def test_run_fn_exports_one_model_or_the_mean_of_a_seed_ensemble(tmp_path, synthetic_records):
    records = synthetic_records(tmp_path / "prep", folds=2, per_fold=16)
    run_fn(fn_args(tmp_path, records, 1))
    run_fn(fn_args(tmp_path, records, 2))
    one = json.loads((tmp_path / "run1" / "fit.json").read_text())
    two = json.loads((tmp_path / "run2" / "fit.json").read_text())
    assert one["ensemble_size"] == 1 and one["seed"] == 3 and "members" not in one
    assert [m["seed"] for m in two["members"]] == [3, 4] and two["seed"] == 3
    # The members are the models of seeds 3 and 4 trained alone (training is deterministic):
    # the ensemble serves the mean of their probabilities.
    run_fn(fn_args(tmp_path, records, 1, TINY.replace(seed=4), name="seed4"))
    seed3 = probabilities(str(tmp_path / "serving1"), records)
    seed4 = probabilities(str(tmp_path / "servingseed4"), records)
    ensemble = probabilities(str(tmp_path / "serving2"), records)
    assert ensemble.shape == (16, 4) and not np.allclose(seed3, seed4, atol=1e-4)
    np.testing.assert_allclose(ensemble, (seed3 + seed4) / 2, atol=1e-6)
    for k in (0, 1):
        assert list((tmp_path / "run2" / f"member{k}" / "validation").glob("events.*"))
    bad = fn_args(tmp_path, records, 0)
    with pytest.raises(ValueError, match="ensemble_size must be >= 1"):
        run_fn(bad)
