"""``cme-ser predict``: audio files (or a manifest of them) -> predict.py (alignment, model) ->
the results as text or JSON, the accuracy when the manifest has labels, and optionally the
per-file predictions (``--out``) and one utterance's excitation picture (``--plot``).

One recording longer than ``preprocessing.audio.DEFAULT_MAX_SECONDS`` (or any recording with
``--timeline``, ``--transcript-file`` or ``--csv``) gets a timeline instead (timeline.py): one
row per speech segment, as text or JSON, ``--out`` JSON lines, ``--csv`` and ``--plot`` the
timeline picture (timeline_plot.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from infra.usage_error import UsageError
from serving.model_options import model_errors, open_model


def predict(args) -> list:
    """Emotion, probabilities and per-word excitation for audio files (or a manifest of them,
    each with its own transcript and optionally its label), via REST or locally. ``args``: the
    parsed `cme-ser predict` options (cli/main.py)."""
    from serving import predict as predicting

    if bool(args.audio) == bool(args.manifest):
        raise UsageError(
            "give audio files or --manifest CSV, not both"
            if args.audio
            else "give audio files or --manifest CSV"
        )
    if args.manifest and args.transcript is not None:
        raise UsageError("--transcript is for audio files; a manifest has a transcript column")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    entries = None
    if args.manifest:
        try:
            entries = predicting.read_manifest(args.manifest)
        except ValueError as error:
            raise UsageError(str(error)) from error
    else:
        missing = [a for a in args.audio if not Path(a).is_file()]
        if missing:
            raise UsageError(f"no such audio file: {', '.join(missing)}")
    if _wants_timeline(args, entries):
        return predict_timeline(args)
    if args.plot and (entries is not None or len(args.audio) != 1):
        raise UsageError("--plot draws one utterance: give exactly one audio file")
    model, where = open_model(args, min_confidence=args.min_confidence)
    with model_errors(where):
        if entries is not None:
            results = predicting.predict_manifest(entries, model, batch_size=args.batch_size)
        else:
            results = predicting.predict_files(
                args.audio, model, transcript=args.transcript, batch_size=args.batch_size
            )
    labels = [e.label for e in entries] if entries is not None else None
    rows = [r.to_dict() for r in results]
    if labels is not None:
        for row, label in zip(rows, labels):
            if label is not None:
                row["label"] = label
    accuracy = (
        predicting.manifest_accuracy(entries, results)
        if labels is not None and any(x is not None for x in labels)
        else None
    )
    if args.json:
        doc = {"model": where, "results": rows}
        if accuracy is not None:
            doc["accuracy"] = accuracy
        print(json.dumps(doc, indent=2))
    else:
        print(predicting.format_text(results, labels))
        if accuracy is not None and accuracy["labelled"]:
            note = f"; {accuracy['failed']} labelled file(s) failed" if accuracy["failed"] else ""
            if accuracy["uncertain"]:
                note += f"; {accuracy['uncertain']} answered uncertain, not counted"
            print(
                f"accuracy {accuracy['accuracy']:.3f} ({accuracy['correct']} of "
                f"{accuracy['labelled']} labelled files{note})"
            )
        elif accuracy is not None:
            print("accuracy: no labelled file got a prediction")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("".join(json.dumps(row) + "\n" for row in rows))
    if args.plot and results[0].prediction is not None:
        from preprocessing.audio import load_audio
        from serving.excitation_plot import plot_excitation

        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot_excitation(
            load_audio(args.audio[0])[0],
            results[0].prediction,
            args.plot,
            title=Path(args.audio[0]).name,
        )
        print(f"plot: {args.plot}", file=sys.stderr if args.json else sys.stdout)
    failed = [r for r in results if r.error is not None]
    if failed:
        raise UsageError(f"{len(failed)} of {len(results)} file(s) failed")
    return results


def _wants_timeline(args, entries) -> bool:
    """A timeline: asked for, or one recording too long to be one utterance."""
    asked = args.timeline or args.transcript_file or args.csv
    if asked and (entries is not None or len(args.audio) != 1):
        raise UsageError(
            "--timeline, --transcript-file and --csv take one recording: give "
            "exactly one audio file"
        )
    if asked:
        return True
    if entries is not None or len(args.audio) != 1:
        return False
    import soundfile as sf

    from preprocessing.audio import DEFAULT_MAX_SECONDS

    try:
        return sf.info(args.audio[0]).duration > DEFAULT_MAX_SECONDS
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError):
        return False  # the utterance path reports why it cannot be decoded


def predict_timeline(args):
    """The timeline of one recording: its speech segments, each with its words, emotion, class
    probabilities and per-word excitation."""
    from preprocessing.audio import AudioError
    from preprocessing.timed_transcripts import TranscriptError, read_timed_transcript
    from serving import timeline as timelines

    if args.transcript is not None:
        raise UsageError(
            "a recording's words come from --transcript-file (WebVTT, SRT or "
            "TextGrid, with times) or are recognised; --transcript is for one "
            "utterance"
        )
    words = None
    if args.transcript_file:
        try:
            words = read_timed_transcript(args.transcript_file)
        except TranscriptError as error:
            raise UsageError(str(error)) from error
    model, where = open_model(args, min_confidence=args.min_confidence)
    with model_errors(where):
        try:
            timeline = timelines.predict_timeline(
                args.audio[0], model, transcript_words=words, batch_size=args.batch_size
            )
        except AudioError as error:
            raise UsageError(str(error)) from error
    if args.json:
        print(
            json.dumps(
                {
                    "model": where,
                    "timeline": timeline.to_dict(),
                    "rows": [row.to_dict() for row in timeline.rows],
                },
                indent=2,
            )
        )
    else:
        print(timelines.format_text(timeline))
    notes = sys.stderr if args.json else sys.stdout
    for option, write in ((args.out, timelines.to_jsonl), (args.csv, timelines.to_csv)):
        if option:
            Path(option).parent.mkdir(parents=True, exist_ok=True)
            Path(option).write_text(write(timeline))
    if args.plot:
        from serving.timeline_plot import plot_timeline

        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot_timeline(timeline, args.plot, title=Path(args.audio[0]).name)
        print(f"plot: {args.plot}", file=notes)
    if timeline.rows and all(row.prediction is None for row in timeline.rows):
        raise UsageError(f"none of the {len(timeline.rows)} speech segments could be predicted")
    if not timeline.rows:
        raise UsageError(f"{args.audio[0]}: no speech found")
    return timeline
