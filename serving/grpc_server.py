"""TF Serving's gRPC API (port 8500) over the same :class:`ModelRepository` as the REST server.

    cme-ser serve --model-base-path output/serving_model/cme --port 8501 --grpc-port 8500

serves ``tensorflow.serving.PredictionService`` (``Predict``, ``GetModelMetadata``) and
``tensorflow.serving.ModelService`` (``GetModelStatus``) with the generated servicer classes of
``tensorflow-serving-api``, so a client written for TF Serving (``PredictionServiceStub`` /
``ModelServiceStub``) works unchanged. ``Classify``, ``Regress``, ``MultiInference`` and
``HandleReloadConfigRequest`` answer UNIMPLEMENTED (the servicer base classes' default).

The rules and texts follow TF Serving 2.16.1 with its default flags:

* model_spec: ``ServerCore::ServableRequestFromModelSpec`` / ``GetModelVersionForLabel`` (name,
  version or version_label, else the newest), resolved by ``ModelRepository.resolve``;
* ``Predict``: ``predict_impl.cc`` and ``predict_util.cc`` (``RunPredict``,
  ``PreProcessPrediction``, ``VerifyRequestInputsSize``), ``tensorflow/cc/saved_model/util.cc``
  (``GetInputValues``): signature_name "" is "serving_default", ``output_filter`` picks (and
  checks) outputs, the response's model_spec carries the version that answered; outputs are
  written as typed value fields (``float_val``, ``string_val``, ...) as ``Tensor::AsProtoField``
  does, so clients that read ``outputs[k].float_val`` work too. No method_name check
  (``--enable_signature_method_name_check`` is off by default).
* ``GetModelMetadata``: ``get_model_metadata_impl.cc``; "signature_def" only, the
  ``SignatureDefMap`` packed in an ``Any``;
* ``GetModelStatus``: ``get_model_status_impl.cc``, as the REST status route
  (``ModelRepository.status``: newest first, a label ignored);
* errors: the canonical code of ``serving.status.ServingError`` as the gRPC status code and the
  message cut at 1024 characters + "...TRUNCATED" (``grpc_status_util.cc``).

Where this server checks more than TF Serving does (input shapes against the SignatureDef), it
applies exactly the checks the REST server applies after parsing JSON; the ``predict_waveform``
input checks are in the graph (``trainer.export.check_waveform_inputs``), so REST and gRPC
answer a bad request the same way.
Concurrent ``Predict`` calls share the REST server's :class:`~serving.batching.Batcher` when
batching is on. A message larger than the REST body limit (``--max-request-mb``) is refused
with RESOURCE_EXHAUSTED (TF Serving accepts up to 2 GB).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
from typing import Dict, Mapping, Optional, Tuple

import grpc
import numpy as np

from serving.repository import ModelRepository, Signature, Version
from serving.server import _check_shapes
from serving.status import ServingError, invalid_argument, not_found
from trainer.signature_names import SERVING_DEFAULT

log = logging.getLogger("cme_ser.serving")

DEFAULT_PORT = 8500  # TF Serving's --port
DEFAULT_MAX_MESSAGE_BYTES = 32 * 1024 * 1024  # the REST server's default body limit
_MESSAGE_LIMIT = 1024  # grpc_status_util.cc: kErrorMessageLimit
SIGNATURE_DEF = "signature_def"

# DataTypeString() of the dtypes whose Python name differs (FunctionCallFrame::SetArgs' text).
_DTYPE_STRINGS = {"float32": "float", "float64": "double", "float16": "half"}
# Tensor::AsProtoField: the repeated field each dtype's values go to.
_VALUE_FIELDS = {
    "float32": "float_val",
    "float64": "double_val",
    "int32": "int_val",
    "int16": "int_val",
    "int8": "int_val",
    "uint8": "int_val",
    "uint16": "int_val",
    "int64": "int64_val",
    "bool": "bool_val",
    "uint32": "uint32_val",
    "uint64": "uint64_val",
}


def _dtype_string(enum: int) -> str:
    import tensorflow as tf

    try:
        name = tf.dtypes.as_dtype(enum).name
    except TypeError:
        return "invalid"
    return _DTYPE_STRINGS.get(name, name)


def tensor_proto(array: np.ndarray, dtype: Optional[int] = None):
    """``array`` as a TensorProto the way TF Serving writes outputs: ``tf.make_tensor_proto``,
    then the values moved from ``tensor_content`` to the typed repeated field."""
    import tensorflow as tf

    proto = tf.make_tensor_proto(array, dtype=tf.dtypes.as_dtype(dtype) if dtype else None)
    field = _VALUE_FIELDS.get(tf.dtypes.as_dtype(proto.dtype).name)
    if field is not None and proto.tensor_content:
        values = np.asarray(array).ravel()
        proto.tensor_content = b""
        getattr(proto, field).extend(values.tolist())
    return proto


def _truncated(message: str) -> str:
    if len(message) > _MESSAGE_LIMIT:
        return message[:_MESSAGE_LIMIT] + "...TRUNCATED"
    return message


class GrpcApi:
    """The three RPCs on one repository; no sockets here. Each method takes the request
    message and returns the response message, or raises :class:`ServingError`."""

    def __init__(self, repository: ModelRepository, *, batcher=None):
        self.repository = repository
        self.batcher = batcher
        self._metadata_lock = threading.Lock()
        self._metadata: Dict[int, Tuple[Version, object]] = {}  # version -> (it, packed Any)

    # -- model_spec -----------------------------------------------------------------------------

    def _resolve(self, spec) -> Version:
        """ServerCore::ServableRequestFromModelSpec, then the servable lookup."""
        name = spec.name
        if not name:
            raise invalid_argument("ModelSpec has no name specified.")
        choice = spec.WhichOneof("version_choice")
        version = spec.version.value if choice == "version" else None
        label = spec.version_label if choice == "version_label" else None
        if name != self.repository.name:
            if version is not None:
                raise not_found(f"Servable not found for request: Specific({name}, {version})")
            if label is not None:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
            raise not_found(f"Servable not found for request: Latest({name})")
        return self.repository.resolve(version, label)

    # -- ModelService ---------------------------------------------------------------------------

    def get_model_status(self, request):
        from tensorflow_serving.apis import get_model_status_pb2

        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        spec = request.model_spec
        # Only model_spec.version is read: a label (or none) lists every version.
        version = spec.version.value if spec.HasField("version") else None
        if spec.name != self.repository.name:
            if version is not None:
                raise not_found(f"Could not find version {version} of model {spec.name}")
            raise not_found(f"Could not find any versions of model {spec.name}")
        response = get_model_status_pb2.GetModelStatusResponse()
        codes = None
        for number, state in self.repository.status(version):
            entry = response.model_version_status.add()
            if codes is None:
                codes = entry.status.DESCRIPTOR.fields_by_name["error_code"].enum_type
            entry.version = number
            entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(state.state)
            entry.status.error_code = codes.values_by_name[state.error_code].number
            entry.status.error_message = state.error_message
        return response

    # -- PredictionService ----------------------------------------------------------------------

    def get_model_metadata(self, request):
        from tensorflow_serving.apis import get_model_metadata_pb2

        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        if not request.metadata_field:
            raise invalid_argument(
                "GetModelMetadataRequest must specify at least one metadata_field"
            )
        for field in request.metadata_field:
            if field != SIGNATURE_DEF:
                # (sic) errors::InvalidArgument concatenates its arguments: the "%s" stays.
                raise invalid_argument(f"Metadata field %s is not supported{field}")
        served = self._resolve(request.model_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = served.number
        response.metadata[SIGNATURE_DEF].CopyFrom(self._packed_signature_defs(served))
        return response

    def _packed_signature_defs(self, served: Version):
        """The version's SignatureDefMap in an Any, made once per loaded version."""
        with self._metadata_lock:
            cached = self._metadata.get(served.number)
            if cached is not None and cached[0] is served:
                return cached[1]
        from google.protobuf import any_pb2, json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        signature_map = json_format.ParseDict(
            served.signature_def_map, get_model_metadata_pb2.SignatureDefMap()
        )
        packed = any_pb2.Any()
        packed.Pack(signature_map)
        with self._metadata_lock:
            self._metadata = {
                n: c for n, c in self._metadata.items() if n in self.repository.available_versions
            }
            self._metadata[served.number] = (served, packed)
        return packed

    def predict(self, request):
        from tensorflow_serving.apis import predict_pb2

        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        served = self._resolve(request.model_spec)
        key = request.model_spec.signature_name or SERVING_DEFAULT
        signature = served.signatures.get(key)
        if signature is None:
            raise ServingError("FAILED_PRECONDITION", f'Serving signature key "{key}" not found.')
        tensors = self._inputs(served, signature, request.inputs)
        names = self._output_names(signature, request.output_filter)
        # Session::Run's feed type check (the C++ map order of the inputs is unspecified;
        # sorted here).
        for index, alias in enumerate(sorted(signature.inputs)):
            wanted, sent = signature.inputs[alias].dtype, request.inputs[alias].dtype
            if wanted != sent:
                raise invalid_argument(
                    f"Expects arg[{index}] to be {_dtype_string(wanted)} but "
                    f"{_dtype_string(sent)} is provided"
                )
        check_inputs(signature, tensors)
        if self.batcher is not None:
            outputs = self.batcher.run(served, signature, tensors)
        else:
            outputs = signature.run(tensors)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.signature_name = key
        response.model_spec.version.value = served.number
        for name in names:
            response.outputs[name].CopyFrom(
                tensor_proto(outputs[name], signature.outputs[name].dtype)
            )
        return response

    def _inputs(self, served: Version, signature: Signature, sent) -> Dict[str, np.ndarray]:
        """VerifyRequestInputsSize + GetInputValues: TensorProto -> numpy."""
        import tensorflow as tf

        expected = set(signature.inputs)
        given = set(sent)
        # TF2 SignatureDefs have no default inputs: every input is required.
        if len(given) != len(expected):
            raise invalid_argument(
                f"input size does not match signature: {len(given)}!={len(expected)} "
                f"len({{{','.join(sorted(given))}}}) != len({{{','.join(sorted(expected))}}}). "
                f"Sent extra: {{{','.join(sorted(given - expected))}}}. Missing but required: "
                f"{{{','.join(sorted(expected - given))}}}."
            )
        definition = served.signature_def_map.get("signature_def", {}).get(signature.name, {})
        tensors = {}
        for alias in sorted(expected):
            if alias not in given:
                feed = definition.get("inputs", {}).get(alias, {}).get("name", "")
                raise invalid_argument(
                    f"Signature input alias: {alias}(feed name: {feed}) not found in request and "
                    f"no default value provided. Inputs expected to be in the request "
                    f"{{{','.join(sorted(given))}}}, or default input alias set: "
                )
            try:
                tensors[alias] = tf.make_ndarray(sent[alias])
            except Exception:  # any proto Tensor::FromProto would refuse
                raise invalid_argument(f"tensor parsing error: {alias}") from None
        return tensors

    @staticmethod
    def _output_names(signature: Signature, output_filter) -> list:
        seen = []
        for alias in output_filter:
            if alias not in signature.outputs:
                raise invalid_argument(
                    f"output tensor alias not found in signature: {alias} Outputs expected to "
                    f"be in the set {{{','.join(sorted(signature.outputs))}}}."
                )
            if alias in seen:
                raise invalid_argument(f"duplicate output tensor alias: {alias}")
            seen.append(alias)
        return seen or sorted(signature.outputs)


