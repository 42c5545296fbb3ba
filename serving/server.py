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
after decompression). Inputs of the ``predict_waveform`` signatures are checked in Python first
(``serving.validation``). The HTTP protocol rules of TF Serving 2.16.1 (``http_server.cc``,
``evhttp_request.cc``) live in :meth:`RestApi.respond`, not in the HTTP layer: ``Content-Encoding:
gzip`` bodies are decompressed, ``OPTIONS`` is a CORS preflight, and with ``cors=True``
(``--enable_cors_support``) every answer carries the CORS headers.
Concurrent predict requests on the same signature are batched together when ``batching`` is on
(``serving.batching``; off by default), as TF Serving does with ``--enable_batching``. Request
bodies with long
arrays of JSON numbers take ``serving.fast_json`` (same results and errors, less CPU), and
``cme-ser serve --workers N`` runs N of these servers on one port (``serving.workers``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import signal
import socket
import sys
import threading
import time
import urllib.parse
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from serving import fast_json, json_tensors
from serving.batching import Batcher
from serving.repository import ModelRepository, Signature, Version
from trainer.export import SERVING_DEFAULT, WAVEFORM_BYTES_INPUTS, WAVEFORM_INPUTS
from serving.status import HTTP_STATUS, ServingError, invalid_argument, not_found
from serving.validation import check_waveform_bytes_inputs, check_waveform_inputs

log = logging.getLogger("cme_ser.serving")

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024  # a 60 s utterance is about 12 MB of JSON
_DRAIN_LIMIT = 1 << 30  # bodies up to this size are read and discarded before a 413

_PREDICT = re.compile(r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
                      r":(classify|regress|predict)", re.IGNORECASE)
_STATUS = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
                     r"(?:/(metadata))?", re.IGNORECASE)
_API = re.compile(r"/v1/.*", re.IGNORECASE)
_METHODS = {"tensorflow/serving/predict", "tensorflow/serving/classify",
            "tensorflow/serving/regress"}
