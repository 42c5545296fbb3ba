"""End-to-end throughput of the Beam preprocessing job on RAVDESS 4-class (672 utterances).

    python benchmarks/preprocess_throughput.py [--data-dir DIR] [--workers 2]

Prints one JSON line: utterances, records, errors, seconds (wall clock of the whole job,
Beam start-up and the read-back summary included) and utterances_per_second.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from preprocessing import beam_pipeline, corpora, embeddings  # noqa: E402
from preprocessing.corpus_options import find_data_dir  # noqa: E402
from trainer.config import DEFAULT_CLASSES  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)

    items = list(corpora.ravdess(find_data_dir(args.data_dir), DEFAULT_CLASSES))
    vectors = embeddings.fetch_glove()
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        summary = beam_pipeline.run(
            dataset="ravdess",
            items=items,
            out_dir=out,
            class_names=DEFAULT_CLASSES,
            embeddings_path=str(vectors),
            beam_args=[
                "--runner=DirectRunner",
                "--direct_running_mode=multi_processing",
                f"--direct_num_workers={args.workers}",
            ],
        )
        seconds = time.perf_counter() - start
    result = {
        "benchmark": "preprocess",
        "dataset": "ravdess-4class",
        "workers": args.workers,
        "utterances": len(items),
        "records": summary["records"],
        "errors": summary["errors"],
        "seconds": round(seconds, 1),
        "utterances_per_second": round(len(items) / seconds, 1),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
