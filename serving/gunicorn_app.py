"""``cme-ser serve`` on gunicorn: N worker processes on one port, TF Serving's REST API in each.

gunicorn's arbiter owns the worker processes: it forks them, restarts one that dies while the
others keep serving, and stops them gracefully on SIGTERM. Each worker is an :class:`_Worker`:
one asyncio event loop running :class:`serving.http_front.HttpFront` (h11) on the listening
socket, so a connection that has not delivered a whole request costs no thread (the
slowloris pattern cannot stall it), with ``--max-header-kb``, ``--max-request-mb``,
``--header-timeout`` and ``--body-timeout`` as its limits. Complete requests go to
:class:`serving.server.AsyncApp` (status and metadata on the event loop, predictions in a pool
of request threads), all of them into the worker's one batcher when batching is on.

TensorFlow is never imported in the gunicorn master (this module and gunicorn import none of
it, and the app is not preloaded): forking a process that has started TensorFlow's threads is
unsafe. Each worker loads the model itself (:meth:`_Application.load`, after the fork) and runs
its own version poller, so every worker picks up a new version within ``--poll-seconds``. On
SIGTERM (or Ctrl-C) a worker stops accepting, closes idle connections, finishes the requests in
flight (``graceful_timeout``) and joins its request threads; then, in gunicorn's
``worker_exit`` hook, :meth:`serving.services.Services.close` stops and joins the gRPC server,
the batcher and the poller and releases the models, so that no thread is inside TensorFlow
when the interpreter tears it down (what made SIGTERM end in SIGABRT).

gRPC: every worker runs a gRPC server on the same ``--grpc-port`` with ``SO_REUSEPORT``, and the
kernel spreads connections over them, so gRPC uses every worker and a restarted worker brings
its share back. The master binds that port first (``SO_REUSEPORT``, not listening: it receives
no connections) to pick a free port for ``--grpc-port 0`` and to refuse a port another program
holds.

The master prints one line once every worker has loaded the model (the REST URL its last word;
tests, benchmarks and the README read it from there).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Optional

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.workers.base import Worker

from infra.process_exit import exit_process
from serving.http_front import HttpFront, Limits

READY_MARK = "REST API at "
HEARTBEAT_S = 1.0  # how often a worker tells the arbiter it is alive
_LIMITS = Limits()


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
    max_header_bytes: int = _LIMITS.max_header_bytes
    header_timeout_s: float = _LIMITS.header_timeout_s
    body_timeout_s: float = _LIMITS.body_timeout_s
    keepalive_s: float = _LIMITS.keepalive_s
    graceful_timeout_s: int = 30
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


class _Arbiter(Arbiter):
    def handle_int(self):
        """Ctrl-C stops gracefully, as SIGTERM does (gunicorn's default: at once, requests in
        flight cut, threads possibly still inside TensorFlow)."""
        self.handle_term()


class _Worker(Worker):
    """One event loop serving :class:`HttpFront` on gunicorn's listening sockets (see the
    module docstring); it checks in with the arbiter every ``HEARTBEAT_S``. SIGTERM and SIGINT
    (a terminal's Ctrl-C reaches the workers too) stop it gracefully."""

    _loop: Optional[asyncio.AbstractEventLoop] = None
    _stop: Optional[asyncio.Event] = None

    def init_signals(self):
        super().init_signals()
        signal.signal(signal.SIGINT, self.handle_exit)

    def handle_exit(self, sig, frame):
        self.alive = False
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    def run(self):
        asyncio.run(self._serve())

    async def _serve(self):
        c = self.app.config
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        app = self.wsgi  # serving.server.AsyncApp (_Application.load)
        front = HttpFront(
            app,
            Limits(
                max_body_bytes=c.max_body_bytes,
                max_header_bytes=c.max_header_bytes,
                header_timeout_s=c.header_timeout_s,
                body_timeout_s=c.body_timeout_s,
                keepalive_s=c.keepalive_s,
            ),
        )
        await front.start([listener.sock for listener in self.sockets])
        try:
            while self.alive and self.ppid == os.getppid():
                self.notify()
                try:
                    await asyncio.wait_for(self._stop.wait(), HEARTBEAT_S)
                except asyncio.TimeoutError:
                    pass
        finally:
            await front.close(c.graceful_timeout_s)
            await asyncio.get_running_loop().run_in_executor(None, app.close)


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
            "graceful_timeout": c.graceful_timeout_s,
            "timeout": c.worker_timeout_s,
            "preload_app": False,  # never: the master must not import TensorFlow
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
        from serving.server import AsyncApp
        from serving.services import Services

        self.services = Services(
            c.base_path,
            c.model_name,
            poll_seconds=c.poll_seconds,
            labels_file=c.labels_file,
            num_latest=c.num_latest,
            max_body_bytes=c.max_body_bytes,
            batching=c.batching,
            max_batch_size=c.max_batch_size,
            batch_timeout_ms=c.batch_timeout_ms,
            cors=c.cors,
            grpc_host=c.host if self.grpc_port >= 0 else None,
            grpc_port=self.grpc_port,
            grpc_reuse_port=True,
        )
        return AsyncApp(self.services.api)

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
                os.write(
                    2, f"cme-ser serve: worker {report['pid']} ready (a replacement)\n".encode()
                )
                continue
            reported.add(report["pid"])
            if len(reported) == config.workers:
                host, port = address
                versions = first["versions"]
                count = f"{config.workers} worker process" + ("es" if config.workers > 1 else "")
                grpc_note = f"gRPC at {grpc}, " if grpc else ""
                text = (
                    f"cme-ser serve: model {config.model_name!r} from {config.base_path} "
                    f"(versions available: {versions or 'none yet'}), {count}, {grpc_note}"
                    f"{READY_MARK}http://{_address(host, port)}\n"
                )
                os.write(1, text.encode())


class PortError(OSError):
    """A port that cannot be listened on; the message names it."""


def run(config: ServeConfig) -> int:
    """Serves until SIGTERM / SIGINT, then stops gracefully and returns gunicorn's exit status
    (0). :class:`PortError` if a port cannot be had."""
    try:  # bound here, not by gunicorn: a clear error now, and the real port of --port 0
        listener = socket.create_server(
            (config.host, config.port),
            backlog=128,
            family=socket.AF_INET6 if ":" in config.host else socket.AF_INET,
        )
    except OSError as error:
        raise PortError(
            f"cannot listen on {_address(config.host, config.port)}: {error.strerror or error}"
        ) from None
    reservation, grpc_port, grpc = None, -1, None
    if config.grpc_port >= 0:
        try:
            reservation = reserve_port(config.host, config.grpc_port)
        except OSError as error:
            listener.close()
            raise PortError(
                f"cannot listen on {_address(config.host, config.grpc_port)} "
                f"(--grpc-port): {error.strerror or error}"
            ) from None
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
        threading.Thread(
            target=_announce, args=(read_fd, address, config, grpc), name="announce", daemon=True
        ).start()

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
