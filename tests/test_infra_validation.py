"""The push gate's second half: the final model must load in a fresh process, the way the model
server loads it, and answer its warm-up requests (``pipeline.infra_validation``), and TFX's own
Pusher must refuse a model that does not (``model_utils.is_infra_validated``)."""

import shutil

from google.protobuf import json_format
from tfx import v1 as tfx
from tfx.components.pusher.executor import Executor as PusherExecutor
from tfx.types import standard_artifacts

from pipeline.infra_validation import REASON_FILE, ModelLoadValidator, check_in_fresh_process


def _model_artifact(root, export):
    """A Trainer-style Model artifact whose serving export is a copy of ``export``."""
    model = standard_artifacts.Model()
    model.uri = str(root / "model")
    shutil.copytree(export, root / "model" / "Format-Serving")
    return model


def _validate(model, root):
    blessing = standard_artifacts.InfraBlessing()
    blessing.uri = str(root / "infra_blessing")
    ModelLoadValidator.EXECUTOR_SPEC.executor_class().Do(
        {"model": [model]}, {"blessing": [blessing]}, {}
    )
    return blessing


def _push(model, infra_blessing, root):
    model_blessing = standard_artifacts.ModelBlessing()
    model_blessing.uri = str(root / "model_blessing")
    model_blessing.set_int_custom_property("blessed", 1)  # the report blessed the run
    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(root / "pushed_model")
    destination = root / "serving_model"
    PusherExecutor().Do(
        {"model": [model], "model_blessing": [model_blessing], "infra_blessing": [infra_blessing]},
        {"pushed_model": [pushed]},
        {
            "push_destination": json_format.MessageToJson(
                tfx.proto.PushDestination(
                    filesystem=tfx.proto.PushDestination.Filesystem(base_directory=str(destination))
                )
            )
        },
    )
    return pushed, destination


def test_a_model_that_loads_and_answers_is_blessed_and_pushed(small_model_base, tmp_path):
    model = _model_artifact(tmp_path, small_model_base / "1")
    blessing = _validate(model, tmp_path)
    assert blessing.get_int_custom_property("blessed") == 1
    assert (tmp_path / "infra_blessing" / "INFRA_BLESSED").is_file()
    pushed, destination = _push(model, blessing, tmp_path)
    assert pushed.get_int_custom_property("pushed") == 1
    (version,) = destination.iterdir()
    assert (version / "saved_model.pb").read_bytes() == (
        small_model_base / "1" / "saved_model.pb"
    ).read_bytes()


def test_a_model_that_does_not_load_is_refused_with_the_reason(small_model_base, tmp_path):
    model = _model_artifact(tmp_path, small_model_base / "1")
    export = tmp_path / "model" / "Format-Serving"
    for data in (export / "variables").glob("variables.data-*"):
        data.write_bytes(data.read_bytes()[:100])  # a truncated upload, say
    blessing = _validate(model, tmp_path)
    assert blessing.get_int_custom_property("blessed") == 0
    reason = (tmp_path / "infra_blessing" / REASON_FILE).read_text()
    assert reason == blessing.get_string_custom_property("reason")
    assert reason.startswith(f"loading {export} in a fresh process failed (exit 1): ")
    pushed, destination = _push(model, blessing, tmp_path)
    assert pushed.get_int_custom_property("pushed") == 0
    assert not destination.exists() or not any(destination.iterdir())


def test_a_model_without_warmup_requests_proves_nothing_and_is_refused(small_model_base, tmp_path):
    shutil.copytree(small_model_base / "1", tmp_path / "export")
    shutil.rmtree(tmp_path / "export" / "assets.extra")
    reason = check_in_fresh_process(str(tmp_path / "export"))
    assert reason.startswith(f"loading {tmp_path / 'export'} in a fresh process failed (exit 1)")
    assert "no warm-up requests" in reason
