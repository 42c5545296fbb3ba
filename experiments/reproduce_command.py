"""``cme-ser reproduce``: the options checked, the corpus preprocessed into the work directory
when no records are given, then the protocol asked for: Table 1 (experiments/reproduce.py), the
nested estimate (nested.py) or the cross-domain one (crossdomain.py)."""

from __future__ import annotations

import argparse
import contextlib
import io
import shlex
import sys
from pathlib import Path

from infra.console import library_output_to
from infra.usage_error import UsageError
from preprocessing.corpora import records_for
from preprocessing.preprocess_command import preprocess
from trainer.config import SHIPPED, VARIANTS, variant_config


def reproduce(args) -> dict:
    """Table 1: every variant through the same k-fold protocol, several seeds, resumable (or
    the nested or cross-domain protocol). ``args``: the parsed `cme-ser reproduce` options
    (cli/main.py); ``args.argv`` the command line, for the results' provenance."""
    variants = (
        [v.strip() for v in args.variants.split(",")]
        if args.variants
        else ["cme"]
        if args.protocol == "cross-domain"
        else list(VARIANTS)
    )
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise UsageError(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    if args.seeds < 1 or args.jobs < 1:
        raise UsageError("--seeds and --jobs must be >= 1")
    if args.protocol == "nested":
        if args.variants:
            raise UsageError(
                "--protocol nested takes its variants and seeds from --selection, not --variants"
            )
        from experiments import nested

        try:
            selection = nested.load_selection(args.selection)  # fail before preprocessing
        except ValueError as error:
            raise UsageError(str(error)) from error
    if args.protocol == "stability":
        if args.variants and len(variants) != 1:
            raise UsageError("--protocol stability measures one variant (default: the shipped one)")
        if args.runs < 2 or args.first_seed < 0:
            raise UsageError("--runs must be >= 2 and --first-seed >= 0")
    if args.protocol == "cross-domain":
        needed = ("speech", "song")
    elif args.protocol == "nested":
        needed = selection.channels
    else:  # what the variants train on (stability: the shipped one by default)
        measured = (
            variants if args.protocol != "stability" or args.variants else [SHIPPED["variant"]]
        )
        needed = tuple(dict.fromkeys(c for v in measured for c in variant_config(v).train_channels))
    # Augmented channels (speech_aug, ...) are copies written beside their sources' records.
    real, augment_copies = records_for(needed)
    channels = None if real == ("speech",) else ",".join(real)  # None: the default
    named = None if needed == ("speech",) else "-".join(needed)
    suffix = {"cross-domain": "-cross-domain", "stability": "-stability"}.get(args.protocol, "")
    if named and args.protocol != "cross-domain":  # records unlike the speech-only ones
        suffix += ("-nested-" if args.protocol == "nested" else "-") + named
    work = Path(args.work_dir or Path("output") / "reproduce" / (args.dataset + suffix))
    records = Path(args.records) if args.records else work / "records"
    if args.records and not (records / "summary.json").exists():
        raise UsageError(
            f"--records {records} holds no preprocessed records (run `cme-ser preprocess` into it)"
        )
    # The libraries' messages (Beam's workers, TensorFlow's in every unit's process) go to a
    # file in the work dir; the terminal gets the stage lines and one line per unit.
    log = None if args.verbose else str(work / "cme-ser-reproduce.log")
    if log:
        print(f"== Beam's and TensorFlow's messages: {log} (--verbose shows them here)", flush=True)
    with library_output_to(log):
        if not (records / "summary.json").exists():
            print(f"== preprocessing {args.dataset} into {records}", flush=True)
            with contextlib.redirect_stdout(io.StringIO()):  # the summary is in summary.json
                summary = preprocess(
                    argparse.Namespace(
                        dataset=args.dataset,
                        data_dir=args.data_dir,
                        out=str(records),
                        classes=None,
                        embeddings=args.embeddings,
                        folds=args.folds,
                        max_seconds=60.0,
                        overlong="truncate",
                        overwrite=True,
                        beam_arg=[],
                        channels=channels,
                        augment_copies=augment_copies,
                    )
                )
            print(
                f"   {summary['records']} records of {summary['inputs']} utterances, "
                f"{summary['errors']} errors, in {summary['seconds']:.0f} s "
                f"({records / 'summary.json'})"
            )
        return _run_protocol(args, variants, records, work)


def _run_protocol(args, variants, records: Path, work: Path) -> dict:
    from experiments import reproduce as repro

    command = "cme-ser reproduce " + " ".join(
        shlex.quote(a) for a in (args.argv if args.argv is not None else sys.argv[1:])[1:]
    )
    overrides = {"epochs": args.epochs} if args.epochs else None  # every protocol's units
    try:
        if args.protocol == "nested":
            from experiments import nested

            return nested.run_nested(
                records,
                work,
                args.results_dir,
                dataset=args.dataset,
                selection_path=args.selection,
                folds=args.folds,
                jobs=args.jobs,
                threads=args.threads,
                command=command.strip(),
                overrides=overrides,
            )
        if args.protocol == "stability":
            from experiments import stability
            from trainer.config import SHIPPED

            return stability.run_stability(
                records,
                work,
                args.results_dir,
                dataset=args.dataset,
                folds=args.folds,
                runs=args.runs,
                first_seed=args.first_seed,
                reuse=args.reuse_units,
                variant=variants[0] if args.variants else SHIPPED["variant"],
                jobs=args.jobs,
                threads=args.threads,
                command=command.strip(),
                overrides=overrides,
            )
        if args.protocol == "cross-domain":
            from experiments import crossdomain

            return crossdomain.run_cross_domain(
                records,
                work,
                args.results_dir,
                dataset=args.dataset,
                variants=variants,
                seeds=args.seeds,
                folds=args.folds,
                jobs=args.jobs,
                threads=args.threads,
                command=command.strip(),
                overrides=overrides,
            )
        return repro.reproduce(
            records,
            work,
            args.results_dir,
            dataset=args.dataset,
            variants=variants,
            seeds=args.seeds,
            folds=args.folds,
            jobs=args.jobs,
            threads=args.threads,
            command=command.strip(),
            overrides=overrides,
        )
    except ValueError as error:
        raise UsageError(str(error)) from error
