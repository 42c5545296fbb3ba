"""Server-side micro-batching: concurrent requests to one signature run as one batch.

The REST server spends most of a request in Python (JSON) with the GIL held; the model call
itself releases it and costs far less per row in a batch (the paper-sized model: ~5 ms for one
RAVDESS utterance, ~20 ms for 16). So requests that arrive while a batch is running wait
(at most ``timeout_s`` after the first of them) and go together, like TF Serving's
``--enable_batching``.

Only signatures whose padding is known to change nothing are batched:

* ``predict_waveform``: ``waveform`` is zero padded to the longest row, ``words`` padded with ""
  and the times with 0 to the most words; the model ignores both (``num_samples`` and the count
  of non-empty words carry the lengths), and the per-word outputs are cut back to each
  request's word count; ``predict_waveform_bytes`` likewise (its ``[B]`` sample strings are
  padded in-graph);
* ``serving_default``: ``examples`` is ``[B]``, nothing to pad.

Any other signature runs request by request. If a merged batch fails (an input check of the
graph, ``trainer.export.check_waveform_inputs``, refused a row), its requests are re-run one by
one, so one bad request cannot fail the others and gets the error it gets alone. A request
whose padding could hide what the graph checks (:func:`mergeable`) is never merged: it runs
alone.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

from serving.status import ServingError
from trainer.signature_names import (
    EXCITATION_OUTPUTS,
    PREDICT_WAVEFORM,
    PREDICT_WAVEFORM_BYTES,
    SERVING_DEFAULT,
    WAVEFORM_BYTES_INPUTS,
    WAVEFORM_INPUTS,
)


@dataclasses.dataclass(frozen=True)
class Policy:
    """How to merge one signature's requests: the value each input is padded with (along every
    axis after the batch axis), and which outputs have a per-word axis 1 to cut back to the
    request's ``words`` length."""

    pad_values: Mapping[str, object]
    per_word_outputs: Tuple[str, ...] = ()
    # Inputs that must have one shape in a request (padding would make them agree).
    same_shape: Tuple[str, ...] = ()
    # (lengths [B], padded [B, S]): lengths[b] must be <= the request's own S (padding adds S).
    lengths: Optional[Tuple[str, str]] = None


_WORDS = {"num_samples": 0, "words": b"", "word_start_s": 0.0, "word_end_s": 0.0}
_WORD_SLOTS = ("words", "word_start_s", "word_end_s")
POLICIES = {
    PREDICT_WAVEFORM: Policy(
        {"waveform": 0.0, **_WORDS}, EXCITATION_OUTPUTS, _WORD_SLOTS, ("num_samples", "waveform")
    ),
    # [B] strings: concatenated; the graph pads the decoded samples itself.
    PREDICT_WAVEFORM_BYTES: Policy(
        {"waveform_bytes": b"", **_WORDS}, EXCITATION_OUTPUTS, _WORD_SLOTS
    ),
    SERVING_DEFAULT: Policy({"examples": b""}),
}
_EXPECTED_INPUTS = {
    PREDICT_WAVEFORM: set(WAVEFORM_INPUTS),
    PREDICT_WAVEFORM_BYTES: set(WAVEFORM_BYTES_INPUTS),
    SERVING_DEFAULT: {"examples"},
}


def policy_for(signature) -> Optional[Policy]:
    """The policy of one of our signatures, recognised by name and inputs; else None."""
    policy = POLICIES.get(signature.name)
    if policy is None or set(signature.inputs) != _EXPECTED_INPUTS[signature.name]:
        return None
    return policy


def mergeable(tensors: Mapping[str, np.ndarray], policy: Policy) -> bool:
    """Whether ``tensors`` (one request) can be padded into a merged batch without changing
    what the graph's input checks see: every input has the request's rows, the ``same_shape``
    inputs one shape, and ``lengths`` fit the request's own padded axis. Not a check of the
    request (the graph makes those): one that is not mergeable runs alone and the graph answers
    it as sent, where padding could have made a bad request pass."""
    arrays = [tensors.get(name) for name in policy.pad_values]
    if any(a is None or np.ndim(a) == 0 for a in arrays):
        return False
    rows = arrays[0].shape[0]
    if any(a.shape[0] != rows for a in arrays):
        return False
    if len({tensors[name].shape for name in policy.same_shape}) > 1:
        return False
    if policy.lengths is not None and rows:
        lengths, padded = (tensors[name] for name in policy.lengths)
        if padded.ndim != 2 or np.max(lengths) > padded.shape[1]:
            return False
    return True


@dataclasses.dataclass
class _Item:
    tensors: Mapping[str, np.ndarray]
    rows: int
    arrived: float
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    outputs: Optional[Dict[str, np.ndarray]] = None
    error: Optional[BaseException] = None


