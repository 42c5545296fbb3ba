"""The same pipeline compiles for Kubeflow Pipelines v2 / Vertex AI, unchanged."""

import importlib
import importlib.util
import json
from pathlib import Path

import pytest
import tomli
from imports_support import PACKAGES

from cli.main import main


def test_kubeflow_json_names_every_component(tmp_path):
    out = tmp_path / "pipeline.json"
    assert (
        main(
            [
                "compile",
                "--target",
                "kubeflow",
                "--output",
                str(out),
                "--folds",
                "3",
                "--pipeline-root",
                "gs://bucket/cme",
                "--image",
                "example/cme-ser:1",
            ]
        )
        == 0
    )
    spec = json.loads(out.read_text())
    tasks = set(spec["pipelineSpec"]["root"]["dag"]["tasks"])
    assert tasks == {
        "CorpusExampleGen",
        "StatisticsGen",
        "SchemaGen",
        "ExampleValidator",
        "Trainer.fold0",
        "Trainer.fold1",
        "Trainer.fold2",
        "Evaluator.fold0",
        "Evaluator.fold1",
        "Evaluator.fold2",
        "Calibrator",
        "CrossValidationReport",
        "Trainer.final",
        "ModelLoadValidator",
        "Pusher",
    }
    assert spec["runtimeConfig"]["gcsOutputDirectory"] == "gs://bucket/cme"
    images = {
        e["container"]["image"]
        for e in spec["pipelineSpec"]["deploymentSpec"]["executors"].values()
        if "container" in e
    }
    assert images == {"example/cme-ser:1"}
    report_inputs = spec["pipelineSpec"]["root"]["dag"]["tasks"]["CrossValidationReport"]["inputs"][
        "artifacts"
    ]
    # The folds' evaluations and ExampleValidator's anomalies (both gate the push), and the
    # Calibrator's temperature, which the final Trainer takes as its hyperparameters.
    assert set(report_inputs) == {
        "evaluation_0",
        "evaluation_1",
        "evaluation_2",
        "anomalies",
        "calibration",
    }
    tasks = spec["pipelineSpec"]["root"]["dag"]["tasks"]
    assert set(tasks["Calibrator"]["inputs"]["artifacts"]) == {
        "examples",
        "model_0",
        "model_1",
        "model_2",
    }
    assert "hyperparameters" in tasks["Trainer.final"]["inputs"]["artifacts"]
    assert "hyperparameters" not in tasks["Trainer.fold0"]["inputs"].get("artifacts", {})


def test_ensemble_size_reaches_every_trainer(tmp_path):
    out = tmp_path / "pipeline.json"
    assert main(["compile", "--output", str(out), "--folds", "2", "--ensemble", "3"]) == 0
    text = out.read_text()
    # custom_config travels as a JSON string inside the job spec.
    assert text.count('\\"ensemble_size\\": 3') == 3  # fold0, fold1, final
    assert main(["compile", "--output", str(out), "--ensemble", "0"]) == 2


# --- What Kubeflow runs: the image and every node's command (nothing here can run a cluster) ---

ROOT = Path(__file__).resolve().parent.parent


def _compiled(tmp_path, root="s3://bucket/cme", *options):
    out = tmp_path / "pipeline.json"
    assert (
        main(
            [
                "compile",
                "--target",
                "kubeflow",
                "--output",
                str(out),
                "--folds",
                "2",
                "--pipeline-root",
                root,
                "--image",
                "registry.example/cme-ser:1",
                *options,
            ]
        )
        == 0
    )
    return json.loads(out.read_text())


def _parameter(spec, task, name):
    """A task's constant parameter as the IR holds it (a string, a number)."""
    value = spec["pipelineSpec"]["root"]["dag"]["tasks"][task]["inputs"]["parameters"][name]
    return next(iter(value["runtimeValue"]["constantValue"].values()))


