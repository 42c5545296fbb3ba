"""``cme-ser evaluate``: the corpus and model options resolved, then ``evaluate.evaluate`` (the
model scored on the corpus the serving way); the report is printed and written."""

from __future__ import annotations

import sys
from pathlib import Path

from infra.usage_error import UsageError
from preprocessing.corpus_options import find_data_dirs, parse_channels
from serving.model_options import model_errors, open_model
from trainer.calibration import check_min_confidence


def evaluate(args) -> dict:
    """A trained (--model-dir) or served (--url) model scored on a corpus, the serving way.
    ``args``: the parsed `cme-ser evaluate` options (cli/main.py)."""
    from pipeline import evaluate as evaluating

    channels = parse_channels(args.dataset, args.channels)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.min_confidence is not None:
        try:
            check_min_confidence(args.min_confidence)
        except ValueError as error:
            raise UsageError(str(error)) from error
    if args.dataset in ("manifest", "segments"):
        if not args.data_dir or len(args.data_dir) != 1 or not Path(args.data_dir[0]).is_file():
            raise UsageError(f"--data-dir must be the manifest file for --dataset {args.dataset}")
        data = [Path(args.data_dir[0])]
    else:
        data = find_data_dirs(args.data_dir, args.dataset, channels)
    out = Path(args.out) if args.out else evaluating.default_out_dir(args.dataset, data, channels)
    model, where = open_model(args)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    with model_errors(where):
        try:
            if args.dataset == "segments":
                report = evaluating.evaluate_segments(
                    model,
                    model_description=where,
                    manifest=data[0],
                    out_dir=out,
                    batch_size=args.batch_size,
                    min_confidence=args.min_confidence,
                    log=log,
                )
            else:
                report = evaluating.evaluate(
                    model,
                    model_description=where,
                    dataset=args.dataset,
                    data=data,
                    out_dir=out,
                    channels=channels,
                    batch_size=args.batch_size,
                    min_confidence=args.min_confidence,
                    log=log,
                )
        except ValueError as error:
            raise UsageError(str(error)) from error
    print((out / evaluating.REPORT_MD).read_text())
    print(f"report: {out}")
    if report["n"] == 0:
        listed = report["inputs"] - report["errors_per_stage"].get("corpus", 0)
        hint = (
            " (RAVDESS speech files are named 03-01-..., song 03-02-...; see --channels)"
            if args.dataset == "ravdess" and not listed
            else ""
        )
        raise UsageError(f"no file could be scored: see {out / evaluating.ERRORS_FILE}{hint}")
    return report
