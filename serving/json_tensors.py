"""TensorFlow Serving's REST predict format: JSON request -> input arrays, outputs -> JSON.

A re-implementation of ``tensorflow_serving/util/json_tensor.cc`` (FillPredictRequestFromJson,
MakeJsonFromTensors) with the same rules and error texts, so a client written against TF Serving
works unchanged here:

* Row format ``{"signature_name": s, "instances": [...]}``: each instance is an object with one
  key per signature input (or a bare value when the signature has one input); every instance
  must give each input the same shape; the batch is the list. Answer
  ``{"predictions": [...]}``: one value per instance when the signature has a single output,
  else one object per instance keyed by output name.
* Columnar format ``{"signature_name": s, "inputs": {...}}`` (or a bare value for one input):
  whole tensors, batch dimension included. Answer ``{"outputs": value}`` for a single output,
  else ``{"outputs": {name: value}}``.
* Bytes: a ``DT_STRING`` input value may be ``{"b64": "<base64>"}``. A string output is written
  as a JSON string, unless the output's name ends in ``_bytes``: then as ``{"b64": ...}``.
* Type rules: float inputs take JSON numbers (integers only up to 2^24 - 1 in magnitude: "without
  loss of precision"); integer inputs take JSON integers (``1.0`` is not one); bools are not
  numbers. ``NaN`` / ``Infinity`` are accepted as numbers (rapidjson's kParseNanAndInfFlag).
  Floats are written with 6 significant digits when that round-trips, else 9, and whole numbers
  get a trailing ``.0``.

Differences from TF Serving, all in error texts only: JSON syntax errors carry Python's parser
message, and JSON values quoted inside error messages are cut to 200 characters (TF Serving
quotes them whole, which for a waveform is a megabyte).

Large numeric arrays (waveforms) are converted with one ``np.asarray`` call; only when that
fast path cannot prove the value well-formed (ragged lists, mixed types, a JSON ``true`` /
``false`` anywhere in the body, integers or floats too large for the type rules to be decided
without looking at each element) does the element-by-element path run, which gives the exact
TF Serving error. The server tries ``serving.fast_json`` before all of this: long arrays of
numbers come to :class:`_Converter` already parsed, as ``FastArray`` values.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import re
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import orjson

from serving.fast_json import FastArray, NotFast, to_array
from serving.status import ServingError, invalid_argument

ROW = "row"
COLUMNAR = "columnar"
_QUOTE_LIMIT = 200
# A JSON true/false token: after '[', ',' or ':' and before ']', ',' or '}'. Only searched when
# the bytes "true"/"false" occur at all; a match inside a string is a harmless false alarm.
_BOOL_TOKEN = re.compile(rb"[\[,:]\s*(?:true|false)\s*[\],}]")

# DataType enum (tensorflow/core/framework/types.proto) -> (DataTypeString name, numpy dtype).
DTYPES = {
    1: ("float", np.float32),
    2: ("double", np.float64),
    3: ("int32", np.int32),
    4: ("uint8", np.uint8),
    5: ("int16", np.int16),
    6: ("int8", np.int8),
    7: ("string", np.object_),
    9: ("int64", np.int64),
    10: ("bool", np.bool_),
    22: ("uint32", np.uint32),
    23: ("uint64", np.uint64),
}
DT_FLOAT, DT_DOUBLE, DT_STRING, DT_BOOL = 1, 2, 7, 10
_INT_RANGES = {3: (-2**31, 2**31 - 1), 5: (-2**31, 2**31 - 1), 6: (-2**31, 2**31 - 1),
               4: (-2**31, 2**31 - 1), 9: (-2**63, 2**63 - 1), 22: (0, 2**32 - 1),
               23: (0, 2**64 - 1)}
# Largest integer a JSON integer may be for a float / double input (json_tensor.cc kMaxInt).
_MAX_LOSSLESS_INT = {DT_FLOAT: 2**24 - 1, DT_DOUBLE: 2**53 - 1}
_MAX_FINITE = {DT_FLOAT: float(np.finfo(np.float32).max), DT_DOUBLE: float(np.finfo(np.float64).max)}


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One signature input or output: DataType enum and shape (``None`` = unknown rank, -1 =
    unknown dimension)."""

    dtype: int
    shape: Optional[Tuple[int, ...]]

    @property
    def dtype_name(self) -> str:
        return DTYPES.get(self.dtype, (f"DT_{self.dtype}", None))[0]