def test_a_variant_trained_on_speech_and_song_reads_both_corpora(tmp_path):
    """As `cme-ser run`: a variant's channels choose the corpora preprocessed (one directory
    per channel, by default under the pipeline root) and the channels every Trainer reads."""
    from trainer.config import ModelConfig

    spec = _compiled(tmp_path, "gs://b/cme", "--variant", "cme_fixed20_song")
    assert json.loads(_parameter(spec, "CorpusExampleGen", "data_dir")) == [
        "gs://b/cme/data/ravdess-speech",
        "gs://b/cme/data/ravdess-song",
    ]
    assert _parameter(spec, "CorpusExampleGen", "channels") == "speech,song"
    for name in ("Trainer.fold0", "Trainer.final"):
        custom = json.loads(_parameter(spec, name, "custom_config"))
        assert ModelConfig.from_json(custom["model_config"]).train_channels == ("speech", "song")
    # --channels replaces the variant's, and --data-dir names each channel's directory.
    spec = _compiled(tmp_path, "gs://b/cme", "--channels", "speech", "--data-dir", "gs://d/sp")
    assert _parameter(spec, "CorpusExampleGen", "data_dir") == "gs://d/sp"
    tasks = spec["pipelineSpec"]["root"]["dag"]["tasks"]
    assert "channels" not in tasks["CorpusExampleGen"]["inputs"]["parameters"]


