"""Timelines of long recordings: speed and memory, and (``--quality``) how well segments and
labels come out, on recordings joined from RAVDESS utterances at run time.

    python benchmarks/timeline.py --model-dir DIR [--actors 21,22] [--minutes 10,60]
    python benchmarks/timeline.py --model-dir DIR --quality [--actors 21,22] [--snrs 20,10,5]

Speed and memory: for each length, a recording of that many minutes (the actors' utterances
over and over, seeded silences of 0.5-3 s, pink noise at 20 dB, 16 kHz FLAC) with its WebVTT
transcript is built, then ``cme-ser predict RECORDING --transcript-file ... --model-dir DIR``'s
work (``serving.timeline.predict_timeline``) runs in a fresh process, which reports its wall
time, its CPU time (all threads: what it costs on a machine others share) and its peak resident
memory. Prints one JSON line: per length, seconds, cpu_seconds, segments and peak RSS in MB,
and the CPU count and load average when it started.

Quality: one recording per SNR of every 4-class utterance of ``--actors`` (use speakers the
model did not train on), scored like tests/test_timeline.py: onset and offset F1 (+-0.2 s),
and the share of utterances whose segment gets the label the same utterance gets predicted
alone, as it lies in the recording (noise included) and as its clean file; and the accuracy of
each against the true labels. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from preprocessing.corpora import DEFAULT_CLASSES  # noqa: E402
from preprocessing.corpus_options import find_data_dir  # noqa: E402
from preprocessing.joined_recording import join_utterances, ravdess_utterances, write_vtt  # noqa: E402

SEED = 0


def child(recording: str, transcript: str, model_dir: str) -> None:
    """The measured process: load the model, predict the timeline, report."""
    from preprocessing.alignment import PocketSphinxAligner
    from preprocessing.timed_transcripts import read_timed_transcript
    from serving.predict import LocalModel
    from serving.timeline import predict_timeline

    model, aligner = LocalModel(model_dir), PocketSphinxAligner()
    start, cpu = time.perf_counter(), _cpu_seconds()
    timeline = predict_timeline(
        recording, model, aligner=aligner, transcript_words=read_timed_transcript(transcript)
    )
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    print(
        json.dumps(
            {
                "seconds": round(seconds, 1),
                "cpu_seconds": round(cpu, 1),
                "segments": len(timeline.rows),
                "predicted": sum(r.prediction is not None for r in timeline.rows),
                "duration_s": round(timeline.duration_s, 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
        )
    )


def _cpu_seconds() -> float:
    """User + system CPU time of this process, all its threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def speed(args) -> dict:
    data = find_data_dir(args.data_dir)
    pool = ravdess_utterances(data, args.actors.split(","), DEFAULT_CLASSES, seed=SEED)
    result = {
        "benchmark": "timeline",
        "model": args.model_dir,
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "lengths": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in [float(m) for m in args.minutes.split(",")]:
            # about 5.5 s per utterance with its silence: enough of them, cycled
            count = int(minutes * 60 / 5.0) + 1
            utterances = [pool[i % len(pool)] for i in range(count)]
            recording = Path(tmp) / f"{minutes:g}min.flac"
            placed = join_utterances(utterances, recording, snr_db=20.0, seed=SEED)
            keep = [p for p in placed if p.end_s <= minutes * 60]
            write_vtt(keep, recording.with_suffix(".vtt"))
            import soundfile as sf

            samples = sf.info(str(recording)).frames
            cut = Path(tmp) / f"{minutes:g}min-cut.flac"  # exactly `minutes` long
            with (
                sf.SoundFile(str(recording)) as src,
                sf.SoundFile(str(cut), "w", samplerate=16000, channels=1) as dst,
            ):
                left = min(samples, int(minutes * 60 * 16000))
                while left > 0:
                    block = src.read(min(left, 16000 * 60), dtype="float32")
                    dst.write(block)
                    left -= block.shape[0]
            done = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    str(cut),
                    str(recording.with_suffix(".vtt")),
                    "--model-dir",
                    args.model_dir,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            result["lengths"][f"{minutes:g}min"] = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(result))
    return result


