"""The one configuration of the model and its training, with the paper's defaults.

Variants (ablations, baselines) are configurations derived from this one, never copied code.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Tuple

DEFAULT_CLASSES: Tuple[str, ...] = ("angry", "happy", "neutral", "sad")
POOLINGS = ("mean_max", "mean")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of the CME model (Li et al., Interspeech 2021, section 4.3).

    Shapes: ``fbank_dim`` filterbank channels per frame; ``word_dim`` is the dimension of the
    pretrained word vectors fed in (the paper used 300-d GloVe; our default data uses 50-d).
    """

    variant: str = "cme"  # the name of the recipe this configuration was built from
    class_names: Tuple[str, ...] = DEFAULT_CLASSES
    fbank_dim: int = 40
    word_dim: int = 50
    cnn_kernels: Tuple[int, ...] = (5, 2, 2)
    cnn_filters: Tuple[int, ...] = (64, 128, 128)
    pooling: str = "mean_max"  # temporal alignment pooling: "mean_max" (paper) or "mean"
    semantic_dim: int = 256  # linear map of the word vectors
    excite_acoustic: bool = True
    excite_semantic: bool = True
    lstm_units: int = 256  # per direction
    fcn_units: int = 128
    dropout: float = 0.0
    learning_rate: float = 5e-4
    batch_size: int = 32
    epochs: int = 40
    patience: int = 10  # early stopping on the inner validation UA
    validation_fraction: float = 0.2  # of the training speakers, for epoch selection
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "cnn_kernels", tuple(int(k) for k in self.cnn_kernels))
        object.__setattr__(self, "cnn_filters", tuple(int(f) for f in self.cnn_filters))
        problems = []
        if len(self.class_names) < 2:
            problems.append(f"need at least 2 classes, got {list(self.class_names)}")
        if len(set(self.class_names)) != len(self.class_names):
            problems.append(f"class names repeat: {list(self.class_names)}")
        if self.pooling not in POOLINGS:
            problems.append(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if len(self.cnn_kernels) != len(self.cnn_filters) or not self.cnn_kernels:
            problems.append("cnn_kernels and cnn_filters must be non-empty and of equal length")
        for name in ("fbank_dim", "word_dim", "semantic_dim", "lstm_units", "fcn_units",
                     "batch_size", "epochs", "patience"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.validation_fraction < 1.0:
            problems.append(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")
        if self.learning_rate <= 0:
            problems.append(f"learning_rate must be > 0, got {self.learning_rate}")
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def acoustic_dim(self) -> int:
        """Width of a word's acoustic vector after pooling (256 for the paper's setting)."""
        channels = self.cnn_filters[-1]
        return 2 * channels if self.pooling == "mean_max" else channels

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s): {unknown}; known: {sorted(known)}")
        return cls(**dict(values))

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls.from_dict(json.loads(text))


# Model variants are configurations of the one model: name -> the fields that differ from the
# paper's model. The ablations of Table 1 (Li et al. 2021).
VARIANTS = {
    "cme": {},
    "no_excite_a": {"excite_acoustic": False},
    "no_excite_s": {"excite_semantic": False},
    "no_excite": {"excite_acoustic": False, "excite_semantic": False},
    "mean_pool": {"pooling": "mean"},
}


def variant_config(name: str, **overrides: Any) -> ModelConfig:
    """``ModelConfig`` of variant ``name`` (see ``VARIANTS``) with ``overrides`` applied."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    return ModelConfig(variant=name, **{**VARIANTS[name], **overrides})
