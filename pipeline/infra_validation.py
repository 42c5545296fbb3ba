"""Push only a model that a model server can load and that answers a request: the pipeline's
InfraValidator step, locally and on Kubeflow alike.

``ModelLoadValidator``: a fresh Python process (``python -m serving.load_check``) loads the final
model's serving export exactly as ``cme-ser serve`` does (``serving.repository.load_version``:
the signatures, then every warm-up request in ``assets.extra/tf_serving_warmup_requests``
through its signature, as TF Serving replays them before a version becomes available) and must
exit 0. A fresh process, because the
Trainer's process already holds the graph's ops and kernels: a model that only loads there
would pass. It writes an ``InfraBlessing`` as TFX's InfraValidator does (custom property
``blessed`` 1 or 0, an ``INFRA_BLESSED`` or ``INFRA_NOT_BLESSED`` file), which
``tfx.components.Pusher`` checks before it pushes.

Why not ``tfx.components.InfraValidator`` with a ``KubernetesConfig`` on Kubeflow: TFX 1.16's
only Kubeflow runner, ``KubeflowV2DagRunner``, refuses it (``kubeflow/v2/step_builder.py``
raises ``NotImplementedError`` for that component type), and locally it needs a Docker engine.
On a cluster this check runs in the pipeline's own image, like every other node.
"""

# No `from __future__ import annotations`: TFX reads the signatures' real type objects.
import os
import subprocess
import sys

from tfx import v1 as tfx
from tfx.types import standard_artifacts

from serving.load_check import READY

BLESSED_PROPERTY = "blessed"  # what tfx.components.Pusher reads (model_utils.is_infra_validated)
REASON_FILE = "INFRA_NOT_BLESSED"  # TFX's name; ours also holds the reason


def check_in_fresh_process(model_dir: str, timeout: float = 900.0) -> str:
    """Loads ``model_dir`` (a SavedModel) in a new Python process, as ``cme-ser serve`` would,
    and returns "" when it loaded and answered its warm-up requests, else why not."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "serving.load_check", model_dir],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return f"loading {model_dir} took more than {timeout:g} s"
    if done.returncode == 0 and READY in done.stdout:
        return ""
    tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
    return f"loading {model_dir} in a fresh process failed (exit {done.returncode}): {tail}"


@tfx.dsl.components.component
def ModelLoadValidator(
    model: tfx.dsl.components.InputArtifact[standard_artifacts.Model],
    blessing: tfx.dsl.components.OutputArtifact[standard_artifacts.InfraBlessing],
) -> None:
    """Blesses ``model`` when a fresh process loads its serving export and answers the warm-up
    requests (:func:`check_in_fresh_process`); the reason for a refusal goes into the
    ``INFRA_NOT_BLESSED`` file and the ``reason`` custom property."""
    import tensorflow as tf
    from tfx.utils import path_utils

    reason = check_in_fresh_process(path_utils.serving_model_path(model.uri))
    blessing.set_int_custom_property(BLESSED_PROPERTY, 0 if reason else 1)
    if reason:
        blessing.set_string_custom_property("reason", reason)
    tf.io.gfile.makedirs(blessing.uri)
    with tf.io.gfile.GFile(
        tf.io.gfile.join(blessing.uri, REASON_FILE if reason else "INFRA_BLESSED"), "w"
    ) as f:
        f.write(reason)
