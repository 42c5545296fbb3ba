"""Trains one `cme-ser reproduce` unit (variant, seed, held-out fold) exactly as the protocols do
and prints what it gave as JSON: the chosen epoch, WA, UA and a hash of its held-out
probabilities. Run it twice with one setting changed to see whether that setting changes the
model: the intra-op thread count (``--threads``), the CPU instructions oneDNN may use
(``ONEDNN_MAX_CPU_ISA=AVX2`` in the environment, as on a machine without AVX-512), oneDNN
itself (``TF_ENABLE_ONEDNN_OPTS=0``), or the code (run it from another checkout).

    python benchmarks/unit_determinism.py --records output/reproduce/ravdess-stability/records \
        --variant cme_refit_bag --seed 0 --fold 4 --threads 1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from experiments.reproduce import Unit, run_unit  # noqa: E402
from experiments.units import _worker_init  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", required=True, help="a `cme-ser preprocess` output")
    parser.add_argument("--variant", default="cme_refit_bag")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fold", type=int, default=4)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="TensorFlow intra/inter-op threads (0: its default, the cores)",
    )
    args = parser.parse_args()
    _worker_init(args.threads)  # what a `reproduce --threads N` worker does first
    unit = Unit(args.variant, args.seed, args.fold)
    with tempfile.TemporaryDirectory() as work:
        row = run_unit(args.records, work, unit)
        probabilities = np.load(unit.path(work).with_suffix(".npz"))["probabilities"]
    print(
        json.dumps(
            {
                "unit": str(unit),
                "threads": args.threads,
                "machine": row["machine"],
                "commit": row["commit"],
                "best_epoch": row["best_epoch"],
                "wa": row["wa"],
                "ua": row["ua"],
                "seconds": row["seconds"],
                "probabilities_sha256": hashlib.sha256(
                    probabilities.astype(np.float32).tobytes()
                ).hexdigest(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
