"""The gRPC API (serving.grpc_server), called the way a TF Serving user's client calls it: with
the official stubs of tensorflow-serving-api (PredictionServiceStub, ModelServiceStub). The
server shares its ModelRepository (and batcher) with a REST server in the same process, as
`cme-ser serve` runs them; each test names the TF Serving 2.16.1 code whose behaviour it
checks. The servers are the real `cme-ser serve` process (gunicorn workers, each serving
REST and gRPC; two workers sharing both ports, one of them killed and replaced: the workers
test of test_serving_rest.py, whose one server serves both protocols)."""

import dataclasses
import json
import threading

import grpc
import numpy as np
import pytest
import tensorflow as tf
from serving_support import (
    ANGRY,
    CLASSES,
    KIDS,
    aligned,
    example_bytes,
    grpc_address,
    needs_ravdess,
    serve_argv,
    server_stderr,
    start_server,
    stop_server,
    timed_words,
    waveform_inputs,
)
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving.client import GrpcClient, GrpcRequestError, RestClient, Utterance
from serving.grpc_server import GrpcServer
from serving.repository import ModelRepository
from serving.services import Services
from trainer.export import PREDICT_WAVEFORM

pytestmark = needs_ravdess


@pytest.fixture(scope="module")
def exported(small_model_export):
    _, base, info = small_model_export  # conftest: small_model() exported once per session
    return base, info


@dataclasses.dataclass
class Rest:
    url: str

    @property
    def server_address(self):
        return "127.0.0.1", int(self.url.rsplit(":", 1)[1])


@dataclasses.dataclass
class Grpc:
    address: str  # host:port

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def servers(exported, tmp_path_factory):
    """(REST, gRPC) of one `cme-ser serve --grpc-port 0` (free loopback ports), with a
    "stable" label."""
    base, _ = exported
    labels = tmp_path_factory.mktemp("labels") / "labels.json"
    labels.write_text(json.dumps({"stable": 1}))
    process, url = start_server(
        serve_argv(base, "--poll-seconds", "0", "--version-labels", labels, "--grpc-port", "0")
    )
    yield Rest(url), Grpc(grpc_address(process.announcement))
    assert stop_server(process) == 0, server_stderr(process)[-5000:]


@pytest.fixture(scope="module")
def channel(servers):
    with grpc.insecure_channel(servers[1].address) as ch:
        yield ch


