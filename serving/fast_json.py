"""A shortcut for request bodies that carry big arrays of JSON numbers (waveforms).

The general path (``json_tensors.parse_body`` + ``request_tensors``) parses the whole body, then
scans it for ``true`` / ``false`` and converts each number list with ``np.asarray``: about 2.5
ms of GIL-held CPU for one 3.9 s utterance (62,000 numbers), most of a request's server time.
This module does the same work in fewer passes:

1. find the long runs of bytes that can only belong to numbers and arrays (digits, ``+-.eE``,
   ``,``, ``[]``, whitespace): every 512th byte first, then one ``bytes.translate`` that deletes
   the numeric bytes of each stretch of numeric samples (empty: one run, its ends found within
   a sample's distance), or, when a stretch holds more than one run, one ``bytes.translate`` of
   the whole body and a numpy comparison (the same runs either way);
2. in each run of at least ``MIN_BYTES``, take the JSON array from its first ``[`` to its last
   ``]`` repeated as many times as it opens with ``[`` and parse it alone: a value made of those
   bytes can only be numbers in (nested) lists, so no per-element type check is needed. A
   rank-1 or rank-2 array goes to simdjson, whose ``as_buffer`` writes its numbers straight
   into a float64 array (no Python float per number: a third of orjson's and ``struct``'s
   CPU together); its shape is checked (every row as long as the first, no ``[`` but the
   rows'). Anything simdjson refuses (an integer beyond 64 bits, for one) and deeper arrays are
   parsed by orjson into lists, as before;
3. parse the rest of the body with each array replaced by a marker string, and put a
   :class:`FastArray` where each marker is.

``json_tensors`` turns a :class:`FastArray` into a float32 / float64 array: simdjson's float64
array cast with numpy, or orjson's lists with ``struct.pack_into``; both are the C double ->
float conversion of ``np.asarray(...).astype`` (bit-identical values), and both parsers round
each decimal to the nearest double, as rapidjson does.
Anything unusual makes the shortcut give up, and the general path runs on the original body, so
results and error texts are exactly the general path's: :func:`parse` returns None (no long
run, a run that is not one valid JSON array, markers that do not come out exactly once as whole
string values, a document that is not an object), and conversion raises :class:`NotFast` (a
float/double input was not what the array feeds, ragged or deeper than two levels, empty, a
value beyond float32's range, which the general path turns into +-inf). The server also re-runs
the general path when the fast document leads to any error, so error messages never show a
marker.
"""

from __future__ import annotations

import dataclasses
import os
import re
import struct
import threading
from typing import List, Optional, Tuple

import numpy as np
import orjson
import simdjson

MIN_BYTES = 4096  # shorter arrays are not worth the detour
MAX_ARRAYS = 256  # more long arrays than this in one body: use the general path
# Marker strings: "\u0000cme-ser:<random per request>:<index>"; the random part makes them
# impossible for a client to write in advance.
_MARKER_PREFIX = "\u0000cme-ser:"
_MAX_DEPTH = 64  # deeper documents take the general path (its recursion limits decide)
# 1 for the bytes a JSON array of numbers can consist of, 0 for every other byte.
_NUMERIC = bytes(1 if chr(c) in "0123456789+-.eE,[] \t\r\n" else 0 for c in range(256))
_NUMERIC_FLAGS = np.frombuffer(_NUMERIC, dtype=np.uint8)
_NUMERIC_BYTES = bytes(c for c in range(256) if _NUMERIC[c])  # (for translate's delete)
_STRIDE = MIN_BYTES // 8
# A JSON true/false token: after '[', ',' or ':' and before ']', ',' or '}'. Only searched when
# the bytes "true"/"false" occur at all; a match inside a string is a harmless false alarm.
_BOOL_TOKEN = re.compile(rb"[\[,:]\s*(?:true|false)\s*[\],}]")


class NotFast(Exception):
    """The shortcut does not apply to this request: use the general path."""


class FastArray:
    """A JSON array of numbers taken out of the body: ``values``, nested lists of int/float as
    orjson parsed them, or ``array``, the float64 array simdjson made (rank 1 or 2);
    ``json_tensors`` converts it (:func:`to_array`)."""

    __slots__ = ("values", "array")

    def __init__(self, values: Optional[list] = None, array: Optional[np.ndarray] = None):
        self.values = values
        self.array = array

    def __repr__(self) -> str:
        size = len(self.values) if self.array is None else self.array.shape
        return f"FastArray(<{size} items>)"


_parsers = threading.local()  # a simdjson parser per thread (one may not serve two at once)


