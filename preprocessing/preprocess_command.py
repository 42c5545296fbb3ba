"""``cme-ser preprocess``: the corpus options checked, then the Apache Beam job
(``beam_pipeline.run``: corpus -> aligned TFRecords); its summary is printed as JSON."""

from __future__ import annotations

import json
from pathlib import Path

from infra.usage_error import UsageError
from preprocessing.corpus_options import (
    corpus_items,
    find_data_dirs,
    parse_channels,
    parse_classes,
    resolve_embeddings,
)


def preprocess(args) -> dict:
    """``args``: the parsed `cme-ser preprocess` options (cli/main.py). Returns the
    summary."""
    from infra import filesystems
    from preprocessing import beam_pipeline, corpora

    channels = parse_channels(args.dataset, getattr(args, "channels", None))
    if args.dataset == "manifest":
        given = [args.data_dir] if isinstance(args.data_dir, str) else list(args.data_dir or [])
        if len(given) != 1 or not Path(given[0]).is_file():
            raise UsageError(
                f"--data-dir must be the manifest file for --dataset manifest: {' '.join(given)}"
            )
        dirs = [Path(given[0])]
    else:
        dirs = find_data_dirs(args.data_dir, args.dataset, channels)
    classes = parse_classes(args.classes)
    if args.folds < 2:
        raise UsageError(f"--folds must be >= 2, got {args.folds}")
    augment_copies = getattr(args, "augment_copies", 0) or 0
    if augment_copies < 0:
        raise UsageError(f"--augment-copies must be >= 0, got {augment_copies}")
    items = corpus_items(args.dataset, dirs, classes, channels)
    utterances, _ = corpora.partition(items)
    if classes is None:
        classes = (
            sorted({u.label_name for u in utterances})
            if args.dataset == "manifest"
            else list(corpora.DEFAULT_CLASSES)
        )
    embeddings_path = resolve_embeddings(args.embeddings)
    fold_by = "group" if args.dataset == "iemocap" else "speaker"
    try:
        summary = beam_pipeline.run(
            dataset=args.dataset,
            items=items,
            out_dir=args.out,
            class_names=classes,
            embeddings_path=embeddings_path,
            num_folds=args.folds,
            fold_by=fold_by,
            max_seconds=args.max_seconds,
            overlong=args.overlong,
            overwrite=args.overwrite,
            beam_args=args.beam_arg or None,
            augment_copies=augment_copies,
        )
    except (ValueError, FileExistsError) as error:
        raise UsageError(str(error)) from error
    print(json.dumps(summary, indent=2, sort_keys=True))
    if summary["records"] == 0:
        raise UsageError(
            f"nothing usable was produced: see "
            f"{filesystems.join(args.out, beam_pipeline.ERRORS_FILE)}"
        )
    return summary
