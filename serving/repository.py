"""The versions of one model under a base path, loaded and kept current like TF Serving does.

Layout (what TFX Pusher writes and TF Serving loads)::

    <base_path>/<version>/saved_model.pb, variables/, assets/    version = a whole number

Policy: the newest ``num_latest`` versions are served (TF Serving's default is the latest one),
plus any version named in the optional labels file (``{"stable": 2, "canary": 3}``). The
directory and the labels file are re-read by :meth:`ModelRepository.refresh`, which
:meth:`ModelRepository.start_polling` calls every ``poll_seconds`` in a background thread. A new
version is loaded before an old one is dropped, so requests never find nothing to serve. A
version that fails to load is reported (state END with its error), the versions it was to replace
keep serving, and it is tried again only when its ``saved_model.pb`` changes. Directories whose
name is not a number are ignored, which is why exports are written into a dot-named staging
directory and renamed into place.

A version's ``assets.extra/tf_serving_warmup_requests`` (TFRecord of ``PredictionLog``, written by
``trainer.export.export_saved_model``) is replayed right after the load, as TF Serving does
(its Predict requests; at most ``MAX_WARMUP_RECORDS``); a request that fails fails the load.

Version states follow TF Serving's ``GetModelStatus``: LOADING, AVAILABLE, and END for versions
that were unloaded or failed.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from serving.json_tensors import TensorSpec
from serving.status import ServingError, from_op_error, invalid_argument, not_found
from trainer.signature_names import SERVING_DEFAULT

log = logging.getLogger("cme_ser.serving")

WARMUP_PATH = ("assets.extra", "tf_serving_warmup_requests")  # TF Serving's location
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit


@dataclasses.dataclass(frozen=True)
class Signature:
    """One signature of a loaded version: specs from the SavedModel's SignatureDef and the
    callable that runs it (``None`` for signatures TF2 does not expose, e.g. the init op)."""

    name: str
    method_name: str
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]
    function: Optional[Callable]

    def run(self, tensors: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Calls the signature on numpy inputs; returns numpy outputs. Thread-safe."""
        import tensorflow as tf

        if self.function is None:
            raise ServingError("INTERNAL", f"signature {self.name!r} cannot be run")
        feeds = {
            name: tf.constant(value, dtype=_tf_dtype(self.inputs[name].dtype))
            for name, value in tensors.items()
        }
        try:
            outputs = self.function(**feeds)
        except tf.errors.OpError as error:  # e.g. a record that does not parse: its own code
            raise from_op_error(error) from None
        return {name: value.numpy() for name, value in outputs.items()}


@dataclasses.dataclass(frozen=True)
class Version:
    """One loaded version: its signatures and the SignatureDefMap for metadata requests."""

    number: int
    path: Path
    signatures: Mapping[str, Signature]
    signature_def_map: dict  # the JSON of tensorflow.serving.SignatureDefMap
    loaded: object = dataclasses.field(repr=False)  # keeps the SavedModel's resources alive
    warmup_requests: int = 0  # how many warm-up requests it answered when it loaded


@dataclasses.dataclass(frozen=True)
class VersionState:
    state: str  # START, LOADING, AVAILABLE, UNLOADING, END
    error_code: str = "OK"
    error_message: str = ""


@dataclasses.dataclass(frozen=True)
class _Snapshot:
    """What requests see; replaced whole (never mutated) so readers need no lock."""

    versions: Mapping[int, Version]
    states: Mapping[int, VersionState]
    labels: Mapping[str, int]


def _tf_dtype(enum: int):
    import tensorflow as tf

    return tf.dtypes.as_dtype(enum)


def _spec(tensor_info) -> TensorSpec:
    shape = None
    if not tensor_info.tensor_shape.unknown_rank:
        shape = tuple(int(d.size) for d in tensor_info.tensor_shape.dim)
    return TensorSpec(int(tensor_info.dtype), shape)


def list_versions(base_path: Path) -> Dict[int, Path]:
    """Numeric subdirectories of ``base_path`` (TF Serving reads "007" as version 7)."""
    found: Dict[int, Path] = {}
    try:
        entries = list(os.scandir(base_path))
    except FileNotFoundError:
        return found
    for entry in entries:
        if entry.name.isdigit() and entry.is_dir():
            found.setdefault(int(entry.name), Path(entry.path))
    return found


