"""The same pipeline compiles for Kubeflow Pipelines v2 / Vertex AI, unchanged."""

import json

from pipeline.cli import main


def test_kubeflow_json_names_every_component(tmp_path):
    out = tmp_path / "pipeline.json"
    assert main(["compile", "--target", "kubeflow", "--output", str(out), "--folds", "3",
                 "--pipeline-root", "gs://bucket/cme", "--image", "example/cme-ser:1"]) == 0
    spec = json.loads(out.read_text())
    tasks = set(spec["pipelineSpec"]["root"]["dag"]["tasks"])
    assert tasks == {"CorpusExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator",
                     "Trainer.fold0", "Trainer.fold1", "Trainer.fold2", "Evaluator.fold0",
                     "Evaluator.fold1", "Evaluator.fold2", "CrossValidationReport",
                     "Trainer.final", "Pusher"}
    assert spec["runtimeConfig"]["gcsOutputDirectory"] == "gs://bucket/cme"
    images = {e["container"]["image"]
              for e in spec["pipelineSpec"]["deploymentSpec"]["executors"].values()
              if "container" in e}
    assert images == {"example/cme-ser:1"}
    report_inputs = spec["pipelineSpec"]["root"]["dag"]["tasks"]["CrossValidationReport"][
        "inputs"]["artifacts"]
    # The folds' evaluations and ExampleValidator's anomalies (both gate the push).
    assert set(report_inputs) == {"evaluation_0", "evaluation_1", "evaluation_2", "anomalies"}


def test_ensemble_size_reaches_every_trainer(tmp_path):
    out = tmp_path / "pipeline.json"
    assert main(["compile", "--output", str(out), "--folds", "2", "--ensemble", "3"]) == 0
    text = out.read_text()
    # custom_config travels as a JSON string inside the job spec.
    assert text.count('\\"ensemble_size\\": 3') == 3  # fold0, fold1, final
    assert main(["compile", "--output", str(out), "--ensemble", "0"]) == 2
