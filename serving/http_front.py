"""The HTTP/1.1 front end of ``cme-ser serve``: one asyncio event loop per worker process, h11
for the protocol, and nothing reaching the API before a request is complete.

A connection costs no thread while it delivers a request: the event loop reads it, h11 parses
it (request line, headers, ``Content-Length`` or chunked bodies, keep-alive, pipelining,
``Expect: 100-continue``), and only a whole, buffered request is handed to ``handler``. So
clients that open connections and send half a request (the slowloris pattern) hold a socket
each and nothing else; a status call on another connection is answered at once however many
there are. The limits (:class:`Limits`, each a ``cme-ser serve`` flag):

* ``max_header_bytes``: request line and headers together; past it, 431 and the connection
  closed (h11's ``max_incomplete_event_size``);
* ``max_body_bytes``: a ``Content-Length`` over it is answered 413 before the body is read, a
  chunked body when it passes it; the rest of the body is read and discarded (up to 1 GiB,
  within ``body_timeout_s``) so that the client, still sending, gets the answer;
* ``header_timeout_s``: the whole request line and headers must arrive within it, counted from
  the connection's start, or on a kept-alive connection from the first byte of the request;
* ``body_timeout_s``: the whole body must arrive within it once the headers are in (a client
  sending a byte a second is cut off there, whatever its rate);
  past either: 408 with a JSON error, and the connection closed;
* ``keepalive_s``: an idle kept-alive connection (no byte of a next request) is closed then.

Answers are written with ``Content-Length``; a client that does not read its answer within
``body_timeout_s`` is disconnected. :meth:`HttpFront.close` is a graceful stop: no new
connections, idle ones closed at once, requests in flight (being read or being answered)
finished within ``grace_s``, with ``Connection: close``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http
import json
import logging
import socket
from typing import Awaitable, Callable, Dict, List, Optional, Tuple

import h11

log = logging.getLogger("cme_ser.serving")

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024  # a 60 s utterance is about 12 MB of JSON
DRAIN_LIMIT = 1 << 30  # bytes of a refused body read and discarded before closing
_READ_SIZE = 1 << 18


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may take. Defaults: ``max_body_bytes`` is ``--max-request-mb 32``;
    the times follow TF Serving's ``--rest_api_timeout_in_ms`` (30 s); TF Serving's libevent
    server sets no header size limit, 64 KiB is far above any TF Serving client's headers."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_header_bytes: int = 64 * 1024
    header_timeout_s: float = 30.0
    body_timeout_s: float = 30.0
    keepalive_s: float = 5.0


@dataclasses.dataclass(frozen=True)
class Request:
    """One complete request: ``target`` as sent (path and query), ``headers`` with lowercase
    names (repeated names joined with ", ")."""

    method: str
    target: str
    headers: Dict[str, str]
    body: bytes


@dataclasses.dataclass(frozen=True)
class Answer:
    """What ``handler`` returns (or any object with these attributes): status, headers in
    order (``Content-Length`` is added), body."""

    status: int
    headers: Tuple[Tuple[str, str], ...]
    body: bytes


Handler = Callable[[Request], Awaitable[Answer]]


class _Timeout(Exception):
    """A read deadline passed (raised into the connection's pending read)."""


class _Idle(Exception):
    """The keep-alive wait ended, or the server is closing: close without an answer."""


class _Refused(Exception):
    """A request answered before it was whole (413, 431, 408, 400): answer, then close."""

    def __init__(self, status: int, message: str, drain: bool = False):
        super().__init__(message)
        self.status = status
        self.message = message
        self.drain = drain


def error_answer(status: int, message: str) -> Answer:
    """``{"error": message}`` as the REST API writes its errors."""
    body = ('{\n    "error": ' + json.dumps(message, ensure_ascii=False) + "\n}").encode()
    return Answer(status, (("Content-Type", "application/json"),), body)


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b"Unknown"


class _Connection:
    """One client connection: reads requests with h11 under the limits, answers them in order."""

    def __init__(
        self, front: "HttpFront", reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ):
        self.front = front
        self.reader = reader
        self.writer = writer
        self.limits = front.limits
        self.h11 = h11.Connection(
            h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes
        )
        self.idle = False  # no byte of the next request yet (closed at once on shutdown)
        self.expired = False  # a deadline fired: the stream holds its exception, so close
        self._timer: Optional[asyncio.TimerHandle] = None

    # -- deadlines: an exception set into the stream wakes the pending read with it ----------

    def _deadline(self, seconds: float, error: Exception) -> None:
        self._cancel_deadline()
        self._timer = asyncio.get_running_loop().call_later(seconds, self._expire, error)

    def _expire(self, error: Exception) -> None:
        self.expired = True
        self.reader.set_exception(error)

    def _cancel_deadline(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close_if_idle(self) -> None:
        if self.idle:
            self.reader.set_exception(_Idle())

    # -- the connection's life --------------------------------------------------------------------

    async def run(self) -> None:
        first = True
        try:
            while True:
                try:
                    request = await self._read_request(first)
                except _Refused as refused:
                    await self._refuse(refused)
                    return
                if request is None:
                    return
                closing = self.front.closing or self.expired
                answer = await self.front.answer(request)
                if not await self._write(request.method, answer, closing or self.front.closing):
                    return
                if self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
                    return
                self.h11.start_next_cycle()
                first = False
        except (_Idle, ConnectionError, asyncio.IncompleteReadError):
            pass
        except _Timeout as timeout:  # while writing an answer the client does not read
            log.debug("connection closed: %s", timeout)
        finally:
            self._cancel_deadline()
            self.writer.close()

    async def _receive(self) -> bytes:
        data = await self.reader.read(_READ_SIZE)
        self.h11.receive_data(data)  # b"": end of file
        return data

    async def _read_request(self, first: bool) -> Optional[Request]:
        """The next complete request; None when the client closed (or stayed idle) between
        requests. Raises :class:`_Refused` for a request answered before it was whole."""
        limits = self.limits
        event = self._next_event()
        if event is h11.NEED_DATA:
            if first:  # a new connection: its first request's headers count from its start
                self._deadline(limits.header_timeout_s, _Timeout("header"))
            else:
                if self.front.closing:
                    return None
                self._deadline(limits.keepalive_s, _Idle())
            self.idle = not self.h11.trailing_data[0]
        while event is h11.NEED_DATA:
            try:
                data = await self._receive()
            except _Timeout:
                raise _Refused(
                    408,
                    f"The request line and headers did not arrive within "
                    f"{limits.header_timeout_s:g} s",
                ) from None
            if self.idle and data:
                self.idle = False
                if not first:  # a request begins on a kept-alive connection: its headers
                    self._deadline(limits.header_timeout_s, _Timeout("header"))  # from now on
            event = self._next_event()
        self.idle = False
        if isinstance(event, h11.ConnectionClosed):
            return None
        assert isinstance(event, h11.Request), event
        # h11's limit bounds a head still incomplete; one that arrived whole in one read is
        # measured here (request line, and each header line as sent: name, ": ", value, CRLF).
        size = (
            len(event.method)
            + len(event.target)
            + 12
            + sum(len(name) + len(value) + 4 for name, value in event.headers.raw_items())
        )
        if size > limits.max_header_bytes:
            raise _Refused(431, self._header_limit_message())
        headers: Dict[str, str] = {}
        for name, value in event.headers:
            key = name.decode("latin-1")
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        length = headers.get("content-length")
        if length is not None and int(length) > limits.max_body_bytes:
            raise _Refused(
                413,
                f"Request body of {int(length)} bytes exceeds the limit of "
                f"{limits.max_body_bytes} bytes",
                drain=True,
            )
        body = await self._read_body()
        return Request(event.method.decode("ascii"), event.target.decode("latin-1"), headers, body)

    def _next_event(self):
        try:
            return self.h11.next_event()
        except h11.RemoteProtocolError as error:
            if self.reader.at_eof():  # the client hung up mid-request: nobody to answer
                raise _Idle() from None
            status = error.error_status_hint
            if status == 431:
                message = self._header_limit_message()
            else:
                message = f"Malformed HTTP request: {error}"
            raise _Refused(status, message) from None

    def _header_limit_message(self) -> str:
        return (
            f"The request line and headers exceed the limit of {self.limits.max_header_bytes} bytes"
        )

    async def _read_body(self) -> bytes:
        limits = self.limits
        if self.h11.client_is_waiting_for_100_continue:
            self.writer.write(
                self.h11.send(
                    h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
                )
            )
        self._deadline(limits.body_timeout_s, _Timeout("body"))
        parts: List[bytes] = []
        size = 0
        while True:
            event = self._next_event()
            if event is h11.NEED_DATA:
                try:
                    await self._receive()
                except _Timeout:
                    raise _Refused(
                        408, f"The request body did not arrive within {limits.body_timeout_s:g} s"
                    ) from None
                continue
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > limits.max_body_bytes:
                    raise _Refused(
                        413,
                        f"Request body of more than {limits.max_body_bytes} "
                        f"bytes exceeds the limit of {limits.max_body_bytes} "
                        f"bytes",
                        drain=True,
                    )
                parts.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._cancel_deadline()
                return parts[0] if len(parts) == 1 else b"".join(parts)
            elif isinstance(event, h11.ConnectionClosed):
                raise _Idle()  # the client hung up mid-body: nobody to answer

    async def _write(self, method: str, answer: Answer, close: bool) -> bool:
        """Writes ``answer``; False if the connection is to be closed afterwards."""
        headers = list(answer.headers) + [("Content-Length", str(len(answer.body)))]
        if close:
            headers.append(("Connection", "close"))
        conn = self.h11
        data = conn.send(
            h11.Response(status_code=answer.status, headers=headers, reason=_reason(answer.status))
        )
        if method != "HEAD" and answer.body:
            data += conn.send(h11.Data(data=answer.body))
        data += conn.send(h11.EndOfMessage())
        self.writer.write(data)
        if self.writer.transport.get_write_buffer_size():
            self._deadline(self.limits.body_timeout_s, _Timeout("the client did not read"))
            await self.writer.drain()
            self._cancel_deadline()
        return not close and conn.our_state is h11.DONE

    async def _refuse(self, refused: _Refused) -> None:
        """Answers a request refused before it was whole, then closes; a refused body is read
        and discarded first (the client may still be sending it)."""
        self._cancel_deadline()
        if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            answer = error_answer(refused.status, refused.message)
            headers = list(answer.headers) + [
                ("Content-Length", str(len(answer.body))),
                ("Connection", "close"),
            ]
            try:
                data = (
                    self.h11.send(
                        h11.Response(
                            status_code=refused.status,
                            headers=headers,
                            reason=_reason(refused.status),
                        )
                    )
                    + self.h11.send(h11.Data(data=answer.body))
                    + self.h11.send(h11.EndOfMessage())
                )
            except h11.LocalProtocolError:
                return
            self.writer.write(data)
            if refused.drain and self.writer.can_write_eof():
                self.writer.write_eof()
        if refused.drain:
            self._deadline(self.limits.body_timeout_s, _Timeout("drain"))
            total = 0
            try:
                while total < DRAIN_LIMIT:
                    piece = await self.reader.read(_READ_SIZE)
                    if not piece:
                        break
                    total += len(piece)
            except (_Timeout, _Idle, ConnectionError):
                pass
            self._cancel_deadline()
        else:
            try:
                self._deadline(self.limits.body_timeout_s, _Timeout("the client did not read"))
                await self.writer.drain()
            except (_Timeout, ConnectionError):
                pass


class HttpFront:
    """Serves ``handler`` on listening sockets until :meth:`close`.

    ``handler(request)`` is awaited on the event loop for each complete request; it must not
    block (run blocking work in an executor).
    """

    def __init__(self, handler: Handler, limits: Limits = Limits()):
        self.handler = handler
        self.limits = limits
        self.closing = False
        self._servers: List[asyncio.base_events.Server] = []
        self._connections: Dict[asyncio.Task, _Connection] = {}

    async def start(self, sockets) -> None:
        """Starts accepting on each listening socket (``socket.socket`` objects)."""
        for sock in sockets:
            sock.setblocking(False)
            self._servers.append(
                await asyncio.start_server(self._serve, sock=sock, limit=_READ_SIZE)
            )

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def answer(self, request: Request) -> Answer:
        try:
            return await self.handler(request)
        except Exception as error:  # a bug must not take the connection's answer with it
            log.exception("internal error on %s %s", request.method, request.target)
            return error_answer(500, f"Internal error: {error}")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        connection = _Connection(self, reader, writer)
        task = asyncio.current_task()
        self._connections[task] = connection
        try:
            await connection.run()
        finally:
            self._connections.pop(task, None)

    async def close(self, grace_s: float) -> None:
        """Stops accepting, closes idle connections, lets requests in flight finish (at most
        ``grace_s`` seconds; then they are cut)."""
        self.closing = True
        for server in self._servers:
            server.close()
        for connection in list(self._connections.values()):
            connection.close_if_idle()
        tasks = list(self._connections)
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        for server in self._servers:
            await server.wait_closed()