def check_inputs(signature: Signature, tensors: Mapping[str, np.ndarray]) -> None:
    """The checks the REST server makes once a request's tensors are parsed
    (``serving.server.RestApi.predict``): shapes against the SignatureDef (the
    ``predict_waveform`` input rules are the graph's)."""
    _check_shapes(signature, dict(tensors))


def _servicers(api: GrpcApi):
    """The generated servicer classes with our methods; errors become gRPC statuses."""
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    def call(method, request, context):
        try:
            return method(request)
        except ServingError as error:
            code, message = error.code, error.message
        except Exception as error:  # a bug must not take the server down
            log.exception("internal error in gRPC %s", method.__name__)
            code, message = "INTERNAL", f"Internal error: {error}"
        context.abort(grpc.StatusCode[code], _truncated(message))

    class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):  # noqa: N802 (generated names)
            return call(api.predict, request, context)

        def GetModelMetadata(self, request, context):  # noqa: N802
            return call(api.get_model_metadata, request, context)

    class ModelService(model_service_pb2_grpc.ModelServiceServicer):
        def GetModelStatus(self, request, context):  # noqa: N802
            return call(api.get_model_status, request, context)

    return (
        PredictionService(),
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server,
        ModelService(),
        model_service_pb2_grpc.add_ModelServiceServicer_to_server,
    )