class Batcher:
    """Runs requests through per-(version, signature) queues served by worker threads.

    ``max_batch_size`` caps the rows of a merged batch; ``timeout_s`` is the longest the first
    request of a batch waits for company; ``num_threads`` batches may run at once per queue
    (while one runs in TensorFlow, the next one fills). Idle workers exit after ``idle_s``.
    """

    def __init__(
        self,
        *,
        max_batch_size: int = 32,
        timeout_s: float = 0.002,
        num_threads: int = 2,
        idle_s: float = 30.0,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.max_batch_size = max_batch_size
        self.timeout_s = max(0.0, timeout_s)
        self.num_threads = max(1, num_threads)
        self.idle_s = idle_s
        self._lock = threading.Lock()
        self._queues: Dict[Tuple[int, str], "_Queue"] = {}
        self.batches = 0  # model calls made, and the requests they answered (for monitoring)
        self.requests = 0
        self.merge_failures = 0  # merged batches that failed and were re-run request by request
        self._closed = False

    def run(self, version, signature, tensors: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """The signature's outputs for ``tensors`` (one request), possibly computed in a batch."""
        policy = policy_for(signature)
        rows = next(iter(tensors.values())).shape[0] if tensors else 0
        if (
            policy is None
            or rows == 0
            or rows >= self.max_batch_size
            or not mergeable(tensors, policy)
        ):
            return signature.run(tensors)
        key = (id(version), signature.name)
        with self._lock:
            if self._closed:  # shutting down: no new worker threads
                return signature.run(tensors)
            queue = self._queues.get(key)
            if queue is None or queue.signature is not signature:
                queue = self._queues[key] = _Queue(self, signature, policy)
        item = _Item(tensors, rows, time.monotonic())
        if not queue.submit(item):  # closed meanwhile
            return signature.run(tensors)
        item.done.wait()
        if item.error is not None:
            raise item.error
        return item.outputs

    def close(self) -> None:
        """Lets every worker thread finish the batches already queued, then joins them: no
        thread of ours may still be inside TensorFlow when the interpreter tears it down."""
        with self._lock:
            self._closed = True
            queues = list(self._queues.values())
        for queue in queues:
            queue.close()

    def _forget(self, queue: "_Queue") -> None:
        with self._lock:
            for key, value in list(self._queues.items()):
                if value is queue:
                    del self._queues[key]


class _Queue:
    def __init__(self, batcher: Batcher, signature, policy: Policy):
        self.batcher = batcher
        self.signature = signature
        self.policy = policy
        self.cond = threading.Condition()
        self.items: collections.deque = collections.deque()
        self.workers = 0
        self.threads: List[threading.Thread] = []
        self.closed = False

    def submit(self, item: _Item) -> bool:
        """Queues ``item`` for a worker thread; False (nothing queued) once closed."""
        with self.cond:
            if self.closed:
                return False
            self.items.append(item)
            if self.workers < self.batcher.num_threads:
                self.workers += 1
                thread = threading.Thread(target=self._work, name=f"batch-{self.signature.name}")
                self.threads = [t for t in self.threads if t.is_alive()] + [thread]
                thread.start()
            self.cond.notify()
            return True

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
            threads = list(self.threads)
        for thread in threads:
            thread.join()

    def _take(self) -> Optional[List[_Item]]:
        """Next batch: wait for a first item, then for company until it is full or the first
        item has waited ``timeout_s``. None when idle for ``idle_s``."""
        batcher = self.batcher
        with self.cond:
            while not self.items:
                if (self.closed or not self.cond.wait(batcher.idle_s)) and not self.items:
                    self.workers -= 1
                    if self.workers == 0:
                        batcher._forget(self)
                    return None
            while True:
                rows = sum(item.rows for item in self.items)
                remaining = self.items[0].arrived + batcher.timeout_s - time.monotonic()
                if rows >= batcher.max_batch_size or remaining <= 0:
                    break
                self.cond.wait(remaining)
                if not self.items:  # another worker took them
                    return []
            batch, rows = [], 0
            while self.items and (not batch or rows + self.items[0].rows <= batcher.max_batch_size):
                item = self.items.popleft()
                batch.append(item)
                rows += item.rows
            return batch

    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            if batch:
                self._run(batch)

    def _run(self, batch: List[_Item]) -> None:
        with self.batcher._lock:
            self.batcher.batches += 1
            self.batcher.requests += len(batch)
        if len(batch) > 1:
            try:
                outputs = self.signature.run(merge([i.tensors for i in batch], self.policy))
            except Exception:  # re-run alone: each request gets its own answer or error
                outputs = None
                with self.batcher._lock:
                    self.batcher.merge_failures += 1
            if outputs is not None:
                offset = 0
                for item in batch:
                    item.outputs = split(outputs, item, offset, self.policy)
                    offset += item.rows
                    item.done.set()
                return
        for item in batch:
            try:
                item.outputs = self.signature.run(item.tensors)
            except ServingError as error:
                item.error = error
            except Exception as error:  # delivered to the request thread, which reports it
                item.error = error
            item.done.set()


def merge(requests: List[Mapping[str, np.ndarray]], policy: Policy) -> Dict[str, np.ndarray]:
    """Concatenate requests along axis 0, padding every later axis to the largest size."""
    merged = {}
    for name, pad in policy.pad_values.items():
        arrays = [r[name] for r in requests]
        if arrays[0].ndim > 1:
            target = np.max([a.shape[1:] for a in arrays], axis=0)
            arrays = [_pad(a, target, pad) for a in arrays]
        merged[name] = np.concatenate(arrays, axis=0)
    return merged


def _pad(array: np.ndarray, target, value) -> np.ndarray:
    widths = [(0, 0)] + [(0, int(t) - s) for t, s in zip(target, array.shape[1:])]
    if not any(after for _, after in widths):
        return array
    if array.dtype == object:
        out = np.full((array.shape[0],) + tuple(int(t) for t in target), value, dtype=object)
        out[tuple(slice(0, s) for s in array.shape)] = array
        return out
    return np.pad(array, widths, constant_values=value)


def split(
    outputs: Mapping[str, np.ndarray], item: _Item, offset: int, policy: Policy
) -> Dict[str, np.ndarray]:
    """One request's rows of a merged batch's outputs, per-word outputs cut to its words."""
    rows = slice(offset, offset + item.rows)
    result = {}
    for name, value in outputs.items():
        part = value[rows]
        if name in policy.per_word_outputs:
            part = part[:, : item.tensors["words"].shape[1]]
        result[name] = part
    return result
