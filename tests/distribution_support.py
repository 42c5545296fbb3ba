"""One Trainer process of the multi-worker test (a support module: no tests here).

``python tests/distribution_support.py RECORDS SERVING_DIR RUN_DIR CONFIG_JSON EMBEDDINGS
ENSEMBLE`` runs ``trainer.module.run_fn`` on ``RECORDS``'s two folds as the TFX Trainer would,
in the cluster ``TF_CONFIG`` names (none: one process)."""

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv) -> None:
    records, serving_dir, run_dir, config_json, embeddings, ensemble = argv
    from tfx import v1 as tfx

    from trainer.module import run_fn

    run_fn(
        tfx.components.FnArgs(
            train_files=[
                os.path.join(records, "records", f"fold-{k}", "*.tfrecord.gz") for k in (0, 1)
            ],
            serving_model_dir=serving_dir,
            model_run_dir=run_dir,
            custom_config={
                "model_config": config_json,
                "embeddings_path": embeddings,
                "vocab_size": 1000,
                "ensemble_size": int(ensemble),
                "prior_correction": True,
            },
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
