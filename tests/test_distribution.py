"""Training under ``tf.distribute`` (``trainer.distribution``): the strategy the environment
asks for, and a real two-worker ``MultiWorkerMirroredStrategy`` run of the Trainer's ``run_fn``
(two processes on loopback, collective ops over gRPC) against one process."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tfx.types import standard_artifacts

from pipeline.infra_validation import ModelLoadValidator
from preprocessing import embeddings
from trainer.config import ModelConfig
from trainer.distribution import chief_writes, is_chief, training_tasks

SUPPORT = Path(__file__).resolve().parent / "distribution_support.py"
# No dropout (each replica would draw its own masks), one epoch of 6 global batches of 4 (24
# training utterances of 3 speakers; all in one length bucket, so every batch is full and
# splits 2 + 2 between the workers).
TINY = ModelConfig(
    cnn_filters=(4, 8, 8),
    semantic_dim=8,
    lstm_units=4,
    fcn_units=4,
    epochs=1,
    patience=1,
    batch_size=4,
    seed=3,
)
ENSEMBLE = 2
# The same global batches, gradients summed over two replicas instead of one: the first
# epoch's mean loss may differ by float32 summation order (on this machine it was identical).
LOSS_TOLERANCE = 1e-4


def cluster(ports, index=None, chief=False):
    workers = [f"localhost:{p}" for p in ports]
    spec = {
        "cluster": {"chief": workers[:1], "worker": workers[1:]} if chief else {"worker": workers}
    }
    if index is not None:
        spec["task"] = {"type": "worker", "index": index}
    return {"TF_CONFIG": json.dumps(spec)}


def test_tf_config_decides_the_task_count_and_the_chief():
    assert training_tasks({}) == 1 and is_chief({})
    assert training_tasks({"TF_CONFIG": ""}) == 1
    assert training_tasks(cluster([1, 2], 0)) == 2
    assert is_chief(cluster([1, 2], 0)) and not is_chief(cluster([1, 2], 1))
    with_chief = json.loads(cluster([1, 2, 3], chief=True)["TF_CONFIG"])
    assert training_tasks({"TF_CONFIG": json.dumps(with_chief)}) == 3
    for kind, index, chief in (
        ("chief", 0, True),
        ("worker", 0, False),
        ("worker", 1, False),
        ("evaluator", 0, False),
    ):
        spec = {**with_chief, "task": {"type": kind, "index": index}}
        assert is_chief({"TF_CONFIG": json.dumps(spec)}) is chief
    # One worker is no cluster: it trains (and writes) alone.
    assert training_tasks(cluster([1], 0)) == 1 and is_chief(cluster([1], 0))
    with pytest.raises(ValueError, match="TF_CONFIG is not JSON"):
        training_tasks({"TF_CONFIG": "{cluster"})


def test_a_non_chief_writes_into_a_scratch_directory_that_is_deleted(tmp_path, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", cluster([1, 2], 1)["TF_CONFIG"])
    with chief_writes(str(tmp_path / "model")) as path:
        assert not path.startswith(str(tmp_path)) and Path(path).name == "model"
        Path(path).mkdir()
        (Path(path) / "saved_model.pb").write_text("x")
    assert not Path(path).parent.exists() and not (tmp_path / "model").exists()
    monkeypatch.setenv("TF_CONFIG", cluster([1, 2], 0)["TF_CONFIG"])
    with chief_writes(str(tmp_path / "model")) as path:
        assert path == str(tmp_path / "model")


def test_reproduce_trains_units_one_at_a_time_in_a_cluster(monkeypatch):
    from experiments.units import run_pool
    from infra.usage_error import UsageError

    monkeypatch.setenv("TF_CONFIG", cluster([1, 2], 0)["TF_CONFIG"])
    with pytest.raises(UsageError, match="use --jobs 1, not 2"):
        run_pool(
            ["unit"],
            lambda unit: (print, (unit,)),
            jobs=2,
            threads=0,
            describe=str,
            after_each=print,
        )


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def trainer_args(records, out):
    """``distribution_support.py``'s arguments: run_fn on ``records`` into ``out``."""
    return [
        str(records),
        str(out / "model" / "Format-Serving"),
        str(out / "model_run"),
        TINY.to_json(),
        str(embeddings.fetch_glove()),
        str(ENSEMBLE),
    ]


