"""The ``tf.distribute`` strategy training runs under, chosen from the environment as TFX
Trainers do, and who writes what when several processes train one model.

:func:`training_strategy`:

- ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` names more than one training task (its
  ``cluster`` has ``chief`` and ``worker`` entries adding up to more than one): what Vertex AI
  and Kubeflow's training operators set on every replica of a multi-replica job;
- ``MirroredStrategy`` when this machine has more than one GPU;
- TensorFlow's default strategy otherwise (one device: training exactly as without a strategy).

Data parallelism: every replica holds all the weights, the batch the configuration names is
the *global* batch (split between the replicas), and the gradients are summed over replicas
after each replica scaled its mean loss by ``1 / replicas``. The input datasets are sharded by
element (``trainer.data``: the records are read into memory and sorted, so there are no files
to shard). A global batch that does not split evenly gives each replica's examples a slightly
different weight than one process would (each replica's mean counts equally).

Only the chief writes (:func:`is_chief`, :func:`chief_writes`): the other workers run the same
code, including the export (saving may read variables through collective ops), into a
temporary directory that is then deleted -- the pattern of TensorFlow's multi-worker Keras
guide.

``TF_CONFIG`` is read without importing TensorFlow, so the command line can check a cluster
setting before any training starts.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
from typing import Iterator, Optional

TF_CONFIG = "TF_CONFIG"
# The tasks that train; an "evaluator" or "ps" task in TF_CONFIG does not hold a replica.
TRAINING_TASKS = ("chief", "worker")


def _tf_config(environ=None) -> dict:
    text = (os.environ if environ is None else environ).get(TF_CONFIG, "")
    if not text.strip():
        return {}
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{TF_CONFIG} is not JSON ({error}): {text[:200]!r}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{TF_CONFIG} must be a JSON object, got {text[:200]!r}")
    return config


def training_tasks(environ=None) -> int:
    """How many processes train together according to ``TF_CONFIG`` (1 without it)."""
    cluster = _tf_config(environ).get("cluster") or {}
    return max(1, sum(len(cluster.get(task) or []) for task in TRAINING_TASKS))


def is_chief(environ=None) -> bool:
    """Whether this process writes the results: no multi-task ``TF_CONFIG``, or its task is
    the ``chief``, or ``worker`` 0 of a cluster without a chief."""
    config = _tf_config(environ)
    if training_tasks(environ) <= 1:
        return True
    task = config.get("task") or {}
    kind, index = task.get("type"), int(task.get("index", 0))
    if kind == "chief":
        return True
    has_chief = bool((config.get("cluster") or {}).get("chief"))
    return kind == "worker" and index == 0 and not has_chief


@functools.lru_cache(maxsize=None)
def training_strategy():
    """The process's ``tf.distribute.Strategy`` (see the module docstring), made once: a
    process joins one cluster, and ``MultiWorkerMirroredStrategy`` must be made before
    TensorFlow runs its first operation (call this first thing in a training process)."""
    import tensorflow as tf

    if training_tasks() > 1:
        # AUTO: NCCL between GPUs, ring all-reduce over gRPC on CPUs.
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
        )
        try:
            return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        except RuntimeError as error:
            if "program startup" not in str(error):
                raise
            raise RuntimeError(
                f"{TF_CONFIG} names {training_tasks()} training tasks, but TensorFlow already "
                "ran an operation in this process, after which it cannot join the cluster: "
                "call trainer.distribution.training_strategy() before anything else "
                "(run_fn does)"
            ) from None
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_multi_worker(strategy) -> bool:
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


@contextlib.contextmanager
def _keras_multi_worker_fit():
    """Lets Keras 3 ``fit``/``evaluate`` run under ``MultiWorkerMirroredStrategy`` (checked
    with Keras 3.12; unchanged on Keras's main branch in 2026: keras-team/keras#20585).

    Keras reduces values across replicas in two places that this strategy's ``reduce``
    cannot take: before the first step it MEAN-reduces the whole first input batch (a nested
    structure; only its shapes are used, to build the metrics), and after every step it
    MEAN-reduces each scalar log along ``axis=0``. Here the first reads the shapes from the
    dataset's element spec, and the logs are MEAN-reduced as the scalars they are. Restored on
    exit."""
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    reduce_per_replica = tf_trainer.reduce_per_replica
    symbolic_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build

    def reduce_logs(values, strategy, reduction="auto"):
        if reduction == "auto" and is_multi_worker(strategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return reduce_per_replica(values, strategy, reduction)

    def build_from_element_spec(model, iterator=None, data_batch=None):
        if iterator is None or not is_multi_worker(model.distribute_strategy):
            return symbolic_build(model, iterator=iterator, data_batch=data_batch)
        # Shapes and dtypes are all the build reads, and the dataset's element spec has them.
        # (Drawing a batch instead would start an iteration of the dataset: its shuffle would
        # then give the first epoch its second order.)
        spec = iterator.data_adapter.get_tf_dataset().element_spec
        with model.distribute_strategy.scope():
            model._symbolic_build(data_batch=spec)

    tf_trainer.reduce_per_replica = reduce_logs
    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = build_from_element_spec
    try:
        yield
    finally:
        tf_trainer.reduce_per_replica = reduce_per_replica
        tf_trainer.TensorFlowTrainer._maybe_symbolic_build = symbolic_build


def in_training_strategy(function):
    """Runs ``function`` (one that builds, compiles and fits a Keras model) inside
    :func:`training_strategy`'s scope, so the model's, optimizer's and metrics' variables
    are the strategy's and ``fit`` distributes the datasets it is given."""

    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        strategy = training_strategy()
        fixes = (
            _keras_multi_worker_fit() if is_multi_worker(strategy) else (contextlib.nullcontext())
        )
        with strategy.scope(), fixes:
            return function(*args, **kwargs)

    return wrapped


@contextlib.contextmanager
def chief_writes(path: Optional[str]) -> Iterator[Optional[str]]:
    """Yields ``path`` on the chief (:func:`is_chief`); on another worker a fresh temporary
    directory (a ``path``-named entry inside it, not yet created), deleted on exit, so every
    worker can run the same saving code and only the chief's output remains."""
    if path is None or is_chief():
        yield path
        return
    scratch = tempfile.mkdtemp(prefix="cme-ser-worker-")
    try:
        yield os.path.join(scratch, os.path.basename(os.fspath(path).rstrip("/")) or "out")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
