"""Load test of the REST and gRPC endpoints against the model's own speed in process.

    python benchmarks/serving_load.py --model-base-path output/serving_model/cme \\
        --clients 16 --requests 800 --server-arg=--workers=2 --server-arg=--enable-batching
    python benchmarks/serving_load.py --model-base-path output/serving_model/cme \\
        --url http://127.0.0.1:8501 --clients 16 --requests 800
    python benchmarks/serving_load.py --model-base-path output/serving_model/cme \\
        --url grpc://127.0.0.1:8500 --clients 16 --requests 800

Every run first measures the reference: the newest version under ``--model-base-path``, loaded
in this process, its ``predict_waveform`` signature called on a batch of 8 copies of the
utterance (``--inprocess-seconds``, after warm-up), in utterances/s. Then the load: REST and
then gRPC (``--protocol both``, the default when it starts the server), or one of them. The
JSON it prints has, beside each protocol's numbers, ``ratio_to_inprocess`` (its requests/s over
the in-process batch-8 rate) and names the model measured (its path, version and parameter
count, and ``--model-note``).

Every request is ``predict_waveform`` (or, ``--signature predict_waveform_bytes``, the same with
the samples as base64 bytes) on one RAVDESS-length utterance (default: a 3.9 s RAVDESS file,
its transcript force-aligned once with PocketSphinx, sent in the columnar format the client
uses). Without ``--url`` it starts ``cme-ser serve`` on a free loopback port in a
subprocess (so server and clients do not share a GIL), waits until a version is AVAILABLE, and
stops it at the end. Only loopback addresses are accepted as targets. The server runs with
its defaults plus ``--server-arg`` flags: batching is off by default (as in TF Serving), and the
README's numbers were measured with ``--server-arg=--enable-batching``.

The clients share the machine with the server, so they are kept cheap: the whole HTTP request
(headers and body) is encoded once, and each client thread replays it on its own keep-alive
connection with ``sendall`` and reads the answer's status line and ``Content-Length`` (the JSON
is parsed only for an error). Each client first sends its share of ``--warmup`` requests on the
same connection (so every server worker it reaches has run the model), then all start the
measured requests together.

With ``--protocol grpc`` the same utterance goes to ``PredictionService.Predict`` as a
``PredictRequest`` of TensorProtos (``GrpcClient.waveform_request``, built once); each client
thread has its own channel (its own HTTP/2 connection: ``grpc.use_local_subchannel_pool``) and
``PredictionServiceStub``, as a TF Serving user's client would. With ``--workers`` every worker
of a started server serves gRPC on the one port (SO_REUSEPORT).

Prints one JSON line: ``model``, ``inprocess`` (the reference), and for each protocol run
(``rest``, ``grpc``): requests_per_s, p50_ms, p90_ms, p99_ms, errors (non-200 answers and failed
connections), ratio_to_inprocess and the load conditions: CPU milliseconds per request of the
clients and (when it started the server) of the server processes, the CPU cores other
processes used meanwhile (``other_cpu_cores``, from /proc/stat); then ``ratios``, the setup,
the 1-minute load average before and after, and this process's niceness (run it under
``nice`` on a shared machine, and read the load beside the numbers). A ratio compares like with
like only when ``other_cpu_cores`` is low both in ``inprocess`` and in the protocol's run.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.usage_error import UsageError  # noqa: E402
from preprocessing.corpus_options import find_data_dir  # noqa: E402
from serving.client import (  # noqa: E402
    GrpcClient,
    RestClient,
    ServingRequestError,
    Utterance,
    predict_waveform_body,
)

# In the RAVDESS speech directory ($CME_SER_DATA, ./data/ravdess-speech, ...): angry, 3.9 s.
DEFAULT_AUDIO = ("Actor_01", "03-01-05-01-01-01-01.flac")
DEFAULT_TRANSCRIPT = "Kids are talking by the door"
INPROCESS_BATCH = 8


def loopback_only(url: str) -> None:
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        ok = ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        ok = False
    if not ok:
        sys.exit(
            f"serving_load: {url} is not a loopback address; this benchmark only loads "
            f"servers on this machine"
        )


def utterance(audio: Path, transcript: str) -> Utterance:
    from preprocessing.alignment import PocketSphinxAligner
    from preprocessing.audio import load_audio

    waveform, _ = load_audio(audio)
    aligned = PocketSphinxAligner().align(waveform, transcript)
    return Utterance(
        waveform,
        [w.word for w in aligned.words],
        [w.start / 100 for w in aligned.words],
        [w.end / 100 for w in aligned.words],
    )


def start_server(base_path: str, model_name: str, extra: list) -> tuple:
    """``cme-ser serve`` on free ports: (process, REST url, gRPC url or None)."""
    command = [
        sys.executable,
        "-m",
        "cli",
        "serve",
        "--model-base-path",
        base_path,
        "--model-name",
        model_name,
        "--port",
        "0",
        "--host",
        "127.0.0.1",
    ] + extra
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    # "... N worker processes, gRPC at 127.0.0.1:PORT, REST API at http://127.0.0.1:PORT",
    # printed once every worker has loaded the model
    line = ""
    for line in process.stdout:
        if "REST API at " in line:
            break
    if "REST API at " not in line:
        process.kill()
        sys.exit(f"serving_load: the server did not start: {line.strip() or 'no output'}")
    grpc_url = None
    if "gRPC at " in line:
        grpc_url = "grpc://" + line.split("gRPC at ", 1)[1].split(",", 1)[0]
    return process, line.rsplit("REST API at ", 1)[1].strip(), grpc_url


def wait_available(client, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            states = client.status()["model_version_status"]
            if any(s["state"] == "AVAILABLE" for s in states):
                return
        except (ServingRequestError, OSError):
            pass
        if time.monotonic() > deadline:
            sys.exit("serving_load: no model version became AVAILABLE")
        time.sleep(0.2)


def percentile(sorted_values, q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[index]


class GrpcCaller:
    """One channel and PredictionServiceStub replaying one PredictRequest; ``call()`` returns
    None for an answer with outputs, else the error's text."""

    def __init__(self, target: str, request, timeout: float = 60.0):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self._grpc = grpc
        self.channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", -1),
                ("grpc.max_send_message_length", -1),
                ("grpc.use_local_subchannel_pool", 1),
            ],
        )  # a connection of its own
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.request = request
        self.timeout = timeout

    def call(self):
        try:
            response = self.stub.Predict(self.request, timeout=self.timeout)
        except self._grpc.RpcError as error:
            return f"gRPC {error.code().name}: {error.details()}"
        return None if response.outputs else "gRPC: an answer without outputs"

    def close(self) -> None:
        self.channel.close()


