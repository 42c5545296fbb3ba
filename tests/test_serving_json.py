"""serving.fast_json, the shortcut for request bodies with long arrays of JSON numbers: the same
arrays, bit for bit, as the general path on every number format clients write, and for
anything unusual (bad numbers, ragged or deep arrays, wrong types, values the type rules refuse,
markers, arrays inside strings, malformed JSON) the same answer or the same error."""

import json
import random

import numpy as np
import orjson
import pytest
import tensorflow as tf

from serving import fast_json, json_tensors
from serving.client import Utterance, encode_floats, predict_waveform_body
from serving.json_tensors import TensorSpec
from serving.repository import ModelRepository, Signature, Version
from serving.server import RestApi

FLOAT, DOUBLE, INT32, STRING, INT64 = 1, 2, 3, 7, 9
WAVEFORM_INPUTS = {
    "waveform": TensorSpec(FLOAT, (-1, -1)),
    "num_samples": TensorSpec(INT32, (-1,)),
    "words": TensorSpec(STRING, (-1, -1)),
    "word_start_s": TensorSpec(FLOAT, (-1, -1)),
    "word_end_s": TensorSpec(FLOAT, (-1, -1)),
}
N = 3000  # samples: well over fast_json.MIN_BYTES of JSON


def samples(seed=0, n=N) -> np.ndarray:
    """float32 audio-like samples with the awkward cases: zeros (written "0"), negative zero,
    tiny values (exponents), values at float32 rounding boundaries."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * 0.1).astype(np.float32)
    x[:50] = 0.0
    x[50:60] = -0.0
    x[60:80] = (rng.standard_normal(20) * 1e-6).astype(np.float32)
    x[80:90] = np.nextafter(np.float32(0.5), np.float32(1), dtype=np.float32)
    return x


def utterance(seed=0, n=N) -> Utterance:
    return Utterance(
        samples(seed, n), ["kids", "are", "talking"], [0.01, 0.05, 0.1], [0.05, 0.1, 0.15]
    )


def columnar(waveform_json: str, **extra) -> bytes:
    inputs = {
        "num_samples": [N],
        "words": [["kids", "are", "talking"]],
        "word_start_s": [[0.01, 0.05, 0.1]],
        "word_end_s": [[0.05, 0.1, 0.15]],
    }
    inputs.update(extra)
    rest = ", ".join(f'"{k}": {json.dumps(v)}' for k, v in inputs.items())
    return (
        '{"signature_name": "predict_waveform", "inputs": {"waveform": '
        + waveform_json
        + ", "
        + rest
        + "}}"
    ).encode()


def general_tensors(body, inputs=WAVEFORM_INPUTS):
    doc = json_tensors.parse_body(body)
    return json_tensors.request_tensors(
        doc, inputs, "predict_waveform", json_tensors.may_contain_bools(body)
    )


def fast_tensors(body, inputs=WAVEFORM_INPUTS):
    fast = fast_json.parse(body)
    assert fast is not None, "the shortcut did not apply"
    return json_tensors.request_tensors(fast.doc, inputs, "predict_waveform", fast.bools_possible)


def assert_identical(a, b):
    assert a.format == b.format and sorted(a.tensors) == sorted(b.tensors)
    for name in a.tensors:
        x, y = a.tensors[name], b.tensors[name]
        assert x.dtype == y.dtype and x.shape == y.shape, name
        if x.dtype == object:
            assert x.tolist() == y.tolist(), name
        else:  # bit for bit: -0.0 vs 0.0 and one-ulp differences count
            assert np.array_equal(x.view(np.uint8), y.view(np.uint8)), name


def nine_digits(x):
    return encode_floats(x)


def repr_floats(x, separator=", "):  # json.dumps of float64 values: up to 17 digits
    return "[" + separator.join(repr(float(v)) for v in x) + "]"


def rounding_cases(n=N, seed=8) -> np.ndarray:
    """float64 values where the cast to float32 has to round: float32 midpoints and their
    neighbours (ties to even), subnormals, and random magnitudes from 1e-45 to 1e6."""
    rng = np.random.default_rng(seed)
    low = (rng.standard_normal(n // 4) * 0.1).astype(np.float32)
    high = np.nextafter(low, np.float32(np.inf), dtype=np.float32)
    mid = (low.astype(np.float64) + high.astype(np.float64)) / 2
    cases = [
        mid,
        np.nextafter(mid, np.inf),
        np.nextafter(mid, -np.inf),
        rng.choice([-1, 1], n // 8) * 10.0 ** rng.uniform(-45, 6, n // 8),
        rng.uniform(-1e-38, 1e-38, n // 8),
    ]
    return np.concatenate(cases)


GOOD = {
    "client body (9 digits, zeros as 0)": lambda: predict_waveform_body([utterance()]),
    "client body, 3 rows": lambda: predict_waveform_body(
        [utterance(1), utterance(2, N - 7), utterance(3, N + 11)]
    ),
    "json.dumps float64 repr": lambda: columnar("[" + repr_floats(samples()) + "]"),
    "json.dumps of float32 -> float64 values": lambda: columnar(
        json.dumps([samples().astype(np.float64).tolist()])
    ),
    "orjson dumps": lambda: columnar(orjson.dumps([samples().tolist()]).decode()),
    "no spaces": lambda: columnar("[" + repr_floats(samples(4), ",") + "]"),
    "spaces and newlines": lambda: columnar(
        "[ \n [ " + repr_floats(samples(5), " ,\n ")[1:-1] + " ] \n ]"
    ),
    "exponents, signs, zeros, bounds": lambda: columnar(
        "[["
        + ",".join(
            [
                "1e-05",
                "-2.5E+3",
                "1E2",
                "0.0",
                "-0.0",
                "-0",
                "0",
                "16777215",
                "-16777215",
                "1.0e0",
                "3.4028234663852886e+6",
                "-1.17549435e-38",
                "1.4e-45",
                "123456789e-9",
            ]
            * 300
        )
        + "]]"
    ),
    "float32 rounding cases": lambda: columnar("[" + repr_floats(rounding_cases()) + "]"),
    "integers only": lambda: columnar(
        "[[" + ",".join(str(i % 1000 - 500) for i in range(N)) + "]]"
    ),
    "row format, two instances": lambda: json.dumps(
        {
            "signature_name": "predict_waveform",
            "instances": [
                {
                    "waveform": samples(6).tolist(),
                    "num_samples": N,
                    "words": ["a", "b"],
                    "word_start_s": [0.0, 0.1],
                    "word_end_s": [0.1, 0.2],
                },
                {
                    "waveform": samples(7).tolist(),
                    "num_samples": N,
                    "words": ["c", ""],
                    "word_start_s": [0.0, 0.0],
                    "word_end_s": [0.1, 0.0],
                },
            ],
        }
    ).encode(),
    "marker-like strings elsewhere": lambda: columnar(
        "[" + repr_floats(samples()) + "]",
        words=[["\u0000cme-ser:0123456789abcdef:0", "cme-ser:fast-array:0", "x"]],
    ),
    "a numeric array inside a string too": lambda: columnar(
        "[" + repr_floats(samples()) + "]", words=[["[" + "1,2," * 2000 + "3]", "a", "b"]]
    ),
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_fast_path_gives_bit_identical_arrays(name):
    body = GOOD[name]()
    assert_identical(fast_tensors(body), general_tensors(body))


def test_long_arrays_go_to_simdjson_and_what_it_refuses_to_orjson():
    """Rank-1 and rank-2 arrays of numbers are parsed by simdjson straight into a float64
    array; one with an integer beyond 64 bits (simdjson refuses it), and ragged rows, are
    parsed by orjson into lists, as before. The tensors (or the error) are the general path's
    either way."""
    body = GOOD["client body, 3 rows"]()
    fast = fast_json.parse(body).doc["inputs"]["waveform"]
    assert fast.array is not None and fast.array.shape == (3, N + 11) and fast.values is None
    assert_identical(fast_tensors(body), general_tensors(body))
    flat = ('{"inputs": {"x": ' + repr_floats(samples()) + "}}").encode()
    assert fast_json.parse(flat).doc["inputs"]["x"].array.shape == (N,)
    huge = columnar("[[" + ",".join(["0.5"] * N + ["123456789012345678901234567890"]) + "]]")
    fast = fast_json.parse(huge).doc["inputs"]["waveform"]
    assert fast.array is None and len(fast.values[0]) == N + 1
    assert_identical(fast_tensors(huge), general_tensors(huge))
    ragged = columnar("[[" + repr_floats(samples())[1:-1] + "],[1.0]]")
    assert fast_json.parse(ragged).doc["inputs"]["waveform"].array is None
    with pytest.raises(fast_json.NotFast):
        fast_tensors(ragged)


def test_float64_inputs_and_values_the_float_rule_sends_back():
    body = (
        '{"inputs": {"x": [' + repr_floats(np.random.default_rng(0).standard_normal(N)) + "]}}"
    ).encode()
    inputs = {"x": TensorSpec(DOUBLE, (-1,))}
    assert_identical(fast_tensors(body, inputs), general_tensors(body, inputs))
    # Integers of any size are taken for float and double inputs (TF Serving 2.16.1's
    # AddValueToTensor: `if (!val.IsNumber())` only; the 2^24 check went in 2.5, commit
    # 57dac6cd), integer -> double -> float as rapidjson's GetFloat: the shortcut gives the
    # general path's bits.
    big = (
        '{"inputs": {"x": ['
        + ",".join(
            ["0.5"] * N + ["16777217", "1435774380", "9007199254740993", "18446744073709551615"]
        )
        + "]}}"
    ).encode()
    for spec in (TensorSpec(FLOAT, (-1,)), TensorSpec(DOUBLE, (-1,))):
        assert_identical(fast_tensors(big, {"x": spec}), general_tensors(big, {"x": spec}))
    got = fast_tensors(big, {"x": TensorSpec(FLOAT, (-1,))}).tensors["x"][-4:]
    assert got.tolist() == [16777216.0, 1435774336.0, 9007199254740992.0, 18446744073709551616.0]


def test_general_path_float_rules_as_tf_serving_2_16_1():
    """A short list (no shortcut): json_tensor_test.cc MixedInputForFloatTensor,
    FloatTensorWithPrecisionLoss (1435774380 and 1435774380.0 alike),
    FloatTensorThatExceedsMaxReturnsInf, FloatTensorThatExceedsMinReturnsZero."""
    inputs = {"x": TensorSpec(FLOAT, (-1,))}
    got = general_tensors(b'{"instances": [1, 2.0, 3, 4, 5.003, 0.007, 0.0]}', inputs)
    assert got.tensors["x"].tolist() == np.float32([1, 2, 3, 4, 5.003, 0.007, 0]).tolist()
    got = general_tensors(
        b'{"inputs": {"x": [0.5, 16777217, 1435774380, 1435774380.0]}}', inputs
    ).tensors["x"]
    assert got.tolist() == [0.5, 16777216.0, 1435774336.0, 1435774336.0]
    huge = np.finfo(np.float64)
    body = f'{{"instances": [{huge.max!r}, {-huge.max!r}, {huge.tiny!r}, {-huge.tiny!r}]}}'
    got = general_tensors(body.encode(), inputs).tensors["x"]
    assert got.tolist() == [np.inf, -np.inf, 0.0, 0.0]
    assert np.signbit(got).tolist() == [False, True, False, True]  # float_val: -0
    # double inputs: MixedInputForDoubleTensor.
    got = general_tensors(
        b'{"instances": [1.0, 2, 3, 4, 0.662, 0, 0.0]}', {"x": TensorSpec(DOUBLE, (-1,))}
    ).tensors["x"]
    assert got.dtype == np.float64 and got.tolist() == [1, 2, 3, 4, 0.662, 0, 0]


def test_numbers_too_big_for_a_double_are_parse_errors():
    """rapidjson (ParseJson with kParseNanAndInfFlag) refuses a number beyond a double's range
    with kParseErrorNumberTooBig at the number's offset; NaN / Infinity literals are fine.
    Integers beyond int64 / uint64 are doubles (rapidjson's Reader::ParseNumber), with and
    without orjson."""
    inputs = {"x": TensorSpec(FLOAT, (-1,))}
    for body, offset in (
        (b'{"instances": [1e999]}', 15),
        (b'{"instances": [NaN, -1e400]}', 20),
        (b'{"instances": [NaN, 1' + b"0" * 400 + b"]}", 20),
    ):
        with pytest.raises(json_tensors.ServingError) as error:
            general_tensors(body, inputs)
        assert error.value.message == (
            f"JSON Parse error: Number too big to be stored in double. at offset: {offset}"
        )
    for prefix in (b"", b"NaN, "):  # orjson, then (NaN literal) the standard parser
        body = b'{"instances": [' + prefix + b"1" + b"0" * 30 + b", Infinity]}"
        got = general_tensors(body, inputs).tensors["x"]
        assert got.tolist()[-2:] == [np.float32(1e30), np.inf]
        with pytest.raises(
            json_tensors.ServingError, match="Type: Number is not of expected type: int64"
        ):
            general_tensors(
                b'{"instances": [' + prefix + b"1" + b"0" * 30 + b"]}",
                {"x": TensorSpec(INT64, (-1,))},
            )


def test_integer_types_and_error_texts_as_tf_serving_2_16_1():
    """json_tensor.cc AddValueToTensor: IsInt for int8/int16/uint8 (then narrowed, as
    Tensor::FromProto narrows int_val), IsInt64, IsUint64; DataTypeString in the UNIMPLEMENTED
    text; JsonValueToString's PrettyWriter layout (floats as rapidjson's Writer::Double)."""
    got = general_tensors(b'{"instances": [300, -200, 5]}', {"x": TensorSpec(6, (-1,))})
    assert got.tensors["x"].dtype == np.int8 and got.tensors["x"].tolist() == [44, 56, 5]
    got = general_tensors(
        b'{"instances": [18446744073709551615]}', {"x": TensorSpec(23, (-1,))}
    ).tensors["x"]
    assert got.dtype == np.uint64 and got.tolist() == [2**64 - 1]
    with pytest.raises(json_tensors.ServingError) as error:
        general_tensors(b'{"instances": [9223372036854775808]}', {"x": TensorSpec(INT64, (-1,))})
    assert error.value.message == (
        "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: "
        "9223372036854775808 Type: Number is not of expected type: int64"
    )
    with pytest.raises(json_tensors.ServingError) as error:
        general_tensors(b'{"instances": [[1, 2]]}', {"x": TensorSpec(19, (-1, -1))})
    assert error.value.message == (
        "Failed to process element: 0 of 'instances' list. Error: UNIMPLEMENTED: Conversion of "
        "JSON Value: 1 to type: half"
    )
    with pytest.raises(json_tensors.ServingError) as error:
        general_tensors(
            b'{"inputs": {}, "instances": [1e30, 1e-7, 0.00001, 1e20, -0.0, 2.5e-300]}',
            {"x": TensorSpec(FLOAT, (-1,))},
        )
    assert error.value.message == (
        'JSON Value: {\n    "inputs": {},\n    "instances": [\n        1e30,\n        1e-7,\n'
        "        0.00001,\n        100000000000000000000.0,\n        -0.0,\n        2.5e-300\n"
        "    ]\n} Not formatted correctly expecting only one of 'inputs' or 'instances' keys to "
        "exist "
    )


def test_row_answers_with_a_zero_batch():
    """json_tensor_test.cc FromJsonSingleZeroBatchTensor / FromJsonMultipleZeroBatchTensors
    (since 2.3, commit fee9d120) and FromJsonMultipleZeroBatchTensorsErrors; FromJsonSingle-
    TensorErrors' DataTypeString ("tensor type: complex64")."""
    assert json.loads(
        json_tensors.predict_response(
            {"int_tensor": np.zeros((0, 2), np.int32)}, {"int_tensor": INT32}, json_tensors.ROW
        )
    ) == {"predictions": []}
    assert json.loads(
        json_tensors.predict_response(
            {"str_tensor": np.zeros((0, 1, 2), object), "float_tensor": np.zeros((0, 3, 4))},
            {"str_tensor": STRING, "float_tensor": FLOAT},
            json_tensors.ROW,
        )
    ) == {"predictions": []}
    with pytest.raises(json_tensors.ServingError, match="inconsistent batch size: 1 expecting: 0"):
        json_tensors.predict_response(
            {"int_tensor": np.zeros((0, 2), np.int32), "str_tensor": np.zeros((1, 2), object)},
            {"int_tensor": INT32, "str_tensor": STRING},
            json_tensors.ROW,
        )
    with pytest.raises(json_tensors.ServingError) as error:
        json_tensors.predict_response(
            {"c": np.zeros((1,), np.complex64)}, {"c": 8}, json_tensors.ROW
        )
    assert error.value.message == "Failed to write JSON value for tensor type: complex64"