def trainer_process(records, out, env_extra):
    args = trainer_args(records, out)
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(env_extra, TF_CPP_MIN_LOG_LEVEL="2")
    err = open(out.parent / f"{out.name}.err", "w")
    return subprocess.Popen(
        [sys.executable, str(SUPPORT), *args], env=env, stdout=subprocess.DEVNULL, stderr=err
    ), err


def finish(process, err, timeout=900):
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    finally:
        err.close()
    assert code == 0, Path(err.name).read_text()[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """run_fn on the same records: by two workers (MultiWorkerMirroredStrategy over loopback)
    and by one process, this one (no TF_CONFIG: the default strategy, as a Trainer alone runs
    it; a process of its own would only add the start-up of TensorFlow and TFX); returns
    their output directories."""
    import distribution_support
    from conftest import write_synthetic_records

    tmp = tmp_path_factory.mktemp("distribution")
    records = write_synthetic_records(tmp / "records", folds=2, per_fold=16)
    embeddings.fetch_glove()
    ports = free_ports(2)
    workers = [tmp / f"worker{i}" for i in range(2)]
    started = [trainer_process(records, workers[i], cluster(ports, i)) for i in range(2)]
    for process, err in started:
        finish(process, err)
    one = tmp / "one_process"
    assert "TF_CONFIG" not in os.environ
    distribution_support.main(trainer_args(records, one))
    return {"chief": workers[0], "worker": workers[1], "one": one}


def test_two_workers_train_and_only_the_chief_writes(runs):
    chief = json.loads((runs["chief"] / "model_run" / "fit.json").read_text())
    assert chief["replicas"] == 2 and chief["ensemble_size"] == ENSEMBLE
    assert (runs["chief"] / "model" / "Format-Serving" / "saved_model.pb").is_file()
    assert list((runs["chief"] / "model_run" / "member0" / "train").glob("events.*"))
    # The other worker trained the same models (it ran the same collective steps) and left
    # nothing behind: not a file under its directories.
    assert not runs["worker"].exists() or not [p for p in runs["worker"].rglob("*") if p.is_file()]


def test_two_workers_match_one_process_in_loss_data_and_prior(runs):
    chief = json.loads((runs["chief"] / "model_run" / "fit.json").read_text())
    one = json.loads((runs["one"] / "model_run" / "fit.json").read_text())
    assert one["replicas"] == 1
    for a, b in zip(chief["members"], one["members"]):
        assert a["num_train"] == b["num_train"] == 24 and a["num_val"] == b["num_val"] == 8
        assert a["class_counts"] == b["class_counts"]
        assert a["loss"][0] == pytest.approx(b["loss"][0], abs=LOSS_TOLERANCE)
    # The two seeds' losses differ by far more than the tolerance: the check can fail.
    assert abs(one["members"][0]["loss"][0] - one["members"][1]["loss"][0]) > 10 * LOSS_TOLERANCE
    assert chief["prior_class_counts"] == one["prior_class_counts"]


def test_the_two_worker_export_has_the_same_signatures_and_passes_model_load_validation(runs):
    def signatures(root):
        loaded = tf.saved_model.load(str(root / "model" / "Format-Serving"))
        return {
            name: (f.structured_input_signature[1], f.structured_outputs)
            for name, f in loaded.signatures.items()
        }, loaded

    chief, chief_model = signatures(runs["chief"])
    one, one_model = signatures(runs["one"])
    assert chief == one and {"serving_default", "predict_waveform"} <= set(chief)
    # The same normalisation, ensemble and prior correction: the served probabilities agree.
    raws = [
        r.numpy()
        for r in tf.data.TFRecordDataset(
            sorted(str(p) for p in (runs["chief"].parent / "records" / "records").rglob("*.gz")),
            compression_type="GZIP",
        )
    ]
    served = [
        m.signatures["serving_default"](examples=tf.constant(raws))["probabilities"].numpy()
        for m in (chief_model, one_model)
    ]
    np.testing.assert_allclose(served[0], served[1], atol=1e-3)
    model = standard_artifacts.Model()
    model.uri = str(runs["chief"] / "model")
    blessing = standard_artifacts.InfraBlessing()
    blessing.uri = str(runs["chief"] / "infra_blessing")
    ModelLoadValidator.EXECUTOR_SPEC.executor_class().Do(
        {"model": [model]}, {"blessing": [blessing]}, {}
    )
    assert blessing.get_int_custom_property("blessed") == 1
