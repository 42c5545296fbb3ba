"""Where the Trainers run on a cluster: the Vertex AI CustomJob that TFX's Google Cloud Trainer
extension (``tfx.extensions.google_cloud_ai_platform.Trainer``) launches for each Trainer node,
with the number of workers, their machine type and accelerator.

Worker pool 0 is the chief (one replica), pool 1 the other ``workers - 1``; Vertex AI gives
every replica a ``TF_CONFIG`` naming them all (``chief`` and ``worker``), from which
``trainer.distribution`` picks ``MultiWorkerMirroredStrategy``. Every replica runs the same
image as the pipeline's other nodes.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

# The TFX penguin example's machine (tfx/examples/penguin/penguin_pipeline_kubeflow.py).
DEFAULT_MACHINE_TYPE = "n1-standard-4"
DEFAULT_REGION = "us-central1"


@dataclasses.dataclass(frozen=True)
class TrainerResources:
    """What each Trainer's job runs on: ``workers`` replicas (chief included) of
    ``machine_type``, each with ``accelerator_count`` accelerators of ``accelerator_type``
    (Vertex AI's names, e.g. ``NVIDIA_TESLA_T4``; none by default), in ``project`` and
    ``region``."""

    project: str
    workers: int = 1
    machine_type: str = DEFAULT_MACHINE_TYPE
    accelerator_type: Optional[str] = None
    accelerator_count: int = 0
    region: str = DEFAULT_REGION

    def __post_init__(self):
        if self.workers < 1:
            raise ValueError(f"trainer workers must be >= 1, got {self.workers}")
        if not self.project:
            raise ValueError("a Vertex AI training job needs a project")
        if bool(self.accelerator_type) != (self.accelerator_count > 0):
            raise ValueError(
                f"an accelerator needs a type and a count >= 1, got "
                f"{self.accelerator_type!r} x {self.accelerator_count}"
            )

    def worker_pool_specs(self, image: str) -> list:
        """Vertex AI ``workerPoolSpecs``: the chief's pool, then the other workers' pool."""
        machine = {"machine_type": self.machine_type}
        if self.accelerator_type:
            machine.update(
                accelerator_type=self.accelerator_type, accelerator_count=self.accelerator_count
            )
        pool = {"machine_spec": machine, "replica_count": 1, "container_spec": {"image_uri": image}}
        return [pool] + ([{**pool, "replica_count": self.workers - 1}] if self.workers > 1 else [])

    def custom_config(self, image: str) -> dict:
        """The Trainer ``custom_config`` keys the extension reads (merged with run_fn's own)."""
        from tfx import v1 as tfx

        cloud = tfx.extensions.google_cloud_ai_platform
        return {
            cloud.ENABLE_VERTEX_KEY: True,
            cloud.VERTEX_REGION_KEY: self.region,
            cloud.TRAINING_ARGS_KEY: {
                "project": self.project,
                "job_spec": {"worker_pool_specs": self.worker_pool_specs(image)},
            },
        }


def parse_accelerator(text: Optional[str]) -> tuple:
    """``"TYPE"`` or ``"TYPE:COUNT"`` -> ``(type, count)``; None -> ``(None, 0)``."""
    if not text:
        return None, 0
    kind, _, count = text.partition(":")
    try:
        number = int(count) if count else 1
    except ValueError:
        raise ValueError(f"accelerator count must be an integer, got {text!r}") from None
    if not kind or number < 1:
        raise ValueError(f"accelerator must be TYPE or TYPE:COUNT (COUNT >= 1), got {text!r}")
    return kind, number