def load_version(number: int, path: Path) -> Version:
    """Loads one SavedModel directory. Raises whatever TensorFlow raises for a bad one."""
    import tensorflow as tf
    from google.protobuf import json_format
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2

    saved_model = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
    meta_graph = next((g for g in saved_model.meta_graphs if "serve" in g.meta_info_def.tags), None)
    if meta_graph is None:
        raise ValueError(f"{path}: no MetaGraph tagged 'serve'")
    loaded = tf.saved_model.load(str(path), tags=["serve"])
    functions = dict(loaded.signatures)
    signatures = {}
    for name, definition in meta_graph.signature_def.items():
        signatures[name] = Signature(
            name=name,
            method_name=definition.method_name,
            inputs={k: _spec(v) for k, v in definition.inputs.items()},
            outputs={k: _spec(v) for k, v in definition.outputs.items()},
            function=functions.get(name),
        )
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for name, definition in meta_graph.signature_def.items():
        signature_map.signature_def[name].CopyFrom(definition)
    # TF Serving prints it with always_print_primitive_fields and preserve_proto_field_names.
    try:
        as_json = json_format.MessageToDict(
            signature_map, preserving_proto_field_name=True, including_default_value_fields=True
        )
    except TypeError:  # protobuf >= 5 renamed the option
        as_json = json_format.MessageToDict(
            signature_map,
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )
    answered = run_warmup(path, signatures)
    return Version(number, path, signatures, as_json, loaded, answered)