def _simdjson_array(body: bytes, start: int, end: int, depth: int) -> Optional[np.ndarray]:
    """The float64 array of the rank-1 or rank-2 JSON array of numbers ``body[start:end]``, or
    None when simdjson cannot give it exactly (deeper, ragged, an integer beyond 64 bits)."""
    if depth > 2:
        return None
    parser = getattr(_parsers, "parser", None)
    if parser is None:
        parser = _parsers.parser = simdjson.Parser()
    doc = None
    try:
        doc = parser.parse(memoryview(body)[start:end])
        if depth == 1:
            shape: Tuple[int, ...] = (len(doc),)
            brackets = 1
        else:
            widths = {len(row) for row in doc}
            if len(widths) != 1:
                return None
            shape = (len(doc), widths.pop())
            brackets = 1 + shape[0]
        # Any "[" beyond the rows' would be a deeper array that as_buffer would flatten.
        if _count_opening(body, start, end, brackets + 1) != brackets:
            return None
        flat = np.frombuffer(doc.as_buffer(of_type="d"), dtype=np.float64)
        if flat.size != shape[0] * (shape[1] if depth == 2 else 1):
            return None
        return flat.reshape(shape).copy()  # (the parser's memory is reused by the next parse)
    except (ValueError, RuntimeError, TypeError):
        return None
    finally:
        del doc


@dataclasses.dataclass(frozen=True)
class FastDocument:
    doc: dict  # the request document, with FastArray values in place of the long arrays
    bools_possible: bool  # may_contain_bools of the rest of the body


def parse(body: bytes) -> Optional[FastDocument]:
    """The request document with its long numeric arrays as :class:`FastArray`, or None when
    the body has none or anything about it is unusual (the general path then decides)."""
    if len(body) < MIN_BYTES:
        return None
    # Every run of MIN_BYTES numeric bytes holds 8 consecutive multiples of _STRIDE: look at
    # those bytes first, so a body without one (base64, strings) costs microseconds here.
    sampled = _NUMERIC_FLAGS[np.frombuffer(body, dtype=np.uint8)[::_STRIDE]]
    zeros = np.flatnonzero(np.concatenate(([0], sampled, [0])) == 0)
    gaps = np.diff(zeros)
    if not gaps.size or gaps.max() <= MIN_BYTES // _STRIDE:
        return None
    runs = _long_runs_from_samples(body, zeros, gaps)
    if runs is None:
        runs = _long_runs(body)
    if not runs:
        return None
    pieces: List[bytes] = []
    arrays: List[FastArray] = []
    position = 0
    view = memoryview(body)
    marker = _MARKER_PREFIX + os.urandom(8).hex() + ":"
    marker_json = b'"\\u0000' + marker[1:].encode("ascii") + b'%d"'
    for start, end in runs:
        opening = body.find(b"[", start, end)
        if opening < 0 or body[max(position, opening - 32) : opening].rstrip()[-1:] not in (
            b":",
            b"[",
            b",",
        ):
            continue  # not where a value starts (e.g. inside a string): leave it to orjson
        depth = 1
        while opening + depth < end and body[opening + depth] == 0x5B:  # "["
            depth += 1
        # The run normally ends just after the array (at the next key's quote), so its last
        # "]" * depth closes it; if the run holds more than this one value, the slice is not
        # one JSON value and orjson refuses it.
        closing = body.rfind(b"]" * depth, opening, end)
        if closing < 0:
            return None
        closing += depth
        if closing - opening < MIN_BYTES:
            continue
        if len(arrays) >= MAX_ARRAYS:
            return None
        array = _simdjson_array(body, opening, closing, depth)
        if array is not None:
            fast = FastArray(array=array)
        else:
            try:
                fast = FastArray(orjson.loads(view[opening:closing]))
            except orjson.JSONDecodeError:
                return None
        pieces.append(body[position:opening])
        pieces.append(marker_json % len(arrays))
        arrays.append(fast)
        position = closing
    if not arrays:
        return None
    pieces.append(body[position:])
    original_rest = b"".join(pieces[0::2])
    rest = b"".join(pieces)
    try:
        doc = orjson.loads(rest)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    found = [0] * len(arrays)
    try:
        _substitute(doc, marker, arrays, found, 0)
    except NotFast:
        return None
    if found != [1] * len(arrays):
        return None
    return FastDocument(doc, may_contain_bools(original_rest))


def _long_runs(body: bytes) -> List[Tuple[int, int]]:
    """``(start, end)`` of every maximal run of numeric bytes of at least MIN_BYTES, in order:
    one ``bytes.translate`` of the whole body and a numpy comparison."""
    flags = np.frombuffer(body.translate(_NUMERIC), dtype=np.uint8)
    edges = np.flatnonzero(flags[1:] != flags[:-1]) + 1
    bounds = np.concatenate(([0], edges, [len(body)]))
    starts, ends = bounds[:-1], bounds[1:]
    long_runs = (flags[starts] == 1) & (ends - starts >= MIN_BYTES)
    return list(zip(starts[long_runs].tolist(), ends[long_runs].tolist()))


