"""``cme-ser serve --workers N``: N server processes answering on one port.

One Python process runs JSON parsing and the HTTP handling under one GIL, so under many
concurrent requests it uses about one CPU core however many the machine has. With ``--workers
N`` a small supervisor (this module: standard library only, no TensorFlow) opens the listening
socket once and starts N ``cme-ser serve`` processes that inherit it: every worker accepts from
the same queue, so a new connection goes to whichever worker is free to take it first, and a
worker that is busy or stopped leaves its share to the others (unlike ``SO_REUSEPORT``, where
the kernel hashes each connection to one socket whatever that process is doing). Each worker
loads the model itself and polls the base path for new versions on its own, exactly as a
single ``cme-ser serve`` does, so every worker picks up a new version within ``--poll-seconds``.
gRPC (``--grpc-port``) is served by worker 0 alone: a gRPC server binds its own port and cannot
share an inherited listening socket, and gRPC requests (no JSON) need far less CPU than REST.

The supervisor prints the usual one-line announcement once every worker has loaded, forwards
SIGTERM / SIGINT to the workers and waits for them to finish the requests in flight. If a worker
dies, the supervisor stops the others and exits with status 1 (the process manager restarts
the whole server). Workers stop by themselves when the supervisor disappears (their stdin, a
pipe from it, reaches end of file).
"""

from __future__ import annotations

import mmap
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import List, Optional, Sequence

READY_MARK = "REST API at "


def listen(host: str, port: int, backlog: int = 128) -> socket.socket:
    """The shared listening socket (IPv4, like the single-process server)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


class ConnectionCounts:
    """The open connections of every worker, in a small file the workers share (one int64
    each), so that a new connection goes to the worker with the fewest.

    All workers wake up for a new connection and the first to call accept() gets it. Clients
    that keep their connection open (keep-alive) stay with that worker, so a chance split like
    11 / 5 of 16 clients would leave one worker with twice the work for as long as they stay.
    A worker with more connections than the least loaded one therefore waits before its
    accept() (10 ms per connection more, at most 100 ms), which lets the other take it; a
    worker that is stuck or stopped cannot take it, and the busier one does after the wait.
    """

    def __init__(self, fd: int, workers: int, index: int):
        if not 0 <= index < workers:
            raise ValueError(f"worker index {index} not in [0, {workers})")
        self._map = mmap.mmap(fd, 8 * workers)
        self._counts = memoryview(self._map).cast("q")
        self.index = index
        self._lock = threading.Lock()  # this worker's handler threads all update its slot

    def accept_delay(self) -> float:
        counts = self._counts.tolist()
        extra = counts[self.index] - min(counts)
        return min(0.1, 0.01 * extra) if extra > 0 else 0.0

    def add(self, change: int) -> None:
        with self._lock:
            self._counts[self.index] += change


def parse_worker_slot(text: str) -> ConnectionCounts:
    """``--worker-slot FD:INDEX:WORKERS`` (given to workers by the supervisor)."""
    fd, index, workers = (int(v) for v in text.split(":"))
    return ConnectionCounts(fd, workers, index)


def watch_parent() -> None:
    """In a worker: exit (as on SIGTERM) when stdin, the supervisor's pipe, closes."""
    fd = sys.stdin.fileno()

    def wait():
        # os.read, not sys.stdin: a daemon thread blocked inside a buffered reader would hold
        # its lock when the interpreter shuts down.
        try:
            while os.read(fd, 4096):
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait, name="watch-supervisor", daemon=True).start()


def supervise(worker_command: Sequence[str], sock: socket.socket, workers: int, *,
              describe: str, start_timeout: float = 600.0,
              first_worker_args: Sequence[str] = ()) -> int:
    """Runs ``workers`` copies of ``worker_command + ["--listen-fd", fd]`` on ``sock`` until
    SIGTERM / SIGINT (returns 0) or a worker's death (returns 1). Worker 0 gets
    ``first_worker_args`` too (``--grpc-port P``: it alone serves gRPC); the gRPC address it
    announces goes into the supervisor's announcement."""
    fd = sock.fileno()
    host, port = sock.getsockname()[:2]
    os.set_inheritable(fd, True)
    counts = tempfile.TemporaryFile()  # ConnectionCounts' file: zeros, one int64 per worker
    counts.truncate(8 * workers)
    os.set_inheritable(counts.fileno(), True)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    processes: List[subprocess.Popen] = []
    try:
        for index in range(workers):
            processes.append(subprocess.Popen(
                list(worker_command) + (list(first_worker_args) if index == 0 else [])
                + ["--listen-fd", str(fd), "--worker-slot",
                   f"{counts.fileno()}:{index}:{workers}"],
                pass_fds=(fd, counts.fileno()),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                # Their own session: a terminal's Ctrl-C or a process-group signal reaches the
                # supervisor only, which stops the workers once, in order.
                start_new_session=True))
        sock.close()  # the workers hold it now
        first = _wait_ready(processes, stop, start_timeout)
        if first is None:
            return 0 if stop.is_set() else 1
        versions = _between(first, "(versions available: ", "), ") or "?"
        grpc = _between(first, "gRPC at ", ", ")
        grpc_note = f"gRPC at {grpc} (worker 0), " if grpc else ""
        print(f"cme-ser serve: {describe} (versions available: {versions}), {workers} worker "
              f"processes, {grpc_note}{READY_MARK}http://{host}:{port}", flush=True)
        while not stop.wait(0.5):
            dead = [p for p in processes if p.poll() is not None]
            if dead:
                print(f"cme-ser serve: worker process {dead[0].pid} exited with status "
                      f"{dead[0].returncode}; stopping", file=sys.stderr, flush=True)
                return 1
        return 0
    finally:
        _stop_all(processes)
        counts.close()
        for s, handler in previous.items():
            signal.signal(s, handler)


def _between(line: str, start: str, end: str) -> Optional[str]:
    """The text of ``line`` between ``start`` and the next ``end``, or None."""
    at = line.find(start)
    stop = line.find(end, at + len(start)) if at >= 0 else -1
    return line[at + len(start):stop] if stop >= 0 else None


def _wait_ready(processes: List[subprocess.Popen], stop: threading.Event,
                timeout: float) -> Optional[str]:
    """Waits for each worker's announcement line (read in threads, which then pass anything
    else the worker prints on); returns the first worker's, or None if a worker failed or the
    supervisor was stopped first."""
    lines: List[Optional[str]] = [None] * len(processes)

    def read(index: int, process: subprocess.Popen) -> None:
        for line in process.stdout:
            if lines[index] is None and READY_MARK in line:
                lines[index] = line
            else:
                sys.stdout.write(line)
                sys.stdout.flush()

    for i, p in enumerate(processes):
        threading.Thread(target=read, args=(i, p), daemon=True).start()
    deadline = time.monotonic() + timeout
    while not all(lines):
        if stop.wait(0.1):
            return None
        failed = [p for p in processes if p.poll() is not None]
        if failed or time.monotonic() > deadline:
            what = (f"exited with status {failed[0].returncode}" if failed
                    else f"did not start within {timeout:.0f} s")
            print(f"cme-ser serve: a worker process {what}", file=sys.stderr, flush=True)
            return None
    return lines[0]


def _stop_all(processes: List[subprocess.Popen], grace: float = 30.0) -> None:
    for p in processes:
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
            except OSError:
                pass
    deadline = time.monotonic() + grace
    for p in processes:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        if p.stdin is not None:
            try:
                p.stdin.close()
            except OSError:
                pass