class RestCaller:
    """:class:`RawClient` with the :class:`GrpcCaller` interface."""

    def __init__(self, host: str, port: int, request: bytes):
        self.client = RawClient(host, port, request)

    def call(self):
        try:
            status, payload = self.client.call()
        except OSError as error:
            self.client.close()
            return f"connection: {error}"
        if status == 200 and payload[:1] == b"{" and b'"outputs"' in payload:
            return None
        return _error_text(status, payload)

    def close(self) -> None:
        self.client.close()


class RawClient:
    """One keep-alive HTTP/1.1 connection replaying one pre-encoded request."""

    def __init__(self, host: str, port: int, request: bytes, timeout: float = 60.0):
        self.address = (host, port)
        self.request = request
        self.timeout = timeout
        self.sock: socket.socket = None
        self.pending = b""

    def call(self) -> tuple:
        """``(status, body)`` of one round trip; reconnects once if the connection was closed."""
        for attempt in (0, 1):
            if self.sock is None:
                self.sock = socket.create_connection(self.address, timeout=self.timeout)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                try:  # kernel timeouts on a blocking socket: fewer system calls per request
                    limit = struct.pack("ll", int(self.timeout), 0)
                    self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
                    self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
                    self.sock.settimeout(None)
                except (OSError, AttributeError, struct.error):
                    pass
                self.pending = b""
            try:
                self.sock.sendall(self.request)
                return self._response()
            except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
                self.close()
                if attempt:
                    raise

    def _response(self) -> tuple:
        data = self.pending
        while True:
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                break
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("the server closed the connection")
            data += chunk
        head = data[:end].lower()
        status = int(head[9:12])
        length = 0
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : stop if stop >= 0 else len(head)])
        body = data[end + 4 :]
        while len(body) < length:
            chunk = self.sock.recv(max(65536, length - len(body)))
            if not chunk:
                raise ConnectionResetError("the server closed the connection mid-answer")
            body += chunk
        self.pending = body[length:]
        if b"\r\nconnection: close" in head:
            self.close()
        return status, body[:length]

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def http_request(url: str, model_name: str, body: bytes) -> bytes:
    """The whole POST :predict request, headers and body, as bytes."""
    parts = urllib.parse.urlsplit(url)
    path = f"/v1/models/{urllib.parse.quote(model_name, safe='')}:predict"
    return (
        f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode("ascii") + body


def _error_text(status: int, payload: bytes) -> str:
    try:
        return f"HTTP {status}: {json.loads(payload)['error']}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status}: {payload[:200]!r}"


def _busy_ticks() -> int:
    """CPU time all processes used so far (USER_HZ ticks, /proc/stat), or -1 off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return -1
    return sum(fields) - fields[3] - fields[4]  # all but idle and iowait


def _tree_ticks(pid: int) -> int:
    """utime + stime of a process and its children (USER_HZ ticks), or -1."""
    total, todo = 0, [pid]
    try:
        while todo:
            p = todo.pop()
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
            try:
                with open(f"/proc/{p}/task/{p}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
            except OSError:
                pass
    except (OSError, ValueError, IndexError):
        return -1
    return total


def load(
    url: str,
    model_name: str,
    body,
    clients: int,
    requests: int,
    max_seconds: float,
    warmup: int = 0,
    server_pid: int = None,
) -> dict:
    """``body``: the JSON request body for an http:// ``url``, the PredictRequest for a
    grpc:// one."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "grpc":

        def connect():
            return GrpcCaller(parts.netloc, body)
    else:
        request = http_request(url, model_name, body)

        def connect():
            return RestCaller(parts.hostname, parts.port or 80, request)

    latencies, errors, messages = [], [0], []
    lock = threading.Lock()
    remaining = [requests]
    ready = threading.Barrier(clients + 1)
    go = threading.Event()
    deadline = [0.0]
    per_client_warmup = -(-warmup // clients)

    def worker():
        client = connect()
        done = []  # (latency, error text or None) kept thread-local until the end
        try:
            for _ in range(per_client_warmup):
                client.call()
            ready.wait()
            go.wait()
            while time.monotonic() < deadline[0]:
                with lock:
                    if remaining[0] <= 0:
                        break
                    remaining[0] -= 1
                started = time.perf_counter()
                error = client.call()
                done.append((time.perf_counter() - started, error))
        finally:
            client.close()
            with lock:
                for latency, error in done:
                    if error is None:
                        latencies.append(latency)
                        continue
                    errors[0] += 1
                    if len(messages) < 3:
                        messages.append(error)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    ready.wait()  # every client connected and warmed up
    gc.collect()
    gc.freeze()  # the setup's objects (TensorFlow, ...) are never scanned during the run
    client_cpu = time.process_time()
    server_ticks = _tree_ticks(server_pid) if server_pid else -1
    busy = _busy_ticks()
    started = time.perf_counter()
    deadline[0] = time.monotonic() + max_seconds
    go.set()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    client_cpu = time.process_time() - client_cpu
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    server_cpu = (
        (_tree_ticks(server_pid) - server_ticks) / hz if server_pid and server_ticks >= 0 else None
    )
    busy_cpu = (_busy_ticks() - busy) / hz if busy >= 0 else None
    latencies.sort()
    done = len(latencies) + errors[0]
    result = {
        "requests": done,
        "errors": errors[0],
        "seconds": round(wall, 2),
        "requests_per_s": round(len(latencies) / wall, 1) if wall else 0.0,
        "p50_ms": round(1000 * percentile(latencies, 0.50), 1),
        "p90_ms": round(1000 * percentile(latencies, 0.90), 1),
        "p99_ms": round(1000 * percentile(latencies, 0.99), 1),
        "error_samples": messages,
        "client_cpu_ms_per_request": round(1000 * client_cpu / max(done, 1), 2),
    }
    if server_cpu is not None:
        result["server_cpu_ms_per_request"] = round(1000 * server_cpu / max(done, 1), 2)
    if busy_cpu is not None and wall:
        # Everything else that ran on the machine meanwhile (another user's jobs), in cores.
        ours = client_cpu + (server_cpu or 0.0)
        result["other_cpu_cores"] = (
            round(max(0.0, busy_cpu - ours) / wall, 2) if server_cpu is not None else None
        )
        result["machine_busy_cores"] = round(busy_cpu / wall, 2)
    return result


def newest_version(base_path: str) -> Path:
    versions = [p for p in Path(base_path).iterdir() if p.name.isdigit() and p.is_dir()]
    if not versions:
        sys.exit(f"serving_load: no numeric version directory under {base_path}")
    return max(versions, key=lambda p: int(p.name))


def describe_model(version_dir: Path, note: str) -> dict:
    """Which model was measured: its path, version and parameter count (the variables of the
    SavedModel's checkpoint), and the user's note."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(version_dir / "variables" / "variables"))
    shapes = reader.get_variable_to_shape_map()
    parameters = sum(
        int(np.prod(shape))
        for name, shape in shapes.items()
        if "OPTIMIZER_SLOT" not in name
        and name != "_CHECKPOINTABLE_OBJECT_GRAPH"
        and reader.get_variable_to_dtype_map()[name].is_floating
    )
    return {
        "path": str(version_dir),
        "version": int(version_dir.name),
        "parameters": parameters,
        "note": note,
    }


def inprocess_rate(version_dir: Path, utt: Utterance, seconds: float) -> dict:
    """The ``predict_waveform`` signature of the SavedModel, loaded here, called on
    ``INPROCESS_BATCH`` copies of the utterance for ``seconds`` (after 3 warm-up calls)."""
    import tensorflow as tf

    from serving.client import waveform_batch

    function = tf.saved_model.load(str(version_dir)).signatures["predict_waveform"]
    batch = waveform_batch([utt] * INPROCESS_BATCH)
    feeds = {
        k: tf.constant(np.vectorize(lambda w: w.encode("utf-8"), otypes=[object])(v))
        if k == "words"
        else tf.constant(v)
        for k, v in batch.items()
    }
    for _ in range(3):
        function(**feeds)["probabilities"].numpy()
    calls, cpu, busy, started = 0, time.process_time(), _busy_ticks(), time.perf_counter()
    while time.perf_counter() - started < seconds:
        function(**feeds)["probabilities"].numpy()
        calls += 1
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu
    result = {
        "batch": INPROCESS_BATCH,
        "utterances_per_s": round(calls * INPROCESS_BATCH / wall, 1),
        "cpu_ms_per_utterance": round(1000 * cpu / (calls * INPROCESS_BATCH), 2),
        "seconds": round(wall, 2),
    }
    if busy >= 0:  # what other processes took meanwhile, in cores (as for the load runs)
        hz = os.sysconf("SC_CLK_TCK")
        result["other_cpu_cores"] = round(max(0.0, (_busy_ticks() - busy) / hz - cpu) / wall, 2)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-base-path",
        required=True,
        help="the model's <base>/<version>/ directory: measured in process, and "
        "served by a started `cme-ser serve` unless --url is given",
    )
    parser.add_argument("--url", help="a running server of the same model (loopback only)")
    parser.add_argument("--model-name", default="cme")
    parser.add_argument(
        "--model-note",
        default="",
        help="what the model is (e.g. 'shipped shape, untrained'), echoed",
    )
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=800)
    parser.add_argument(
        "--warmup",
        type=int,
        default=64,
        help="requests before measuring, spread over the clients' connections",
    )
    parser.add_argument(
        "--max-seconds", type=float, default=60.0, help="stop measuring by then anyway"
    )
    parser.add_argument(
        "--inprocess-seconds",
        type=float,
        default=10.0,
        help="how long the in-process reference is measured",
    )
    parser.add_argument(
        "--audio",
        default=None,
        help="default: Actor_01/03-01-05-01-01-01-01.flac of the RAVDESS speech "
        "directory ($CME_SER_DATA, ./data/ravdess-speech, "
        "../shared/data/ravdess-speech)",
    )
    parser.add_argument("--transcript", default=DEFAULT_TRANSCRIPT)
    parser.add_argument(
        "--protocol",
        choices=["rest", "grpc", "both"],
        default=None,
        help="REST (JSON) or gRPC (TensorProto) requests, or both one after the "
        "other; default: the --url's scheme, else both",
    )
    parser.add_argument(
        "--signature",
        choices=["predict_waveform", "predict_waveform_bytes"],
        default="predict_waveform",
        help="samples as JSON numbers, or as base64 float32 bytes",
    )
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra `cme-ser serve` argument, repeatable (e.g. "
        "--server-arg=--workers=2, --server-arg=--enable-batching; "
        "batching is off by default, as in TF Serving)",
    )
    args = parser.parse_args(argv)
    if args.clients < 1 or args.requests < 1:
        parser.error("--clients and --requests must be >= 1")
    protocol = args.protocol or (
        "grpc" if (args.url or "").startswith("grpc://") else "rest" if args.url else "both"
    )
    if args.url and (protocol == "both" or (protocol == "grpc") != args.url.startswith("grpc://")):
        parser.error(f"--protocol {protocol} does not match --url {args.url}")
    try:
        audio = Path(args.audio) if args.audio else find_data_dir(None).joinpath(*DEFAULT_AUDIO)
    except UsageError as error:
        sys.exit(f"serving_load: {error}")
    utt = utterance(audio, args.transcript)
    binary = args.signature == "predict_waveform_bytes"
    version_dir = newest_version(args.model_base_path)
    load_before = round(os.getloadavg()[0], 2)
    reference = inprocess_rate(version_dir, utt, args.inprocess_seconds)
    gc.collect()
    process = None
    urls = {}
    if args.url is None:
        process, urls["rest"], urls["grpc"] = start_server(
            args.model_base_path, args.model_name, args.server_arg
        )
        if protocol != "rest" and urls["grpc"] is None:
            process.kill()
            sys.exit("serving_load: the server announced no gRPC address (--grpc-port -1?)")
    else:
        urls[protocol] = args.url
    runs = {}
    try:
        for name in ("rest", "grpc") if protocol == "both" else (protocol,):
            url = urls[name]
            loopback_only(url)
            probe = (
                GrpcClient(url, args.model_name)
                if name == "grpc"
                else RestClient(url, args.model_name)
            )
            wait_available(probe)
            body = (
                probe.waveform_request([utt], binary=binary)
                if name == "grpc"
                else predict_waveform_body([utt], binary=binary)
            )
            probe.close()
            result = load(
                url,
                args.model_name,
                body,
                args.clients,
                args.requests,
                args.max_seconds,
                warmup=args.warmup,
                server_pid=process.pid if process else None,
            )
            result["ratio_to_inprocess"] = round(
                result["requests_per_s"] / reference["utterances_per_s"], 3
            )
            result.update(
                {"url": url, "body_bytes": body.ByteSize() if name == "grpc" else len(body)}
            )
            runs[name] = result
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    report = {
        "model": describe_model(version_dir, args.model_note),
        "inprocess": reference,
        **runs,
        "ratios": {name: run["ratio_to_inprocess"] for name, run in runs.items()},
        "signature": args.signature,
        "clients": args.clients,
        "server": "started" if process is not None else "external",
        "server_args": args.server_arg,
        "utterance_s": round(utt.waveform.size / 16000, 2),
        "words": len(utt.words),
        "cpus": os.cpu_count(),
        "load_avg_1m_before": load_before,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "nice": os.nice(0),
    }
    print(json.dumps(report))
    return 0 if all(run["errors"] == 0 for run in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
