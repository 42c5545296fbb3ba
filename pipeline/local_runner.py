"""The pipeline for the TFX CLI's local engine:

    tfx pipeline create --engine local --pipeline_path pipeline/local_runner.py
    tfx run create --engine local --pipeline_name cme_ser

Settings come from the environment (defaults in brackets): CME_SER_OUTPUT [output] (a local
directory or object storage, s3:// or gs://), CME_SER_METADATA [<output>/tfx/metadata.sqlite]
(ML Metadata's local SQLite file; needed when the output is object storage),
CME_SER_DATA [./data/ravdess-speech or ../shared/data/ravdess-speech], CME_SER_SONG_DATA
[./data/ravdess-song or ../shared/data/ravdess-song] (read when the variant trains on song),
CME_SER_EMBEDDINGS
[~/.cache/cme-ser/glove-6b-50d], CME_SER_FOLDS [5], CME_SER_EPOCHS [ModelConfig default],
CME_SER_PIPELINE_NAME [cme_ser], CME_SER_VARIANT [cme_fixed20_song] (a name in trainer/config.py:
VARIANTS), CME_SER_ENSEMBLE [3] (models per Trainer, exported as one averaging model),
CME_SER_PRIOR_CORRECTION [1] (1/true/yes/on or 0/false/no/off: the export divides the averaged
probabilities by the training class prior), CME_SER_BLESS_MIN_UA [0.0] (the cross-validated UA
mean needed to push, as `cme-ser run --bless-min-ua`), CME_SER_VERBOSE [0] (1: TensorFlow's,
Beam's and TFX's messages on the terminal, as `cme-ser run --verbose`; otherwise in
<output>/cme-ser-run.log, named on the first line). The model defaults are `cme-ser run`'s, the
shipped model (trainer/config.py: SHIPPED).
"""

import os
import sys
import time

# Run as a script (python or the TFX CLI), this file's folder comes first on sys.path, where
# `pipeline` would mean pipeline/pipeline.py instead of this package: take the folder out.
_HERE = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _HERE]

from tfx import v1 as tfx  # noqa: E402

from infra import filesystems  # noqa: E402
from infra.console import library_output_to  # noqa: E402
from infra.process_exit import exit_process  # noqa: E402
from infra.usage_error import UsageError  # noqa: E402
from pipeline.run_command import (  # noqa: E402
    check_fold_plan,
    corpus_channels,
    training_channels,
)
from pipeline.runner import (  # noqa: E402
    PIPELINE_NAME,
    local_pipeline,
    metadata_file,
    newest_run_started,
    output_dir,
    run_log_file,
    run_summary,
    stage_progress,
)
from preprocessing.corpus_options import find_data_dirs  # noqa: E402
from preprocessing.embeddings import default_embeddings_path  # noqa: E402
from trainer.config import SHIPPED, variant_config  # noqa: E402

TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def model_settings(environ=os.environ) -> dict:
    """``config``, ``channels``, ``ensemble_size`` and ``prior_correction`` for
    ``local_pipeline`` from
    CME_SER_VARIANT, CME_SER_EPOCHS, CME_SER_ENSEMBLE and CME_SER_PRIOR_CORRECTION; unset, the
    shipped model (``SHIPPED``), as `cme-ser run`; the channels are the variant's."""
    config = variant_config(environ.get("CME_SER_VARIANT", SHIPPED["variant"]))
    if environ.get("CME_SER_EPOCHS"):
        config = config.replace(epochs=int(environ["CME_SER_EPOCHS"]))
    prior = environ.get("CME_SER_PRIOR_CORRECTION", "").strip().lower()
    if prior and prior not in TRUE + FALSE:
        raise ValueError(
            f"CME_SER_PRIOR_CORRECTION must be one of {'/'.join(TRUE)} or "
            f"{'/'.join(FALSE)}, got {environ['CME_SER_PRIOR_CORRECTION']!r}"
        )
    config, channels = training_channels(config, None)  # the variant's channels
    return {
        "config": config,
        "channels": channels,
        "ensemble_size": int(environ.get("CME_SER_ENSEMBLE", SHIPPED["ensemble"])),
        "prior_correction": prior in TRUE if prior else SHIPPED["prior_correction"],
    }


if __name__ == "__main__":
    output = os.environ.get("CME_SER_OUTPUT", "output")
    metadata = os.environ.get("CME_SER_METADATA") or None
    bless_min_ua = float(os.environ.get("CME_SER_BLESS_MIN_UA", "0.0"))
    pipeline_name = os.environ.get("CME_SER_PIPELINE_NAME", PIPELINE_NAME)
    verbose = os.environ.get("CME_SER_VERBOSE", "").strip().lower() in TRUE
    settings = model_settings()
    num_folds = int(os.environ.get("CME_SER_FOLDS", "5"))
    try:  # as `cme-ser run`: a corpus too small for the plan is refused before any training
        data_dirs = find_data_dirs(None, "ravdess", corpus_channels(settings["config"]))
        check_fold_plan(
            data_dirs,
            settings["config"],
            num_folds,
            settings["ensemble_size"],
            settings["prior_correction"],
        )
    except UsageError as error:
        sys.exit(f"local_runner.py: error: {error}")
    log = None if verbose else run_log_file(output_dir(output), metadata_file(output, metadata))
    if log:
        print(
            f"TensorFlow, Beam and TFX messages: {log} (CME_SER_VERBOSE=1 shows them here)",
            flush=True,
        )
    started = time.time()
    with library_output_to(log), stage_progress():  # the same lines as `cme-ser run`
        tfx.orchestration.LocalDagRunner().run(
            local_pipeline(
                output,
                data_dir=data_dirs,
                embeddings_path=str(default_embeddings_path()),
                num_folds=num_folds,
                **settings,
                bless_min_ua=bless_min_ua,
                pipeline_name=pipeline_name,
                metadata_path=metadata,
            )
        )
    # `tfx pipeline create` runs this file with run() bypassed: then there is no run to report.
    newest = newest_run_started(output, metadata)
    if newest is not None and newest >= started - 1:
        print(run_summary(output, bless_min_ua, pipeline_name, metadata)[1], flush=True)
    if filesystems.s3_enabled():  # would abort at exit otherwise (infra.process_exit)
        exit_process(0)