@dataclasses.dataclass(frozen=True)
class PredictInputs:
    format: str  # ROW or COLUMNAR
    tensors: Dict[str, np.ndarray]


# ----------------------------------------------------------------------------------------------
# Requests


def parse_body(body: bytes) -> dict:
    """The request document; errors as TF Serving's ParseJson words them."""
    if not body or not body.strip():
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        # orjson parses the big number arrays of waveform requests ~4x faster than json; any
        # document it refuses (NaN literals, huge integers, invalid JSON) takes the standard
        # parser, whose results and error texts are the reference.
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    try:
        if doc is None:
            doc = json.loads(body)
    except UnicodeDecodeError as error:
        raise invalid_argument(f"JSON Parse error: Invalid encoding in string. at offset: "
                               f"{error.start}") from None
    except json.JSONDecodeError as error:
        raise invalid_argument(f"JSON Parse error: {error.msg} at offset: {error.pos}") from None
    except RecursionError:
        raise invalid_argument("JSON Parse error: nesting too deep") from None
    if not isinstance(doc, dict):
        raise invalid_argument(f"JSON Value: {quote(doc)} Is not object")
    return doc


def signature_name(doc: dict) -> str:
    """``doc["signature_name"]`` or "" (meaning serving_default)."""
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid_argument(f"JSON Value: {quote(doc)} not formatted correctly. "
                               f"'signature_name' key must be a string value.")
    return name


def may_contain_bools(body: bytes) -> bool:
    """False only when the body certainly has no JSON true/false token."""
    if b"true" not in body and b"false" not in body:
        return False
    return _BOOL_TOKEN.search(body) is not None


def request_tensors(doc: dict, inputs: Mapping[str, TensorSpec], signature: str,
                    bools_possible: bool = True) -> PredictInputs:
    """Arrays for the signature's ``inputs`` from a parsed request ``doc``.

    Returns numpy arrays (strings as object arrays of bytes) in the inputs' dtypes.
    ``bools_possible=False`` (see :func:`may_contain_bools`) lets numeric arrays take the fast
    path. Raises ``ServingError`` (INVALID_ARGUMENT / UNIMPLEMENTED) with TF Serving's texts.
    """
    if not inputs:
        raise invalid_argument(f"Failed to get input map for signature: {signature or 'DEFAULT'}")
    converter = _Converter(bools_possible)
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise invalid_argument(f"JSON Value: {quote(doc)} Not formatted correctly expecting only "
                               f"one of 'inputs' or 'instances' keys to exist ")
    if has_instances:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise invalid_argument(f"JSON Value: {quote(doc)} Excepting 'instances' to be an "
                                   f"list/array")
        if not instances:
            raise invalid_argument(f"JSON Value: {quote(doc)} No values in 'instances' array")
        return PredictInputs(ROW, converter.from_instances(instances, inputs))
    if has_inputs:
        return PredictInputs(COLUMNAR, converter.from_inputs(doc["inputs"], inputs))
    raise invalid_argument("Missing 'inputs' or 'instances' key")


def _is_b64(value) -> bool:
    return (isinstance(value, dict) and len(value) == 1 and "b64" in value
            and isinstance(value["b64"], str))


def _is_element_object(value) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


def _json_type(value) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def quote(value) -> str:
    """A JSON value for an error message, cut to a readable length."""
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _QUOTE_LIMIT else text[:_QUOTE_LIMIT] + "..."