@pytest.mark.parametrize(
    "body",
    [
        b"{}",
        b'{"inputs": [1, 2, 3]}',
        b"[" + b"1," * 3000 + b"1]",
        b'{"inputs": {"waveform": "' + b"1," * 3000 + b'"}}',
    ],
)
def test_shortcut_declines_what_it_does_not_cover(body):
    assert fast_json.parse(body) is None


# ----------------------------------------------------------------------------------------------
# Whole requests: the same answers and errors with and without the shortcut


def _wave_signature(waveform, num_samples, words, word_start_s, word_end_s):
    bits = tf.cast(tf.bitcast(waveform, tf.int32), tf.int64)
    return {"checksum": tf.reduce_sum(bits, axis=1), "head": waveform[:, :4], "n": num_samples}


def _double_signature(x):
    return {"checksum": tf.reduce_sum(tf.bitcast(x, tf.int64), axis=-1)}


def _ints_signature(n):
    return {"n2": n * 2}


def _load(number, path):
    def signature(name, inputs, outputs, function):
        return Signature(name, "tensorflow/serving/predict", inputs, outputs, function)

    signatures = {
        "predict_waveform": signature(
            "predict_waveform",
            WAVEFORM_INPUTS,
            {
                "checksum": TensorSpec(INT64, (-1,)),
                "head": TensorSpec(FLOAT, (-1, -1)),
                "n": TensorSpec(INT32, (-1,)),
            },
            _wave_signature,
        ),
        "double": signature(
            "double",
            {"x": TensorSpec(DOUBLE, (-1, -1))},
            {"checksum": TensorSpec(INT64, (-1,))},
            _double_signature,
        ),
        "ints": signature(
            "ints",
            {"n": TensorSpec(INT32, (-1,))},
            {"n2": TensorSpec(INT32, (-1,))},
            _ints_signature,
        ),
    }
    return Version(number, path, signatures, {}, None)


