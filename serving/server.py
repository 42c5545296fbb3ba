"""A REST server with TensorFlow Serving's API, for development and tests without Docker.

    cme-ser serve --model-base-path output/serving_model/cme --model-name cme --port 8501

is this module; in production the same directory goes to the real thing, and clients cannot
tell the two apart::

    docker run -p 8501:8501 -v "$PWD/output/serving_model/cme:/models/cme" \\
        -e MODEL_NAME=cme tensorflow/serving

Routes (TF Serving's ``http_rest_api_handler.cc``; paths are case-insensitive, ``{v}`` a
version number, ``{l}`` a version label):

    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]            model version status
    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata   signature defs
    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict    row or columnar predict

Every failure is ``{"error": "..."}`` with TF Serving's text and HTTP status (see
``serving.status``); a body over ``max_body_bytes`` is answered 413 (gzip bodies: before and
after decompression). Inputs of the ``predict_waveform`` signatures are checked in the graph
(``trainer.export.check_waveform_inputs``): a failed check is a 400 with its message. The HTTP
protocol rules of TF Serving 2.16.1 (``http_server.cc``,
``evhttp_request.cc``) live in :meth:`RestApi.respond`, not in the HTTP layer: ``Content-Encoding:
gzip`` bodies are decompressed, ``OPTIONS`` is a CORS preflight, and with ``cors=True``
(``--enable_cors_support``) every answer carries the CORS headers.
Concurrent predict requests on the same signature are batched together when ``batching`` is on
(``serving.batching``; off by default), as TF Serving does with ``--enable_batching``. Request
bodies with long arrays of JSON numbers take ``serving.fast_json`` (same results and errors,
less CPU).

:class:`AsyncApp` puts the API behind ``serving.http_front`` (an event loop that hands over
only complete requests); ``serving.gunicorn_app`` runs it in gunicorn's worker processes
(``cme-ser serve``), each with its ``serving.services.Services``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import logging
import re
import urllib.parse
import zlib
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from serving import fast_json, json_tensors
from serving.batching import Batcher
from serving.http_front import DEFAULT_MAX_BODY_BYTES
from serving.repository import ModelRepository, Signature, Version
from serving.status import HTTP_STATUS, ServingError, invalid_argument, not_found
from trainer.signature_names import SERVING_DEFAULT

log = logging.getLogger("cme_ser.serving")


_PREDICT = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
    r":(classify|regress|predict)",
    re.IGNORECASE,
)
_STATUS = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
    r"(?:/(metadata))?",
    re.IGNORECASE,
)
_API = re.compile(r"/v1/.*", re.IGNORECASE)
_METHODS = {
    "tensorflow/serving/predict",
    "tensorflow/serving/classify",
    "tensorflow/serving/regress",
}
# http_rest_api_util.cc AddCORSHeaders (--enable_cors_support).
CORS_HEADERS = (
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "POST, GET"),
    ("Access-Control-Allow-Headers", "Content-Type"),
)
_ORIGIN = re.compile(r"https?://")  # http_server.cc: RE2::PartialMatch(origin, "https?://")
_JSON = (("Content-Type", "application/json"),)  # HttpRestApiHandler::AddHeaders


@dataclasses.dataclass(frozen=True)
class Response:
    """One HTTP answer: status, headers (in order) and body."""

    status: int
    headers: Tuple[Tuple[str, str], ...]
    body: bytes


class RestApi:
    """TF Serving's REST API over one :class:`ModelRepository`; no sockets here.

    ``respond(method, path, headers, body)`` is the whole HTTP exchange as TF Serving's
    ``http_server.cc`` does it (gzip bodies, OPTIONS, CORS headers) and returns a
    :class:`Response`; ``handle(method, path, body)`` is the JSON API alone and returns
    ``(http_status, json_bytes)``. ``max_body_bytes`` limits the decompressed size of a gzip
    body (the HTTP layer limits the bytes on the wire).
    """

    def __init__(
        self,
        repository: ModelRepository,
        *,
        batcher: Optional[Batcher] = None,
        use_fast_json: bool = True,
        cors: bool = False,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ):
        self.repository = repository
        self.batcher = batcher
        self.use_fast_json = use_fast_json  # serving.fast_json for long number arrays
        self.cors = cors  # --enable_cors_support
        self.max_body_bytes = max_body_bytes

    def respond(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Response:
        """One request: ``headers`` any mapping (names in any case)."""
        lowered = {k.lower(): v for k, v in headers.items()}
        if not _API.fullmatch(path.split("?", 1)[0]):
            # TF Serving's dispatcher ignores a path outside /v1/ (no handler, no CORS headers).
            status, payload = self.handle(method, path, b"")
            return Response(status, _JSON, payload)
        if method == "OPTIONS":
            # http_server.cc ProcessRequest: a CORS preflight, whatever the path under /v1/,
            # answered with or without --enable_cors_support (the flag adds the headers).
            if _ORIGIN.search(lowered.get("origin", "")):
                return self._finish(200, (), b"")
            return self.error_response(
                ServingError("FAILED_PRECONDITION", "Origin header is missing in CORS preflight")
            )
        if "gzip" in lowered.get("content-encoding", "").lower():
            # evhttp_request.cc NeedUncompressGzipContent / ReadRequestGzipBytes.
            try:
                body = gunzip(body, self.max_body_bytes)
            except ServingError as error:
                return self.error_response(error)
        status, payload = self.handle(method, path, body)
        return self._finish(status, _JSON, payload)

    def error_response(self, error: ServingError) -> Response:
        """The answer to a request refused before the API (413, bad gzip, bad preflight)."""
        return self._finish(error.http_status, _JSON, _error_body(error.message))

    def _finish(self, status: int, headers: Tuple[Tuple[str, str], ...], body: bytes) -> Response:
        if self.cors:
            headers = headers + CORS_HEADERS
        return Response(status, headers, body)

    def handle(self, method: str, path: str, body: bytes) -> Tuple[int, bytes]:
        path = path.split("?", 1)[0]
        try:
            if not _API.fullmatch(path):
                raise not_found(f"Not found: {method} {path} (the API is under /v1/)")
            return 200, self._dispatch(method, path, body)
        except ServingError as error:
            return error.http_status, _error_body(error.message)
        except Exception as error:  # a bug must not take the server down
            log.exception("internal error on %s %s", method, path)
            return HTTP_STATUS["INTERNAL"], _error_body(f"Internal error: {error}")

    def _dispatch(self, method: str, path: str, body: bytes) -> bytes:
        if method == "POST":
            match = _PREDICT.fullmatch(path)
            if match:
                name, version, label, verb = match.groups()
                name, version, label = _model_spec(name, version, label)
                if verb.lower() == "predict":
                    return self.predict(name, version, label, body)
                return self.classify_or_regress(name, version, label, verb.lower(), body)
        elif method == "GET":
            match = _STATUS.fullmatch(path)
            if match:
                name, version, label, metadata = match.groups()
                if not name:
                    raise invalid_argument("Missing model name in request.")
                name, version, label = _model_spec(name, version, label)
                if metadata:
                    return self.metadata(name, version, label)
                return self.status(name, version, label)
        raise invalid_argument(f"Malformed request: {method} {path}")

    # -- GET -----------------------------------------------------------------------------

    def status(self, name: str, version: Optional[int], label: Optional[str]) -> bytes:
        if name != self.repository.name:
            if version is not None:
                raise not_found(f"Could not find version {version} of model {name}")
            raise not_found(f"Could not find any versions of model {name}")
        states = self.repository.status(version)  # a label is ignored, as upstream
        response = {
            "model_version_status": [
                {
                    "version": str(number),
                    "state": state.state,
                    "status": {
                        "error_code": state.error_code,
                        "error_message": state.error_message,
                    },
                }
                for number, state in states
            ]
        }
        return (json.dumps(response, indent=1) + "\n").encode("utf-8")

    def metadata(self, name: str, version: Optional[int], label: Optional[str]) -> bytes:
        served = self._resolve(name, version, label)
        spec = {"name": name, "signature_name": "", "version": str(served.number)}
        # The same concatenation as TF Serving's ToJsonString(GetModelMetadataResponse).
        text = (
            '{\n"model_spec":' + json.dumps(spec, indent=1) + ',\n"metadata": {'
            '"signature_def": ' + json.dumps(served.signature_def_map, indent=1) + "}\n}\n"
        )
        return text.encode("utf-8")

    # -- POST ----------------------------------------------------------------------------

    def predict(
        self, name: str, version: Optional[int], label: Optional[str], body: bytes
    ) -> bytes:
        fast = fast_json.parse(body) if self.use_fast_json else None
        if fast is not None:
            try:
                served, signature, request = self._request(
                    name, version, label, fast.doc, fast.bools_possible
                )
            except (ServingError, fast_json.NotFast):
                fast = None  # the general path gives the answer, or the exact error
        if fast is None:
            doc = json_tensors.parse_body(body)
            served, signature, request = self._request(
                name, version, label, doc, json_tensors.may_contain_bools(body)
            )
        if signature.method_name not in _METHODS:
            raise ServingError(
                "INTERNAL",
                "Expected prediction signature method_name to be one "
                "of {" + ", ".join(sorted(_METHODS)) + "}. Was: " + signature.method_name,
            )
        _check_shapes(signature, request.tensors)
        if self.batcher is not None:
            outputs = self.batcher.run(served, signature, request.tensors)
        else:
            outputs = signature.run(request.tensors)
        dtypes = {k: spec.dtype for k, spec in signature.outputs.items()}
        return json_tensors.predict_response(outputs, dtypes, request.format)

    def _request(
        self,
        name: str,
        version: Optional[int],
        label: Optional[str],
        doc: dict,
        bools_possible: bool,
    ) -> Tuple[Version, Signature, json_tensors.PredictInputs]:
        requested = json_tensors.signature_name(doc)
        served = self._resolve(name, version, label)
        signature = _signature(served, requested)
        request = json_tensors.request_tensors(doc, signature.inputs, requested, bools_possible)
        return served, signature, request

    def classify_or_regress(
        self, name: str, version: Optional[int], label: Optional[str], verb: str, body: bytes
    ) -> bytes:
        doc = json_tensors.parse_body(body)
        requested = json_tensors.signature_name(doc)
        signature = _signature(self._resolve(name, version, label), requested)
        wanted = f"tensorflow/serving/{'classify' if verb == 'classify' else 'regress'}"
        kind = "classification" if verb == "classify" else "regression"
        if signature.method_name != wanted:
            raise invalid_argument(
                f"Expected {kind} signature method_name to be {wanted}. Was: "
                f"{signature.method_name}"
            )
        raise ServingError(
            "UNIMPLEMENTED", f"{verb} is not implemented by this server: use :predict"
        )

    def _resolve(self, name: str, version: Optional[int], label: Optional[str]) -> Version:
        if name != self.repository.name:
            if version is not None:
                raise not_found(f"Servable not found for request: Specific({name}, {version})")
            if label is None:
                raise not_found(f"Servable not found for request: Latest({name})")
            raise invalid_argument(f"Unrecognized servable version label: {label}")
        return self.repository.resolve(version, label)


def _model_spec(name: str, version: Optional[str], label: Optional[str]):
    name = urllib.parse.unquote(name)
    number = None
    if version:
        number = int(version)
        if number > 2**63 - 1:
            raise invalid_argument(f"Failed to convert version: {version} to numeric.")
    return name, number, urllib.parse.unquote(label) if label else None


def _signature(served: Version, requested: str) -> Signature:
    key = requested or SERVING_DEFAULT
    signature = served.signatures.get(key)
    if signature is None:
        raise invalid_argument(f'Serving signature name: "{key}" not found in signature def')
    return signature


def _check_shapes(signature: Signature, tensors: Dict[str, np.ndarray]) -> None:
    """Each input's shape against its SignatureDef shape (-1 matches any size)."""
    for name, array in tensors.items():
        expected = signature.inputs[name].shape
        if expected is None:
            continue
        if len(expected) != array.ndim or any(
            e != -1 and e != a for e, a in zip(expected, array.shape)
        ):
            raise invalid_argument(
                f"input '{name}' of signature '{signature.name}' must have shape "
                f"[{','.join(str(d) for d in expected)}] (-1: any size), got "
                f"[{','.join(str(d) for d in array.shape)}]"
            )


