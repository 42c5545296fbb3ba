"""The inner validation split of a model's training speakers, and the check that a fold plan
can train at all. Free of TensorFlow: the command line checks a plan before it loads anything."""

from __future__ import annotations

from typing import List, Mapping, Sequence

from trainer.config import ModelConfig


def validation_speakers(speakers: Sequence[str], fraction: float, offset: int = 0) -> List[str]:
    """Every k-th speaker in sorted order starting at position ``offset mod k``, with
    ``k = max(2, min(n, round(1 / fraction)))`` for ``n`` speakers: at least one speaker and
    never all of them, for every offset. Deterministic; the ``k`` offsets ``0 .. k - 1`` give
    disjoint splits that together cover every speaker.

    ``k`` is capped at ``n`` so that a rotation never starts past the last speaker (with 2
    speakers and fraction 0.2, offset 2 would otherwise select nobody); with ``n >= 5`` at the
    default fraction the splits are the ones every archived run used."""
    speakers = sorted(speakers)
    if len(speakers) < 2:
        raise ValueError(f"need >= 2 training speakers to carve a validation split, got {speakers}")
    step = max(2, min(len(speakers), int(round(1.0 / fraction))))
    return speakers[offset % step :: step]


def fold_plan_problems(
    labels_by_speaker: Mapping[str, Mapping[str, int]],
    folds: Mapping[str, int],
    config: ModelConfig,
    *,
    ensemble_size: int = 1,
    prior_correction: bool = False,
) -> List[str]:
    """What would stop training on a fold plan, found before any training starts.

    For every held-out fold, and for the final model on all folds, and for every ensemble
    member (seed ``config.seed + k``, whose validation rotation ``fit`` takes), checks that the
    training speakers can give a validation split (``validation_speakers``) and that the data
    the member learns from has every class where training needs it: the class-balanced loss
    (``class_weights``) on the speakers left after validation, the prior correction on the
    final training data.

    Args:
        labels_by_speaker: ``{speaker: {class name: utterance count}}``.
        folds: ``{speaker: fold}``.
    Returns:
        One readable sentence per problem; empty when the plan trains.
    """
    problems: List[str] = []
    plans = [
        (f"held-out fold {fold}", [s for s in folds if folds[s] != fold])
        for fold in sorted(set(folds.values()))
    ]
    plans.append(("the final model (all folds)", list(folds)))
    fixed = config.selection == "fixed"  # no epoch choice: every training speaker trains
    for name, speakers in plans:
        if len(speakers) < (1 if fixed else 2):
            problems.append(
                f"{name}: {len(speakers)} training speaker(s) {sorted(speakers)}; "
                + (
                    "training needs >= 1"
                    if fixed
                    else "epoch selection needs >= 2 (fewer folds, or more speakers)"
                )
            )
            continue
        for k in range(ensemble_size):
            offset = config.seed + k if config.rotate_validation else 0
            val = (
                set()
                if fixed
                else set(validation_speakers(speakers, config.validation_fraction, offset=offset))
            )
            fitted = [s for s in speakers if s not in val]
            final = speakers if config.refit else fitted
            needs = ([("trains on", fitted)] if config.class_balanced else []) + (
                [("ends on", final)] if prior_correction else []
            )
            for verb, group in needs:
                missing = [
                    c
                    for c in config.class_names
                    if not any(labels_by_speaker[s].get(c, 0) for s in group)
                ]
                if missing:
                    problems.append(
                        f"{name}, model {k + 1}/{ensemble_size} (seed {config.seed + k}) {verb} "
                        f"speakers {sorted(group)}, with no {', '.join(missing)} utterances "
                        f"(validation speakers: {sorted(val)})"
                    )
    return problems
