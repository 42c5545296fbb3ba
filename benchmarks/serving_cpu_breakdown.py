"""Where a REST prediction's CPU goes, stage by stage, against the model's own cost in process.

    python benchmarks/serving_cpu_breakdown.py --model-base-path output/serving_model/cme

One ``predict_waveform`` request (a 3.9 s RAVDESS utterance, the columnar JSON body the client
sends), each stage of ``serving.server.RestApi`` timed alone, in this process, on one thread:

* ``http``: the request read by ``serving.http_front`` (h11) from a loopback socket and the
  answer written back, with a handler that answers at once (no JSON, no model);
* ``json_decode``: ``serving.fast_json.parse`` of the body;
* ``tensor_building``: ``json_tensors.request_tensors`` (the decoded document -> arrays);
* ``signature_call_batch1``: ``Signature.run`` (``tf.constant`` feeds, the call, ``.numpy()``);
* ``response_encode``: ``json_tensors.predict_response``;
* ``respond_total``: ``RestApi.respond`` end to end (all but ``http``);
* ``inprocess_batch8_per_utterance``: the signature called on 8 copies, per utterance.

Prints one JSON line: CPU (``time.process_time``) and wall milliseconds per call of each, the
model measured and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from serving_load import (  # noqa: E402
    DEFAULT_AUDIO,
    DEFAULT_TRANSCRIPT,
    RawClient,
    describe_model,
    http_request,
    newest_version,
    utterance,
)


def timed(function, calls: int) -> dict:
    function()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(calls):
        function()
    return {
        "cpu_ms": round(1000 * (time.process_time() - cpu) / calls, 3),
        "wall_ms": round(1000 * (time.perf_counter() - wall) / calls, 3),
    }


def http_cost(request: bytes, calls: int) -> dict:
    """The front end alone: a loopback client replays ``request``; the handler answers a
    fixed 443-byte body at once. CPU of this process (the client's share included, which
    ``RawClient`` keeps small)."""
    from serving.http_front import Answer, HttpFront

    answer = Answer(200, (("Content-Type", "application/json"),), b"x" * 443)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    loop = asyncio.new_event_loop()

    async def handler(_request):
        return answer

    front = HttpFront(handler)
    loop.run_until_complete(front.start([listener]))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    client = RawClient("127.0.0.1", port, request)
    try:
        return timed(client.call, calls)
    finally:
        client.close()
        asyncio.run_coroutine_threadsafe(front.close(1.0), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-base-path", required=True)
    parser.add_argument("--model-note", default="")
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args(argv)

    from preprocessing.corpus_options import find_data_dir
    from serving import fast_json, json_tensors
    from serving.client import predict_waveform_body, waveform_batch
    from serving.repository import ModelRepository
    from serving.server import RestApi

    utt = utterance(find_data_dir(None).joinpath(*DEFAULT_AUDIO), DEFAULT_TRANSCRIPT)
    body = predict_waveform_body([utt])
    version_dir = newest_version(args.model_base_path)
    repository = ModelRepository(args.model_base_path, "cme")
    repository.refresh()
    api = RestApi(repository)
    signature = repository.resolve().signatures["predict_waveform"]
    n = args.calls
    fast = fast_json.parse(body)
    request = json_tensors.request_tensors(
        fast.doc, signature.inputs, "predict_waveform", fast.bools_possible
    )
    outputs = signature.run(request.tensors)
    dtypes = {k: spec.dtype for k, spec in signature.outputs.items()}
    batch = waveform_batch([utt] * 8)
    batch["words"] = np.vectorize(lambda w: w.encode("utf-8"), otypes=[object])(batch["words"])
    stages = {
        "http": http_cost(http_request("http://127.0.0.1", "cme", body), n),
        "json_decode": timed(lambda: fast_json.parse(body), n),
        "tensor_building": timed(
            lambda: json_tensors.request_tensors(
                fast.doc, signature.inputs, "predict_waveform", fast.bools_possible
            ),
            n,
        ),
        "signature_call_batch1": timed(lambda: signature.run(request.tensors), n),
        "response_encode": timed(
            lambda: json_tensors.predict_response(outputs, dtypes, request.format), n
        ),
        "respond_total": timed(lambda: api.respond("POST", "/v1/models/cme:predict", {}, body), n),
    }
    per_batch = timed(lambda: signature.run(batch), max(10, n // 8))
    stages["inprocess_batch8_per_utterance"] = {k: round(v / 8, 3) for k, v in per_batch.items()}
    repository.stop()
    print(
        json.dumps(
            {
                "model": describe_model(version_dir, args.model_note),
                "body_bytes": len(body),
                "stages": stages,
                "load_avg_1m": round(os.getloadavg()[0], 2),
                "nice": os.nice(0),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
