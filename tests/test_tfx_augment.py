"""The TFX pipeline on augmented copies (variant ``cme_fixed20_song_aug``): the corpus step
writes each fold's copies to a split of their own (``fold<K>_aug``); the Trainers read the
copies of their training folds; no Evaluator, Calibrator or statistic reads a copy.

``create_pipeline``'s wiring is checked without running it; then the real pipeline runs on 24
RAVDESS utterances of 4 actors (conftest.py) as far as one fold's Trainer and Evaluator and
ExampleValidator (a partial run: the rest of the pipeline is the same code
test_tfx_pipeline.py runs whole)."""

import json
from pathlib import Path

import pytest
import tensorflow as tf
from conftest import small_ravdess_corpus

from pipeline.pipeline import create_pipeline
from pipeline.run_command import training_channels
from preprocessing import corpora
from preprocessing.records import decode_example
from trainer.config import variant_config

AUGMENTED = "cme_fixed20_song_aug"


def _pipeline(config, channels, num_folds=3):
    return create_pipeline(
        pipeline_name="cme_ser",
        pipeline_root="/nonexistent/root",
        metadata_path=None,
        dataset="ravdess",
        data_dir="/nonexistent/data",
        corpus_fingerprint="-",
        embeddings_path="/nonexistent/glove",
        serving_model_dir="/nonexistent/serving",
        config=config,
        ensemble_size=1,
        prior_correction=True,
        num_folds=num_folds,
        channels=channels,
    )


def _wiring(pipeline) -> dict:
    """{component id: the execution properties that say which splits it reads}."""
    found = {}
    for component in pipeline.components:
        props = component.exec_properties
        if component.id.startswith("Trainer."):
            found[component.id] = (
                json.loads(props["train_args"])["splits"],
                json.loads(props["eval_args"])["splits"],
            )
        elif component.id.startswith("Evaluator."):
            found[component.id] = json.loads(props["example_splits"])
        elif component.id in ("StatisticsGen", "SchemaGen", "ExampleValidator"):
            found[component.id] = json.loads(props["exclude_splits"])
        elif component.id == "CorpusExampleGen":
            found[component.id] = (props.get("channels"), props.get("augment_copies"))
    return found


def test_the_trainers_read_their_folds_copies_and_nothing_else_does():
    config, channels = training_channels(variant_config(AUGMENTED), None)
    wiring = _wiring(_pipeline(config, channels))
    assert wiring == {
        # One copy per utterance of the speech and song corpora (records_for).
        "CorpusExampleGen": ("speech,song", 1),
        "StatisticsGen": ["fold0_aug", "fold1_aug", "fold2_aug"],
        "SchemaGen": [],  # its statistics have no copies' splits to exclude
        "ExampleValidator": [],
        "Trainer.fold0": (["fold1", "fold2", "fold1_aug", "fold2_aug"], ["fold0"]),
        "Trainer.fold1": (["fold0", "fold2", "fold0_aug", "fold2_aug"], ["fold1"]),
        "Trainer.fold2": (["fold0", "fold1", "fold0_aug", "fold1_aug"], ["fold2"]),
        "Evaluator.fold0": ["fold0"],
        "Evaluator.fold1": ["fold1"],
        "Evaluator.fold2": ["fold2"],
        "Trainer.final": (
            ["fold0", "fold1", "fold2", "fold0_aug", "fold1_aug", "fold2_aug"],
            ["fold0"],
        ),
    }
    # The same pipeline without copies (the song variant): no parameter, no split, as before.
    config, channels = training_channels(variant_config("cme_fixed20_song"), None)
    wiring = _wiring(_pipeline(config, channels))
    assert wiring["CorpusExampleGen"] == ("speech,song", None)
    assert wiring["StatisticsGen"] == []
    assert wiring["Trainer.fold1"] == (["fold0", "fold2"], ["fold1"])
    assert wiring["Trainer.final"] == (["fold0", "fold1", "fold2"], ["fold0"])


def _records(split_dir: Path) -> dict:
    """utterance id -> channel of the records in one split's directory."""
    files = sorted(str(f) for f in split_dir.glob("*.gz"))
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP")
    records = [decode_example(raw) for raw in ds.as_numpy_iterator()]
    assert len({r["utterance_id"] for r in records}) == len(records)
    return {r["utterance_id"]: r["channel"] for r in records}


def _latest(root: Path, component: str, output: str) -> Path:
    [run] = list((root / component / output).iterdir())
    return run


