"""The push gate (issue 13, section 3), in parts: the decision, the anomalies it reads from
ExampleValidator's artifact, the report section, and the wiring (Pusher takes the report's
ModelBlessing; the threshold reaches the component). Both paths through a real pipeline run are
in tests/test_tfx_pipeline.py."""

import json
import math

import pytest
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.types import artifact_utils, standard_artifacts

from cli.main import build_parser, main
from pipeline.components import read_anomalies
from pipeline.report import DEFAULT_BLESS_MIN_UA, blessing_decision, render_markdown, summarize


def test_the_bar_is_inclusive_and_anomalies_or_nan_block():
    assert blessing_decision(0.5, 0.5)["blessed"]
    below = blessing_decision(0.49, 0.5)
    assert not below["blessed"]
    assert below["reasons"] == ["cross-validated UA mean 0.490 is below the bar --bless-min-ua 0.5"]
    assert not blessing_decision(math.nan, 0.0)["blessed"]
    assert not blessing_decision(None, 0.0)["blessed"]
    anomalous = blessing_decision(0.9, 0.0, {"fold0": [], "fold1": ["fbank: Unexpected type"]})
    assert not anomalous["blessed"]
    assert anomalous["anomalies"] == {"fold1": ["fbank: Unexpected type"]}
    assert "split fold1: fbank: Unexpected type" in anomalous["reasons"][0]
    assert blessing_decision(0.9, 0.0, {"fold0": [], "fold1": []})["blessed"]


def test_the_default_bar_blocks_no_score_and_the_cli_agrees():
    assert DEFAULT_BLESS_MIN_UA == 0.0
    args = build_parser().parse_args(["run"])
    assert args.bless_min_ua == DEFAULT_BLESS_MIN_UA
    assert blessing_decision(0.0)["blessed"]


def test_nan_bar_is_a_usage_error(capsys):
    assert main(["run", "--bless-min-ua", "nan"]) == 2
    assert "--bless-min-ua must be a number" in capsys.readouterr().err


def test_report_markdown_says_why_not(tmp_path):
    rows = [{"fold": 0, "wa": 0.5, "ua": 0.4, "confusion": [[1, 1], [1, 1]]}]
    report = {
        **summarize(rows, ["a", "b"]),
        "blessing": blessing_decision(0.4, 0.6, {"fold0": ["label: out of domain"]}),
    }
    text = render_markdown(report)
    assert "## Push: NOT blessed" in text
    assert "- cross-validated UA mean 0.400 is below the bar --bless-min-ua 0.6" in text
    assert "anomaly in split fold0: label: out of domain" in text
    report["blessing"] = blessing_decision(0.4, 0.0)
    blessed = render_markdown(report)
    assert "## Push: blessed" in blessed
    # Written before the fresh-process load check runs: it cannot say the model was pushed.
    assert "is pushed" not in blessed and "ModelLoadValidator" in blessed


def test_read_anomalies_from_an_example_validator_artifact(tmp_path):
    artifact = standard_artifacts.ExampleAnomalies()
    artifact.uri = str(tmp_path)
    artifact.split_names = artifact_utils.encode_split_names(["fold0", "fold1"])
    clean, dirty = anomalies_pb2.Anomalies(), anomalies_pb2.Anomalies()
    dirty.anomaly_info["fbank"].short_description = "Unexpected data type"
    for split, diff in (("fold0", clean), ("fold1", dirty)):
        (tmp_path / f"Split-{split}").mkdir()
        (tmp_path / f"Split-{split}" / "SchemaDiff.pb").write_bytes(diff.SerializeToString())
    assert read_anomalies(artifact) == {"fold0": [], "fold1": ["fbank: Unexpected data type"]}


def test_the_pusher_takes_the_reports_blessing(tmp_path):
    out = tmp_path / "pipeline.json"
    assert main(["compile", "--output", str(out), "--folds", "2"]) == 0
    tasks = json.loads(out.read_text())["pipelineSpec"]["root"]["dag"]["tasks"]
    blessing = tasks["Pusher"]["inputs"]["artifacts"]["model_blessing"]["taskOutputArtifact"]
    assert blessing == {"producerTask": "CrossValidationReport", "outputArtifactKey": "blessing"}
    anomalies = tasks["CrossValidationReport"]["inputs"]["artifacts"]["anomalies"]
    assert anomalies["taskOutputArtifact"]["producerTask"] == "ExampleValidator"


def test_the_bar_reaches_the_report_component(tmp_path):
    from pipeline.runner import local_pipeline

    pipeline = local_pipeline(
        tmp_path / "out", data_dir=tmp_path, embeddings_path="glove", num_folds=2, bless_min_ua=0.42
    )
    report = next(c for c in pipeline.components if c.id == "CrossValidationReport")
    assert report.exec_properties["bless_min_ua"] == pytest.approx(0.42)