def _error_body(message: str) -> bytes:
    """MakeJsonFromStatus: rapidjson's PrettyWriter of {"error": message}."""
    text = '{\n    "error": ' + json.dumps(message, ensure_ascii=False) + "\n}"
    return text.encode("utf-8", "replace")


def gunzip(data: bytes, limit: int) -> bytes:
    """A gzip body (one or more members) decompressed, a piece at a time, to at most ``limit``
    bytes: past it a 413, before the rest is even decompressed (no zip bombs). A body that is
    not gzip, or is cut short, is a 400."""
    out = bytearray()
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    pending = data
    try:
        while True:
            piece = decompressor.decompress(pending, limit + 1 - len(out))
            out += piece
            if len(out) > limit:
                raise ServingError(
                    "INVALID_ARGUMENT",
                    f"Request body exceeds the limit of "
                    f"{limit} bytes once uncompressed "
                    f"(gzip, {len(data)} bytes compressed)",
                    http_status=413,
                )
            if decompressor.eof:
                pending = decompressor.unused_data
                if not pending:
                    return bytes(out)
                decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)  # another member
                continue
            pending = decompressor.unconsumed_tail
            if not pending and not piece:
                raise zlib.error("incomplete gzip stream")
    except zlib.error as error:
        raise invalid_argument(
            f"Failed to uncompress the gzipped body (Content-Encoding: gzip): {error}"
        ) from None


