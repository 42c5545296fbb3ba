"""Load test of the REST endpoint: N concurrent clients, a bounded number of requests.

    python benchmarks/serving_load.py --model-base-path output/serving_model/cme \\
        --clients 16 --requests 400
    python benchmarks/serving_load.py --url http://127.0.0.1:8501 --clients 16 --requests 400

Every request is ``predict_waveform`` (or, ``--signature predict_waveform_bytes``, the same with
the samples as base64 bytes) on one RAVDESS-length utterance (default: a 3.9 s RAVDESS file,
its transcript force-aligned once with PocketSphinx, sent in the columnar format the client
uses). Without ``--url`` it starts ``cme-ser serve`` on a free loopback port in a
subprocess (so server and clients do not share a GIL), waits until a version is AVAILABLE, and
stops it at the end. Only loopback addresses are accepted as targets.

Prints one JSON line: requests_per_s, p50_ms, p90_ms, p99_ms, errors (non-200 answers and
failed connections), plus the setup.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving.client import (RestClient, ServingRequestError, Utterance,  # noqa: E402
                            predict_waveform_body)

RAVDESS = Path(os.environ.get("CME_SER_DATA", "/work/shared/data/ravdess-speech"))
DEFAULT_AUDIO = RAVDESS / "Actor_01" / "03-01-05-01-01-01-01.flac"  # angry, "kids...", 3.7 s
DEFAULT_TRANSCRIPT = "Kids are talking by the door"


def loopback_only(url: str) -> None:
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        ok = ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        ok = False
    if not ok:
        sys.exit(f"serving_load: {url} is not a loopback address; this benchmark only loads "
                 f"servers on this machine")


def utterance(audio: Path, transcript: str) -> Utterance:
    from preprocessing.alignment import PocketSphinxAligner
    from preprocessing.audio import load_audio

    waveform, _ = load_audio(audio)
    aligned = PocketSphinxAligner().align(waveform, transcript)
    return Utterance(waveform, [w.word for w in aligned.words],
                     [w.start / 100 for w in aligned.words], [w.end / 100 for w in aligned.words])


def start_server(base_path: str, model_name: str, extra: list) -> tuple:
    """``cme-ser serve`` on a free port: (process, url)."""
    command = [sys.executable, "-m", "pipeline.cli", "serve", "--model-base-path", base_path,
               "--model-name", model_name, "--port", "0", "--host", "127.0.0.1"] + extra
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True, cwd=Path(__file__).resolve().parents[1])
    line = process.stdout.readline()  # "... REST API at http://127.0.0.1:PORT"
    if "REST API at " not in line:
        process.kill()
        sys.exit(f"serving_load: the server did not start: {line.strip() or 'no output'}")
    return process, line.rsplit("REST API at ", 1)[1].strip()


def wait_available(client: RestClient, seconds: float = 120.0) -> None:
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


def load(url: str, model_name: str, body: bytes, clients: int, requests: int,
         max_seconds: float) -> dict:
    latencies, errors, messages = [], [0], []
    lock = threading.Lock()
    remaining = [requests]
    deadline = time.monotonic() + max_seconds

    def worker():
        client = RestClient(url, model_name, timeout=60.0)
        try:
            while time.monotonic() < deadline:
                with lock:
                    if remaining[0] <= 0:
                        return
                    remaining[0] -= 1
                started = time.perf_counter()
                try:
                    client.post_predict(body)
                    ok = True
                except (ServingRequestError, OSError) as error:
                    ok = False
                    client.close()
                    with lock:
                        if len(messages) < 3:
                            messages.append(str(error))
                elapsed = time.perf_counter() - started
                with lock:
                    if ok:
                        latencies.append(elapsed)
                    else:
                        errors[0] += 1
        finally:
            client.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    latencies.sort()
    done = len(latencies) + errors[0]
    return {"requests": done, "errors": errors[0], "seconds": round(wall, 2),
            "requests_per_s": round(len(latencies) / wall, 1) if wall else 0.0,
            "p50_ms": round(1000 * percentile(latencies, 0.50), 1),
            "p90_ms": round(1000 * percentile(latencies, 0.90), 1),
            "p99_ms": round(1000 * percentile(latencies, 0.99), 1),
            "error_samples": messages}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running server (loopback only)")
    target.add_argument("--model-base-path", help="start `cme-ser serve` on this directory")
    parser.add_argument("--model-name", default="cme")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=20, help="requests before measuring")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="stop by then anyway")
    parser.add_argument("--audio", default=str(DEFAULT_AUDIO))
    parser.add_argument("--transcript", default=DEFAULT_TRANSCRIPT)
    parser.add_argument("--signature", choices=["predict_waveform", "predict_waveform_bytes"],
                        default="predict_waveform",
                        help="samples as JSON numbers, or as base64 float32 bytes")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra `cme-ser serve` argument, repeatable (e.g. --server-arg=--no-batching)")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.requests < 1:
        parser.error("--clients and --requests must be >= 1")

    utt = utterance(Path(args.audio), args.transcript)
    body = predict_waveform_body([utt], binary=args.signature == "predict_waveform_bytes")
    process = None
    url = args.url
    if url is None:
        process, url = start_server(args.model_base_path, args.model_name, args.server_arg)
    loopback_only(url)
    try:
        probe = RestClient(url, args.model_name)
        wait_available(probe)
        for _ in range(args.warmup):
            probe.post_predict(body)
        probe.close()
        result = load(url, args.model_name, body, args.clients, args.requests, args.max_seconds)
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    result.update({"signature": args.signature, "clients": args.clients, "url": url,
                   "server": "started" if process is not None else "external",
                   "server_args": args.server_arg, "utterance_s": round(utt.waveform.size / 16000, 2),
                   "words": len(utt.words), "body_bytes": len(body), "cpus": os.cpu_count()})
    print(json.dumps(result))
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
