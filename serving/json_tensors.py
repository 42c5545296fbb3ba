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
* Type rules (TF Serving 2.16.1's AddValueToTensor): float / double inputs take any JSON number,
  integers of any size included (accepted since TF Serving 2.5, commit 57dac6cd), converted as
  C++ does (integer -> double -> float; beyond float's range: +-inf); integer inputs take JSON
  integers in the range of int32 (int8 / int16 / uint8 too, then narrowed as a TensorProto's
  int_val is), int64, uint32 or uint64 (``1.0`` is not an integer); bools are not numbers.
  ``NaN`` / ``Infinity`` are accepted as numbers (rapidjson's kParseNanAndInfFlag); a number too
  large for a double is rapidjson's parse error; integers beyond int64 / uint64 are doubles.
  Floats are written with 6 significant digits when that round-trips, else 9, and whole numbers
  get a trailing ``.0``. JSON values quoted in error messages are written as rapidjson's
  PrettyWriter writes them (4-space indents, ``1e30``), scalar floats as WriteDecimal does.

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
import decimal
import json
import math
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import orjson

# may_contain_bools is defined in fast_json (a byte scan of the body, which fast_json runs on the
# rest of a body too) and is part of this module's interface as well.
from serving.fast_json import FastArray, NotFast, may_contain_bools, to_array  # noqa: F401
from serving.status import ServingError, invalid_argument

ROW = "row"
COLUMNAR = "columnar"
_QUOTE_LIMIT = 200

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
# DataTypeString of the types JSON cannot carry (for TF Serving's error texts).
_OTHER_TYPE_NAMES = {
    8: "complex64",
    11: "qint8",
    12: "quint8",
    13: "qint32",
    14: "bfloat16",
    15: "qint16",
    16: "quint16",
    17: "uint16",
    18: "complex128",
    19: "half",
    20: "resource",
    21: "variant",
}
DT_FLOAT, DT_DOUBLE, DT_STRING, DT_BOOL = 1, 2, 7, 10
# The integers each integer type takes: rapidjson's IsInt (int32) for DT_INT32/16/8/UINT8,
# IsInt64, IsUint, IsUint64.
_INT_RANGES = {
    3: (-(2**31), 2**31 - 1),
    5: (-(2**31), 2**31 - 1),
    6: (-(2**31), 2**31 - 1),
    4: (-(2**31), 2**31 - 1),
    9: (-(2**63), 2**63 - 1),
    22: (0, 2**32 - 1),
    23: (0, 2**64 - 1),
}
_NARROW_INTS = (4, 5, 6)  # uint8, int16, int8: int_val, narrowed by Tensor::FromProto


def type_name(dtype: int) -> str:
    """TensorFlow's DataTypeString."""
    if dtype in DTYPES:
        return DTYPES[dtype][0]
    return _OTHER_TYPE_NAMES.get(dtype, f"unknown dtype enum ({dtype})")


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One signature input or output: DataType enum and shape (``None`` = unknown rank, -1 =
    unknown dimension)."""

    dtype: int
    shape: Optional[Tuple[int, ...]]

    @property
    def dtype_name(self) -> str:
        return type_name(self.dtype)


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
        # orjson parses the big number arrays of waveform requests ~4x faster than json, and
        # like rapidjson it makes integers beyond int64 / uint64 doubles; any document it
        # refuses (NaN literals, invalid JSON) takes the standard parser, whose results and
        # error texts are the reference, with the same number rules (_parse_int/_parse_float).
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        if "number is infinity" in str(error):  # (orjson's pos is the number's start too)
            raise _number_too_big(error.pos) from None
        doc = None
    try:
        if doc is None:
            doc = json.loads(body, parse_int=_parse_int, parse_float=_parse_float)
    except _NumberTooBig as error:
        raise _number_too_big(max(0, body.find(error.literal.encode("ascii")))) from None
    except UnicodeDecodeError as error:
        raise invalid_argument(
            f"JSON Parse error: Invalid encoding in string. at offset: {error.start}"
        ) from None
    except json.JSONDecodeError as error:
        raise invalid_argument(f"JSON Parse error: {error.msg} at offset: {error.pos}") from None
    except RecursionError:
        raise invalid_argument("JSON Parse error: nesting too deep") from None
    if not isinstance(doc, dict):
        raise invalid_argument(f"JSON Value: {quote(doc)} Is not object")
    return doc


class _NumberTooBig(Exception):
    def __init__(self, literal: str):
        super().__init__(literal)
        self.literal = literal


def _number_too_big(offset: int) -> ServingError:
    # rapidjson's kParseErrorNumberTooBig (GetParseError_En), at the number's first character.
    return invalid_argument(
        f"JSON Parse error: Number too big to be stored in double. at offset: {offset}"
    )


def _parse_int(literal: str):
    """rapidjson's integers: int64 / uint64 when they fit, else a double."""
    value = int(literal)
    if -(2**63) <= value <= 2**64 - 1:
        return value
    return _parse_float(literal)


def _parse_float(literal: str) -> float:
    value = float(literal)
    if math.isinf(value):  # only the literals NaN / Infinity / -Infinity may be non-finite
        raise _NumberTooBig(literal)
    return value


def signature_name(doc: dict) -> str:
    """``doc["signature_name"]`` or "" (meaning serving_default)."""
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid_argument(
            f"JSON Value: {quote(doc)} not formatted correctly. "
            f"'signature_name' key must be a string value."
        )
    return name


def request_tensors(
    doc: dict, inputs: Mapping[str, TensorSpec], signature: str, bools_possible: bool = True
) -> PredictInputs:
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
        raise invalid_argument(
            f"JSON Value: {quote(doc)} Not formatted correctly expecting only "
            f"one of 'inputs' or 'instances' keys to exist "
        )
    if has_instances:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise invalid_argument(
                f"JSON Value: {quote(doc)} Expecting 'instances' to be an list/array"
            )
        if not instances:
            raise invalid_argument(f"JSON Value: {quote(doc)} No values in 'instances' array")
        return PredictInputs(ROW, converter.from_instances(instances, inputs))
    if has_inputs:
        return PredictInputs(COLUMNAR, converter.from_inputs(doc["inputs"], inputs))
    raise invalid_argument("Missing 'inputs' or 'instances' key")


def _is_b64(value) -> bool:
    return (
        isinstance(value, dict)
        and len(value) == 1
        and "b64" in value
        and isinstance(value["b64"], str)
    )


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
    """A JSON value for an error message as TF Serving's JsonValueToString writes it (rapidjson's
    PrettyWriter; a scalar float with WriteDecimal), cut to a readable length."""
    if isinstance(value, float):
        # rapidjson's IsFloat: a double that is exactly a float is written as that float.
        if not math.isfinite(value) or float(np.float32(value)) == value:
            return _decimal(value, np.float32, 9)
        return _decimal(value, np.float64, 17)
    pieces: List[str] = []
    try:
        _pretty(value, "", pieces, [0])
    except _QuoteFull:
        pass
    text = "".join(pieces)
    return text if len(text) <= _QUOTE_LIMIT else text[:_QUOTE_LIMIT] + "..."


class _QuoteFull(Exception):
    pass


def _pretty(value, indent: str, out: List[str], size: List[int]) -> None:
    """rapidjson's PrettyWriter (indent 4), stopping once past the quote limit."""
    if size[0] > _QUOTE_LIMIT:
        raise _QuoteFull
    if type(value) is FastArray:
        value = value.values if value.array is None else value.array.tolist()
    if isinstance(value, (dict, list)) and value:
        inner = indent + "    "
        items = value.items() if isinstance(value, dict) else ((None, v) for v in value)
        out.append("{\n" if isinstance(value, dict) else "[\n")
        for index, (key, item) in enumerate(items):
            if index:
                out.append(",\n")
            out.append(inner)
            if key is not None:
                out.append(json.dumps(key, ensure_ascii=False) + ": ")
            _pretty(item, inner, out, size)
        out.append("\n" + indent + ("}" if isinstance(value, dict) else "]"))
        return
    if isinstance(value, dict):
        text = "{}"
    elif isinstance(value, list):
        text = "[]"
    elif isinstance(value, float):
        text = _rapidjson_double(value)
    else:
        try:
            text = json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError):
            text = repr(value)
    out.append(text)
    size[0] += len(text) + len(indent)


def _rapidjson_double(value: float) -> str:
    """rapidjson's Writer::Double: shortest digits (Grisu2), laid out by internal::Prettify."""
    if not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("-Infinity" if value < 0 else "Infinity")
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    if value == 0:
        return sign + "0.0"
    _, digit_tuple, k = decimal.Decimal(repr(abs(value))).normalize().as_tuple()
    digits = "".join(map(str, digit_tuple))
    kk = len(digits) + k  # the decimal point's position
    if 0 <= k and kk <= 21:
        text = digits + "0" * k + ".0"
    elif 0 < kk <= 21:
        text = digits[:kk] + "." + digits[kk:]
    elif -6 < kk <= 0:
        text = "0." + "0" * -kk + digits
    elif len(digits) == 1:
        text = f"{digits}e{kk - 1}"
    else:
        text = f"{digits[0]}.{digits[1:]}e{kk - 1}"
    return sign + text


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
            return to_array(value, dtype == DT_DOUBLE)
        fast = self._fast(value, dtype)
        if fast is not None:
            return fast
        shape = _dense_shape(value)
        flat: list = []
        self._fill(value, 0, shape, dtype, flat)
        if dtype not in DTYPES:  # (no scalar to name: an empty list)
            raise ServingError(
                "UNIMPLEMENTED",
                f"Conversion of JSON Value: {quote(value)} to type: {type_name(dtype)}",
            )
        np_dtype = DTYPES[dtype][1]
        if dtype == DT_STRING:
            array = np.empty(len(flat), dtype=object)
            array[:] = flat
            return array.reshape(shape)
        if dtype in (DT_FLOAT, DT_DOUBLE):
            with np.errstate(over="ignore"):  # beyond float32: +-inf, as C++'s cast gives
                return np.asarray(flat, dtype=np.float64).astype(np_dtype).reshape(shape)
        if dtype in _NARROW_INTS:
            return np.asarray(flat, dtype=np.int64).astype(np_dtype).reshape(shape)
        return np.asarray(flat, dtype=np_dtype).reshape(shape)

    def _fast(self, value, dtype: int) -> Optional[np.ndarray]:
        """One ``np.asarray`` for well-formed numeric lists; None when unsure."""
        if (
            not isinstance(value, list)
            or not value
            or self.bools_possible
            or dtype in (DT_STRING, DT_BOOL)
        ):
            return None
        try:
            array = np.asarray(value)
        except (ValueError, TypeError, OverflowError):  # ragged, or odd element types
            return None
        kind = array.dtype.kind
        if dtype in (DT_FLOAT, DT_DOUBLE):
            if kind not in "iuf":
                return None
            # Integers go through double first (rapidjson's GetFloat), as the general path's
            # float(value) does: a direct int64 -> float32 cast could round differently.
            with np.errstate(over="ignore"):
                return array.astype(np.float64).astype(DTYPES[dtype][1])
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
                    f"JSON DOM. Expected at level: {rank}"
                )
            if isinstance(value, dict):
                if dtype != DT_STRING:
                    raise _type_error(value, dtype)
                out.append(_decode_b64(value))
            else:
                out.append(_scalar(value, dtype))
            return
        if level >= rank:
            raise invalid_argument(
                f"Encountered list at unexpected level: {level} expected < {rank}"
            )
        if len(value) != shape[level]:
            raise invalid_argument(
                f"Encountered list at unexpected size: {len(value)} at level: "
                f"{level} expected size: {shape[level]}"
            )
        for item in value:
            self._fill(item, level + 1, shape, dtype, out)

    # -- the two request layouts ------------------------------------------------------------------

    def from_instances(
        self, instances: list, inputs: Mapping[str, TensorSpec]
    ) -> Dict[str, np.ndarray]:
        """Row format (FillTensorMapFromInstancesList)."""
        if not isinstance(instances[0], dict) and len(inputs) > 1:
            raise invalid_argument(
                "instances is a plain list, but expecting list of objects as "
                "multiple input tensors required as per tensorinfo_map"
            )
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
                    raise invalid_argument(
                        f"Expecting tensor size: {first.size} but got: {array.size}"
                    )
                if first.shape != array.shape:
                    raise invalid_argument(
                        f"Expecting shape {_shape_string(first.shape)} but "
                        f"got: {_shape_string(array.shape)}"
                    )
                rows[name].append(array)
            else:
                rows[name] = [array]

        for index, element in enumerate(instances):
            if objects:
                if not _is_element_object(element):
                    raise invalid_argument(
                        f"Expecting object but got list at item {index} of input list"
                    )
                for name, item in element.items():
                    try:
                        add(item, name)
                    except ServingError as error:
                        raise invalid_argument(
                            f"Failed to process element: {index} key: {name} of 'instances' "
                            f"list. Error: {error.status_string()}"
                        ) from None
                if set(element) != set(names):
                    raise invalid_argument(
                        f"Failed to process element: {index} of 'instances' list. JSON object: "
                        f"{quote(element)} keys must be equal to: {','.join(names)}"
                    )
            else:
                if _is_element_object(element):
                    raise invalid_argument(
                        f"Expecting value/list but got object at item {index} of input list"
                    )
                try:
                    add(element, names[0])
                except ServingError as error:
                    raise invalid_argument(
                        f"Failed to process element: {index} of 'instances' "
                        f"list. Error: {error.status_string()}"
                    ) from None
        return {name: _stack(arrays) for name, arrays in rows.items()}

    def from_inputs(self, value, inputs: Mapping[str, TensorSpec]) -> Dict[str, np.ndarray]:
        """Columnar format (FillTensorMapFromInputsMap). Keys that are not inputs are ignored,
        as TF Serving ignores them."""
        if not isinstance(value, dict) or _is_b64(value):
            if len(inputs) > 1:
                raise invalid_argument(
                    "inputs is a plain value/list, but expecting an object as "
                    "multiple input tensors required as per tensorinfo_map"
                )
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
    return invalid_argument(
        f"JSON Value: {quote(value)} Type: {_json_type(value)} is not of "
        f"expected type: {type_name(dtype)}"
    )


def _decode_b64(value) -> bytes:
    if not _is_b64(value):
        raise invalid_argument(
            f"JSON Value: {quote(value)} not formatted correctly for base64 data"
        )
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
        return float(value)  # any number (2.16.1: `if (!val.IsNumber())` only)
    if dtype == DT_STRING:
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        return value.encode("utf-8", "surrogatepass")
    if dtype == DT_BOOL:
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    if dtype not in _INT_RANGES:
        raise ServingError(
            "UNIMPLEMENTED", f"Conversion of JSON Value: {quote(value)} to type: {type_name(dtype)}"
        )
    low, high = _INT_RANGES[dtype]
    if not (is_number and isinstance(value, int) and low <= value <= high):
        raise _type_error(value, dtype)
    return value


# ----------------------------------------------------------------------------------------------
# Responses


def predict_response(
    outputs: Mapping[str, np.ndarray], output_dtypes: Mapping[str, int], fmt: str
) -> bytes:
    """The JSON answer (MakeJsonFromTensors) for ``outputs`` (numpy arrays, strings as bytes).

    ``output_dtypes`` gives each output's DataType enum (for float formatting and ``_bytes``).
    """
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    several = len(names) > 1
    if fmt == ROW:
        batch = None  # a batch of 0 is answered {"predictions": []} (since TF Serving 2.3)
        for name in names:
            array = outputs[name]
            if array.ndim == 0:
                raise invalid_argument(f"Tensor name: {name} has no shape information ")
            if batch is not None and array.shape[0] != batch:
                raise invalid_argument(
                    f"Tensor name: {name} has inconsistent batch size: "
                    f"{array.shape[0]} expecting: {batch}"
                )
            batch = array.shape[0]
        writers = {name: _writer(name, output_dtypes[name]) for name in names}
        items = []
        for row in range(batch):
            if several:
                fields = ",\n".join(
                    f'            {json.dumps(name)}: {_value(outputs[name][row], writers[name])}'
                    for name in names
                )
                items.append("        {\n" + fields + "\n        }")
            else:
                items.append("        " + _value(outputs[names[0]][row], writers[names[0]]))
        text = (
            '{\n    "predictions": [\n' + ",\n".join(items) + "\n    ]\n}"
            if items
            else '{\n    "predictions": []\n}'
        )
    elif fmt == COLUMNAR:
        if several:
            fields = ",\n".join(
                f'        {json.dumps(name)}: '
                f'{_value(outputs[name], _writer(name, output_dtypes[name]))}'
                for name in names
            )
            text = '{\n    "outputs": {\n' + fields + "\n    }\n}"
        else:
            name = names[0]
            text = (
                '{\n    "outputs": '
                + _value(outputs[name], _writer(name, output_dtypes[name]))
                + "\n}"
            )
    else:
        raise invalid_argument("Invalid request format")
    return text.encode("utf-8")


def _writer(name: str, dtype: int) -> Callable[[object], str]:
    if dtype not in DTYPES:  # e.g. half, bfloat16, complex: TF Serving cannot write them either
        raise invalid_argument(f"Failed to write JSON value for tensor type: {type_name(dtype)}")
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