# http_rest_api_util.cc AddCORSHeaders (--enable_cors_support).
CORS_HEADERS = (("Access-Control-Allow-Origin", "*"),
                ("Access-Control-Allow-Methods", "POST, GET"),
                ("Access-Control-Allow-Headers", "Content-Type"))
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

    def __init__(self, repository: ModelRepository, *, batcher: Optional[Batcher] = None,
                 use_fast_json: bool = True, cors: bool = False,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
        self.repository = repository
        self.batcher = batcher
        self.use_fast_json = use_fast_json  # serving.fast_json for long number arrays
        self.cors = cors  # --enable_cors_support
        self.max_body_bytes = max_body_bytes

    def respond(self, method: str, path: str, headers: Mapping[str, str],
                body: bytes) -> Response:
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
            return self.error_response(ServingError(
                "FAILED_PRECONDITION", "Origin header is missing in CORS preflight"))
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

    def _finish(self, status: int, headers: Tuple[Tuple[str, str], ...],
                body: bytes) -> Response:
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

    # -- GET ----------------------------------------------------------------------------------------

    def status(self, name: str, version: Optional[int], label: Optional[str]) -> bytes:
        if name != self.repository.name:
            if version is not None:
                raise not_found(f"Could not find version {version} of model {name}")
            raise not_found(f"Could not find any versions of model {name}")
        states = self.repository.status(version)  # a label is ignored, as upstream
        response = {"model_version_status": [
            {"version": str(number), "state": state.state,
             "status": {"error_code": state.error_code, "error_message": state.error_message}}
            for number, state in states]}
        return (json.dumps(response, indent=1) + "\n").encode("utf-8")

    def metadata(self, name: str, version: Optional[int], label: Optional[str]) -> bytes:
        served = self._resolve(name, version, label)
        spec = {"name": name, "signature_name": "", "version": str(served.number)}
        # The same concatenation as TF Serving's ToJsonString(GetModelMetadataResponse).
        text = ('{\n"model_spec":' + json.dumps(spec, indent=1) + ',\n"metadata": {'
                '"signature_def": ' + json.dumps(served.signature_def_map, indent=1) + "}\n}\n")
        return text.encode("utf-8")

    # -- POST ---------------------------------------------------------------------------------------

    def predict(self, name: str, version: Optional[int], label: Optional[str],
                body: bytes) -> bytes:
        fast = fast_json.parse(body) if self.use_fast_json else None
        if fast is not None:
            try:
                served, signature, request = self._request(name, version, label, fast.doc,
                                                           fast.bools_possible)
            except (ServingError, fast_json.NotFast):
                fast = None  # the general path gives the answer, or the exact error
        if fast is None:
            doc = json_tensors.parse_body(body)
            served, signature, request = self._request(name, version, label, doc,
                                                       json_tensors.may_contain_bools(body))
        if signature.method_name not in _METHODS:
            raise ServingError("INTERNAL", "Expected prediction signature method_name to be one "
                                           "of {" + ", ".join(sorted(_METHODS)) + "}. Was: "
                               + signature.method_name)
        _check_shapes(signature, request.tensors)
        if set(signature.inputs) == set(WAVEFORM_INPUTS):
            check_waveform_inputs(request.tensors)
        elif set(signature.inputs) == set(WAVEFORM_BYTES_INPUTS):
            check_waveform_bytes_inputs(request.tensors)
        if self.batcher is not None:
            outputs = self.batcher.run(served, signature, request.tensors)
        else:
            outputs = signature.run(request.tensors)
        dtypes = {k: spec.dtype for k, spec in signature.outputs.items()}
        return json_tensors.predict_response(outputs, dtypes, request.format)

    def _request(self, name: str, version: Optional[int], label: Optional[str], doc: dict,
                 bools_possible: bool) -> Tuple[Version, Signature, json_tensors.PredictInputs]:
        requested = json_tensors.signature_name(doc)
        served = self._resolve(name, version, label)
        signature = _signature(served, requested)
        request = json_tensors.request_tensors(doc, signature.inputs, requested, bools_possible)
        return served, signature, request

    def classify_or_regress(self, name: str, version: Optional[int], label: Optional[str],
                            verb: str, body: bytes) -> bytes:
        doc = json_tensors.parse_body(body)
        requested = json_tensors.signature_name(doc)
        signature = _signature(self._resolve(name, version, label), requested)
        wanted = f"tensorflow/serving/{'classify' if verb == 'classify' else 'regress'}"
        kind = "classification" if verb == "classify" else "regression"
        if signature.method_name != wanted:
            raise invalid_argument(f"Expected {kind} signature method_name to be {wanted}. Was: "
                                   f"{signature.method_name}")
        raise ServingError("UNIMPLEMENTED", f"{verb} is not implemented by this server: use "
                                            f":predict")

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
                e != -1 and e != a for e, a in zip(expected, array.shape)):
            raise invalid_argument(
                f"input '{name}' of signature '{signature.name}' must have shape "
                f"[{','.join(str(d) for d in expected)}] (-1: any size), got "
                f"[{','.join(str(d) for d in array.shape)}]")


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
                raise ServingError("INVALID_ARGUMENT", f"Request body exceeds the limit of "
                                                       f"{limit} bytes once uncompressed "
                                                       f"(gzip, {len(data)} bytes compressed)",
                                   http_status=413)
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
        raise invalid_argument(f"Failed to uncompress the gzipped body "
                               f"(Content-Encoding: gzip): {error}") from None