def run_warmup(path: Path, signatures: Mapping[str, Signature]) -> int:
    """Replays the Predict requests of ``path``'s warm-up file through ``signatures``, as TF
    Serving does after loading a version; returns how many ran (0 without the file). Other
    log types (classify, regress, ...) are skipped: these models only have predict signatures.
    Raises ValueError for a request that fails or names an unknown signature."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    warmup = Path(path).joinpath(*WARMUP_PATH)
    if not warmup.is_file():
        return 0
    ran = 0
    for index, record in enumerate(tf.data.TFRecordDataset([str(warmup)])):
        if index >= MAX_WARMUP_RECORDS:
            raise ValueError(f"{warmup}: more than {MAX_WARMUP_RECORDS} warm-up records")
        entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        if entry.WhichOneof("log_type") != "predict_log":
            log.warning(
                "%s: record %d is a %s, skipped", warmup, index, entry.WhichOneof("log_type")
            )
            continue
        request = entry.predict_log.request
        name = request.model_spec.signature_name or SERVING_DEFAULT
        if name not in signatures:
            raise ValueError(
                f"{warmup}: record {index} asks for signature {name!r}, which "
                f"the model does not have"
            )
        unknown = set(request.inputs) - set(signatures[name].inputs)
        if unknown:
            raise ValueError(
                f"{warmup}: warm-up request {index} ({name}) has inputs "
                f"{sorted(unknown)} the signature does not take"
            )
        try:
            signatures[name].run({k: tf.make_ndarray(v) for k, v in request.inputs.items()})
        except (ServingError, ValueError, TypeError) as error:
            raise ValueError(
                f"{warmup}: warm-up request {index} ({name}) failed: {error}"
            ) from None
        ran += 1
    return ran


def read_labels(path: Optional[Path]) -> Dict[str, int]:
    """``{"label": version}`` from a JSON file; ``{}`` without one. Raises ValueError."""
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read version labels: {error}") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and k and isinstance(v, int) and not isinstance(v, bool) and v >= 0
        for k, v in data.items()
    ):
        raise ValueError(
            f"{path}: version labels must be a JSON object of label -> version "
            f"number, e.g. {{\"stable\": 2}}"
        )
    return dict(data)


class ModelRepository:
    """Loads and serves the versions of the model ``name`` found under ``base_path``."""

    def __init__(
        self,
        base_path,
        name: str,
        *,
        num_latest: int = 1,
        labels_file=None,
        loader: Callable[[int, Path], Version] = load_version,
    ):
        self.base_path = Path(base_path)
        self.name = name
        if num_latest < 1:
            raise ValueError(f"num_latest must be >= 1, got {num_latest}")
        self.num_latest = num_latest
        self.labels_file = Path(labels_file) if labels_file else None
        self._loader = loader
        self._snapshot = _Snapshot({}, {}, {})
        self._refresh_lock = threading.Lock()  # one refresh at a time; readers never wait
        self._failed: Dict[int, float] = {}  # version -> mtime of the saved_model.pb that failed
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # -- reading (request threads) ---------------------------------------------------------------

    @staticmethod
    def _requested_version(snapshot, version: Optional[int], label: Optional[str]) -> Optional[int]:
        """The version number a request names (a label is translated), or None for "newest"."""
        if version is not None and label is not None:
            raise invalid_argument(
                f"Both model version ({version}) and model version label "
                f"({label}) cannot be supplied."
            )
        if label is not None:
            if label not in snapshot.labels:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
            version = snapshot.labels[label]
        return version

    def resolve(self, version: Optional[int] = None, label: Optional[str] = None) -> Version:
        """The version a request asks for: a number, a label, or (neither) the newest."""
        snapshot = self._snapshot
        version = self._requested_version(snapshot, version, label)
        if version is None:
            if not snapshot.versions:
                raise not_found(f"Servable not found for request: Latest({self.name})")
            return snapshot.versions[max(snapshot.versions)]
        if version not in snapshot.versions:
            raise not_found(f"Servable not found for request: Specific({self.name}, {version})")
        return snapshot.versions[version]

    def status(self, version: Optional[int] = None) -> List[Tuple[int, VersionState]]:
        """``(version, state)`` pairs as GetModelStatus reports them: one version, or all,
        newest first. TF Serving 2.16.1 (``get_model_status_impl.cc``) looks only at a version
        number, never at a label, and lists a ``ServableStateMonitor::VersionMap``, which is
        ordered by ``std::greater``."""
        snapshot = self._snapshot
        if version is not None:
            if version not in snapshot.states:
                raise not_found(f"Could not find version {version} of model {self.name}")
            return [(version, snapshot.states[version])]
        if not snapshot.states:
            raise not_found(f"Could not find any versions of model {self.name}")
        return sorted(snapshot.states.items(), reverse=True)

    @property
    def available_versions(self) -> List[int]:
        return sorted(self._snapshot.versions)

    # -- keeping current (the polling thread) ----------------------------------------------

    def refresh(self) -> None:
        """Re-read the labels file and the version directories; load and unload to match."""
        with self._refresh_lock:
            self._refresh()

    def _refresh(self) -> None:
        current = self._snapshot
        try:
            labels = read_labels(self.labels_file)
        except ValueError as error:
            log.error("%s; keeping the previous labels", error)
            labels = dict(current.labels)
        on_disk = list_versions(self.base_path)
        wanted = set(sorted(on_disk)[-self.num_latest :])
        wanted |= {v for v in labels.values() if v in on_disk}

        versions = dict(current.versions)
        states = dict(current.states)
        for number in sorted(wanted - set(versions), reverse=True):  # newest first
            path = on_disk[number]
            stamp = _mtime(path / "saved_model.pb")
            if self._failed.get(number) == stamp:
                continue  # failed before and unchanged since
            states[number] = VersionState("LOADING")
            self._publish(versions, states, current.labels)
            started = time.monotonic()
            try:
                versions[number] = self._loader(number, path)
            except Exception as error:  # any load failure is reported, never fatal
                message = " ".join(str(error).split()) or type(error).__name__
                log.error(
                    "model %s version %d at %s failed to load: %s", self.name, number, path, message
                )
                self._failed[number] = stamp
                states[number] = VersionState("END", "UNKNOWN", message)
                continue
            self._failed.pop(number, None)
            states[number] = VersionState("AVAILABLE")
            log.warning(
                "model %s version %d loaded from %s in %.1f s",
                self.name,
                number,
                path,
                time.monotonic() - started,
            )
        # Unload what is no longer wanted, but only once a wanted version is in: if the new
        # version failed to load, the old one keeps serving (TF Serving's
        # availability-preserving policy).
        if wanted & set(versions):
            for number in sorted(set(versions) - wanted):
                del versions[number]
                states[number] = VersionState("END")
                log.warning("model %s version %d unloaded", self.name, number)
        # A label may only name a version that is being served (as in TF Serving).
        served_labels = {k: v for k, v in labels.items() if v in versions}
        for label, number in sorted(labels.items()):
            if number not in versions:
                log.error(
                    "version label %r -> %d: version %d is not available", label, number, number
                )
        self._publish(versions, states, served_labels)

    def _publish(self, versions, states, labels) -> None:
        self._snapshot = _Snapshot(dict(versions), dict(states), dict(labels))

    def start_polling(self, poll_seconds: float) -> None:
        """Refresh now, then every ``poll_seconds`` in a daemon thread (no thread if <= 0)."""
        self.refresh()
        if poll_seconds <= 0 or self._thread is not None:
            return

        def poll():
            while not self._stop.wait(poll_seconds):
                try:
                    self.refresh()
                except Exception:  # keep polling whatever one refresh hit
                    log.exception("refreshing model %s failed", self.name)

        self._thread = threading.Thread(target=poll, name=f"poll-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops polling (a load under way finishes first) and releases every loaded version,
        so their TensorFlow resources are freed now, not during interpreter teardown."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._refresh_lock:
            self._publish({}, {}, {})
        gc.collect()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return -1.0
