"""``Calibrator``: the temperature the final model is exported with, fitted on the answers of the
cross-validation's fold models on their held-out speakers.

Every fold's Trainer exports a model that never saw that fold's speakers; its answers there are
held-out answers of the recipe the final Trainer trains on every fold. ``Calibrator`` runs each
fold model's ``serving_default`` signature on its held-out split and fits one temperature on all
of them (``trainer.calibration.cross_fitted``): the final model's. A fold's own calibration
score ("after") uses the temperature fitted on the *other* folds only, so the report never
scores a temperature on the answers it was fitted on.

The output is a ``HyperParameters`` artifact, the input TFX's Trainer already takes
(``fn_args.hyperparameters``): one file, ``calibration.json``, with ``temperature`` (what
``run_fn`` exports) and ``calibration`` (per fold and pooled ECE, NLL and reliability bins,
before and after, for the cross-validation report).
"""

# No `from __future__ import annotations`: TFX reads the signatures' real type objects.
import json
from typing import List, Tuple, TypedDict

import numpy as np
from tfx import v1 as tfx
from tfx.types import artifact_utils, standard_artifacts

from pipeline.splits import FOLD_SPLIT

CALIBRATION_FILE = "calibration.json"  # the artifact's only file (Trainer reads exactly one)
BATCH = 32


class CalibrationSummary(TypedDict):
    temperature: float
    ece_before: float
    ece_after: float


def held_out_answers(
    saved_model_dir: str, files: List[str]
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(probabilities [N, K], labels [N], channels [N])`` of the SavedModel's
    ``serving_default`` signature on every record of ``files`` but augmented copies (channel
    "speech" for a record without one, as ``trainer.data`` reads it)."""
    import tensorflow as tf

    from preprocessing.corpora import PRIMARY_CHANNEL, is_augmented
    from trainer.signature_names import SERVING_DEFAULT

    serve = tf.saved_model.load(saved_model_dir).signatures[SERVING_DEFAULT]
    spec = {
        "label": tf.io.FixedLenFeature([], tf.int64),
        "channel": tf.io.FixedLenFeature([], tf.string, default_value=""),
    }
    probabilities, labels, channels = [], [], []
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(BATCH)
    for raw in dataset:
        parsed = tf.io.parse_example(raw, spec)
        named = [c.decode() or PRIMARY_CHANNEL for c in parsed["channel"].numpy()]
        real = np.array([not is_augmented(c) for c in named])  # copies are never scored
        if not real.any():
            continue
        probabilities.append(serve(examples=tf.boolean_mask(raw, real))["probabilities"].numpy())
        labels.append(parsed["label"].numpy()[real])
        channels += [c for c, keep in zip(named, real) if keep]
    if not labels:
        raise ValueError(f"no held-out records in {files}")
    return np.concatenate(probabilities), np.concatenate(labels), np.asarray(channels)


def read_calibration(uri: str) -> dict:
    """What :func:`Calibrator` wrote into its artifact at ``uri``: the ``calibration``."""
    import tensorflow as tf

    with tf.io.gfile.GFile(tf.io.gfile.join(uri, CALIBRATION_FILE)) as f:
        return json.load(f)["calibration"]


def split_files(examples, split: str) -> List[str]:
    import tensorflow as tf

    uri = artifact_utils.get_split_uri([examples], split)
    return sorted(tf.io.gfile.glob(tf.io.gfile.join(uri, "*")))


# One optional input per fold, as CrossValidationReport: Kubeflow compiles single channels.
_Model = tfx.dsl.components.InputArtifact[standard_artifacts.Model]


@tfx.dsl.components.component
def Calibrator(
    calibration: tfx.dsl.components.OutputArtifact[standard_artifacts.HyperParameters],
    examples: tfx.dsl.components.InputArtifact[standard_artifacts.Examples],
    model_0: _Model = None,
    model_1: _Model = None,
    model_2: _Model = None,
    model_3: _Model = None,
    model_4: _Model = None,
    model_5: _Model = None,
    model_6: _Model = None,
    model_7: _Model = None,
    model_8: _Model = None,
    model_9: _Model = None,
) -> CalibrationSummary:
    """Fits the final model's temperature on fold ``k``'s model's answers on split
    ``fold<k>``, for every ``model_<k>`` given (at least 2), and writes ``calibration.json``."""
    import tensorflow as tf
    from tfx.utils import path_utils

    from trainer.calibration import channel_calibration

    models = [
        model_0,
        model_1,
        model_2,
        model_3,
        model_4,
        model_5,
        model_6,
        model_7,
        model_8,
        model_9,
    ]
    answers = {
        k: held_out_answers(
            path_utils.serving_model_path(model.uri),
            split_files(examples, FOLD_SPLIT.format(fold=k)),  # its copies' split is not read
        )
        for k, model in enumerate(models)
        if model is not None
    }
    result = channel_calibration(answers)
    result["folds"] = {str(k): v for k, v in result["folds"].items()}  # JSON keys
    tf.io.gfile.makedirs(calibration.uri)
    with tf.io.gfile.GFile(tf.io.gfile.join(calibration.uri, CALIBRATION_FILE), "w") as f:
        f.write(json.dumps({"temperature": result["temperature"], "calibration": result}, indent=2))
    return {
        "temperature": result["temperature"],
        "ece_before": result["pooled"]["before"]["ece"],
        "ece_after": result["pooled"]["after"]["ece"],
    }