def quality(args) -> dict:
    import numpy as np
    import soundfile as sf

    from pipeline.segment_evaluation import match, segment_scores
    from preprocessing.alignment import PocketSphinxAligner
    from preprocessing.timed_transcripts import read_timed_transcript
    from serving.predict import LocalModel, predict_files
    from serving.timeline import predict_timeline

    data = find_data_dir(args.data_dir)
    utterances = ravdess_utterances(data, args.actors.split(","), DEFAULT_CLASSES, seed=SEED)
    model, aligner = LocalModel(args.model_dir), PocketSphinxAligner()
    clean = predict_files(
        [u[0] for u in utterances],
        model,
        transcripts=[u[2] for u in utterances],
        aligner=aligner,
        batch_size=8,
    )
    result = {
        "benchmark": "timeline-quality",
        "model": args.model_dir,
        "actors": args.actors.split(","),
        "utterances": len(utterances),
        "snr_db": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for snr in [float(s) for s in args.snrs.split(",")]:
            recording = Path(tmp) / f"{snr:g}dB.flac"
            placed = join_utterances(utterances, recording, snr_db=snr, seed=SEED, aligner=aligner)
            write_vtt(placed, recording.with_suffix(".vtt"))
            timeline = predict_timeline(
                recording,
                model,
                aligner=aligner,
                transcript_words=read_timed_transcript(recording.with_suffix(".vtt")),
            )
            reference = [(p.start_s, p.end_s) for p in placed]
            scores = segment_scores(reference, timeline.rows)
            samples, _ = sf.read(str(recording), dtype="float32")
            cuts = []
            for i, p in enumerate(placed):  # each utterance as it lies in the recording
                first = int(round(p.file_start_s * 16000))
                cuts.append(str(Path(tmp) / f"alone-{i}.flac"))
                sf.write(cuts[-1], samples[first : first + sf.info(p.source).frames], 16000)
            alone = predict_files(
                cuts,
                model,
                transcripts=[p.transcript for p in placed],
                aligner=aligner,
                batch_size=8,
            )
            found = match(reference, timeline.rows)
            labels = [timeline.rows[i].emotion if i is not None else None for i in found]

            def share(values):
                return round(float(np.mean(values)), 3)

            result["snr_db"][f"{snr:g}"] = {
                "onset_f1": round(scores["onset"]["f1"], 3),
                "offset_f1": round(scores["offset"]["f1"], 3),
                "segments": len(timeline.rows),
                "found": sum(i is not None for i in found),
                "agreement_with_noisy_utterance_alone": share(
                    [s == a.prediction.emotion for s, a in zip(labels, alone)]
                ),
                "agreement_with_clean_file_alone": share(
                    [s == c.prediction.emotion for s, c in zip(labels, clean)]
                ),
                "accuracy_segments": share([s == p.label for s, p in zip(labels, placed)]),
                "accuracy_clean_files_alone": share(
                    [c.prediction.emotion == p.label for c, p in zip(clean, placed)]
                ),
            }
    print(json.dumps(result))
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-dir", required=True, help="a SavedModel (version directory or base directory)"
    )
    parser.add_argument("--data-dir", default=None, help="RAVDESS speech (default: the lookup)")
    parser.add_argument("--actors", default="21,22")
    parser.add_argument("--minutes", default="10,60")
    parser.add_argument("--quality", action="store_true")
    parser.add_argument("--snrs", default="20,10,5")
    parser.add_argument(
        "--child",
        nargs=2,
        default=None,
        metavar=("RECORDING", "TRANSCRIPT"),
        help=argparse.SUPPRESS,
    )
    args = parser.parse_args(argv)
    if args.child:
        return child(*args.child, args.model_dir)
    return quality(args) if args.quality else speed(args)


if __name__ == "__main__":
    main()