@pytest.fixture(scope="module")
def apis(tmp_path_factory):
    base = tmp_path_factory.mktemp("fake") / "m"
    (base / "1").mkdir(parents=True)
    repository = ModelRepository(base, "m", loader=_load)
    repository.refresh()
    return RestApi(repository, use_fast_json=True), RestApi(repository, use_fast_json=False)


def _both(apis, body, path="/v1/models/m:predict"):
    fast, general = (api.handle("POST", path, body) for api in apis)
    assert fast == general
    return fast


def _wave(values: str) -> bytes:
    return columnar("[[" + values + "]]")


ZEROS = ",".join(["0.25"] * N)
BAD = {
    "int past 2^24-1": _wave(ZEROS + ",16777216"),
    "float past float32": _wave(ZEROS + ",1e39"),
    "float 1e30 (fine)": _wave(ZEROS + ",1e30"),
    "number out of double range": _wave(ZEROS + ",1e999"),
    "NaN literal": _wave(ZEROS + ",NaN"),
    "true in the array": _wave(ZEROS + ",true," + ZEROS),
    "null in the array": _wave(ZEROS + ",null"),
    "string in the array": _wave(ZEROS + ',"0.5"'),
    "leading zero": _wave(ZEROS + ",01"),
    "dot without digits": _wave(ZEROS + ",1."),
    "leading dot": _wave(ZEROS + ",.5"),
    "plus sign": _wave(ZEROS + ",+1"),
    "empty element": _wave(ZEROS + ",,1"),
    "trailing comma": _wave(ZEROS + ","),
    "double minus": _wave(ZEROS + ",--1"),
    "bare exponent": _wave(ZEROS + ",1e"),
    "truncated body": _wave(ZEROS)[:-40],
    "missing bracket": columnar("[[" + ZEROS + "]"),
    "extra bracket": columnar("[[" + ZEROS + "]]]"),
    "ragged rows": columnar("[[" + ZEROS + "],[" + ZEROS + ",0.5]]"),
    "rank 3": columnar("[[[" + ZEROS + "]]]"),
    "rank 1": columnar("[" + ZEROS + "]"),
    "rows then a number": columnar("[[" + ZEROS + "], 5]"),
    "two arrays in one run": b'{"signature_name": "ints", "instances": [['
    + ZEROS.encode()
    + b"],["
    + ZEROS.encode()
    + b"]]}",
    "integers for an int input": b'{"signature_name": "ints", "inputs": {"n": ['
    + ",".join(str(i) for i in range(N)).encode()
    + b"]}}",
    "floats for an int input": b'{"signature_name": "ints", "inputs": {"n": ['
    + ZEROS.encode()
    + b"]}}",
    "numbers for a string input": columnar(
        "[[" + ZEROS + "]]", words=[[float(i) for i in range(N)]]
    ),
    "words missing": b'{"signature_name": "predict_waveform", "inputs": {"waveform": [['
    + ZEROS.encode()
    + b"]]}}",
    "array as the whole body": b"[[" + ZEROS.encode() + b"]]",
    "array as instances": b'{"signature_name": "predict_waveform", "instances": [['
    + ZEROS.encode()
    + b"]]}",
    "array as signature_name": b'{"signature_name": [' + ZEROS.encode() + b'], "inputs": {}}',
    "duplicate key (the last one counts)": b'{"signature_name": "double", "inputs": {"x": [['
    + ZEROS.encode()
    + b']], "x": [['
    + ZEROS.encode()
    + b",0.5]]}}",
    "unknown signature": b'{"signature_name": "nope", "inputs": {"x": [['
    + ZEROS.encode()
    + b"]]}}",
    "array inside a string key": b'{"inputs": {"[' + ZEROS.encode() + b']": 1}}',
    "escape before the array in a string": b'{"signature_name": "double", "inputs": {"x": '
    b'[[1.0]]}, "s": "a\\[' + ZEROS.encode() + b']"}',
    "deep nesting": b'{"a": '
    + b"[" * 200
    + b"[["
    + ZEROS.encode()
    + b"]]"
    + b"]" * 200
    + b', "inputs": 1}',
    "not UTF-8 elsewhere": columnar("[[" + ZEROS + "]]")[:-3] + b'"\xff"}}',
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_unusual_and_malformed_bodies_get_the_general_answer(apis, name):
    status, payload = _both(apis, BAD[name])
    # "int past 2^24-1": a float input takes any integer since TF Serving 2.5 (json_tensor.cc
    # AddValueToTensor, 2.16.1). "float past float32" is +-inf (FloatTensorThatExceedsMax-
    # ReturnsInf) and "NaN" a number (rapidjson's kParseNanAndInfFlag): valid JSON, so this
    # model, whose graph has no waveform checks, answers them; a real export refuses them in
    # its graph (tests/test_waveform_checks.py). 1e999 is a parse error (rapidjson).
    if name in (
        "float 1e30 (fine)",
        "duplicate key (the last one counts)",
        "integers for an int input",
        "int past 2^24-1",
        "float past float32",
        "NaN literal",
    ):
        assert status == 200, payload
    else:
        assert status == 400, payload
        assert b"cme-ser:" not in payload  # no marker in any message


@pytest.mark.parametrize("name", sorted(GOOD))
def test_whole_requests_answer_the_same(apis, name):
    status, payload = _both(apis, GOOD[name]())
    assert status == 200, payload


def test_double_signature_and_random_bodies(apis):
    rng = random.Random(0)
    x = np.random.default_rng(1).standard_normal((2, N))
    body = (
        b'{"signature_name": "double", "inputs": {"x": ' + json.dumps(x.tolist()).encode() + b"}}"
    )
    status, payload = _both(apis, body)
    assert status == 200
    expected = x.view(np.int64).sum(axis=1)  # wraps like the int64 sum in the graph
    assert json.loads(payload)["outputs"] == expected.tolist()
    # Random damage to a good body: every variant gets the general path's answer.
    good = predict_waveform_body([utterance(9)])
    for _ in range(60):
        damaged = bytearray(good)
        for _ in range(rng.randint(1, 3)):
            position = rng.randrange(len(damaged))
            damaged[position : position + rng.randint(0, 2)] = rng.choice(
                [b"", b",", b"]", b"[", b"e", b"-", b".", b"0", b" ", b'"', b"x", b"1e9"]
            )
        _both(apis, bytes(damaged))


# ----------------------------------------------------------------------------------------------
# Finding the long numeric runs from the sampled bytes (the exact scan's runs, in less time)


def _sampled_runs(body):
    sampled = fast_json._NUMERIC_FLAGS[np.frombuffer(body, dtype=np.uint8)[:: fast_json._STRIDE]]
    zeros = np.flatnonzero(np.concatenate(([0], sampled, [0])) == 0)
    gaps = np.diff(zeros)
    if not gaps.size or gaps.max() <= fast_json.MIN_BYTES // fast_json._STRIDE:
        return []  # (parse() stops here: no run can be long enough)
    return fast_json._long_runs_from_samples(body, zeros, gaps)


def test_sampled_runs_are_the_exact_scans_runs():
    stride, least = fast_json._STRIDE, fast_json.MIN_BYTES
    run = b"1," * (least // 2 + 3)
    cases = {
        # the usual request: one long run in the middle
        b'{"a": "x", "w": [' + run + b'1], "z": 1}': None,
        # runs touching the body's start and end; runs whose ends sit on a sample
        run + b'"' + b"x" * stride + b'"' + run: None,  # (a sample in the gap)
        b"x" * (stride - 1) + run + b"x": None,
        b"x" * stride + run + b"x" * (stride - 1): None,
        b"x" * (stride + 1) + b"1" * (least - 1) + b"x" * stride: None,  # one byte short
        b"x" * stride + b"1" * least + b"x" * stride: None,  # exactly MIN_BYTES
    }
    for body in cases:
        found = _sampled_runs(body)
        assert found is not None and found == fast_json._long_runs(body), body[:80]
    exact = fast_json._long_runs(b"x" * stride + b"1" * least + b"x" * stride)
    assert exact == [(stride, stride + least)]
    # two runs between the same samples (a non-numeric byte off the samples): the exact scan
    body = b"1" * (3 * least + 1) + b'"' + b"1" * (3 * least)
    assert body.index(b'"') % stride  # not on a sample
    assert _sampled_runs(body) is None
    assert fast_json._long_runs(body) == [(0, 3 * least + 1), (3 * least + 2, 6 * least + 2)]


def test_sampled_runs_on_random_bodies():
    rng = random.Random(7)
    numeric, other = b"0123456789+-.eE,[] \t\r\n", b'"ab:{}xtf\x00\xff'
    compared = 0
    for _ in range(1500):
        parts = []
        for _ in range(rng.randint(1, 8)):
            if rng.random() < 0.6:
                n = rng.choice([rng.randint(1, 600), rng.randint(3000, 9000)])
                parts.append(bytes(rng.choice(numeric) for _ in range(n)))
            else:
                n = rng.choice([1, 2, rng.randint(1, 50), rng.randint(1, 1500)])
                parts.append(bytes(rng.choice(other) for _ in range(n)))
        body = b"".join(parts)
        found = _sampled_runs(body)
        if found is not None:
            assert found == fast_json._long_runs(body)
            compared += 1
    assert compared > 300