# ----------------------------------------------------------------------------------------------
# HTTP


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse connections
    server_version = "cme-ser"
    # Headers and body go out in two writes; with Nagle's algorithm on, the body would wait
    # for the client's delayed ACK of the headers (40 ms on Linux) on every response.
    disable_nagle_algorithm = True
    server: "RestServer"

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self._serve("GET")

    def do_POST(self):  # noqa: N802
        self._serve("POST")

    def do_PUT(self):  # noqa: N802
        self._serve("PUT")

    def do_DELETE(self):  # noqa: N802
        self._serve("DELETE")

    def do_PATCH(self):  # noqa: N802
        self._serve("PATCH")

    def do_OPTIONS(self):  # noqa: N802
        self._serve("OPTIONS")

    def do_HEAD(self):  # noqa: N802
        self._serve("HEAD")

    def _serve(self, method: str) -> None:
        """Bytes in, bytes out: what the request means is RestApi.respond's business."""
        api, server = self.server.api, self.server
        server.request_started(self.connection)
        try:
            try:
                body = self._read_body()
            except ServingError as error:
                response = api.error_response(error)
            else:
                response = api.respond(method, self.path, self.headers, body)
            if server.stopping:  # answered, then this connection ends
                self.close_connection = True
            self._reply(response, send_body=method != "HEAD")
        finally:
            server.request_finished(self.connection)

    def _read_body(self) -> bytes:
        limit = self.server.max_body_bytes
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked(limit)
        length_header = self.headers.get("Content-Length")
        if not length_header:
            return b""
        try:
            length = int(length_header)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            raise invalid_argument(f"Bad Content-Length: {length_header!r}") from None
        if length > limit:
            self._discard(length)
            raise _too_large(length, limit)
        return self._read_exactly(length)

    def _read_exactly(self, length: int) -> bytes:
        """``length`` body bytes (fewer if the client closes early). What the header reader
        already buffered is taken first; the rest comes with recv(MSG_WAITALL), one system call
        that returns when all of it is there, instead of one per network chunk: each return
        from a blocking call waits for the GIL, and under load those waits add up."""
        head = self.rfile.read1(length) if length else b""
        if len(head) == length or not head:
            return head
        if not hasattr(socket, "MSG_WAITALL"):
            return head + self.rfile.read(length - len(head))
        body = bytearray(length)
        body[:len(head)] = head
        view = memoryview(body)[len(head):]
        while view:
            try:
                got = self.connection.recv_into(view, len(view), socket.MSG_WAITALL)
            except InterruptedError:
                continue
            if not got:  # the client closed early: what arrived
                return bytes(body[:length - len(view)])
            view = view[got:]
        return bytes(body)

    def _read_chunked(self, limit: int) -> bytes:
        parts, total = [], 0
        while True:
            line = self.rfile.readline(65537)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                self.close_connection = True
                raise invalid_argument("Malformed chunked request body") from None
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                break
            total += size
            if total > _DRAIN_LIMIT:
                self.close_connection = True
                raise _too_large(total, limit)
            if total <= limit:
                parts.append(self.rfile.read(size))
            else:  # past the limit: read on, discarding, so the client can read the 413
                self._discard(size)
            self.rfile.readline(65537)  # the CRLF after the chunk
        if total > limit:
            raise _too_large(total, limit)
        return b"".join(parts)

    def _discard(self, length: int) -> None:
        """Read ``length`` bytes away (an oversized body) in pieces, so the client, still
        sending, gets to read the 413; past ``_DRAIN_LIMIT`` the connection is closed instead."""
        if length > _DRAIN_LIMIT:
            self.close_connection = True
            return
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 20))
            if not chunk:
                break
            remaining -= len(chunk)

    def _reply(self, response: Response, send_body: bool = True) -> None:
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if send_body:
            self.wfile.write(response.body)

    def log_message(self, format, *args):  # noqa: A002 (http.server's signature)
        log.debug("%s %s", self.address_string(), format % args)


def _shut_reading(connections) -> None:
    for connection in connections:
        try:
            connection.shutdown(socket.SHUT_RD)
        except OSError:
            pass


def _too_large(length: int, limit: int) -> ServingError:
    return ServingError("INVALID_ARGUMENT", f"Request body of {length} bytes exceeds the limit of "
                                            f"{limit} bytes", http_status=413)