@pytest.fixture(scope="module")
def prediction(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def models(channel):
    return model_service_pb2_grpc.ModelServiceStub(channel)


@pytest.fixture(scope="module")
def utterance():
    waveform, result = aligned(ANGRY, KIDS)
    return (waveform, *timed_words(result))


@pytest.fixture(scope="module")
def inputs(utterance):
    return waveform_inputs([utterance])


@pytest.fixture(scope="module")
def expected(exported, inputs):
    """predict_waveform of the utterance, straight from the SavedModel."""
    _, info = exported
    run = tf.saved_model.load(info["path"]).signatures[PREDICT_WAVEFORM]
    out = run(**{k: tf.constant(v) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in out.items()}


def predict_request(
    inputs, name="cme", signature=PREDICT_WAVEFORM, version=None, label=None, output_filter=()
):
    """A PredictRequest as TF Serving's docs build one: tf.make_tensor_proto per input."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if signature is not None:
        request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    request.output_filter.extend(output_filter)
    return request


def rpc_error(call, request):
    """(code, details) of a call that must fail."""
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=60)
    return caught.value.code(), caught.value.details()


# ----------------------------------------------------------------------------------------------
# Predict (prediction_service_impl.cc -> predict_impl.cc -> predict_util.cc RunPredict)


def test_predict_matches_the_savedmodel_and_the_rest_server(
    servers, prediction, inputs, expected, utterance
):
    response = prediction.Predict(predict_request(inputs), timeout=60)
    # MakeModelSpec: the name asked for, the signature used, the version that answered.
    assert (
        response.model_spec.name,
        response.model_spec.signature_name,
        response.model_spec.version.value,
    ) == ("cme", PREDICT_WAVEFORM, 1)
    assert set(response.outputs) == set(expected)
    outputs = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
    np.testing.assert_allclose(
        outputs["probabilities"], expected["probabilities"], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        outputs["acoustic_excitation"], expected["acoustic_excitation"], rtol=1e-5, atol=1e-6
    )
    assert outputs["class_ids"].tolist() == expected["class_ids"].tolist()
    assert outputs["classes"].tolist() == expected["classes"].tolist()
    assert outputs["class_names"].tolist() == [[c.encode() for c in CLASSES]]
    # Tensor::AsProtoField: values in the typed fields, as clients reading .float_val expect.
    probabilities = response.outputs["probabilities"]
    assert probabilities.tensor_content == b"" and len(probabilities.float_val) == len(CLASSES)
    assert [d.size for d in probabilities.tensor_shape.dim] == [1, len(CLASSES)]
    assert response.outputs["class_ids"].dtype == tf.int64.as_datatype_enum
    assert list(response.outputs["class_ids"].int64_val) == expected["class_ids"].tolist()

    rest = RestClient(servers[0].url, "cme")
    with rest:
        [over_rest] = rest.predict_waveform([Utterance(*utterance)])
    np.testing.assert_allclose(
        outputs["probabilities"][0], list(over_rest.probabilities.values()), rtol=1e-5, atol=1e-6
    )

    # signature_name "" is "serving_default" (kDefaultServingSignatureDefKey): serialized
    # tf.train.Example records of the same utterance.
    records = np.array([example_bytes(ANGRY, KIDS)], dtype=object)
    response = prediction.Predict(
        predict_request({"examples": records}, signature=None), timeout=60
    )
    assert response.model_spec.signature_name == "serving_default"
    assert tf.make_ndarray(response.outputs["classes"]).tolist() == expected["classes"].tolist()


def test_versions_and_labels_pick_the_servable(prediction, inputs):
    for spec in ({"version": 1}, {"label": "stable"}):
        response = prediction.Predict(predict_request(inputs, **spec), timeout=60)
        assert response.model_spec.version.value == 1


def test_output_filter(prediction, inputs, expected):
    response = prediction.Predict(
        predict_request(inputs, output_filter=["classes", "probabilities"]), timeout=60
    )
    assert set(response.outputs) == {"classes", "probabilities"}
    np.testing.assert_allclose(
        tf.make_ndarray(response.outputs["probabilities"]),
        expected["probabilities"],
        rtol=1e-5,
        atol=1e-6,
    )
    # PreProcessPrediction's checks of the filter.
    code, details = rpc_error(prediction.Predict, predict_request(inputs, output_filter=["scores"]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == (
        "output tensor alias not found in signature: scores Outputs expected to "
        "be in the set {acoustic_excitation,class_ids,class_names,classes,"
        "probabilities,semantic_excitation}."
    )
    code, details = rpc_error(
        prediction.Predict, predict_request(inputs, output_filter=["classes", "classes"])
    )
    assert (code, details) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "duplicate output tensor alias: classes",
    )


def test_unknown_model_version_label_and_signature(prediction, inputs):
    cases = [
        # ServerCore::GetServableHandle (Latest / Specific), GetModelVersionForLabel.
        (
            {"name": "other"},
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Latest(other)",
        ),
        (
            {"version": 9},
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Specific(cme, 9)",
        ),
        (
            {"name": "other", "version": 1},
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Specific(other, 1)",
        ),
        (
            {"label": "canary"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "Unrecognized servable version label: canary",
        ),
        (
            {"name": "other", "label": "stable"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "Unrecognized servable version label: stable",
        ),
        # ServableRequestFromModelSpec.
        ({"name": ""}, grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified."),
        # RunPredict's signature lookup.
        (
            {"signature": "predict_words"},
            grpc.StatusCode.FAILED_PRECONDITION,
            'Serving signature key "predict_words" not found.',
        ),
    ]
    for spec, code, message in cases:
        assert rpc_error(prediction.Predict, predict_request(inputs, **spec)) == (code, message), (
            spec
        )
    # TensorflowPredictor::Predict without a model_spec.
    assert rpc_error(prediction.Predict, predict_pb2.PredictRequest()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Missing ModelSpec",
    )


def test_bad_inputs(servers, prediction, inputs, utterance):
    missing = {k: v for k, v in inputs.items() if k != "word_end_s"}
    code, details = rpc_error(prediction.Predict, predict_request(missing))
    assert code == grpc.StatusCode.INVALID_ARGUMENT  # VerifyRequestInputsSize
    assert details == (
        "input size does not match signature: 4!=5 len({num_samples,waveform,"
        "word_start_s,words}) != len({num_samples,waveform,word_end_s,"
        "word_start_s,words}). Sent extra: {}. Missing but required: "
        "{word_end_s}."
    )
    renamed = dict(missing, word_stop_s=inputs["word_end_s"])
    code, details = rpc_error(prediction.Predict, predict_request(renamed))
    assert code == grpc.StatusCode.INVALID_ARGUMENT  # GetInputValues
    assert details.startswith(
        "Signature input alias: word_end_s(feed name: "
        "predict_waveform_word_end_s:0) not found in request and no "
        "default value provided. Inputs expected to be in the request "
        "{num_samples,waveform,word_start_s,word_stop_s,words}"
    ), details
    # Session::Run's feed type check (FunctionCallFrame::SetArgs' text).
    as_double = dict(inputs, waveform=inputs["waveform"].astype(np.float64))
    code, details = rpc_error(prediction.Predict, predict_request(as_double))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("Expects arg[") and details.endswith(
        "to be float but double is provided"
    ), details
    # Tensor::FromProto refuses a proto whose content does not fill its shape.
    broken = predict_request(inputs)
    broken.inputs["waveform"].tensor_shape.dim[1].size += 1
    assert rpc_error(prediction.Predict, broken) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "tensor parsing error: waveform",
    )
    # The graph's input checks (trainer.export.check_waveform_inputs): the same text over both
    # protocols.
    too_long = dict(inputs, num_samples=inputs["num_samples"] + 10**6)
    code, details = rpc_error(prediction.Predict, predict_request(too_long))
    rest_status, rest_body = _rest_predict(servers[0], too_long)
    assert (code, rest_status) == (grpc.StatusCode.INVALID_ARGUMENT, 400)
    assert (
        details == rest_body["error"]
        and (
            "assertion failed: [num_samples must be at most the samples in its waveform row] "
            f"[num_samples:] [{too_long['num_samples'][0]}]"
        )
        in details
    ), details
    flat = dict(inputs, num_samples=inputs["num_samples"].reshape(1, 1))
    code, details = rpc_error(prediction.Predict, predict_request(flat))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == (
        "input 'num_samples' of signature 'predict_waveform' must have shape [-1] "
        "(-1: any size), got [1,1]"
    )
    # The server still answers.
    assert prediction.Predict(predict_request(inputs), timeout=60).model_spec.version.value == 1


def _rest_predict(rest, inputs):
    import http.client

    body = {
        "signature_name": PREDICT_WAVEFORM,
        "inputs": {
            k: [[w.decode() for w in row] for row in v.tolist()] if k == "words" else v.tolist()
            for k, v in inputs.items()
        },
    }
    text = json.dumps(body)
    connection = http.client.HTTPConnection("127.0.0.1", rest.server_address[1], timeout=60)
    try:
        connection.request("POST", "/v1/models/cme:predict", body=text.encode())
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


# ----------------------------------------------------------------------------------------------
# GetModelMetadata (get_model_metadata_impl.cc)


def test_get_model_metadata(servers, prediction):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "cme"
    response = prediction.GetModelMetadata(request, timeout=60)
    assert response.model_spec.name == "cme" and response.model_spec.version.value == 1
    assert response.model_spec.signature_name == ""
    packed = response.metadata["signature_def"]
    assert packed.type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    defs = get_model_metadata_pb2.SignatureDefMap()
    assert packed.Unpack(defs)
    assert set(defs.signature_def) == {
        "serving_default",
        "predict_waveform",
        "predict_waveform_bytes",
        "__saved_model_init_op",
    }
    waveform = defs.signature_def["predict_waveform"]
    assert waveform.method_name == "tensorflow/serving/predict"
    assert waveform.inputs["waveform"].dtype == tf.float32.as_datatype_enum
    assert [d.size for d in waveform.inputs["waveform"].tensor_shape.dim] == [-1, -1]
    assert waveform.outputs["probabilities"].tensor_shape.dim[1].size == len(CLASSES)
    # What the REST route prints is this response as JSON.
    with (
        GrpcClient(f"grpc://{servers[1].address}", "cme") as over_grpc,
        RestClient(servers[0].url, "cme") as over_rest,
    ):
        assert over_grpc.metadata() == over_rest.metadata()

    request.model_spec.version_label = "stable"
    assert prediction.GetModelMetadata(request, timeout=60).model_spec.version.value == 1
    request.model_spec.version.value = 3
    assert rpc_error(prediction.GetModelMetadata, request) == (
        grpc.StatusCode.NOT_FOUND,
        "Servable not found for request: Specific(cme, 3)",
    )
    none = get_model_metadata_pb2.GetModelMetadataRequest()
    none.model_spec.name = "cme"
    assert rpc_error(prediction.GetModelMetadata, none) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "GetModelMetadataRequest must specify at least one metadata_field",
    )
    # (sic) errors::InvalidArgument concatenates, so the "%s" stays in the text.
    none.metadata_field.append("graph")
    assert rpc_error(prediction.GetModelMetadata, none) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Metadata field %s is not supportedgraph",
    )
    assert rpc_error(
        prediction.GetModelMetadata,
        get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"]),
    ) == (grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")


# ----------------------------------------------------------------------------------------------
# GetModelStatus (get_model_status_impl.cc)


def test_get_model_status(servers, models):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "cme"
    response = models.GetModelStatus(request, timeout=60)
    [status] = response.model_version_status
    assert status.version == 1
    assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert (status.status.error_code, status.status.error_message) == (0, "")
    # Only model_spec.version is read: a label, known or not, lists every version.
    request.model_spec.version_label = "canary"
    assert models.GetModelStatus(request, timeout=60) == response
    request.model_spec.version.value = 1
    assert models.GetModelStatus(request, timeout=60) == response
    request.model_spec.version.value = 9
    assert rpc_error(models.GetModelStatus, request) == (
        grpc.StatusCode.NOT_FOUND,
        "Could not find version 9 of model cme",
    )
    other = get_model_status_pb2.GetModelStatusRequest()
    other.model_spec.name = "other"
    assert rpc_error(models.GetModelStatus, other) == (
        grpc.StatusCode.NOT_FOUND,
        "Could not find any versions of model other",
    )
    assert rpc_error(models.GetModelStatus, get_model_status_pb2.GetModelStatusRequest()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Missing ModelSpec",
    )
    with (
        GrpcClient(f"grpc://{servers[1].address}", "cme") as over_grpc,
        RestClient(servers[0].url, "cme") as over_rest,
    ):
        assert over_grpc.status() == over_rest.status()


# ----------------------------------------------------------------------------------------------
# serving.client.GrpcClient and `cme-ser predict --url grpc://`


@pytest.mark.parametrize("binary", [False, True], ids=["tensor", "bytes"])
def test_grpc_client_predict_waveform(servers, utterance, expected, binary):
    with GrpcClient(f"grpc://{servers[1].address}", "cme", label="stable") as client:
        [prediction] = client.predict_waveform([Utterance(*utterance)], binary=binary)
        assert prediction.emotion == expected["classes"][0].decode()
        np.testing.assert_allclose(
            list(prediction.probabilities.values()),
            expected["probabilities"][0],
            rtol=1e-5,
            atol=1e-6,
        )
        assert list(prediction.probabilities) == list(CLASSES)
        assert [w.word for w in prediction.words] == utterance[1]
    with GrpcClient(f"grpc://{servers[1].address}", "cme", version=7) as client:
        with pytest.raises(GrpcRequestError) as caught:
            client.status()
        assert (caught.value.code, caught.value.status, caught.value.message) == (
            "NOT_FOUND",
            404,
            "Could not find version 7 of model cme",
        )


def test_cme_ser_predict_with_a_grpc_url(servers, capsys):
    from cli.main import main

    assert (
        main(
            [
                "predict",
                str(ANGRY),
                "--transcript",
                KIDS,
                "--url",
                f"grpc://{servers[1].address}",
                "--json",
            ]
        )
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["model"] == f"grpc://{servers[1].address}/models/cme"
    [result] = doc["results"]
    assert result["emotion"] in CLASSES and result.get("error") is None
    # A server that is not there: a one-line usage error, as for REST.
    assert (
        main(
            [
                "predict",
                str(ANGRY),
                "--transcript",
                KIDS,
                "--url",
                "grpc://127.0.0.1:1",
                "--timeout",
                "5",
            ]
        )
        == 2
    )
    assert "cannot reach grpc://127.0.0.1:1" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Shutdown


def test_close_joins_every_thread(exported, inputs):
    """Services.close() (gunicorn's worker_exit hook) closes the gRPC server first: its calls
    finish, its request threads and gRPC's serving thread are joined, before the batcher and
    the models go."""
    base, _ = exported
    before = set(threading.enumerate())
    services = Services(
        base,
        "cme",
        poll_seconds=0.05,
        batching=True,  # (off by default)
        batch_timeout_ms=50,
        grpc_host="127.0.0.1",
        grpc_port=0,
    )
    with grpc.insecure_channel(services.grpc.address) as ch:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        assert stub.Predict(predict_request(inputs), timeout=60).model_spec.version.value == 1
    assert services.batcher.batches == 1  # gRPC calls go through the REST API's batcher
    started = {t.name for t in set(threading.enumerate()) - before}
    assert any(n.startswith("grpc-request") for n in started), started
    services.close()
    assert set(threading.enumerate()) - before == set()
    assert services.repository.available_versions == []
    services.grpc.close()  # idempotent


def test_grpc_port_in_use_is_an_error(exported, servers):
    """SO_REUSEPORT is off by default: a second server on a port in use fails instead of
    sharing it."""
    base, _ = exported
    with pytest.raises(OSError, match="cannot bind gRPC"):
        GrpcServer(ModelRepository(base, "cme"), port=servers[1].port)


def test_serve_refuses_a_bad_grpc_port(exported, capfd):
    from cli.main import main

    base, _ = exported
    # capfd, not capsys: `serve` enables faulthandler, which needs a real stderr descriptor.
    assert main(["serve", "--model-base-path", str(base), "--grpc-port", "-2"]) == 2
    assert "--grpc-port must be a port, 0 (a free one) or -1 (off)" in capfd.readouterr().err
