"""What an augmented copy costs in preprocessing, next to the record it is made from.

    python benchmarks/augment_cost.py [--data-dir DIR] [--utterances 60]

On the first ``--utterances`` RAVDESS 4-class speech utterances, in one process (no Beam):
``record_ms``, one utterance to its record (decode, filterbank, forced alignment, word vectors;
``utterance_to_examples`` without copies); ``with_copy_ms``, the same with one augmented copy;
``copy_ms``, their difference; and per copy the parts, ``augment_ms`` (the drawn condition on
the waveform) and ``filterbank_ms`` (the copy's features), per condition chain too. Means over
the utterances, in milliseconds; each utterance is processed once per measurement, after one
warm-up utterance. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from preprocessing import alignment, audio, augment, corpora, embeddings, utterance  # noqa: E402
from preprocessing.corpus_options import find_data_dir  # noqa: E402
from trainer.config import DEFAULT_CLASSES  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--utterances", type=int, default=60)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)

    items, _ = corpora.partition(corpora.ravdess(find_data_dir(args.data_dir), DEFAULT_CLASSES))
    items = items[: args.utterances + 1]
    aligner = alignment.PocketSphinxAligner()
    vectors = embeddings.load(str(embeddings.fetch_glove()))

    def process(item, copies):
        return utterance.utterance_to_examples(
            item,
            aligner=aligner,
            vectors=vectors,
            class_names=DEFAULT_CLASSES,
            fold=0,
            augment_copies=copies,
        )

    times = collections.defaultdict(list)
    by_chain = collections.defaultdict(list)
    process(items[0], 1)  # warm-up: traced filterbank, loaded models
    for item in items[1:]:
        for copies, key in ((0, "record_ms"), (1, "with_copy_ms")):
            start = time.perf_counter()
            process(item, copies)
            times[key].append((time.perf_counter() - start) * 1000)
        waveform, _ = audio.load_audio(item.audio_path)
        condition = augment.draw(item.utterance_id, 1)
        start = time.perf_counter()
        copy = augment.apply(waveform, condition)
        middle = time.perf_counter()
        utterance.filterbank(copy)
        end = time.perf_counter()
        times["augment_ms"].append((middle - start) * 1000)
        times["filterbank_ms"].append((end - middle) * 1000)
        by_chain["+".join(condition.names)].append((middle - start) * 1000)
        times["seconds"].append(waveform.size / 16000)
    mean = {k: float(np.mean(v)) for k, v in times.items()}
    result = {
        "benchmark": "augment_cost",
        "dataset": "ravdess-speech-4class",
        "utterances": len(items) - 1,
        "mean_audio_seconds": round(mean["seconds"], 2),
        "record_ms": round(mean["record_ms"], 1),
        "with_copy_ms": round(mean["with_copy_ms"], 1),
        "copy_ms": round(mean["with_copy_ms"] - mean["record_ms"], 1),
        "augment_ms": round(mean["augment_ms"], 2),
        "filterbank_ms": round(mean["filterbank_ms"], 2),
        "augment_ms_by_condition": {
            name: {"copies": len(v), "ms": round(float(np.mean(v)), 2)}
            for name, v in sorted(by_chain.items())
        },
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
