"""Start, serve, SIGTERM, repeat: does `cme-ser serve` always exit cleanly?

    python benchmarks/serve_lifecycle.py --model-base-path output/serving_model/cme --cycles 50
    python benchmarks/serve_lifecycle.py --model-base-path output/serving_model/cme --cycles 50 \\
        --workers 2

Each cycle starts `cme-ser serve` on a free loopback port, waits for its announcement, checks
one `predict_waveform` request (must answer 200), then lets ``--clients`` clients send requests
on keep-alive connections and sends SIGTERM while they are in flight (after a delay that varies
from cycle to cycle), as `docker stop` / `kubectl delete` would. A clean exit is status 0 within
``--stop-timeout`` seconds with no traceback on stderr, and no worker process that ended
otherwise than cleanly (gunicorn's master logs "Worker (pid:N) was sent SIGABRT!" or "... exited
with code N" for those). The server's version poller runs (``--poll-seconds 0.2``) and so does
its gRPC server (``--grpc-port 0``, in every worker), so their threads are alive at every stop
too.

Prints one JSON line: cycles, workers, bad_exits (each with its cycle, status, the workers'
bad ends and the end of its stderr), tracebacks (cycles whose stderr had one), the requests
answered while stopping (200s, refused connections, other answers), and the median and maximum
seconds from SIGTERM to exit. Exits 1 if any exit was bad.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from serving.client import RestClient, ServingRequestError, Utterance  # noqa: E402

# A RAVDESS-length utterance (3.5 s); the words' times are what an aligner would give.
UTTERANCE = Utterance(
    waveform=(0.1 * np.random.default_rng(0).standard_normal(56000)).astype(np.float32),
    words=["kids", "are", "talking", "by", "the", "door"],
    start_s=[0.50, 0.85, 1.05, 1.55, 1.75, 1.95],
    end_s=[0.85, 1.05, 1.55, 1.75, 1.95, 2.45],
)


def _announced_url(process: subprocess.Popen, timeout: float) -> str:
    found: dict = {}

    def read():
        for line in process.stdout:
            if "REST API at " in line:
                found["url"] = line.rsplit(" ", 1)[1].strip()
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if "url" not in found:
        raise RuntimeError(f"no announcement within {timeout:.0f} s (status {process.poll()})")
    return found["url"]


def _children(pid: int) -> list:
    """``pid``'s child processes (Linux /proc), e.g. the workers of `--workers N`."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def _client(url: str, stop: threading.Event, counts: dict, lock: threading.Lock) -> None:
    while not stop.is_set():
        try:
            with RestClient(url, "cme", timeout=60) as client:
                while not stop.is_set():
                    client.predict_waveform([UTTERANCE])
                    with lock:
                        counts["ok"] += 1
        except ServingRequestError:
            with lock:
                counts["other"] += 1
        except (OSError, http.client.HTTPException):  # refused or reset: the server is going
            with lock:
                counts["refused"] += 1
            return


def cycle(args, index: int) -> dict:
    command = [
        sys.executable,
        "-m",
        "cli",
        "serve",
        "--model-base-path",
        str(args.model_base_path),
        "--model-name",
        "cme",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--poll-seconds",
        "0.2",
        "--grpc-port",
        "0",
        "--workers",
        str(args.workers),
    ]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stderr: list = []
    drain = threading.Thread(target=lambda: stderr.append(process.stderr.read()), daemon=True)
    drain.start()
    counts = {"ok": 0, "refused": 0, "other": 0}
    stop, lock = threading.Event(), threading.Lock()
    clients = []
    try:
        try:
            url = _announced_url(process, args.start_timeout)
        except RuntimeError as error:  # stuck: every process's stacks (faulthandler) to stderr
            for pid in [process.pid] + _children(process.pid):
                try:
                    os.kill(pid, signal.SIGABRT)
                except OSError:
                    pass
            process.wait(timeout=30)
            drain.join(timeout=10)
            return {
                "cycle": index,
                "status": f"did not start: {error}",
                "seconds": 0.0,
                "stderr": "".join(stderr),
                "traceback": True,
                **counts,
            }
        with RestClient(url, "cme", timeout=60) as client:
            first = client.predict_waveform([UTTERANCE])[0]
        if first.emotion not in first.probabilities:
            raise RuntimeError(f"unexpected answer {first}")
        clients = [
            threading.Thread(target=_client, args=(url, stop, counts, lock), daemon=True)
            for _ in range(args.clients)
        ]
        for c in clients:
            c.start()
        time.sleep(0.05 + 0.05 * (index % 7))  # SIGTERM at different points of the requests
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            status = process.wait(timeout=args.stop_timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            status = "timeout"
        stopped = time.monotonic() - signalled
    finally:
        stop.set()
        if process.poll() is None:
            process.kill()
            process.wait()
        for c in clients:
            c.join(timeout=30)
    drain.join(timeout=10)
    text = "".join(stderr)
    workers = re.findall(r"Worker \(pid:\d+\) (?:was sent \w+|exited with code -?\d+)", text)
    return {
        "cycle": index,
        "status": status,
        "seconds": stopped,
        "stderr": text,
        "traceback": "Traceback" in text,
        "worker_ends": workers,
        **counts,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model-base-path",
        required=True,
        type=Path,
        help="<base>/<version>/ SavedModels, as `cme-ser serve` takes",
    )
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--clients", type=int, default=4, help="clients sending requests while SIGTERM arrives"
    )
    parser.add_argument("--start-timeout", type=float, default=300.0)
    parser.add_argument("--stop-timeout", type=float, default=60.0)
    args = parser.parse_args()
    results = []
    for index in range(args.cycles):
        results.append(cycle(args, index))
        r = results[-1]
        print(
            f"cycle {index + 1}/{args.cycles}: status {r['status']}, worker ends "
            f"{r['worker_ends']}, traceback {r['traceback']}, stopped in {r['seconds']:.2f} s",
            file=sys.stderr,
            flush=True,
        )
    bad = [
        {
            "cycle": r["cycle"],
            "status": r["status"],
            "worker_ends": r["worker_ends"],
            "stderr_tail": r["stderr"][-6000:],
        }
        for r in results
        if r["status"] != 0 or r["worker_ends"] or r["traceback"]
    ]
    seconds = [r["seconds"] for r in results]
    print(
        json.dumps(
            {
                "cycles": args.cycles,
                "workers": args.workers,
                "clients": args.clients,
                "bad_exits": bad,
                "tracebacks": sum(r["traceback"] for r in results),
                "requests_while_stopping": {
                    k: sum(r[k] for r in results) for k in ("ok", "refused", "other")
                },
                "stop_seconds": {
                    "median": round(statistics.median(seconds), 3),
                    "max": round(max(seconds), 3),
                },
            }
        )
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
