"""Exports an untrained model of the shipped shape, for serving benchmarks.

    python benchmarks/shipped_shape_model.py output/shipped/cme/1

What `make run` pushes is ``trainer.config.SHIPPED``: its variant (the same network whatever it
trains on) at the paper's size, a 3-model seed ensemble whose probabilities are averaged, and
prior correction, exported by ``trainer.export.export_saved_model`` with the GloVe vocabulary.
Training one takes half an hour on 2 cores; a serving benchmark needs only its graph. This
script builds exactly that graph (the same ``build_model`` / ``average_models`` /
``export_saved_model`` calls as ``trainer.module.run_fn``) with the members' initial weights
(seeds 0, 1, 2), the filterbank normalisation adapted on one real RAVDESS utterance, and
uniform prior class counts. The compute per request is the shipped model's; its answers are
meaningless.

Prints one JSON line: the export's path, size, and what it is.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from preprocessing.corpus_options import find_data_dir  # noqa: E402

# A RAVDESS utterance (angry, "Kids are talking by the door") inside the data directory.
NORMALISATION_AUDIO = ("Actor_01", "03-01-05-01-01-01-01.flac")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", help="the version directory to write (<base>/<version>)")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="RAVDESS speech (default: $CME_SER_DATA, ./data/ravdess-speech, "
        "../shared/data/ravdess-speech)",
    )
    args = parser.parse_args(argv)

    from preprocessing import audio, embeddings
    from preprocessing.utterance import filterbank
    from trainer.config import SHIPPED, variant_config
    from trainer.export import export_saved_model
    from trainer.model import adapt_normalization, average_models, build_model

    waveform, _ = audio.load_audio(find_data_dir(args.data_dir).joinpath(*NORMALISATION_AUDIO))
    frames = filterbank(waveform)
    members = []
    for seed in range(SHIPPED["ensemble"]):
        model = build_model(variant_config(SHIPPED["variant"], seed=seed))
        adapt_normalization(model, frames)
        members.append(model)
    config = variant_config(SHIPPED["variant"])
    prior = [1.0] * len(config.class_names) if SHIPPED["prior_correction"] else None
    info = export_saved_model(
        average_models(members),
        args.export_dir,
        class_names=config.class_names,
        vectors=embeddings.load(embeddings.fetch_glove()),
        prior_class_counts=prior,
        overwrite=True,
    )
    print(
        json.dumps(
            {
                "path": str(info["path"]),
                "size_bytes": info["size_bytes"],
                "model": f"untrained {SHIPPED['variant']} x{SHIPPED['ensemble']}"
                f"{'+prior' if prior else ''} (the shipped shape)",
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