class RestServer(ThreadingHTTPServer):
    """One thread per connection; the model calls are thread-safe.

    Request threads are not daemons: :meth:`close` ends every connection and joins them, so
    that no thread is inside TensorFlow when the interpreter tears it down (a daemon thread
    still running a model at exit is what made ``cme-ser serve`` abort on SIGTERM).
    """

    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True
    # listen() backlog: the default 5 drops SYNs when many clients connect at once, and a
    # dropped SYN costs the client a 1 s retransmission.
    request_queue_size = 128

    def __init__(self, address, api: RestApi, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 listen_socket: Optional[socket.socket] = None, connection_counts=None):
        """``listen_socket``: an already listening socket shared with other processes
        (``cme-ser serve --workers``) instead of binding ``address``; ``connection_counts``:
        their shared :class:`serving.workers.ConnectionCounts`, to even out connections."""
        super().__init__(address, _Handler, bind_and_activate=listen_socket is None)
        if listen_socket is not None:
            self.socket.close()
            self.socket = listen_socket
            # Every worker wakes up for a new connection and one accept() wins; the others must
            # not block in accept() (serve_forever treats the OSError as "nothing to do").
            self.socket.setblocking(False)
            self.server_address = self.socket.getsockname()
        self.api = api
        self.max_body_bytes = max_body_bytes  # on the wire, here; decompressed, in the api
        api.max_body_bytes = max_body_bytes
        self.connection_counts = connection_counts
        self._open: set = set()  # connections being served, for close()
        self._busy: set = set()  # ... of which in the middle of a request
        self._open_lock = threading.Lock()
        self.stopping = False
        self.shutdown_grace_s = 10.0  # how long close() waits for requests in flight
        # Other front ends on the same repository and batcher (serving.grpc_server.GrpcServer):
        # close() closes them first, before the batcher and the models they use go away.
        self.companions: list = []

    def get_request(self):
        counts = self.connection_counts
        if counts is not None:
            delay = counts.accept_delay()
            if delay:
                time.sleep(delay)  # let a worker with fewer connections take it
        connection, address = self.socket.accept()  # OSError if another worker took it
        connection.setblocking(True)  # (accepted from a non-blocking listening socket)
        if counts is not None:
            counts.add(1)
        with self._open_lock:
            self._open.add(connection)
        return connection, address

    def shutdown_request(self, request):
        with self._open_lock:
            self._open.discard(request)
        try:
            super().shutdown_request(request)
        finally:
            if self.connection_counts is not None:
                self.connection_counts.add(-1)

    def request_started(self, connection) -> None:
        with self._open_lock:
            self._busy.add(connection)

    def request_finished(self, connection) -> None:
        with self._open_lock:
            self._busy.discard(connection)

    def handle_error(self, request, client_address):
        """A client that hung up or timed out is routine: one debug line, no traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            log.debug("%s: connection ended: %s", client_address, error)
        else:
            log.exception("error serving %s", client_address)

    def close(self) -> None:
        """After :meth:`shutdown` (or when ``serve_forever`` was never run): stops listening,
        lets the requests in flight finish, ends the idle keep-alive connections, joins every
        request and batching thread, and releases the models. The :attr:`companions` are
        closed first (each stops accepting, finishes its calls and joins its threads)."""
        for companion in self.companions:
            companion.close()
        with self._open_lock:
            self.stopping = True  # a request in flight is answered, then its connection ends
            idle = list(self._open - self._busy)
        _shut_reading(idle)  # a handler waiting for its next request reads EOF and ends
        deadline = time.monotonic() + self.shutdown_grace_s
        while time.monotonic() < deadline:
            with self._open_lock:
                if not self._busy:
                    break
            time.sleep(0.02)
        with self._open_lock:  # past the grace period (a client that stopped sending): cut
            _shut_reading(list(self._open))
        self.server_close()  # closes the listening socket, then joins the request threads
        if self.api.batcher is not None:
            self.api.batcher.close()
        self.repository.stop()

    @property
    def repository(self) -> ModelRepository:
        return self.api.repository

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def start_in_thread(server: RestServer) -> threading.Thread:
    """Serve in a thread; stop with ``server.shutdown()``, then ``server.close()``."""
    thread = threading.Thread(target=server.serve_forever, name="rest-server")
    thread.start()
    return thread


def serve_until_signalled(server: RestServer, signals=(signal.SIGTERM, signal.SIGINT)) -> None:
    """Serves until one of ``signals`` (docker stop, kubectl delete, Ctrl-C), then stops the
    way TF Serving does: no new connections, the requests in flight answered, every thread
    joined and the models released before returning, so the process exits with status 0."""
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in signals}
    thread = start_in_thread(server)
    try:
        while not stop.wait(1.0):  # the handler runs in this (the main) thread
            if not thread.is_alive():
                raise RuntimeError("the HTTP server thread ended by itself")
    finally:
        for s in signals:  # a second signal must not cut the shutdown short
            signal.signal(s, signal.SIG_IGN)
        server.shutdown()
        thread.join()
        server.close()
        for s, handler in previous.items():
            signal.signal(s, handler)


def build_server(base_path, model_name: str, *, host: str = "127.0.0.1", port: int = 8501,
                 poll_seconds: float = 1.0, labels_file=None, num_latest: int = 1,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, batching: bool = False,
                 max_batch_size: int = 32, batch_timeout_ms: float = 2.0,
                 listen_socket: Optional[socket.socket] = None,
                 connection_counts=None, cors: bool = False) -> RestServer:
    """Repository (first load done, polling started) + API + bound HTTP server (or one on
    ``listen_socket``, see :class:`RestServer`). ``batching`` is off by default, as TF
    Serving's ``--enable_batching``; ``cors``: ``--enable_cors_support``."""
    repository = ModelRepository(base_path, model_name, num_latest=num_latest,
                                 labels_file=labels_file)
    repository.start_polling(poll_seconds)
    batcher = Batcher(max_batch_size=max_batch_size, timeout_s=batch_timeout_ms / 1000.0) \
        if batching else None
    try:
        return RestServer((host, port), RestApi(repository, batcher=batcher, cors=cors),
                          max_body_bytes=max_body_bytes, listen_socket=listen_socket,
                          connection_counts=connection_counts)
    except OSError:
        repository.stop()
        raise
