"""TFMA metrics for speech emotion recognition, computed by TFMA itself from one confusion
matrix (rows: true class, columns: arg-max predicted class):

- ``WeightedAccuracy`` (``wa``): overall accuracy, trace / total.
- ``UnweightedAccuracy`` (``ua``): mean per-class recall over the classes present.
- ``ClassRecall`` (``class_recall``, one value per class as sub key ``classId:k``).
- ``EmotionConfusionMatrix`` (``confusion_<t>_<p>`` counts, for the report).

Use in an ``EvalConfig`` as ``tfma.MetricConfig(class_name="UnweightedAccuracy",
module="pipeline.tfma_metrics", config='"num_classes": 4')``.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional

import apache_beam as beam
import numpy as np
from tensorflow_model_analysis.metrics import metric_types, metric_util
from tensorflow_model_analysis.proto import config_pb2

from trainer.metrics import unweighted_accuracy, weighted_accuracy


class _ConfusionCombiner(beam.CombineFn):
    """Accumulates a ``[K, K]`` confusion matrix; ``reduce`` turns it into metric values."""

    def __init__(
        self,
        eval_config: config_pb2.EvalConfig,
        model_name: str,
        output_name: str,
        example_weighted: bool,
        num_classes: int,
        reduce: Callable[[np.ndarray], Dict[metric_types.MetricKey, float]],
    ):
        self._eval_config = eval_config
        self._model_name, self._output_name = model_name, output_name
        self._example_weighted = example_weighted
        self._num_classes = num_classes
        self._reduce = reduce

    def create_accumulator(self) -> np.ndarray:
        return np.zeros((self._num_classes, self._num_classes), dtype=np.float64)

    def add_input(self, accumulator: np.ndarray, element) -> np.ndarray:
        for label, prediction, weight in metric_util.to_label_prediction_example_weight(
            element,
            eval_config=self._eval_config,
            model_name=self._model_name,
            output_name=self._output_name,
            example_weighted=self._example_weighted,
            flatten=False,
            require_single_example_weight=True,
        ):
            true = int(np.asarray(label).reshape(-1)[0])
            predicted = int(np.argmax(np.asarray(prediction).reshape(-1)))
            accumulator[true, predicted] += float(metric_util.safe_to_scalar(weight))
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[np.ndarray]) -> np.ndarray:
        accumulators = iter(accumulators)
        result = next(accumulators)
        for other in accumulators:
            result = result + other
        return result

    def extract_output(self, accumulator: np.ndarray) -> metric_types.MetricsDict:
        return self._reduce(accumulator)


def _computations_factory(
    keys_for: Callable[..., List[metric_types.MetricKey]],
    values: Callable[[np.ndarray, List[metric_types.MetricKey]], dict],
):
    def computations(
        name: str,
        num_classes: int,
        eval_config=None,
        model_names=None,
        output_names=None,
        example_weighted: bool = False,
        **unused,
    ) -> metric_types.MetricComputations:
        result = []
        for model_name in model_names or [""]:
            for output_name in output_names or [""]:
                keys = keys_for(name, num_classes, model_name, output_name, example_weighted)
                result.append(
                    metric_types.MetricComputation(
                        keys=keys,
                        preprocessors=None,
                        combiner=_ConfusionCombiner(
                            eval_config,
                            model_name,
                            output_name,
                            example_weighted,
                            num_classes,
                            lambda matrix, keys=keys: values(matrix, keys),
                        ),
                    )
                )
        return result

    return computations


def _single_key(name, num_classes, model_name, output_name, example_weighted):
    return [
        metric_types.MetricKey(
            name=name,
            model_name=model_name,
            output_name=output_name,
            example_weighted=example_weighted,
        )
    ]


def _class_keys(name, num_classes, model_name, output_name, example_weighted):
    return [
        metric_types.MetricKey(
            name=name,
            model_name=model_name,
            output_name=output_name,
            sub_key=metric_types.SubKey(class_id=k),
            example_weighted=example_weighted,
        )
        for k in range(num_classes)
    ]


def _cell_keys(name, num_classes, model_name, output_name, example_weighted):
    return [
        metric_types.MetricKey(
            name=f"{name}_{t}_{p}",
            model_name=model_name,
            output_name=output_name,
            example_weighted=example_weighted,
        )
        for t in range(num_classes)
        for p in range(num_classes)
    ]


class WeightedAccuracy(metric_types.Metric):
    """WA: overall accuracy of the arg-max prediction."""

    def __init__(self, num_classes: int, name: str = "wa"):
        super().__init__(
            _computations_factory(_single_key, lambda m, keys: {keys[0]: weighted_accuracy(m)}),
            name=name,
            num_classes=num_classes,
        )


class UnweightedAccuracy(metric_types.Metric):
    """UA: mean over the classes present in the labels of their recall."""

    def __init__(self, num_classes: int, name: str = "ua"):
        super().__init__(
            _computations_factory(_single_key, lambda m, keys: {keys[0]: unweighted_accuracy(m)}),
            name=name,
            num_classes=num_classes,
        )


class ClassRecall(metric_types.Metric):
    """Recall of each class (NaN for a class absent from the labels)."""

    def __init__(self, num_classes: int, name: str = "class_recall"):
        def recalls(matrix, keys):
            support = matrix.sum(axis=1)
            return {
                key: (float(matrix[k, k] / support[k]) if support[k] else float("nan"))
                for k, key in enumerate(keys)
            }

        super().__init__(
            _computations_factory(_class_keys, recalls), name=name, num_classes=num_classes
        )


class EmotionConfusionMatrix(metric_types.Metric):
    """The confusion matrix as ``<name>_<true>_<predicted>`` (weighted) counts."""

    def __init__(self, num_classes: int, name: str = "confusion"):
        super().__init__(
            _computations_factory(
                _cell_keys, lambda m, keys: {key: float(v) for key, v in zip(keys, m.reshape(-1))}
            ),
            name=name,
            num_classes=num_classes,
        )


for _metric in (WeightedAccuracy, UnweightedAccuracy, ClassRecall, EmotionConfusionMatrix):
    metric_types.register_metric(_metric)


def metric_configs(num_classes: int) -> List[config_pb2.MetricConfig]:
    config = f'"num_classes": {int(num_classes)}'
    return [
        config_pb2.MetricConfig(class_name=cls.__name__, module=__name__, config=config)
        for cls in (WeightedAccuracy, UnweightedAccuracy, ClassRecall, EmotionConfusionMatrix)
    ]


def _slice_name(metrics_for_slice) -> Optional[str]:
    """None for the overall slice, else the channel of a ``channel`` slice (the only slicing
    ``pipeline.pipeline.eval_config`` asks for)."""
    keys = metrics_for_slice.slice_key.single_slice_keys
    return keys[0].bytes_value.decode() if keys else None


def read_metrics_by_slice(uri: str, num_classes: int) -> Dict[Optional[str], Dict[str, object]]:
    """WA, UA, per-class recall and the confusion matrix of every slice of a TFMA evaluation
    output, read once: ``None`` is the whole held-out fold, a channel name its ``channel``
    slice (present when ``pipeline.pipeline.eval_config`` was given several channels)."""
    import tensorflow_model_analysis as tfma

    slices: Dict[Optional[str], Dict[str, object]] = {}
    for metrics_for_slice in tfma.load_metrics(uri):
        name = _slice_name(metrics_for_slice)
        values: Dict[str, float] = {}
        recall = [float("nan")] * num_classes
        for kv in metrics_for_slice.metric_keys_and_values:
            value = kv.value.double_value.value
            if kv.key.name == "class_recall":
                recall[kv.key.sub_key.class_id.value] = value
            else:
                values[kv.key.name] = value
        missing = [k for k in ("wa", "ua") if k not in values]
        if missing:
            where = f"the {name} slice of " if name else ""
            raise ValueError(f"TFMA evaluation at {where}{uri} lacks {missing}")
        slices[name] = {
            "wa": values["wa"],
            "ua": values["ua"],
            "class_recall": recall,
            "confusion": [
                [int(round(values.get(f"confusion_{t}_{p}", 0.0))) for p in range(num_classes)]
                for t in range(num_classes)
            ],
            "examples": int(values.get("example_count", 0)),
        }
    if None not in slices:
        raise ValueError(f"TFMA evaluation at {uri} lacks ['wa', 'ua']")
    return slices


def read_fold_metrics(
    uri: str, num_classes: int, channel: Optional[str] = None
) -> Dict[str, object]:
    """The whole fold's (or the ``channel`` slice's) entry of :func:`read_metrics_by_slice`."""
    slices = read_metrics_by_slice(uri, num_classes)
    if channel not in slices:
        raise ValueError(f"TFMA evaluation at {uri} has no {channel} slice")
    return slices[channel]
