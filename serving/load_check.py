"""``python -m serving.load_check MODEL_DIR``: load a SavedModel as ``cme-ser serve`` loads a
version (``serving.repository.load_version``: its signatures, then every warm-up request in
``assets.extra/tf_serving_warmup_requests`` through its signature, as TF Serving replays them),
and exit 0 only when it loaded and answered at least one warm-up request.

The pipeline's ``ModelLoadValidator`` (``pipeline.infra_validation``) runs this in a fresh
process. It imports what a model server imports (TensorFlow and this package), not TFX: TFX's
``v1`` API alone takes longer to import than the model takes to load.
"""

import os
import sys
import tempfile
from pathlib import Path

READY = "cme-ser infra validation: loaded, warm-up requests answered: "  # the parent looks for it


def main(argv=None) -> int:
    from serving.repository import WARMUP_PATH, load_version

    (model_dir,) = argv if argv is not None else sys.argv[1:]
    with tempfile.TemporaryDirectory() as scratch:
        # The server's loader reads local directories; a cluster's artifacts are in a bucket.
        local = model_dir if "://" not in model_dir else _download(model_dir, scratch)
        version = load_version(1, Path(local))
        if not version.warmup_requests:  # then loading proves nothing about answering
            print(
                f"{model_dir}: no warm-up requests ({'/'.join(WARMUP_PATH)})",
                file=sys.stderr,
            )
            return 1
        print(
            f"{READY}{version.warmup_requests} ({', '.join(sorted(version.signatures))})",
            flush=True,
        )
    return 0


def _download(remote: str, local: str) -> str:
    """Copies the directory tree ``remote`` (any TensorFlow filesystem) under ``local``."""
    import tensorflow as tf

    remote = remote.rstrip("/")
    for directory, _, files in tf.io.gfile.walk(remote):
        target = os.path.join(local, os.path.relpath(directory, remote))
        os.makedirs(target, exist_ok=True)
        for name in files:
            tf.io.gfile.copy(f"{directory}/{name}", os.path.join(target, name), overwrite=True)
    return local


if __name__ == "__main__":
    from infra import filesystems
    from infra.process_exit import exit_process

    _args = sys.argv[1:]
    filesystems.enable(*_args)
    _code = main(_args)
    if filesystems.s3_enabled():  # would abort at exit otherwise (infra.process_exit)
        exit_process(_code)
    sys.exit(_code)