class GrpcServer:
    """A ``grpc.server`` on ``host:port`` (0: a free port) with a pool of ``max_threads``
    request threads (default ``max(16, 4 x CPUs)``, TF Serving's ``--grpc_max_threads`` being
    4 x CPUs). Bound on construction, serving after :meth:`start`; :meth:`close` stops it.

    ``SO_REUSEPORT`` is off unless ``reuse_port`` (gRPC turns it on by default), so a port
    already in use is an error here rather than two servers silently sharing it; ``cme-ser
    serve`` turns it on so that its worker processes share the port (serving.gunicorn_app)."""

    def __init__(
        self,
        repository: ModelRepository,
        *,
        batcher=None,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        max_threads: Optional[int] = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        grace_s: float = 10.0,
        reuse_port: bool = False,
    ):
        self.api = GrpcApi(repository, batcher=batcher)
        self.grace_s = grace_s
        threads = max_threads or max(16, 4 * (os.cpu_count() or 1))
        self._executor = concurrent.futures.ThreadPoolExecutor(
            threads, thread_name_prefix="grpc-request"
        )
        self._server = grpc.server(
            self._executor,
            options=[
                ("grpc.so_reuseport", int(reuse_port)),
                ("grpc.max_receive_message_length", int(max_message_bytes)),
                ("grpc.max_send_message_length", -1),
            ],
        )
        prediction, add_prediction, model, add_model = _servicers(self.api)
        add_prediction(prediction, self._server)
        add_model(model, self._server)
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            bound = self._server.add_insecure_port(target)
        except RuntimeError:  # grpcio >= 1.55 raises instead of returning 0
            bound = 0
        if not bound:
            self._server.stop(None)
            self._executor.shutdown(wait=True)
            raise OSError(f"cannot bind gRPC to {target} (address in use?)")
        self.host, self.port = host, bound
        self._threads: list = []  # threads gRPC starts for serving and shutting down
        self._lock = threading.Lock()
        self._closed = False

    @property
    def repository(self) -> ModelRepository:
        return self.api.repository

    @property
    def address(self) -> str:
        """``host:port``, what a client's channel target is."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def start(self) -> "GrpcServer":
        with self._lock:
            if self._closed:
                raise RuntimeError("the gRPC server is closed")
            before = set(threading.enumerate())
            self._server.start()
            # gRPC's polling thread (named after its target, grpc._server._serve).
            self._threads += [
                t for t in set(threading.enumerate()) - before if t.name.endswith("(_serve)")
            ]
        return self

    def close(self, grace: Optional[float] = None) -> None:
        """Stops accepting, lets the calls in flight finish (cancelled after ``grace`` seconds,
        default ``grace_s``), then joins every thread that ran a call and gRPC's own serving
        thread: none is left inside TensorFlow, or in gRPC, once this returns. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        grace = self.grace_s if grace is None else grace
        before = set(threading.enumerate())
        self._server.stop(grace).wait()
        # The thread that would cancel calls after the grace period: done once stop() is.
        self._threads += [
            t for t in set(threading.enumerate()) - before if "cancel_all_calls" in t.name
        ]
        self._executor.shutdown(wait=True)
        for thread in self._threads:
            thread.join(timeout=max(5.0, grace))
        self._threads = []