def _shape_string(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _dense_shape(value) -> List[int]:
    """TF Serving's GetDenseTensorShape: follow the first element of each nested list."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


class _Converter:
    def __init__(self, bools_possible: bool):
        self.bools_possible = bools_possible

    # -- one JSON value -> one array ------------------------------------------------------------

    def tensor(self, value, dtype: int) -> np.ndarray:
        """The dense array of ``value`` (any nesting) in ``dtype``."""
        if type(value) is FastArray:  # from serving.fast_json: numbers only, already parsed
            if dtype not in (DT_FLOAT, DT_DOUBLE):
                raise NotFast
            return to_array(value, dtype == DT_DOUBLE, _MAX_LOSSLESS_INT[dtype])
        if dtype not in DTYPES:
            raise ServingError("UNIMPLEMENTED", f"Conversion of JSON Value: {quote(value)} to "
                                                f"type: DT_{dtype}")
        fast = self._fast(value, dtype)
        if fast is not None:
            return fast
        shape = _dense_shape(value)
        flat: list = []
        self._fill(value, 0, shape, dtype, flat)
        np_dtype = DTYPES[dtype][1]
        if dtype == DT_STRING:
            array = np.empty(len(flat), dtype=object)
            array[:] = flat
            return array.reshape(shape)
        return np.asarray(flat, dtype=np_dtype).reshape(shape)

    def _fast(self, value, dtype: int) -> Optional[np.ndarray]:
        """One ``np.asarray`` for well-formed numeric lists; None when unsure."""
        if not isinstance(value, list) or not value or self.bools_possible \
                or dtype in (DT_STRING, DT_BOOL):
            return None
        try:
            array = np.asarray(value)
        except (ValueError, TypeError, OverflowError):  # ragged, or odd element types
            return None
        kind = array.dtype.kind
        if dtype in (DT_FLOAT, DT_DOUBLE):
            if kind == "i":
                if array.size and int(np.max(np.abs(array))) > _MAX_LOSSLESS_INT[dtype]:
                    return None
            elif kind == "f":
                # Integers and floats mixed: an integer beyond the lossless bound is an error
                # and a float beyond the type's range too, so anything that large (or NaN /
                # Infinity) takes the element-by-element path, which tells them apart.
                if array.size and not max(float(array.max()), -float(array.min())) \
                        <= _MAX_LOSSLESS_INT[dtype]:
                    return None
            else:
                return None
            return array.astype(DTYPES[dtype][1])
        if kind != "i" or dtype not in _INT_RANGES:
            return None
        low, high = _INT_RANGES[dtype]
        if array.size and (int(array.min()) < low or int(array.max()) > high):
            return None
        return array.astype(DTYPES[dtype][1])

    def _fill(self, value, level: int, shape: List[int], dtype: int, out: list) -> None:
        """TF Serving's FillTensorProto, appending scalars to ``out``."""
        rank = len(shape)
        if not isinstance(value, list):
            if level != rank:
                raise invalid_argument(
                    f"JSON Value: {quote(value)} found at incorrect level: {level + 1} in the "
                    f"JSON DOM. Expected at level: {rank}")
            if isinstance(value, dict):
                if dtype != DT_STRING:
                    raise _type_error(value, dtype)
                out.append(_decode_b64(value))
            else:
                out.append(_scalar(value, dtype))
            return
        if level >= rank:
            raise invalid_argument(f"Encountered list at unexpected level: {level} expected < "
                                   f"{rank}")
        if len(value) != shape[level]:
            raise invalid_argument(f"Encountered list at unexpected size: {len(value)} at level: "
                                   f"{level} expected size: {shape[level]}")
        for item in value:
            self._fill(item, level + 1, shape, dtype, out)

    # -- the two request layouts ------------------------------------------------------------------

    def from_instances(self, instances: list, inputs: Mapping[str, TensorSpec]) -> Dict[str, np.ndarray]:
        """Row format (FillTensorMapFromInstancesList)."""
        if not isinstance(instances[0], dict) and len(inputs) > 1:
            raise invalid_argument("instances is a plain list, but expecting list of objects as "
                                   "multiple input tensors required as per tensorinfo_map")
        objects = _is_element_object(instances[0])
        names = sorted(inputs)
        rows: Dict[str, List[np.ndarray]] = {}

        def add(item, name: str) -> None:
            if name not in inputs:
                raise invalid_argument(f"JSON object: does not have named input: {name}")
            array = self.tensor(item, inputs[name].dtype)
            if name in rows:
                first = rows[name][0]
                if first.size != array.size:
                    raise invalid_argument(f"Expecting tensor size: {first.size} but got: "
                                           f"{array.size}")
                if first.shape != array.shape:
                    raise invalid_argument(f"Expecting shape {_shape_string(first.shape)} but "
                                           f"got: {_shape_string(array.shape)}")
                rows[name].append(array)
            else:
                rows[name] = [array]

        for index, element in enumerate(instances):
            if objects:
                if not _is_element_object(element):
                    raise invalid_argument(f"Expecting object but got list at item {index} of "
                                           f"input list")
                for name, item in element.items():
                    try:
                        add(item, name)
                    except ServingError as error:
                        raise invalid_argument(
                            f"Failed to process element: {index} key: {name} of 'instances' "
                            f"list. Error: {error.status_string()}") from None
                if set(element) != set(names):
                    raise invalid_argument(
                        f"Failed to process element: {index} of 'instances' list. JSON object: "
                        f"{quote(element)} must only have keys: {','.join(names)}")
            else:
                if _is_element_object(element):
                    raise invalid_argument(f"Expecting value/list but got object at item {index} "
                                           f"of input list")
                try:
                    add(element, names[0])
                except ServingError as error:
                    raise invalid_argument(f"Failed to process element: {index} of 'instances' "
                                           f"list. Error: {error.status_string()}") from None
        return {name: _stack(arrays) for name, arrays in rows.items()}

    def from_inputs(self, value, inputs: Mapping[str, TensorSpec]) -> Dict[str, np.ndarray]:
        """Columnar format (FillTensorMapFromInputsMap). Keys that are not inputs are ignored,
        as TF Serving ignores them."""
        if not isinstance(value, dict) or _is_b64(value):
            if len(inputs) > 1:
                raise invalid_argument("inputs is a plain value/list, but expecting an object as "
                                       "multiple input tensors required as per tensorinfo_map")
            name, spec = next(iter(inputs.items()))
            return {name: self.tensor(value, spec.dtype)}
        tensors = {}
        for name in sorted(inputs):
            if name not in value:
                raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
            tensors[name] = self.tensor(value[name], inputs[name].dtype)
        return tensors


def _stack(arrays: List[np.ndarray]) -> np.ndarray:
    if arrays[0].dtype == object:
        out = np.empty((len(arrays),) + arrays[0].shape, dtype=object)
        for i, array in enumerate(arrays):
            out[i, ...] = array  # element-wise (a plain out[i] = would store the array object)
        return out
    return np.stack(arrays)


def _type_error(value, dtype: int) -> ServingError:
    return invalid_argument(f"JSON Value: {quote(value)} Type: {_json_type(value)} is not of "
                            f"expected type: {DTYPES[dtype][0]}")


def _decode_b64(value) -> bytes:
    if not _is_b64(value):
        raise invalid_argument(f"JSON Value: {quote(value)} not formatted correctly for base64 "
                               f"data")
    text = value["b64"].strip()
    try:
        # absl::Base64Unescape accepts standard and URL-safe alphabets, padding optional.
        text = text.replace("-", "+").replace("_", "/")
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument("Unable to base64 decode") from None


def _scalar(value, dtype: int):
    """TF Serving's AddValueToTensor for one JSON scalar."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if dtype in (DT_FLOAT, DT_DOUBLE):
        if not is_number:
            raise _type_error(value, dtype)
        if isinstance(value, int):
            if abs(value) > _MAX_LOSSLESS_INT[dtype]:
                raise _lossy(value, dtype)
        elif math.isfinite(value) and abs(value) > _MAX_FINITE[dtype]:
            raise _lossy(value, dtype)
        return float(value)
    if dtype == DT_STRING:
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        return value.encode("utf-8", "surrogatepass")
    if dtype == DT_BOOL:
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    low, high = _INT_RANGES[dtype]
    if not (is_number and isinstance(value, int) and low <= value <= high):
        raise _type_error(value, dtype)
    return value


def _lossy(value, dtype: int) -> ServingError:
    return invalid_argument(f"Cannot convert JSON value: {quote(value)} to {DTYPES[dtype][0]} "
                            f"without loss of precision.")


# ----------------------------------------------------------------------------------------------
# Responses


def predict_response(outputs: Mapping[str, np.ndarray], output_dtypes: Mapping[str, int],
                     fmt: str) -> bytes:
    """The JSON answer (MakeJsonFromTensors) for ``outputs`` (numpy arrays, strings as bytes).

    ``output_dtypes`` gives each output's DataType enum (for float formatting and ``_bytes``).
    """
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    several = len(names) > 1
    if fmt == ROW:
        batch = 0
        for name in names:
            array = outputs[name]
            if array.ndim == 0:
                raise invalid_argument(f"Tensor name: {name} has no shape information ")
            if array.shape[0] < 1:
                raise invalid_argument(f"Tensor name: {name} has invalid batch size: "
                                       f"{array.shape[0]}")
            if batch and array.shape[0] != batch:
                raise invalid_argument(f"Tensor name: {name} has inconsistent batch size: "
                                       f"{array.shape[0]} expecting: {batch}")
            batch = array.shape[0]
        writers = {name: _writer(name, output_dtypes[name]) for name in names}
        items = []
        for row in range(batch):
            if several:
                fields = ",\n".join(f'            {json.dumps(name)}: '
                                    f'{_value(outputs[name][row], writers[name])}'
                                    for name in names)
                items.append("        {\n" + fields + "\n        }")
            else:
                items.append("        " + _value(outputs[names[0]][row], writers[names[0]]))
        text = '{\n    "predictions": [\n' + ",\n".join(items) + "\n    ]\n}"
    elif fmt == COLUMNAR:
        if several:
            fields = ",\n".join(
                f'        {json.dumps(name)}: '
                f'{_value(outputs[name], _writer(name, output_dtypes[name]))}' for name in names)
            text = '{\n    "outputs": {\n' + fields + "\n    }\n}"
        else:
            name = names[0]
            text = ('{\n    "outputs": '
                    + _value(outputs[name], _writer(name, output_dtypes[name])) + "\n}")
    else:
        raise invalid_argument("Invalid request format")
    return text.encode("utf-8")


def _writer(name: str, dtype: int) -> Callable[[object], str]:
    if dtype not in DTYPES:  # e.g. half, bfloat16, complex: TF Serving cannot write them either
        raise invalid_argument(f"Failed to write JSON value for tensor type: DT_{dtype}")
    if dtype in (DT_FLOAT, DT_DOUBLE):
        np_type = np.float32 if dtype == DT_FLOAT else np.float64
        digits = 9 if dtype == DT_FLOAT else 17
        return lambda v: _decimal(float(v), np_type, digits)
    if dtype == DT_STRING:
        if name.endswith("_bytes"):
            return lambda v: '{"b64": "' + base64.b64encode(bytes(v)).decode("ascii") + '"}'
        return lambda v: json.dumps(bytes(v).decode("utf-8", "replace"), ensure_ascii=False)
    if dtype == DT_BOOL:
        return lambda v: "true" if bool(v) else "false"
    return lambda v: str(int(v))


def _decimal(value: float, np_type, max_digits: int) -> str:
    """TF Serving's WriteDecimal: %.6g if it round-trips, else max_digits10; ".0" on whole
    numbers; NaN / Infinity / -Infinity."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    text = "%.6g" % value
    if np_type(float(text)) != np_type(value):
        text = "%.*g" % (max_digits, value)
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def _value(array, write: Callable[[object], str]) -> str:
    """Nested single-line JSON lists of ``array``'s values."""
    array = np.asarray(array, dtype=object) if not isinstance(array, np.ndarray) else array
    if array.ndim == 0:
        return write(array.item() if array.dtype != object else array[()])
    if array.ndim == 1:
        return "[" + ", ".join(write(v) for v in array) + "]"
    return "[" + ", ".join(_value(sub, write) for sub in array) + "]"
