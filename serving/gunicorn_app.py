"""``cme-ser serve`` on gunicorn: N worker processes on one port, TF Serving's REST API in each.

gunicorn (gthread workers) owns the HTTP: parsing, chunked bodies, keep-alive, graceful
shutdown (SIGTERM: stop accepting, finish the requests in flight), the worker processes, and
restarting a worker that dies while the others keep serving. Each worker answers with
:class:`serving.server.WsgiApp` around :meth:`serving.server.RestApi.respond`.

TensorFlow is never imported in the gunicorn master (this module and gunicorn import none of
it, and the app is not preloaded): forking a process that has started TensorFlow's threads is
unsafe. Each worker loads the model itself (:meth:`_Application.load`, after the fork) and runs
its own version poller, so every worker picks up a new version within ``--poll-seconds``. In
gunicorn's ``worker_exit`` hook, still in the worker, :meth:`serving.services.Services.close`
stops and joins the gRPC server, the batcher and the poller and releases the models, so that no
thread is inside TensorFlow when the interpreter tears it down (what made SIGTERM end in
SIGABRT). The request threads are done by then: the gthread worker waits for them
(``graceful_timeout``) before it returns.

gRPC: every worker runs a gRPC server on the same ``--grpc-port`` with ``SO_REUSEPORT``, and the
kernel spreads connections over them, so gRPC uses every worker and a restarted worker brings
its share back. The master binds that port first (``SO_REUSEPORT``, not listening: it receives
no connections) to pick a free port for ``--grpc-port 0`` and to refuse a port another program
holds.

Slow clients: gunicorn's gthread worker has no read timeout once a request has begun (a client
that sends half a request and stalls would hold a thread forever), so :class:`_Worker` sets
``SO_RCVTIMEO`` / ``SO_SNDTIMEO`` (``read_timeout``) on every connection; a client idle that
long mid-request is disconnected, logged at debug level like a client that hung up.

The master prints one line once every worker has loaded the model (the REST URL its last word;
tests, benchmarks and the README read it from there).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import signal
import socket
import struct
import sys
import threading
from pathlib import Path
from typing import Optional

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.glogging import Logger
from gunicorn.workers.gthread import ThreadWorker

from preprocessing.filesystems import exit_process

READY_MARK = "REST API at "
THREADS_PER_WORKER = 16  # requests at once per worker (the old server: one thread per client)


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """What ``cme-ser serve`` asks for (serving.serve_command checks the values)."""

    base_path: Path
    max_body_bytes: int  # --max-request-mb, in bytes
    model_name: str = "cme"
    host: str = "127.0.0.1"
    port: int = 8501
    grpc_port: int = -1  # -1: no gRPC; 0: a free port
    workers: int = 1
    poll_seconds: float = 1.0
    labels_file: Optional[str] = None
    num_latest: int = 1
    batching: bool = False
    max_batch_size: int = 32
    batch_timeout_ms: float = 2.0
    cors: bool = False
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    read_timeout_s: float = 30.0
    graceful_timeout_s: int = 30
    keepalive_s: int = 5
    # A worker whose main loop does not check in this long is restarted; it also bounds the
    # model's loading (TensorFlow's import included) on a busy machine.
    worker_timeout_s: int = 300


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (0: a free port) with SO_REUSEPORT, not listening: the
    workers' gRPC servers bind the same port beside it. OSError if another program has it."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_timed_out = threading.local()  # .value: this request thread's client timed out


class _QuietLogger(Logger):
    """A client gone or timed out mid-request (EAGAIN from SO_RCVTIMEO, a reset, a broken pipe)
    is routine: one debug line instead of the traceback gunicorn would log."""

    def exception(self, msg, *args, **kwargs):
        error = sys.exc_info()[1]
        if isinstance(error, (TimeoutError, BlockingIOError, ConnectionError)) or (
                isinstance(error, OSError) and error.errno in (errno.EAGAIN, errno.EPIPE)):
            _timed_out.value = isinstance(error, (TimeoutError, BlockingIOError)) or \
                error.errno == errno.EAGAIN
            self.debug("%s: %s", msg % args if args else msg, error)
            return
        super().exception(msg, *args, **kwargs)


class _Arbiter(Arbiter):
    def handle_int(self):
        """Ctrl-C stops gracefully, as SIGTERM does (gunicorn's default: at once, requests in
        flight cut, threads possibly still inside TensorFlow)."""
        self.handle_term()


class _Worker(ThreadWorker):
    """gthread with a read timeout (see the module docstring); SIGINT (a terminal's Ctrl-C
    reaches the workers too) stops it gracefully, as SIGTERM does."""

    def init_signals(self):
        super().init_signals()
        signal.signal(signal.SIGINT, self.handle_exit)

    def handle(self, conn):
        timeout = self.app.config.read_timeout_s
        if timeout > 0:
            whole = int(timeout)
            value = struct.pack("ll", whole, int((timeout - whole) * 1e6))
            try:
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
            except OSError:  # already closed by the client: the request will see it
                pass
        _timed_out.value = False
        keep = super().handle(conn)
        if _timed_out.value:
            # Cut it now: gunicorn's graceful close, on the main loop, would wait up to 2 s
            # for a client that has stopped talking.
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return keep


class _Application(BaseApplication):
    def __init__(self, config: ServeConfig, ready_fd: int, grpc_port: int):
        self.config = config
        self.ready_fd = ready_fd  # workers write one JSON line here once loaded
        self.grpc_port = grpc_port  # resolved by the master (-1: none)
        self.services = None  # serving.services.Services, in a worker
        super().__init__()

    def load_config(self):
        c = self.config
        settings = {
            "workers": c.workers,
            "worker_class": _Worker,
            "threads": THREADS_PER_WORKER,
            "keepalive": c.keepalive_s,  # (gunicorn takes whole seconds)
            "graceful_timeout": c.graceful_timeout_s,
            "timeout": c.worker_timeout_s,
            "preload_app": False,  # never: the master must not import TensorFlow
            "logger_class": _QuietLogger,
            "loglevel": "warning",
            "accesslog": None,
            "proc_name": "cme-ser serve",
            "backlog": 128,
            "post_worker_init": self._post_worker_init,
            "worker_exit": self._worker_exit,
            "control_socket_disable": True,  # (gunicorn >= 25) not used here
        }
        for name, value in settings.items():
            if name in self.cfg.settings:
                self.cfg.set(name, value)

    def run(self):
        try:
            _Arbiter(self).run()
        except RuntimeError as error:  # (as BaseApplication.run)
            print(f"\nError: {error}\n", file=sys.stderr, flush=True)
            sys.exit(1)

    def load(self):
        """In a worker, after the fork: TensorFlow, the model, the gRPC server."""
        c = self.config
        if c.intra_op_threads or c.inter_op_threads:
            import tensorflow as tf  # before anything runs: the thread pools are made once
            tf.config.threading.set_intra_op_parallelism_threads(c.intra_op_threads)
            tf.config.threading.set_inter_op_parallelism_threads(c.inter_op_threads)
        from serving.server import WsgiApp
        from serving.services import Services
        self.services = Services(
            c.base_path, c.model_name, poll_seconds=c.poll_seconds, labels_file=c.labels_file,
            num_latest=c.num_latest, max_body_bytes=c.max_body_bytes, batching=c.batching,
            max_batch_size=c.max_batch_size, batch_timeout_ms=c.batch_timeout_ms, cors=c.cors,
            grpc_host=c.host if self.grpc_port >= 0 else None, grpc_port=self.grpc_port,
            grpc_reuse_port=True)
        return WsgiApp(self.services.api)

    # -- hooks (gunicorn calls them with the arbiter and / or the worker) -----------------------

    def _post_worker_init(self, worker):
        report = {"pid": os.getpid(), "versions": self.services.repository.available_versions}
        os.write(self.ready_fd, (json.dumps(report) + "\n").encode())

    def _worker_exit(self, arbiter, worker):
        if self.services is not None:
            self.services.close()
            self.services = None


def _announce(read_fd: int, address, config: ServeConfig, grpc: Optional[str]) -> None:
    """In the master (a thread: raw reads and writes only, no locks a fork could copy): prints
    the ready line once every worker has reported, then a note per restarted worker."""
    pending, reported, first = b"", set(), None
    while True:
        try:
            data = os.read(read_fd, 65536)
        except OSError:
            return
        if not data:
            return
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            report = json.loads(line)
            if first is None:
                first = report
            if len(reported) >= config.workers:
                os.write(2, f"cme-ser serve: worker {report['pid']} ready (a replacement)\n"
                         .encode())
                continue
            reported.add(report["pid"])
            if len(reported) == config.workers:
                host, port = address
                versions = first["versions"]
                count = f"{config.workers} worker process" + ("es" if config.workers > 1 else "")
                grpc_note = f"gRPC at {grpc}, " if grpc else ""
                text = (f"cme-ser serve: model {config.model_name!r} from {config.base_path} "
                        f"(versions available: {versions or 'none yet'}), {count}, {grpc_note}"
                        f"{READY_MARK}http://{_address(host, port)}\n")
                os.write(1, text.encode())


class PortError(OSError):
    """A port that cannot be listened on; the message names it."""


def run(config: ServeConfig) -> int:
    """Serves until SIGTERM / SIGINT, then stops gracefully and returns gunicorn's exit status
    (0). :class:`PortError` if a port cannot be had."""
    try:  # bound here, not by gunicorn: a clear error now, and the real port of --port 0
        listener = socket.create_server((config.host, config.port), backlog=128,
                                        family=socket.AF_INET6 if ":" in config.host
                                        else socket.AF_INET)
    except OSError as error:
        raise PortError(f"cannot listen on {_address(config.host, config.port)}: "
                        f"{error.strerror or error}") from None
    reservation, grpc_port, grpc = None, -1, None
    if config.grpc_port >= 0:
        try:
            reservation = reserve_port(config.host, config.grpc_port)
        except OSError as error:
            listener.close()
            raise PortError(f"cannot listen on {_address(config.host, config.grpc_port)} "
                            f"(--grpc-port): {error.strerror or error}") from None
        grpc_port = reservation.getsockname()[1]
        grpc = _address(config.host, grpc_port)
    read_fd, write_fd = os.pipe()
    app = _Application(config, write_fd, grpc_port)
    address = listener.getsockname()[:2]

    def post_fork(arbiter, worker):  # the worker needs neither the pipe's end nor the port
        os.close(read_fd)
        if reservation is not None:
            reservation.close()

    def when_ready(arbiter):
        threading.Thread(target=_announce, args=(read_fd, address, config, grpc),
                         name="announce", daemon=True).start()

    app.cfg.set("bind", [f"fd://{listener.fileno()}"])
    app.cfg.set("post_fork", post_fork)
    app.cfg.set("when_ready", when_ready)
    sys.stdout.flush()
    master = os.getpid()
    try:
        app.run()
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (1 if done.code else 0)
        if os.getpid() != master:
            _leave_worker(code, done.code)
        return code
    return 0


def _leave_worker(code: int, message) -> None:
    """A worker's end, once gunicorn's worker_exit hook has closed its services (every thread
    that ran TensorFlow joined): ``os._exit``, as multiprocessing's forked children leave.
    The interpreter's teardown would only destroy TensorFlow's C++ objects one by one (seconds
    of a SIGTERM's grace on a busy machine) and run the master's exit handlers."""
    if isinstance(message, str):
        print(message, file=sys.stderr)
    logging.shutdown()
    exit_process(code, run_exit_handlers=False)  # flushes, then os._exit