@pytest.fixture(scope="module")
def partial_run(tmp_path_factory):
    """The augmented variant's pipeline on the speech of 4 actors, 2 folds, 1 epoch, one
    model per Trainer, run with TFX's LocalDagRunner up to Evaluator.fold0 and
    ExampleValidator (CorpusExampleGen, StatisticsGen, SchemaGen, Trainer.fold0 too)."""
    from tfx import v1 as tfx
    from tfx.orchestration.pipeline import RunOptions

    from pipeline.runner import local_pipeline
    from preprocessing.embeddings import fetch_glove

    tmp = tmp_path_factory.mktemp("tfx_augment")
    corpus = small_ravdess_corpus(tmp / "corpus")  # skips without the data
    config, channels = training_channels(variant_config(AUGMENTED, epochs=1), ("speech",))
    assert config.train_channels == ("speech", "speech_aug") and channels is None
    pipeline = local_pipeline(
        tmp / "out",
        data_dir=corpus,
        embeddings_path=str(fetch_glove()),
        config=config,
        num_folds=2,
        ensemble_size=1,
        prior_correction=True,
        channels=channels,
        # Beam in this process: 24 utterances do not repay starting workers.
        beam_pipeline_args=["--runner=DirectRunner", "--direct_running_mode=in_memory"],
    )
    tfx.orchestration.LocalDagRunner().run(
        pipeline, run_options=RunOptions(to_nodes=["Evaluator.fold0", "ExampleValidator"])
    )
    return tmp / "out" / "tfx" / "root"


def test_the_copies_are_splits_of_their_own_trained_on_and_never_evaluated(partial_run):
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2 as mlmd
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    from pipeline.tfma_metrics import read_fold_metrics

    root = partial_run
    ran = {p.name for p in root.iterdir() if p.is_dir()}
    assert {"Trainer.fold1", "Evaluator.fold1", "Calibrator", "Pusher"}.isdisjoint(ran), ran
    examples = _latest(root, "CorpusExampleGen", "examples")
    # The artifact's splits, as ML Metadata records them for every reader.
    connection = mlmd.ConnectionConfig()
    connection.sqlite.filename_uri = str(root.parent / "metadata.sqlite")
    store = metadata_store.MetadataStore(connection)
    [artifact] = store.get_artifacts_by_type("Examples")
    assert json.loads(artifact.properties["split_names"].string_value) == [
        "fold0",
        "fold1",
        "fold0_aug",
        "fold1_aug",
    ]
    plan = json.loads((examples / "fold_plan.json").read_text())
    splits = {name: _records(examples / f"Split-{name}") for name in ("fold0", "fold1")}
    copies = {name: _records(examples / f"Split-{name}_aug") for name in ("fold0", "fold1")}
    for fold, name in enumerate(("fold0", "fold1")):
        # The fold's records, all real, of its speakers; its copies, one each, apart.
        assert len(splits[name]) == 12 and set(splits[name].values()) == {"speech"}
        speakers = {i.rsplit("-", 1)[1] for i in splits[name]}
        assert {f"Actor_{s}" for s in speakers} == {
            a for a, f in plan["folds"].items() if f == fold
        }
        assert copies[name] == {corpora.copy_id(i, 1): "speech_aug" for i in splits[name]}
    summary = json.loads((examples / "summary.json").read_text())
    assert summary["records"] == 24 and summary["errors"] == 0
    assert summary["augmented_records"] == 24 and summary["augment_copies"] == 1

    # Trainer.fold0 trained on fold 1's 12 recordings and their 12 copies.
    fit = json.loads((_latest(root, "Trainer.fold0", "model_run") / "fit.json").read_text())
    assert fit["num_train"] == fit["num_final_train"] == 24 and fit["epochs_run"] == 1
    assert fit["config"]["train_channels"] == ["speech", "speech_aug"]
    assert fit["val_speakers"] == []  # a fixed schedule: no epoch chosen
    labels = {"01": "neutral", "03": "happy", "04": "sad", "05": "angry"}
    want = [0] * 4
    for i in splits["fold1"]:
        want[fit["config"]["class_names"].index(labels[i.split("-")[2]])] += 2  # + its copy
    assert fit["class_counts"] == fit["prior_class_counts"] == want

    # Evaluator.fold0 scored fold 0's 12 recordings, no copy.
    metrics = read_fold_metrics(str(_latest(root, "Evaluator.fold0", "evaluation")), 4)
    assert metrics["examples"] == 12 == sum(map(sum, metrics["confusion"]))

    # Statistics, schema and anomalies of the real splits only: no anomaly to withhold a push.
    statistics = _latest(root, "StatisticsGen", "statistics")
    assert sorted(p.name for p in statistics.iterdir() if p.is_dir()) == [
        "Split-fold0",
        "Split-fold1",
    ]
    schema = (_latest(root, "SchemaGen", "schema") / "schema.pbtxt").read_text()
    assert 'name: "fbank"' in schema and 'name: "augmentation"' not in schema
    assert "speech_aug" not in schema
    anomalies = _latest(root, "ExampleValidator", "anomalies")
    for name in ("fold0", "fold1"):
        diff = anomalies_pb2.Anomalies()
        diff.ParseFromString((anomalies / f"Split-{name}" / "SchemaDiff.pb").read_bytes())
        assert not diff.anomaly_info and not diff.HasField("dataset_anomaly_info"), name
    assert not list(anomalies.glob("Split-*_aug"))
