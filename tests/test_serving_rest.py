"""The REST server: TF Serving's routes, request/response formats and error texts, version
directories appearing while it runs, version labels, batching; the server keeps answering
after every bad request. Every server here is the real `cme-ser serve` process (gunicorn)."""

import base64
import dataclasses
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from serving_support import (
    ANGRY,
    CLASSES,
    KIDS,
    aligned,
    children,
    example_bytes,
    grpc_address,
    grpc_status_versions,
    listening_inodes,
    needs_ravdess,
    serve_argv,
    server_stderr,
    start_server,
    stop_server,
    timed_words,
    waveform_inputs,
)

from serving.batching import Batcher
from serving.client import RestClient, Utterance
from serving.repository import ModelRepository
from serving.server import RestApi
from serving.services import Services
from trainer.export import PREDICT_WAVEFORM, PREDICT_WAVEFORM_BYTES

pytestmark = needs_ravdess
LIMIT = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def exported(small_model_export):
    _, base, info = small_model_export  # conftest: small_model() exported once per session
    return base, info


@dataclasses.dataclass
class Served:
    """A running `cme-ser serve` (serving_support.start_server) and the base path it serves."""

    process: subprocess.Popen
    url: str
    base: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory):
    """`cme-ser serve` of the CME model, with a "stable" label, a 2 MB body limit and
    --enable-cors-support (the CORS headers are checked on it; the toy server has them off)."""
    base, _ = exported
    labels = tmp_path_factory.mktemp("labels") / "labels.json"
    labels.write_text(json.dumps({"stable": 1}))
    process, url = start_server(
        serve_argv(
            base,
            "--poll-seconds",
            "0",
            "--version-labels",
            labels,
            "--grpc-port",
            "-1",
            "--max-request-mb",
            str(LIMIT / 2**20),
            "--enable-cors-support",
        )
    )
    yield Served(process, url, base)
    assert stop_server(process) == 0, server_stderr(process)[-5000:]


@pytest.fixture(scope="module")
def utterance():
    waveform, result = aligned(ANGRY, KIDS)
    return (waveform, *timed_words(result))


@pytest.fixture(scope="module")
def expected(exported, utterance):
    """predict_waveform of the utterance, straight from the SavedModel."""
    _, info = exported
    run = tf.saved_model.load(info["path"]).signatures[PREDICT_WAVEFORM]
    out = run(**{k: tf.constant(v) for k, v in waveform_inputs([utterance]).items()})
    return {k: v.numpy() for k, v in out.items()}


def call(srv, method, path, body=None, headers=None):
    """(status, parsed JSON) of one raw request."""
    connection = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    try:
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


def instance(utt):
    waveform, words, starts, ends = utt
    return {
        "waveform": waveform.tolist(),
        "num_samples": int(waveform.size),
        "words": words,
        "word_start_s": starts,
        "word_end_s": ends,
    }


def assert_healthy(srv):
    status, body = call(srv, "GET", "/v1/models/cme")
    assert status == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"


# ----------------------------------------------------------------------------------------------
# GET: status and metadata