def test_a_variant_on_augmented_copies_trains_on_their_splits_and_evaluates_none(tmp_path):
    """The augmented variant compiles: the corpus step makes one copy per utterance of the
    speech and song corpora; each Trainer reads its training folds' records and their copies'
    splits (``fold<K>_aug``), the final Trainer every one; the Evaluators score the real
    held-out split only, and the statistics (hence the schema and the anomalies that gate the
    push) leave the copies out."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    from trainer.config import ModelConfig

    spec = _compiled(tmp_path, "gs://b/cme", "--variant", "cme_fixed20_song_aug")
    json_format.ParseDict(spec["pipelineSpec"], pipeline_spec_pb2.PipelineSpec())  # strict
    assert json.loads(_parameter(spec, "CorpusExampleGen", "data_dir")) == [
        "gs://b/cme/data/ravdess-speech",
        "gs://b/cme/data/ravdess-song",
    ]
    assert _parameter(spec, "CorpusExampleGen", "channels") == "speech,song"
    assert _parameter(spec, "CorpusExampleGen", "augment_copies") == "1"  # an intValue string
    train = {
        "Trainer.fold0": ["fold1", "fold1_aug"],
        "Trainer.fold1": ["fold0", "fold0_aug"],
        "Trainer.final": ["fold0", "fold1", "fold0_aug", "fold1_aug"],
    }
    for name, splits in train.items():
        assert json.loads(_parameter(spec, name, "train_args"))["splits"] == splits, name
        custom = json.loads(_parameter(spec, name, "custom_config"))
        assert ModelConfig.from_json(custom["model_config"]).train_channels == (
            "speech",
            "song",
            "speech_aug",
            "song_aug",
        )
    for fold in (0, 1):
        assert json.loads(_parameter(spec, f"Evaluator.fold{fold}", "example_splits")) == [
            f"fold{fold}"
        ]
    assert json.loads(_parameter(spec, "StatisticsGen", "exclude_splits")) == [
        "fold0_aug",
        "fold1_aug",
    ]
    # --channels speech keeps the variant's augmentation, of speech only.
    spec = _compiled(
        tmp_path, "gs://b/cme", "--variant", "cme_fixed20_song_aug", "--channels", "speech"
    )
    tasks = spec["pipelineSpec"]["root"]["dag"]["tasks"]
    assert "channels" not in tasks["CorpusExampleGen"]["inputs"]["parameters"]
    assert _parameter(spec, "CorpusExampleGen", "augment_copies") == "1"
    custom = json.loads(_parameter(spec, "Trainer.final", "custom_config"))
    assert ModelConfig.from_json(custom["model_config"]).train_channels == ("speech", "speech_aug")
    # A variant without copies compiles without them: no parameter, no split, nothing excluded.
    spec = _compiled(tmp_path, "gs://b/cme", "--variant", "cme_fixed20_song")
    tasks = spec["pipelineSpec"]["root"]["dag"]["tasks"]
    assert "augment_copies" not in tasks["CorpusExampleGen"]["inputs"]["parameters"]
    assert json.loads(_parameter(spec, "Trainer.final", "train_args"))["splits"] == [
        "fold0",
        "fold1",
    ]
    assert json.loads(_parameter(spec, "StatisticsGen", "exclude_splits")) == []


def test_one_data_dir_per_channel_or_a_usage_error(tmp_path, capsys):
    out = tmp_path / "pipeline.json"
    argv = ["compile", "--output", str(out), "--variant", "cme_fixed20_song", "--data-dir", "x"]
    assert main(argv) == 2
    assert "give one directory per channel" in capsys.readouterr().err and not out.exists()


def test_every_node_runs_importable_code_in_the_named_image(tmp_path):
    spec = _compiled(tmp_path)
    executors = spec["pipelineSpec"]["deploymentSpec"]["executors"]
    assert len(executors) == len(spec["pipelineSpec"]["root"]["dag"]["tasks"])
    ours = set()
    for name, executor in executors.items():
        container = executor["container"]
        assert container["image"] == "registry.example/cme-ser:1", name
        command = container["command"]
        assert command[:2] == ["python", "-m"] and importlib.util.find_spec(command[2]), name
        args = container["args"]
        module, _, attribute = args[args.index("--executor_class_path") + 1].rpartition(".")
        assert getattr(importlib.import_module(module), attribute), name
        if module.split(".")[0] in PACKAGES:
            ours.add(module)
    assert ours == {"pipeline.calibrator", "pipeline.components", "pipeline.infra_validation"}
    # The Trainers' run_fn is ours too, named in their parameters.
    assert "trainer.module.run_fn" in json.dumps(spec)
    module, _, attribute = "trainer.module.run_fn".rpartition(".")
    assert callable(getattr(importlib.import_module(module), attribute))
    # The image build checks that the same modules import inside it.
    dockerfile = (ROOT / "Dockerfile").read_text()
    check = next(line for line in dockerfile.splitlines() if 'python -c "import' in line)
    assert {m.strip() for m in check.split("import", 1)[1].rstrip('"').split(",")} >= (
        ours | {"trainer.module"}
    )


def test_the_dockerfile_builds_on_the_pinned_tfx_and_installs_this_package():
    dockerfile = (ROOT / "Dockerfile").read_text().splitlines()
    pyproject = tomli.loads((ROOT / "pyproject.toml").read_text())
    tfx_pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("tfx"))
    assert f"FROM tensorflow/tfx:{tfx_pin.split('==')[1]}" in dockerfile
    copied = {
        source for line in dockerfile if line.startswith("COPY ") for source in line.split()[1:-1]
    }
    assert (
        set(pyproject["tool"]["setuptools"]["packages"])
        | {"pyproject.toml", "constraints.txt", "README.md"}
        <= copied
    )
    install = next(line for line in dockerfile if "pip install" in line)
    assert "-c constraints.txt ." in install and "-e" not in install.split()
    assert "ENTRYPOINT []" in dockerfile  # Kubeflow gives each node its command


@pytest.mark.parametrize("root", ["gs://bucket/cme", "s3://bucket/cme"])
def test_the_pipeline_root_is_the_bucket_given_and_the_ir_is_kfp_v2(tmp_path, root):
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    spec = _compiled(tmp_path, root)
    assert spec["runtimeConfig"]["gcsOutputDirectory"] == root
    # Strict parse: an unknown or mistyped field in the IR fails here, as it would in KFP.
    ir = json_format.ParseDict(spec["pipelineSpec"], pipeline_spec_pb2.PipelineSpec())
    assert set(ir.root.dag.tasks) >= {"ModelLoadValidator", "Pusher"}
    pusher = ir.root.dag.tasks["Pusher"].inputs.artifacts
    assert pusher["infra_blessing"].task_output_artifact.producer_task == "ModelLoadValidator"
    assert pusher["model_blessing"].task_output_artifact.producer_task == "CrossValidationReport"
    assert f"{root}/serving_model/cme" in json.dumps(spec)


# --- Where the Trainers run: workers, machine type and accelerator (pipeline/vertex_training.py)

VERTEX_TRAINER = "tfx.extensions.google_cloud_ai_platform.trainer.executor.GenericExecutor"
TRAINERS = ("Trainer.fold0", "Trainer.fold1", "Trainer.final")


def _trainer_nodes(spec):
    """{Trainer task: (its executor class path, its custom_config as a dict)} of a job spec."""
    pipeline = spec["pipelineSpec"]
    nodes = {}
    for name in TRAINERS:
        task = pipeline["root"]["dag"]["tasks"][name]
        label = pipeline["components"][task["componentRef"]["name"]]["executorLabel"]
        args = pipeline["deploymentSpec"]["executors"][label]["container"]["args"]
        custom = task["inputs"]["parameters"]["custom_config"]["runtimeValue"]["constantValue"][
            "stringValue"
        ]
        nodes[name] = (args[args.index("--executor_class_path") + 1], json.loads(custom))
    return nodes


def test_trainer_workers_machine_and_accelerator_reach_every_trainers_vertex_job(tmp_path):
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    out = tmp_path / "pipeline.json"
    assert (
        main(
            [
                "compile",
                "--output",
                str(out),
                "--folds",
                "2",
                "--ensemble",
                "2",
                "--image",
                "registry.example/cme-ser:1",
                "--trainer-workers",
                "4",
                "--trainer-machine-type",
                "n1-highmem-8",
                "--trainer-accelerator",
                "NVIDIA_TESLA_T4:2",
                "--project",
                "my-project",
                "--region",
                "europe-west4",
            ]
        )
        == 0
    )
    spec = json.loads(out.read_text())
    json_format.ParseDict(spec["pipelineSpec"], pipeline_spec_pb2.PipelineSpec())  # strict
    machine = {
        "machine_type": "n1-highmem-8",
        "accelerator_type": "NVIDIA_TESLA_T4",
        "accelerator_count": 2,
    }
    for name, (executor, custom) in _trainer_nodes(spec).items():
        # TFX's Google Cloud Trainer extension, which launches a Vertex AI CustomJob ...
        assert executor == VERTEX_TRAINER, name
        assert callable(
            getattr(
                importlib.import_module(executor.rpartition(".")[0]), executor.rpartition(".")[2]
            )
        )
        assert custom["ai_platform_enable_vertex"] is True
        assert custom["ai_platform_vertex_region"] == "europe-west4"
        job = custom["ai_platform_training_args"]
        assert job["project"] == "my-project"
        # ... of a chief pool and a pool of the other 3 workers, in the pipeline's image.
        pools = job["job_spec"]["worker_pool_specs"]
        assert [p["replica_count"] for p in pools] == [1, 3], name
        assert all(p["machine_spec"] == machine for p in pools)
        assert {p["container_spec"]["image_uri"] for p in pools} == {"registry.example/cme-ser:1"}
        # run_fn's own settings travel alongside.
        assert custom["ensemble_size"] == 2 and "model_config" in custom


def test_one_worker_without_machine_options_keeps_the_plain_trainer(tmp_path):
    nodes = _trainer_nodes(_compiled(tmp_path))
    for name, (executor, custom) in nodes.items():
        assert executor == "tfx.components.trainer.executor.GenericExecutor", name
        assert not [key for key in custom if key.startswith("ai_platform")]
    out = str(tmp_path / "p.json")
    # A machine type alone (one worker) is a Vertex AI job too: one pool, no accelerator.
    assert (
        main(
            [
                "compile",
                "--output",
                out,
                "--folds",
                "2",
                "--trainer-machine-type",
                "n1-standard-8",
                "--project",
                "p",
            ]
        )
        == 0
    )
    _, custom = _trainer_nodes(json.loads(Path(out).read_text()))["Trainer.final"]
    (pool,) = custom["ai_platform_training_args"]["job_spec"]["worker_pool_specs"]
    assert pool["replica_count"] == 1 and pool["machine_spec"] == {"machine_type": "n1-standard-8"}


@pytest.mark.parametrize(
    "options",
    [
        ["--trainer-workers", "2"],  # no --project
        ["--trainer-workers", "0", "--project", "p"],
        ["--trainer-accelerator", "NVIDIA_TESLA_T4:0", "--project", "p"],
        ["--trainer-accelerator", "NVIDIA_TESLA_T4:two", "--project", "p"],
    ],
)
def test_bad_trainer_options_are_usage_errors(tmp_path, options, capsys):
    out = tmp_path / "pipeline.json"
    assert main(["compile", "--output", str(out), "--folds", "2", *options]) == 2
    assert "cme-ser: error:" in capsys.readouterr().err and not out.exists()