# ----------------------------------------------------------------------------------------------
# The event-driven front end's handler (serving.http_front runs it: serving.gunicorn_app)

REQUEST_THREADS = 64  # predictions at once per worker process; each is a complete request


class AsyncApp:
    """:meth:`RestApi.respond` for :class:`serving.http_front.HttpFront`, which hands it only
    complete requests. Predictions (POST) run in a pool of ``threads`` request threads: JSON
    and TensorFlow, and with batching a wait in the worker's one batcher, which so sees every
    prediction in flight, whatever connection it came on. Everything else (status, metadata,
    OPTIONS, errors) is answered on the event loop: it reads the repository's current snapshot
    and never waits for TensorFlow, so a busy model does not delay a status call."""

    def __init__(self, api: RestApi, threads: int = REQUEST_THREADS):
        self.api = api
        self.pool = concurrent.futures.ThreadPoolExecutor(
            threads, thread_name_prefix="rest-request"
        )

    async def __call__(self, request) -> Response:
        if request.method == "POST":
            return await asyncio.get_running_loop().run_in_executor(
                self.pool,
                self.api.respond,
                request.method,
                request.target,
                request.headers,
                request.body,
            )
        return self.api.respond(request.method, request.target, request.headers, request.body)

    def close(self) -> None:
        """Waits for the predictions in flight and joins the request threads."""
        self.pool.shutdown(wait=True)