def test_model_status(server):
    expected = {
        "model_version_status": [
            {
                "version": "1",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    assert call(server, "GET", "/v1/models/cme") == (200, expected)
    assert call(server, "GET", "/v1/models/cme/versions/1") == (200, expected)
    assert call(server, "GET", "/v1/models/cme/labels/stable") == (200, expected)
    assert call(server, "GET", "/V1/Models/cme") == (200, expected)  # TF Serving's (?i)
    assert call(server, "GET", "/v1/models/cme/versions/9") == (
        404,
        {"error": "Could not find version 9 of model cme"},
    )
    assert call(server, "GET", "/v1/models/other") == (
        404,
        {"error": "Could not find any versions of model other"},
    )
    assert call(server, "GET", "/v1/models") == (400, {"error": "Missing model name in request."})
    # TF Serving 2.16.1's GetModelStatusImpl::GetModelStatusWithModelSpec reads only
    # model_spec.version: a label on the status route, known or not, lists every version.
    assert call(server, "GET", "/v1/models/cme/labels/canary") == (200, expected)


def test_model_metadata(server, exported):
    status, body = call(server, "GET", "/v1/models/cme/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": "cme", "signature_name": "", "version": "1"}
    defs = body["metadata"]["signature_def"]["signature_def"]
    assert set(defs) == {
        "serving_default",
        "predict_waveform",
        "predict_waveform_bytes",
        "__saved_model_init_op",
    }  # TF Serving lists the init op too
    assert defs["predict_waveform_bytes"]["inputs"]["waveform_bytes"]["dtype"] == "DT_STRING"
    waveform = defs["predict_waveform"]
    assert waveform["method_name"] == "tensorflow/serving/predict"
    assert set(waveform["inputs"]) == {
        "waveform",
        "num_samples",
        "words",
        "word_start_s",
        "word_end_s",
    }
    assert waveform["inputs"]["waveform"]["dtype"] == "DT_FLOAT"
    assert waveform["inputs"]["waveform"]["tensor_shape"] == {
        "dim": [{"size": "-1", "name": ""}, {"size": "-1", "name": ""}],
        "unknown_rank": False,
    }
    assert waveform["inputs"]["num_samples"]["dtype"] == "DT_INT32"
    assert waveform["inputs"]["words"]["dtype"] == "DT_STRING"
    assert waveform["outputs"]["probabilities"]["tensor_shape"]["dim"][1]["size"] == "4"
    assert waveform["outputs"]["class_ids"]["dtype"] == "DT_INT64"
    assert set(waveform["outputs"]) == {
        "probabilities",
        "class_ids",
        "classes",
        "class_names",
        "acoustic_excitation",
        "semantic_excitation",
    }
    assert defs["serving_default"]["inputs"]["examples"]["dtype"] == "DT_STRING"
    assert all(":" in t["name"] for t in waveform["inputs"].values())  # graph tensor names
    assert call(server, "GET", "/v1/models/cme/versions/1/metadata")[1] == body
    assert call(server, "GET", "/v1/models/cme/labels/stable/metadata")[1] == body
    assert call(server, "GET", "/v1/models/cme/versions/3/metadata") == (
        404,
        {"error": "Servable not found for request: Specific(cme, 3)"},
    )
    assert call(server, "GET", "/v1/models/nope/metadata") == (
        404,
        {"error": "Servable not found for request: Latest(nope)"},
    )


# ----------------------------------------------------------------------------------------------
# POST: predict


def test_predict_waveform_row_and_columnar_formats(server, utterance, expected):
    row = {"signature_name": "predict_waveform", "instances": [instance(utterance)]}
    status, body = call(server, "POST", "/v1/models/cme:predict", row)
    assert status == 200 and list(body) == ["predictions"]
    [prediction] = body["predictions"]
    assert set(prediction) == set(expected)
    np.testing.assert_allclose(prediction["probabilities"], expected["probabilities"][0], atol=1e-6)
    np.testing.assert_allclose(
        prediction["acoustic_excitation"], expected["acoustic_excitation"][0], atol=1e-6
    )
    assert prediction["classes"] == expected["classes"][0].decode()  # a plain string, not b64
    assert prediction["class_ids"] == int(expected["class_ids"][0])
    assert prediction["class_names"] == list(CLASSES)

    columnar = {
        "signature_name": "predict_waveform",
        "inputs": {k: [v] for k, v in instance(utterance).items()},
    }
    status, body = call(server, "POST", "/v1/models/cme/versions/1:predict", columnar)
    assert status == 200 and list(body) == ["outputs"]
    outputs = body["outputs"]
    np.testing.assert_allclose(outputs["probabilities"], expected["probabilities"], atol=1e-6)
    np.testing.assert_allclose(
        outputs["semantic_excitation"], expected["semantic_excitation"], atol=1e-6
    )
    assert outputs["classes"] == [prediction["classes"]]
    # The same through the label route.
    status, body = call(server, "POST", "/v1/models/cme/labels/stable:predict", row)
    assert status == 200
    np.testing.assert_allclose(
        body["predictions"][0]["probabilities"], expected["probabilities"][0], atol=1e-6
    )


def test_serving_default_takes_b64_examples(server, expected):
    record = example_bytes(ANGRY, KIDS)
    b64 = base64.b64encode(record).decode()
    status, body = call(server, "POST", "/v1/models/cme:predict", {"instances": [{"b64": b64}]})
    assert status == 200
    [prediction] = body["predictions"]
    assert set(prediction) == {"probabilities", "class_ids", "classes", "class_names"}
    np.testing.assert_allclose(
        prediction["probabilities"], expected["probabilities"][0], atol=1e-4
    )  # filterbank from preprocessing vs in-graph
    status, body = call(
        server,
        "POST",
        "/v1/models/cme:predict",
        {"signature_name": "serving_default", "inputs": [{"b64": b64}] * 2},
    )
    assert status == 200 and len(body["outputs"]["classes"]) == 2
    # A corrupt record is TensorFlow's INVALID_ARGUMENT, as from TF Serving.
    status, body = call(
        server,
        "POST",
        "/v1/models/cme:predict",
        {"instances": [{"b64": base64.b64encode(b"not a record").decode()}]},
    )
    assert status == 400 and "parse" in body["error"].lower()
    assert call(server, "POST", "/v1/models/cme:predict", {"instances": [{"b64": "%%%"}]}) == (
        400,
        {
            "error": "Failed to process element: 0 of 'instances' list. Error: "
            "INVALID_ARGUMENT: Unable to base64 decode"
        },
    )
    assert_healthy(server)


@pytest.mark.parametrize("binary", [False, True])
def test_client_predict_waveform(server, utterance, expected, binary):
    with RestClient(server.url, "cme") as client:
        [prediction] = client.predict_waveform([Utterance(*utterance)], binary=binary)
        assert client.status()["model_version_status"][0]["version"] == "1"
        assert client.metadata()["model_spec"]["version"] == "1"
    top = int(expected["class_ids"][0])
    assert prediction.emotion == CLASSES[top] and prediction.class_id == top
    assert list(prediction.probabilities) == list(CLASSES)
    np.testing.assert_allclose(
        list(prediction.probabilities.values()), expected["probabilities"][0], atol=1e-6
    )
    assert [w.word for w in prediction.words] == utterance[1]
    np.testing.assert_allclose(
        [w.acoustic_excitation for w in prediction.words],
        expected["acoustic_excitation"][0],
        atol=1e-6,
    )
    assert prediction.words[0].start_s == utterance[2][0]


MALFORMED = [
    (b"", 400, "JSON Parse error: The document is empty"),
    (b'{"instances": [', 400, "JSON Parse error: "),
    # json_tensor.cc ParseJson FormatError; JsonValueToString writes with rapidjson's PrettyWriter.
    (b"[1, 2]", 400, "JSON Value: [\n    1,\n    2\n] Is not object"),
    (
        b'{"signature_name": 5, "instances": [1]}',
        400,
        "'signature_name' key must be a string value.",
    ),
    (b'{"signature_name": "predict_waveform"}', 400, "Missing 'inputs' or 'instances' key"),
    (
        b'{"signature_name": "predict_waveform", "instances": [], "inputs": {}}',
        400,
        "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist",
    ),
    # json_tensor.cc FillPredictRequestFromJson, 2.16.1: "Expecting" (was "Excepting").
    (
        b'{"signature_name": "predict_waveform", "instances": {}}',
        400,
        "Expecting 'instances' to be an list/array",
    ),
    (
        b'{"signature_name": "predict_waveform", "instances": []}',
        400,
        "No values in 'instances' array",
    ),
    (
        b'{"signature_name": "predict_waveform", "instances": [[1.0]]}',
        400,
        "instances is a plain list, but expecting list of objects as multiple input tensors "
        "required as per tensorinfo_map",
    ),
    (
        b'{"signature_name": "predict_waveform", "inputs": [1.0]}',
        400,
        "inputs is a plain value/list, but expecting an object as multiple input tensors required "
        "as per tensorinfo_map",
    ),
    (
        b'{"signature_name": "nope", "instances": [1]}',
        400,
        'Serving signature name: "nope" not found in signature def',
    ),
]


@pytest.mark.parametrize("body,status,message", MALFORMED)
def test_malformed_requests(server, body, status, message):
    got_status, got = call(server, "POST", "/v1/models/cme:predict", body)
    assert got_status == status and message in got["error"], got
    assert_healthy(server)


def good_columnar(utt, **changes):
    inputs = {k: [v] for k, v in instance(utt).items()}
    inputs.update(changes)
    return {"signature_name": "predict_waveform", "inputs": inputs}


def test_bad_waveform_inputs(server, utterance):
    waveform, words, starts, ends = utterance
    n = waveform.size
    cases = [
        # wrong dtypes (TF Serving's JSON rules)
        (
            good_columnar(utterance, num_samples=[float(n)]),
            f"JSON Value: {float(n)} Type: Number is not of expected type: int32",
        ),
        (
            good_columnar(utterance, words=[[1, 2, 3, 4, 5, 6]]),
            "JSON Value: 1 Type: Number is not of expected type: string",
        ),
        (
            good_columnar(utterance, waveform=[["a"] * 10]),
            'JSON Value: "a" Type: String is not of expected type: float',
        ),
        (
            good_columnar(utterance, waveform=[[0.1, True, 0.2] * 200]),
            "JSON Value: true Type: True is not of expected type: float",
        ),
        (
            good_columnar(utterance, waveform=[waveform[:1000].tolist(), waveform[:900].tolist()]),
            "Encountered list at unexpected size: 900 at level: 1 expected size: 1000",
        ),
        # wrong shapes
        (
            good_columnar(utterance, waveform=waveform.tolist()),
            "input 'waveform' of signature 'predict_waveform' must have shape [-1,-1] (-1: any "
            "size), got [" + str(n) + "]",
        ),
        # The checks of the graph (trainer.export.check_waveform_inputs): TF's message for a
        # failed tf.debugging.Assert, "assertion failed: [<rule>] [<offending values>]".
        (
            good_columnar(utterance, word_start_s=[starts[:5]]),
            "assertion failed: [word_start_s must have the shape of words: one time per word slot "
            "(pad words with empty strings and times with 0)] [word_start_s shape:] [1 5] "
            "[words shape:] [1 6]",
        ),
        (
            good_columnar(utterance, num_samples=[n, n]),
            "assertion failed: [num_samples must be [batch]: one length per waveform row] "
            "[num_samples shape:] [2] [waveform rows:] [1]",
        ),
        # times
        (
            good_columnar(utterance, word_start_s=[[-0.5] + starts[1:]]),
            "assertion failed: [word_start_s must be >= 0 (seconds from the start of the audio)] "
            "[[row, slot]:] [[0 0]] [word_start_s:] [-0.5]",
        ),
        (
            good_columnar(utterance, word_end_s=[[starts[0] - 0.1] + ends[1:]]),
            "assertion failed: [word_end_s must be >= word_start_s (a word cannot end before it "
            "starts)] [[row, slot]:] [[0 0]]",
        ),
        (
            good_columnar(
                utterance, word_start_s=[starts[:5] + [9.0]], word_end_s=[ends[:5] + [9.5]]
            ),
            "assertion failed: [word_start_s must be at most num_samples / 16000 (a word must "
            "start inside the audio)] [[row, slot]:] [[0 5]] [word_start_s:] [9]",
        ),
        (
            good_columnar(utterance, word_end_s=[ends[:5] + [float("nan")]]),
            "assertion failed: [word_start_s and word_end_s must be finite (seconds)] "
            "[[row, slot] not finite:] [[0 5]]",
        ),
        # words
        (
            good_columnar(utterance, words=[["kids", "", "talking", "by", "the", "door"]]),
            "assertion failed: [words must be padded with empty strings only after the last word] "
            "[[row, slot] of an empty word before a word:] [[0 1]]",
        ),
        (
            good_columnar(utterance, words=[[""] * 6]),
            "assertion failed: [every row needs at least one word (words[b][0] must not be "
            "empty)] [rows without words:] [[0]]",
        ),
        # the waveform itself
        (
            good_columnar(utterance, num_samples=[0]),
            "assertion failed: [num_samples must be at least 400 (one 25 ms frame at 16 kHz)] "
            "[num_samples:] [0]",
        ),
        (
            good_columnar(utterance, waveform=[[]], num_samples=[0]),
            "assertion failed: [num_samples must be at least 400 (one 25 ms frame at 16 kHz)] "
            "[num_samples:] [0]",
        ),
        (
            good_columnar(utterance, num_samples=[n + 1]),
            "assertion failed: [num_samples must be at most the samples in its waveform row] "
            f"[num_samples:] [{n + 1}] [samples per row:] [{n}]",
        ),
        (
            good_columnar(utterance, waveform=[waveform[:300].tolist()], num_samples=[300]),
            "assertion failed: [num_samples must be at least 400 (one 25 ms frame at 16 kHz)] "
            "[num_samples:] [300]",
        ),
        (
            good_columnar(utterance, waveform=[[float("nan")] + waveform[1:].tolist()]),
            "assertion failed: [waveform samples must be finite (16 kHz, in [-1, 1])] "
            "[[row, sample] not finite:] [[0 0]]",
        ),
    ]
    for request, message in cases:
        status, body = call(server, "POST", "/v1/models/cme:predict", request)
        assert status == 400 and message in body["error"], (message, body)
    # Row format: a missing key in one instance, and instances of different lengths.
    second = instance(utterance)
    del second["word_end_s"]
    status, body = call(
        server,
        "POST",
        "/v1/models/cme:predict",
        {"signature_name": "predict_waveform", "instances": [instance(utterance), second]},
    )
    assert status == 400 and body["error"].startswith(
        "Failed to process element: 1 of 'instances' list. JSON object: "
    )
    # json_tensor.cc FillTensorMapFromInstancesList, 2.16.1: "keys must be equal to: ".
    assert body["error"].endswith(
        "keys must be equal to: num_samples,waveform,word_end_s,word_start_s,words"
    )
    shorter = instance((waveform[:40000], words, starts, ends))
    status, body = call(
        server,
        "POST",
        "/v1/models/cme:predict",
        {"signature_name": "predict_waveform", "instances": [instance(utterance), shorter]},
    )
    assert (status, body) == (
        400,
        {
            "error": "Failed to process element: 1 key: waveform of "
            f"'instances' list. Error: INVALID_ARGUMENT: "
            f"Expecting tensor size: {n} but got: 40000"
        },
    )
    assert_healthy(server)


def test_bad_waveform_bytes(server, utterance):
    waveform, words, starts, ends = utterance
    n = waveform.size

    def request(raw, num_samples=n):
        return {
            "signature_name": "predict_waveform_bytes",
            "inputs": {
                "waveform_bytes": [{"b64": base64.b64encode(raw).decode()}],
                "num_samples": [num_samples],
                "words": [words],
                "word_start_s": [starts],
                "word_end_s": [ends],
            },
        }

    raw = waveform.astype("<f4").tobytes()
    bad_sample = np.concatenate([waveform[:10], [np.inf], waveform[11:]]).astype("<f4")
    cases = [
        (
            request(raw[:-1]),
            "assertion failed: [waveform_bytes rows must be a whole number of "
            "float32 samples (4 bytes each, little-endian)] [bytes per row:] "
            f"[{len(raw) - 1}]",
        ),
        (
            request(b"", 0),
            "assertion failed: [waveform_bytes rows must not be empty (0 samples)] "
            "[bytes per row:] [0]",
        ),
        (
            request(bad_sample.tobytes()),
            "assertion failed: [waveform_bytes samples must be "
            "finite (16 kHz, in [-1, 1])] [[row, sample] not "
            "finite:] [[0 10]]",
        ),
        (
            request(raw, n + 4),
            "assertion failed: [num_samples must be at most the samples in its "
            f"waveform_bytes row] [num_samples:] [{n + 4}] [samples per row:] "
            f"[{n}]",
        ),
    ]
    for body, message in cases:
        status, answer = call(server, "POST", "/v1/models/cme:predict", body)
        assert status == 400 and message in answer["error"], (message, answer)
    status, answer = call(server, "POST", "/v1/models/cme:predict", request(raw))
    assert status == 200
    assert_healthy(server)


def test_unknown_model_version_label_and_routes(server, utterance):
    row = {"signature_name": "predict_waveform", "instances": [instance(utterance)]}
    assert call(server, "POST", "/v1/models/nope:predict", row) == (
        404,
        {"error": "Servable not found for request: Latest(nope)"},
    )
    assert call(server, "POST", "/v1/models/cme/versions/7:predict", row) == (
        404,
        {"error": "Servable not found for request: Specific(cme, 7)"},
    )
    assert call(server, "POST", "/v1/models/cme/labels/canary:predict", row) == (
        400,
        {"error": "Unrecognized servable version label: canary"},
    )
    assert call(server, "GET", "/v1/models/cme:predict") == (
        400,
        {"error": "Malformed request: GET /v1/models/cme:predict"},
    )
    assert call(server, "PUT", "/v1/models/cme") == (
        400,
        {"error": "Malformed request: PUT /v1/models/cme"},
    )
    assert call(server, "POST", "/v1/models/cme:classify", {"examples": [{}]}) == (
        400,
        {
            "error": "Expected classification signature method_name to be "
            "tensorflow/serving/classify. Was: tensorflow/serving/predict"
        },
    )
    status, body = call(server, "GET", "/healthz")
    assert status == 404 and "/v1/" in body["error"]
    assert_healthy(server)


def test_body_size_limit_and_chunked_bodies(server, utterance):
    status, body = call(server, "POST", "/v1/models/cme:predict", b" " * (LIMIT + 1))
    assert (status, body) == (
        413,
        {"error": f"Request body of {LIMIT + 1} bytes exceeds the limit of {LIMIT} bytes"},
    )
    assert_healthy(server)
    # A chunked body (no Content-Length) is read as well, and limited the same way.
    payload = json.dumps(
        {"signature_name": "predict_waveform", "instances": [instance(utterance)]}
    ).encode()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    chunks = (payload[i : i + 65536] for i in range(0, len(payload), 65536))
    connection.request("POST", "/v1/models/cme:predict", body=chunks, encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 200 and "predictions" in json.loads(response.read())
    connection.request(
        "POST",
        "/v1/models/cme:predict",
        body=(b" " * 65536 for _ in range(40)),
        encode_chunked=True,
    )
    response = connection.getresponse()
    assert response.status == 413 and "exceeds the limit" in json.loads(response.read())["error"]
    connection.close()
    assert_healthy(server)
    # Headers over --max-header-kb (64 KiB by default): 431, and the connection closed.
    status, body = call(server, "GET", "/v1/models/cme", headers={"X-Big": "x" * 70000})
    assert (status, body) == (
        431,
        {"error": "The request line and headers exceed the limit of 65536 bytes"},
    )
    # Expect: 100-continue: the body is asked for, then answered.
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    sock.sendall(
        b"POST /v1/models/cme:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    assert sock.recv(1000) == b"HTTP/1.1 100 Continue\r\n\r\n"
    sock.sendall(b"{}")
    answer = sock.recv(65536)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"error" in answer, answer
    assert_healthy(server)


# ----------------------------------------------------------------------------------------------
# Batching


def bytes_inputs(row):
    inputs = waveform_inputs([row])
    del inputs["waveform"]
    inputs["waveform_bytes"] = np.array([row[0].astype("<f4").tobytes()], dtype=object)
    return inputs


@pytest.mark.parametrize(
    "name,make",
    [
        (PREDICT_WAVEFORM, lambda row: waveform_inputs([row])),
        (PREDICT_WAVEFORM_BYTES, bytes_inputs),
    ],
)
def test_concurrent_requests_are_batched_without_changing_answers(
    server, utterance, name, make, request
):
    """Requests of different lengths and word counts, merged into one padded batch, get what
    each gets alone."""
    waveform, words, starts, ends = utterance
    rows = [
        (waveform[:n], words[:m], starts[:m], ends[:m])
        for n, m in ((62000, 6), (30000, 3), (45000, 5), (24000, 2))
    ]
    repository = ModelRepository(server.base, "cme")
    repository.refresh()  # loads the model
    request.addfinalizer(repository.stop)
    version = repository.resolve()
    signature = version.signatures[name]
    alone = [signature.run(make(row)) for row in rows]
    batcher = Batcher(max_batch_size=8, timeout_s=1.0)
    results = [None] * len(rows)

    def worker(i):
        results[i] = batcher.run(version, signature, make(rows[i]))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(rows))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # All four in one model call, which did not fail.
    assert (batcher.batches, batcher.requests, batcher.merge_failures) == (1, 4, 0)
    for got, want in zip(results, alone):
        assert got["acoustic_excitation"].shape == want["acoustic_excitation"].shape
        for key in ("probabilities", "acoustic_excitation", "semantic_excitation"):
            np.testing.assert_allclose(got[key], want[key], atol=1e-5)
        assert got["classes"].tolist() == want["classes"].tolist()

    # Through HTTP, concurrently: every answer is right.
    answers = [None] * len(rows)

    def client(i):
        with RestClient(server.url, "cme") as c:  # half of them as bytes
            answers[i] = c.predict_waveform([Utterance(*rows[i])], binary=i % 2 == 1)[0]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(rows))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(answers, alone):
        np.testing.assert_allclose(
            list(got.probabilities.values()), want["probabilities"][0], atol=1e-5
        )
        assert len(got.words) == want["acoustic_excitation"].shape[1]


# ----------------------------------------------------------------------------------------------
# Versions appearing, labels, single-output models


def _publish(base: Path, source: Path, version: int) -> None:
    """Copy a version in the way an exporter should: into a dot-dir, then rename."""
    staging = base / f".staging-{version}"
    shutil.copytree(source, staging)
    os.rename(staging, base / str(version))


def _wait_for(predicate, seconds=30.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_new_versions_are_picked_up_and_labels_keep_old_ones(exported, tmp_path, utterance):
    _, info = exported
    base = tmp_path / "cme"
    base.mkdir()
    (base / "not-a-version").mkdir()  # ignored, like TF Serving does
    labels = tmp_path / "labels.json"
    labels.write_text("{}")
    process, url = start_server(
        serve_argv(base, "--poll-seconds", "0.1", "--version-labels", labels, "--grpc-port", "-1")
    )
    srv = Served(process, url, base)
    try:
        # Nothing to serve yet: TF Serving's answers for a model without versions.
        assert call(srv, "GET", "/v1/models/cme") == (
            404,
            {"error": "Could not find any versions of model cme"},
        )
        row = {"signature_name": "predict_waveform", "instances": [instance(utterance)]}
        assert call(srv, "POST", "/v1/models/cme:predict", row) == (
            404,
            {"error": "Servable not found for request: Latest(cme)"},
        )

        _publish(base, Path(info["path"]), 1)
        _wait_for(
            lambda: (
                call(srv, "GET", "/v1/models/cme")[1]
                .get("model_version_status", [{}])[0]
                .get("state")
                == "AVAILABLE"
            )
        )
        assert call(srv, "POST", "/v1/models/cme:predict", row)[0] == 200

        labels.write_text(json.dumps({"stable": 1}))
        _publish(base, Path(info["path"]), 2)
        _wait_for(
            lambda: (
                call(srv, "GET", "/v1/models/cme/metadata")[1].get("model_spec", {}).get("version")
                == "2"
            )
        )
        listed = [
            (s["version"], s["state"])
            for s in call(srv, "GET", "/v1/models/cme")[1]["model_version_status"]
        ]
        # 1 stays: "stable" names it. Newest first, as TF Serving's VersionMap
        # (std::greater, servable_state_monitor.h) lists them.
        assert listed == [("2", "AVAILABLE"), ("1", "AVAILABLE")]
        assert call(srv, "POST", "/v1/models/cme/versions/2:predict", row)[0] == 200
        assert call(srv, "POST", "/v1/models/cme/labels/stable:predict", row)[0] == 200

        labels.write_text(json.dumps({}))  # the label goes: version 1 is unloaded
        _wait_for(
            lambda: (
                call(srv, "GET", "/v1/models/cme/versions/1")[1]["model_version_status"][0]["state"]
                == "END"
            )
        )
        assert call(srv, "POST", "/v1/models/cme/versions/1:predict", row) == (
            404,
            {"error": "Servable not found for request: Specific(cme, 1)"},
        )
        assert call(srv, "POST", "/v1/models/cme/labels/stable:predict", row) == (
            400,
            {"error": "Unrecognized servable version label: stable"},
        )

        # A broken version is reported and the good one keeps serving.
        (base / "3").mkdir()
        (base / "3" / "saved_model.pb").write_bytes(b"garbage")
        _wait_for(
            lambda: (
                "3"
                in {
                    s["version"]
                    for s in call(srv, "GET", "/v1/models/cme")[1]["model_version_status"]
                }
            )
        )
        _wait_for(
            lambda: (
                call(srv, "GET", "/v1/models/cme/versions/3")[1]["model_version_status"][0]["state"]
                == "END"
            )
        )
        [broken] = call(srv, "GET", "/v1/models/cme/versions/3")[1]["model_version_status"]
        assert broken["status"]["error_code"] == "UNKNOWN" and broken["status"]["error_message"]
        assert call(srv, "GET", "/v1/models/cme/metadata")[1]["model_spec"]["version"] == "2"
        assert call(srv, "POST", "/v1/models/cme:predict", row)[0] == 200
    finally:
        assert stop_server(process) == 0, server_stderr(process)[-5000:]


@pytest.fixture(scope="module")
def toy_server(tmp_path_factory):
    """A tiny non-CME model for the generic format rules: one single-output signature, one
    with a ``_bytes`` output and integer inputs."""
    module = tf.Module()
    module.half_plus_two = tf.function(
        lambda x: {"y": 0.5 * x + 2.0}, input_signature=[tf.TensorSpec([None], tf.float32, "x")]
    )
    module.echo = tf.function(
        lambda n, s: {"doubled": 2 * n, "text": s, "text_bytes": s, "flag": tf.greater(n[:, 0], 0)},
        input_signature=[
            tf.TensorSpec([None, 2], tf.int32, "n"),
            tf.TensorSpec([None], tf.string, "s"),
        ],
    )
    base = tmp_path_factory.mktemp("toy") / "toy"
    tf.saved_model.save(
        module,
        str(base / "5"),
        signatures={
            "serving_default": module.half_plus_two.get_concrete_function(),
            "echo": module.echo.get_concrete_function(),
        },
    )
    process, url = start_server(
        serve_argv(base, "--model-name", "toy", "--poll-seconds", "0", "--grpc-port", "-1")
    )
    yield Served(process, url, base)
    assert stop_server(process) == 0, server_stderr(process)[-5000:]


def test_single_output_and_bytes_formatting(toy_server):
    post = lambda body: call(toy_server, "POST", "/v1/models/toy:predict", body)  # noqa: E731
    # One output: predictions are bare values; whole numbers get ".0" like TF Serving writes.
    assert post({"instances": [1.0, 2, 5.5]}) == (200, {"predictions": [2.5, 3.0, 4.75]})
    assert post({"inputs": [1.0, 2.0]}) == (200, {"outputs": [2.5, 3.0]})
    connection = http.client.HTTPConnection("127.0.0.1", toy_server.port, timeout=60)
    connection.request("POST", "/v1/models/toy:predict", body=b'{"instances": [2]}')
    text = connection.getresponse().read().decode()
    connection.close()
    assert "[" in text and " 3.0" in text.replace("\n", " ")  # the raw JSON token is 3.0
    # Several outputs: objects per instance; strings plain, "_bytes" outputs as b64.
    status, body = post(
        {
            "signature_name": "echo",
            "instances": [
                {"n": [1, 2], "s": "h\u00e9"},
                {"n": [-3, 4], "s": {"b64": base64.b64encode(b"x").decode()}},
            ],
        }
    )
    assert status == 200
    assert body["predictions"] == [
        {
            "doubled": [2, 4],
            "flag": True,
            "text": "h\u00e9",
            "text_bytes": {"b64": base64.b64encode("h\u00e9".encode()).decode()},
        },
        {"doubled": [-6, 8], "flag": False, "text": "x", "text_bytes": {"b64": "eA=="}},
    ]
    status, body = post({"signature_name": "echo", "inputs": {"n": [[1, 2]], "s": ["a"]}})
    assert body == {
        "outputs": {
            "doubled": [[2, 4]],
            "flag": [True],
            "text": ["a"],
            "text_bytes": [{"b64": "YQ=="}],
        }
    }
    # Integer inputs take integers only.
    status, body = post({"signature_name": "echo", "inputs": {"n": [[1.5, 2]], "s": ["a"]}})
    assert (status, body) == (
        400,
        {"error": "JSON Value: 1.5 Type: Number is not of expected type: int32"},
    )
    status, body = post({"signature_name": "echo", "inputs": {"n": [[1, 2]]}})
    assert (status, body) == (400, {"error": "Missing named input: s in 'inputs' object."})
    status, body = post(
        {"signature_name": "echo", "instances": [{"n": [1, 2], "s": "a", "extra": 1}]}
    )
    assert (status, body) == (
        400,
        {
            "error": "Failed to process element: 0 key: extra of "
            "'instances' list. Error: INVALID_ARGUMENT: JSON "
            "object: does not have named input: extra"
        },
    )
    status, body = post({"instances": [[1.0, [2.0]]]})
    assert (status, body) == (
        400,
        {
            "error": "Failed to process element: 0 of 'instances' list. "
            "Error: INVALID_ARGUMENT: Encountered list at "
            "unexpected level: 1 expected < 1"
        },
    )
    status, body = post({"instances": [[1.0]]})
    assert (status, body) == (
        400,
        {
            "error": "input 'x' of signature 'serving_default' must "
            "have shape [-1] (-1: any size), got [1,1]"
        },
    )
    assert post({"inputs": [3.0]}) == (200, {"outputs": [3.5]})


def test_services_close_joins_every_thread(exported, utterance):
    """What gunicorn's worker_exit hook does in each worker (Services.close): afterwards no
    thread of the server runs (batching threads, the version poller, gRPC's) and no model is
    held, so nothing is left inside TensorFlow for the interpreter's teardown, which is what
    made `cme-ser serve` abort on SIGTERM."""
    base, _ = exported
    before = set(threading.enumerate())
    services = Services(
        base,
        "cme",
        poll_seconds=0.05,
        batching=True,
        batch_timeout_ms=50,
        grpc_host="127.0.0.1",
        grpc_port=0,
    )
    body = json.dumps(
        {
            "signature_name": "predict_waveform",
            "inputs": {k: [v] for k, v in instance(utterance).items()},
        }
    ).encode()
    response = services.api.respond("POST", "/v1/models/cme:predict", {}, body)
    assert response.status == 200 and json.loads(response.body)["outputs"]["classes"][0] in CLASSES
    assert services.batcher.batches == 1  # a batching thread started and idles
    started = {t.name for t in set(threading.enumerate()) - before}
    assert {"poll-cme", f"batch-{PREDICT_WAVEFORM}"} <= started, started
    services.close()
    assert set(threading.enumerate()) - before == set()
    assert services.repository.available_versions == []
    services.close()  # idempotent


def _slow_request(port: int, sent: bytes) -> socket.socket:
    """A connection that has sent ``sent`` (part of a request) and then stalls."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(sent)
    return sock


PARTIAL_BODY = (
    b"POST /v1/models/cme:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
    b"\r\n{\"inputs\""
)  # 10 of 100 bytes


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends on ``sock`` until it closes it."""
    answer = b""
    while True:
        piece = sock.recv(65536)
        if not piece:
            return answer
        answer += piece


def test_cme_ser_serve_command(exported):
    """`cme-ser serve` as a process: announces its URL, answers; a client that stalls in the
    middle of a request (headers or body) blocks no one else and is answered 408 and
    disconnected after --read-timeout (both --header-timeout and --body-timeout); a client
    hanging up mid-request prints nothing; on SIGTERM a request in flight is answered, then the
    server exits with status 0 and no traceback."""
    base, _ = exported
    process, url = start_server(
        serve_argv(base, "--poll-seconds", "0", "--grpc-port", "-1", "--read-timeout", "2")
    )
    try:
        line = process.announcement
        assert "versions available: [1]" in line and "1 worker process, " in line, line
        assert url.startswith("http://127.0.0.1:") and int(url.rsplit(":", 1)[1]) > 0
        port = int(url.rsplit(":", 1)[1])
        # Slow clients: more than the 16 request threads of the gthread server this replaced.
        stalled = [
            _slow_request(
                port, PARTIAL_BODY if i % 2 else b"GET /v1/models/cme HTTP/1.1\r\nHost: x\r\n"
            )
            for i in range(18)
        ]
        time.sleep(0.1)  # (they are being read by now; nothing below depends on it)
        with RestClient(url, "cme", timeout=60) as client:
            assert client.status()["model_version_status"][0]["state"] == "AVAILABLE"
        for i, sock in enumerate(stalled):  # each is answered 408, then cut off
            answer = _answer(sock)
            sock.close()
            assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
            part = "request body" if i % 2 else "request line and headers"
            assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {
                "error": f"The {part} did not arrive within 2 s"
            }
        # Clients hanging up mid-request: routine, nothing on stderr.
        for sent in (
            PARTIAL_BODY,
            b"POST /v1/models/cme:predict HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"in",
        ):
            _slow_request(port, sent).close()
        # SIGTERM with a request in flight: its headers complete after the signal, and it is
        # still answered.
        in_flight = _slow_request(port, b"GET /v1/models/cme HTTP/1.1\r\nHost: x\r\n")
        time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # (well within --read-timeout)
        in_flight.sendall(b"Connection: close\r\n\r\n")
        answer = _answer(in_flight)
        in_flight.close()
        assert answer.startswith(b"HTTP/1.1 200 OK") and b"AVAILABLE" in answer, answer
        assert process.wait(timeout=60) == 0, server_stderr(process)[-5000:]
        stderr = server_stderr(process)
        assert "Traceback" not in stderr and "was sent SIG" not in stderr, stderr[-5000:]
    finally:
        stop_server(process, signal_=None)


HALF_OPEN = (
    b"GET /v1/models/",  # a request line cut short
    b"GET /v1/models/cme HTTP/1.1\r\nHost: x\r\n",  # headers without their end
    b"POST /v1/models/cme:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n"
    b"\r\n{\"inputs\"",
)  # a body shorter than its Content-Length says


def test_half_open_connections_and_a_slow_body_stall_no_one(exported, utterance):
    """The slowloris pattern (issue 25): 256 connections that each send part of a request
    and wait, on one worker (more than any thread or worker count), leave a status call
    answered within 1 s and a prediction answered; a client sending its body one byte a second
    is answered 408 and cut off at --body-timeout, while the others are served meanwhile."""
    base, _ = exported
    process, url = start_server(
        serve_argv(base, "--poll-seconds", "0", "--grpc-port", "-1", "--body-timeout", "2")
    )
    port = int(url.rsplit(":", 1)[1])
    held = []
    row = json.dumps(
        {
            "signature_name": "predict_waveform",
            "inputs": {k: [v] for k, v in instance(utterance).items()},
        }
    ).encode()

    def status_within_1s():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
        try:
            connection.request("GET", "/v1/models/cme")
            response = connection.getresponse()
            body = json.loads(response.read())
        finally:
            connection.close()
        return response.status, body["model_version_status"][0]["state"]

    try:
        held = [_slow_request(port, HALF_OPEN[i % 3]) for i in range(256)]
        assert status_within_1s() == (200, "AVAILABLE")
        status, body = _fresh_call(url, "POST", "/v1/models/cme:predict", row)
        assert status == 200 and body["outputs"]["classes"][0] in CLASSES

        # One byte a second, on a body of 100: answered and cut off after --body-timeout.
        slow = _slow_request(
            port, b"POST /v1/models/cme:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
        )
        started = time.monotonic()
        served = []

        def others():  # another client, served while the slow one sends
            while time.monotonic() - started < 1.5:
                served.append(status_within_1s())
                time.sleep(0.2)
            served.append(_fresh_call(url, "POST", "/v1/models/cme:predict", row)[0])

        thread = threading.Thread(target=others)
        thread.start()
        slow.settimeout(1.0)
        answer, sent = b"", 0
        while not answer and sent < 20:
            try:
                slow.sendall(b" ")
                sent += 1
                answer = slow.recv(65536)  # (waits up to a second: the pace of the sending)
            except socket.timeout:
                continue
            except OSError:
                break
        slow.settimeout(10.0)
        answer += _answer(slow)
        cut_after = time.monotonic() - started
        slow.close()
        thread.join()
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {
            "error": "The request body did not arrive within 2 s"
        }
        assert 1.9 <= cut_after < 10 and sent <= 10, (cut_after, sent)
        assert (
            len(served) >= 2 and set(served[:-1]) == {(200, "AVAILABLE")} and served[-1] == 200
        ), served
        # The half-open connections are still held (header timeout 30 s): still answered.
        assert status_within_1s() == (200, "AVAILABLE")
    finally:
        for sock in held:
            sock.close()
        assert stop_server(process) == 0, server_stderr(process)[-5000:]


# ----------------------------------------------------------------------------------------------
# `cme-ser serve --workers N`


def _fresh_call(url, method, path, body=None):
    """One request on a new connection (a kept-alive one would stay with one worker)."""
    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request(method, path, body=body, headers={"Connection": "close"})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_cme_ser_serve_workers_share_the_port_and_each_picks_up_new_versions(
    exported, tmp_path, utterance
):
    """`cme-ser serve --workers 2 --grpc-port 0`, one server for both protocols: both
    addresses announced (the REST URL still the last word); two gunicorn workers answer on
    the one REST port (each alone, with the other paused), each listens on the one gRPC port
    with a socket of its own (SO_REUSEPORT), each loads a new version by itself; one killed
    with SIGKILL takes nothing down: REST requests still succeed, gRPC calls on new
    connections are answered, and a replacement worker appears (serving the newest version,
    with gRPC again); SIGTERM to the master stops them all with status 0 and nothing on
    stderr that looks like a crash."""
    from cli.main import main

    _, info = exported
    base = tmp_path / "cme"
    base.mkdir()
    _publish(base, Path(info["path"]), 1)
    assert main(["serve", "--model-base-path", str(base), "--workers", "0"]) == 2

    process, url = start_server(
        serve_argv(base, "--poll-seconds", "0.2", "--workers", "2", "--grpc-port", "0")
    )
    workers = []
    try:
        line = process.announcement
        assert "versions available: [1]" in line and "2 worker processes" in line, line
        assert ", gRPC at 127.0.0.1:" in line and url.startswith("http://127.0.0.1:"), line
        address = grpc_address(line)
        grpc_port = int(address.rsplit(":", 1)[1])
        assert grpc_status_versions(address) == [1]
        workers = children(process.pid)
        assert len(workers) == 2
        # Each worker's gRPC server listens on the port (one socket each, SO_REUSEPORT).
        inode_sets = [listening_inodes(pid, grpc_port) for pid in workers]
        assert all(inode_sets) and not inode_sets[0] & inode_sets[1], inode_sets
        row = json.dumps(
            {"signature_name": "predict_waveform", "instances": [instance(utterance)]}
        ).encode()

        def served_by(worker, expect_version, others):
            """Only ``worker`` can take connections while the others are stopped (SIGSTOP);
            each request is on a fresh connection and complete before the next."""
            for other in others:
                os.kill(other, signal.SIGSTOP)
            try:
                _wait_for(
                    lambda: (
                        _fresh_call(url, "GET", "/v1/models/cme/metadata")[1]
                        .get("model_spec", {})
                        .get("version")
                        == expect_version
                    ),
                    seconds=120,
                )
                for _ in range(3):
                    status, body = _fresh_call(url, "POST", "/v1/models/cme:predict", row)
                    assert status == 200 and len(body["predictions"]) == 1
            finally:
                for other in others:
                    os.kill(other, signal.SIGCONT)

        first, second = workers
        served_by(first, "1", [second])
        served_by(second, "1", [first])
        _publish(base, Path(info["path"]), 2)
        served_by(first, "2", [second])
        served_by(second, "2", [first])

        os.kill(first, signal.SIGKILL)  # the other keeps answering
        for _ in range(3):
            status, body = _fresh_call(url, "POST", "/v1/models/cme:predict", row)
            assert status == 200 and len(body["predictions"]) == 1
        _wait_for(lambda: first not in children(process.pid), seconds=120)  # gone, and reaped
        for _ in range(6):  # new gRPC connections go to the live worker's socket
            assert grpc_status_versions(address) == [2, 1]  # 2 served, 1 unloaded (END)
        _wait_for(lambda: len(set(children(process.pid)) - {first}) == 2, seconds=60)
        [replacement] = set(children(process.pid)) - {first, second}
        workers.append(replacement)
        served_by(replacement, "2", [second])  # once loaded, it serves the newest version
        _wait_for(lambda: listening_inodes(replacement, grpc_port), seconds=120)  # gRPC too

        assert stop_server(process) == 0, server_stderr(process)[-5000:]
        stderr = server_stderr(process)
        assert "Traceback" not in stderr and "SIGABRT" not in stderr, stderr[-5000:]
        for worker in workers:
            with pytest.raises(ProcessLookupError):
                os.kill(worker, 0)
    finally:
        for worker in workers:
            try:
                os.kill(worker, signal.SIGCONT)
            except ProcessLookupError:
                pass
        stop_server(process, signal_=None)


# ----------------------------------------------------------------------------------------------
# TF Serving 2.16.1's HTTP rules: batching off by default, number rules, error bodies, gzip
# bodies, OPTIONS and CORS


def raw_call(srv, method, path, body=None, headers=None):
    """(status, headers, raw body bytes) of one request."""
    connection = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_batching_is_off_by_default_as_upstream(toy_server):
    """model_servers/server.h Options: enable_batching = false and enable_cors_support =
    false (2.16.1); `cme-ser serve --enable-batching` (or upstream's spelling) turns batching
    on, `--no-batching` stays accepted."""
    from cli.main import build_parser
    from serving.gunicorn_app import ServeConfig

    assert ServeConfig(base_path=Path("x"), max_body_bytes=1).batching is False
    assert ServeConfig(base_path=Path("x"), max_body_bytes=1).cors is False
    parse = lambda *flags: build_parser().parse_args(  # noqa: E731
        ["serve", "--model-base-path", "x", *flags]
    )
    assert parse().enable_batching is False
    assert parse("--enable-batching").enable_batching is True
    assert parse("--enable_batching").enable_batching is True
    assert parse("--no-batching").enable_batching is False
    assert parse().enable_cors_support is False
    assert parse("--enable_cors_support").enable_cors_support is True


def test_float_inputs_take_any_integer_and_errors_are_pretty_json(toy_server):
    """json_tensor.cc AddValueToTensor (2.16.1) takes any JSON number for DT_FLOAT (the 2^24
    check went in 2.5; json_tensor_test.cc FloatTensorWithPrecisionLoss), and
    MakeJsonFromStatus writes the error with rapidjson's PrettyWriter."""
    status, body = call(
        toy_server,
        "POST",
        "/v1/models/toy:predict",
        {"instances": [16777217, 1435774380, 1435774380.0]},
    )
    x = np.float32([16777217, 1435774380, 1435774380.0])
    assert status == 200 and body == {"predictions": (x * np.float32(0.5) + 2).tolist()}
    status, _, raw = raw_call(toy_server, "POST", "/v1/models/toy:predict", b'{"inputs": true}')
    assert status == 400
    assert raw == b'{\n    "error": "JSON Value: true Type: True is not of expected type: float"\n}'


def test_gzip_request_bodies(toy_server, server, request):
    """evhttp_request.cc: a body whose Content-Encoding contains "gzip" is decompressed
    (NeedUncompressGzipContent, ReadRequestGzipBytes). Here the size limit applies to the
    decompressed body too (413), decompressed a piece at a time; a body that is not gzip is a
    400 with its own message (upstream passes on an empty body: "The document is empty")."""
    import gzip

    body = json.dumps({"instances": [1.0, 2.0]}).encode()
    for encoded, encoding in (
        (gzip.compress(body), "gzip"),
        (gzip.compress(body[:9]) + gzip.compress(body[9:]), "gzip"),
        (gzip.compress(body), "x-gzip"),
    ):  # (upstream: StrContains)
        assert call(
            toy_server, "POST", "/v1/models/toy:predict", encoded, {"Content-Encoding": encoding}
        ) == (200, {"predictions": [2.5, 3.0]})
    assert call(
        toy_server, "POST", "/v1/models/toy:predict", body, {"Content-Encoding": "gzip"}
    ) == (
        400,
        {
            "error": "Failed to uncompress the gzipped body (Content-Encoding: gzip): Error -3 "
            "while decompressing data: incorrect header check"
        },
    )
    assert call(
        toy_server,
        "POST",
        "/v1/models/toy:predict",
        gzip.compress(body)[:-12],
        {"Content-Encoding": "gzip"},
    ) == (
        400,
        {
            "error": "Failed to uncompress the gzipped body (Content-Encoding: gzip): "
            "incomplete gzip stream"
        },
    )
    # A zip bomb: 2 KB on the wire, 3 MB decompressed, over the 2 MB limit of `server`.
    bomb = gzip.compress(b" " * (3 * 1024 * 1024), 9)
    assert len(bomb) < 10_000
    assert call(server, "POST", "/v1/models/cme:predict", bomb, {"Content-Encoding": "gzip"}) == (
        413,
        {
            "error": f"Request body exceeds the limit of {LIMIT} bytes once uncompressed "
            f"(gzip, {len(bomb)} bytes compressed)"
        },
    )
    # At the API level: the decompression stops just past the limit.
    repository = ModelRepository(toy_server.base, "toy")
    repository.refresh()  # loads the model
    request.addfinalizer(repository.stop)
    api = RestApi(repository, max_body_bytes=1000)
    response = api.respond(
        "POST",
        "/v1/models/toy:predict",
        {"content-encoding": "gzip"},
        gzip.compress(b" " * 10**8, 1),
    )
    assert response.status == 413
    assert (
        api.respond(
            "POST",
            "/v1/models/toy:predict",
            {"Content-Encoding": "gzip"},
            gzip.compress(b" " * 985 + b'{"inputs": [0]}'),
        ).body
        == b'{\n    "outputs": [2.0]\n}'
    )
    assert_healthy(server)


def test_options_preflight_and_cors_headers(toy_server, server):
    """http_server.cc RestApiRequestDispatcher::ProcessRequest: OPTIONS under /v1/ is a CORS
    preflight whatever --enable_cors_support says: OK if the Origin header matches
    "https?://", else FAILED_PRECONDITION (400; upstream's body is empty, here it is the JSON
    error). With --enable_cors_support every answer under /v1/ carries AddCORSHeaders'
    headers (http_rest_api_util.cc)."""
    cors = {
        "Access-Control-Allow-Origin": "*",
        "Access-Control-Allow-Methods": "POST, GET",
        "Access-Control-Allow-Headers": "Content-Type",
    }
    status, headers, raw = raw_call(
        toy_server,
        "OPTIONS",
        "/v1/models/toy:predict",
        headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"},
    )
    assert (status, raw, headers["Content-Length"]) == (200, b"", "0")
    assert not set(cors) & set(headers)
    status, headers, raw = raw_call(toy_server, "OPTIONS", "/v1/models/toy")
    assert (status, json.loads(raw)) == (
        400,
        {"error": "Origin header is missing in CORS preflight"},
    )
    assert headers["Content-Type"] == "application/json"
    assert call(toy_server, "OPTIONS", "/v1/models/toy", headers={"Origin": "null"}) == (
        400,
        {"error": "Origin header is missing in CORS preflight"},
    )
    status, _, raw = raw_call(
        toy_server, "OPTIONS", "/elsewhere", headers={"Origin": "https://a.example"}
    )
    assert status == 404 and "/v1/" in json.loads(raw)["error"]
    # HEAD: HttpRestApiHandler has no route for it (Malformed request), and no body is sent.
    status, headers, raw = raw_call(toy_server, "HEAD", "/v1/models/toy")
    assert (status, raw) == (400, b"") and int(headers["Content-Length"]) > 0

    # `server` runs with --enable_cors_support.
    status, headers, raw = raw_call(
        server, "OPTIONS", "/v1/models/cme:predict", headers={"Origin": "https://app.example"}
    )
    assert (status, raw) == (200, b"") and cors.items() <= headers.items()
    status, headers, raw = raw_call(
        server,
        "POST",
        "/v1/models/cme:predict",
        b'{"inputs": [2.0]}',
        {"Origin": "https://app.example"},
    )
    assert status == 400 and "error" in json.loads(raw)
    assert cors.items() <= headers.items()
    assert headers["Content-Type"] == "application/json"
    status, headers, raw = raw_call(server, "GET", "/v1/models/cme")
    assert status == 200 and cors.items() <= headers.items()
    status, headers, _ = raw_call(server, "GET", "/v1/models/nope")
    assert status == 404 and cors.items() <= headers.items()  # errors too
    status, headers, _ = raw_call(server, "OPTIONS", "/v1/models/cme")
    assert status == 400 and cors.items() <= headers.items()
