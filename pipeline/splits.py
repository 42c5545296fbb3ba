"""The splits of the pipeline's ``Examples`` artifact (``CorpusExampleGen``'s): one per fold,
the held-out sets, and, when the model trains on augmented copies, one per fold for its copies.
The one rule naming them, shared by the corpus step, the pipeline's wiring and the Calibrator.
"""

from __future__ import annotations

from typing import List

from preprocessing.corpora import AUGMENTED_SUFFIX


def augmented_split(split: str) -> str:
    """The split holding the augmented copies (``preprocessing.augment``) of fold split
    ``split``'s records: ``<split>_aug`` (fold3 -> fold3_aug), named like the copies' channels.
    Training data only: no Evaluator, Calibrator or statistic reads it."""
    return split + AUGMENTED_SUFFIX


FOLD_SPLIT = "fold{fold}"
AUGMENTED_SPLIT = augmented_split(FOLD_SPLIT)
# Where the Beam job writes them: TFX reads split <name> from the directory Split-<name>.
SPLIT_LAYOUT = "Split-" + FOLD_SPLIT
AUGMENTED_SPLIT_LAYOUT = "Split-" + AUGMENTED_SPLIT


def split_names(num_folds: int) -> List[str]:
    """The folds' splits: ``fold0`` .. ``fold<num_folds - 1>``, the held-out sets."""
    return [FOLD_SPLIT.format(fold=k) for k in range(num_folds)]


def augmented_split_names(num_folds: int) -> List[str]:
    """The splits of the folds' augmented copies: ``fold0_aug`` .. ``fold<num_folds - 1>_aug``."""
    return [augmented_split(split) for split in split_names(num_folds)]
