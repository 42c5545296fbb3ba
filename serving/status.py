"""Errors with TensorFlow Serving's status codes and their HTTP mapping.

The REST server answers every failure as ``{"error": "<message>"}`` with the HTTP status that
TF Serving's ``http_server.cc`` (``ToHTTPStatusCode``) gives the canonical code, so a client
cannot tell this server from TF Serving by its errors.
"""

from __future__ import annotations

import re

# Canonical code -> HTTP status, as tensorflow_serving/model_servers/http_server.cc maps them.
HTTP_STATUS = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}

# tf.errors.OpError.error_code (the gRPC code numbers) -> name.
_CODE_NAMES = {
    0: "OK",
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}


class ServingError(Exception):
    """A request that failed with a canonical ``code`` (e.g. "INVALID_ARGUMENT") and a message.

    ``http_status`` overrides the code's HTTP status where HTTP has a better word for it
    (413 for a body over the size limit).
    """

    def __init__(self, code: str, message: str, http_status: int = 0):
        if code not in HTTP_STATUS:
            raise ValueError(f"unknown status code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status or HTTP_STATUS[code]

    def status_string(self) -> str:
        """``CODE: message``, the way absl::Status prints (used inside nested messages)."""
        return f"{self.code}: {self.message}"


def invalid_argument(message: str) -> ServingError:
    return ServingError("INVALID_ARGUMENT", message)


def not_found(message: str) -> ServingError:
    return ServingError("NOT_FOUND", message)


def from_op_error(error) -> ServingError:
    """A ``tf.errors.OpError`` raised while running a signature, keeping its code."""
    code = _CODE_NAMES.get(getattr(error, "error_code", 2), "UNKNOWN")
    message = getattr(error, "message", None) or str(error)
    # Eager TF wraps a graph's status as "Graph execution error: Detected at node ... <stack
    # traces unavailable> <status> [Op:__inference_...]"; TF Serving runs the graph in a
    # session and sends the status alone ("assertion failed: [...] [...] [[{{node ...}}]]").
    message = message.split("<stack traces unavailable>", 1)[-1]
    message = re.sub(r"\s*\[Op:[^\]]*\]\s*$", "", message)
    return ServingError(code, " ".join(message.split()))