def _long_runs_from_samples(
    body: bytes, zeros: np.ndarray, gaps: np.ndarray
) -> Optional[List[Tuple[int, int]]]:
    """:func:`_long_runs` from the sampled bytes, or None when they cannot tell (then
    :func:`_long_runs` decides). Every run of MIN_BYTES numeric bytes covers at least
    MIN_BYTES // _STRIDE consecutive samples; when the bytes between the first and the last of
    such a stretch of numeric samples are all numeric (one ``translate`` that deletes them, a
    C loop cheaper than mapping the whole body), they belong to one run, whose ends are found
    in the less than _STRIDE bytes beyond (the neighbouring samples are not numeric). The
    result is then exactly :func:`_long_runs`'s, in about half its time."""
    runs = []
    size = len(body)
    # zeros: indices into [0] + sampled + [0]; a gap > k: k numeric samples in a row, the
    # samples zeros[i] .. zeros[i + 1] - 2 (indices into sampled).
    for index in np.flatnonzero(gaps > MIN_BYTES // _STRIDE).tolist():
        first = int(zeros[index]) * _STRIDE  # (padded index zeros[index] + 1)
        last = (int(zeros[index + 1]) - 2) * _STRIDE
        if body[first : last + 1].translate(None, _NUMERIC_BYTES):
            return None  # more than one run in the stretch: the exact scan sorts it out
        if first:  # the sample before is not numeric: the run starts after its last such byte
            window = body[first - _STRIDE : first].translate(_NUMERIC)
            start = first - _STRIDE + window.rfind(b"\x00") + 1
        else:
            start = 0
        window = body[last + 1 : last + 1 + _STRIDE].translate(_NUMERIC)
        stop = window.find(b"\x00")
        end = last + 1 + stop if stop >= 0 else size
        if end - start >= MIN_BYTES:
            runs.append((start, end))
    return runs


def _count_opening(body: bytes, start: int, end: int, limit: int) -> int:
    """How many "[" are in ``body[start:end]``, counting no further than ``limit``
    (``bytes.find`` is a memchr; ``bytes.count`` of one byte is slower)."""
    count, at = 0, start
    while count < limit:
        at = body.find(b"[", at, end)
        if at < 0:
            break
        count += 1
        at += 1
    return count


def may_contain_bools(body: bytes) -> bool:
    """False only when the body certainly has no JSON true/false token.

    (Used by both paths: ``json_tensors`` re-exports it, and its element-by-element checks run
    only when this is True.)"""
    if b"true" not in body and b"false" not in body:
        return False
    return _BOOL_TOKEN.search(body) is not None


def _substitute(value, marker: str, arrays: List[FastArray], found: List[int], depth: int) -> None:
    """Replaces marker strings (values only, never keys) by FastArray, counting each."""
    if depth > _MAX_DEPTH:
        raise NotFast
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return
    for key, item in items:
        if isinstance(item, str):
            if item.startswith(marker):
                index = _marker_index(item[len(marker) :], len(arrays))
                found[index] += 1
                value[key] = arrays[index]
        elif isinstance(item, (dict, list)):
            _substitute(item, marker, arrays, found, depth + 1)


def _marker_index(suffix: str, count: int) -> int:
    if (
        not suffix.isdigit()
        or not suffix.isascii()
        or int(suffix) >= count
        or suffix != str(int(suffix))
    ):
        raise NotFast
    return int(suffix)


def to_array(fast: FastArray, float64: bool) -> np.ndarray:
    """The float32 (or float64) array of a rank-1 or rank-2 FastArray; raises NotFast otherwise
    (deeper, ragged, empty, a value beyond float32's range). Any JSON number is taken, integers
    of any size included, as TF Serving 2.16.1 takes them (integer -> double -> float).

    ``struct.pack_into`` converts each row straight into the array: the C ``(float)`` cast of
    the double, as ``np.asarray(...).astype(np.float32)`` does, in 60% of ``array.array``'s time.
    """
    if fast.array is not None:
        if not fast.array.size:
            raise NotFast
        if float64:
            return fast.array
        with np.errstate(over="ignore"):
            out = fast.array.astype(np.float32)
        if not np.isfinite(out).all():  # beyond float32's range (JSON has no inf or NaN here)
            raise NotFast
        return out
    code, dtype = ("d", np.float64) if float64 else ("f", np.float32)
    values = fast.values
    try:
        if values and type(values[0]) is list:
            width = len(values[0])
            out = np.empty((len(values), width), dtype=dtype)
            layout = f"={width}{code}"
            row_bytes = width * out.itemsize
            for i, row in enumerate(values):
                if type(row) is not list or len(row) != width:
                    raise NotFast
                struct.pack_into(layout, out, i * row_bytes, *row)
        else:
            out = np.empty(len(values), dtype=dtype)
            struct.pack_into(f"={len(values)}{code}", out, 0, *values)
    except (struct.error, TypeError, OverflowError):  # a list where a number should be, or a
        raise NotFast from None  # number beyond float32's range
    if not out.size:
        raise NotFast
    return out
