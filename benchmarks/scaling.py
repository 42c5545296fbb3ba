"""How every stage's cost grows with the corpus: RAVDESS speech (4 classes) at 1x, 2x, 4x, 8x.

    python benchmarks/scaling.py [--sizes 1,2,4,8] [--data-dir DIR] [--workers 2] [--every 1]
                                 [--plot docs/scaling.png]

The larger corpora are built here, in a temporary directory (never committed): copy 0 is the
corpus itself, copy ``c`` every utterance speed-perturbed by a factor of about ``1 +/- 0.03 c``
(polyphase resampling, ``scipy.signal.resample_poly``) with white noise at 40 dB SNR, as new
speakers (``<actor>-copy<c>``), so the fold plan spreads them like new people. Per size:

- preprocessing (``cme-ser preprocess --dataset manifest``, the Beam job on the DirectRunner
  with ``--workers`` worker processes, in a process of its own): wall time, utterances per
  second, peak resident memory of the driver and of its workers (summed; sampled every
  0.2 s), and the records' size on disk;
- training (in a process of its own): the ``cme`` model on folds 1-4, the second epoch's time
  (the first one also traces the step functions), the time to score fold 0
  (``trainer.train.evaluate``), and the process's peak resident memory.

Prints one JSON line per size as it finishes, then one with every figure's growth exponent
(the slope of log(figure) against log(size), least squares: 1 is linear) and the issue's
targets checked (exponents <= 1.05, peak memory within 20 % of 1x, >= 25 utterances/s).
"""

from __future__ import annotations

import argparse
import fractions
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TIME_FIGURES = ("preprocess_seconds", "epoch_seconds", "evaluate_seconds")
MEMORY_FIGURES = ("preprocess_driver_peak_mb", "preprocess_workers_peak_mb", "train_peak_mb")
SIZE_FIGURES = ("records_mb",)
TARGET_EXPONENT = 1.05
TARGET_MEMORY_GROWTH = 1.20
TARGET_UTTERANCES_PER_SECOND = 25.0
SNR_DB = 40.0
EVAL_FOLD = 0


def speed_factor(copy: int) -> float:
    """1.03, 0.97, 1.06, 0.94, ... for copies 1, 2, 3, 4, ... (copy 0: the original)."""
    step = (copy + 1) // 2
    return 1.0 + 0.03 * step * (1 if copy % 2 else -1)


def perturbed_copy(source: str, dest: Path, copy: int) -> None:
    """``source`` speed-perturbed (:func:`speed_factor`) with 40 dB white noise -> ``dest``."""
    import numpy as np
    import scipy.signal
    import soundfile

    audio, rate = soundfile.read(source, dtype="float32", always_2d=False)
    ratio = fractions.Fraction(speed_factor(copy)).limit_denominator(100)
    # Fewer samples at the same rate: faster speech (and higher pitch), as speed perturbation.
    audio = scipy.signal.resample_poly(audio, ratio.denominator, ratio.numerator, axis=0)
    rng = np.random.default_rng(copy)
    power = float(np.mean(audio**2)) or 1e-12
    audio = audio + rng.normal(scale=np.sqrt(power / 10 ** (SNR_DB / 10)), size=audio.shape)
    soundfile.write(str(dest), np.clip(audio, -1.0, 1.0).astype(np.float32), rate, format="FLAC")


def build_manifest(utterances, size: int, copies_dir: Path, out: Path) -> int:
    """A JSON-lines manifest of ``size`` copies of ``utterances`` (copies made once, reused by
    larger sizes); returns its row count."""
    rows = []
    for copy in range(size):
        for u in utterances:
            if copy == 0:  # absolute: the manifest's relative paths are its directory's
                path, speaker = Path(u.audio_path).resolve(), u.speaker
            else:
                path = copies_dir / f"{Path(u.audio_path).stem}-copy{copy}.flac"
                if not path.exists():
                    perturbed_copy(u.audio_path, path, copy)
                speaker = f"{u.speaker}-copy{copy}"
            rows.append(
                {
                    "path": str(path),
                    "label": u.label_name,
                    "speaker": speaker,
                    "transcript": u.transcript,
                    "gender": u.gender,
                }
            )
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return len(rows)


def run_sampled(command, env=None) -> dict:
    """Runs ``command``; returns its wall time and the peak resident memory of the process
    (``driver``) and of all its descendants together (``workers``), in MB."""
    import psutil

    started = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    peaks = {"driver": 0, "workers": 0}
    watched = psutil.Process(process.pid)

    def sample():
        while process.poll() is None:
            try:
                driver = watched.memory_info().rss
                workers = 0
                for child in watched.children(recursive=True):
                    try:
                        workers += child.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                break
            peaks["driver"] = max(peaks["driver"], driver)
            peaks["workers"] = max(peaks["workers"], workers)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - started
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, command[:4]))} ... failed ({process.returncode}): {stderr[-3000:]}"
        )
    return {
        "seconds": seconds,
        "stdout": stdout,
        "driver_mb": peaks["driver"] / 2**20,
        "workers_mb": peaks["workers"] / 2**20,
    }


def train_stage(records: str) -> dict:
    """In its own process: the cme model trained on folds != EVAL_FOLD for two epochs (the
    second timed) and scored on EVAL_FOLD; with the process's peak resident memory."""
    import keras

    from experiments.folds import files_by_fold, word_dim_of
    from trainer.config import variant_config
    from trainer.data import make_dataset
    from trainer.model import adapt_normalization, build_model, compile_model
    from trainer.train import count, evaluate, training_frames

    files = files_by_fold(records)
    train = [f for k in sorted(files) if k != EVAL_FOLD for f in files[k]]
    config = variant_config("cme", word_dim=word_dim_of(records), epochs=2)
    keras.utils.set_random_seed(config.seed)
    plain = make_dataset(train, config.word_dim, config.batch_size)
    shuffled = make_dataset(
        train, config.word_dim, config.batch_size, shuffle=True, seed=config.seed
    )
    model = build_model(config)
    adapt_normalization(model, training_frames(plain))
    compile_model(model, config, steps_per_epoch=sum(1 for _ in plain), epochs=config.epochs)

    class EpochTimes(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.started)

    times = EpochTimes()
    model.fit(shuffled, epochs=config.epochs, callbacks=[times], verbose=0)
    started = time.perf_counter()
    _, scored = evaluate(model, files[EVAL_FOLD], config)
    evaluate_seconds = time.perf_counter() - started
    return {
        "train_utterances": count(plain),
        "epoch_seconds": times.seconds[-1],
        "first_epoch_seconds": times.seconds[0],
        "evaluate_seconds": evaluate_seconds,
        "evaluated_utterances": scored,
        "train_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def measure(size: int, utterances, work: Path, args) -> dict:
    from preprocessing import embeddings

    manifest = work / f"manifest-{size}x.jsonl"
    count = build_manifest(utterances, size, work / "copies", manifest)
    records = work / f"records-{size}x"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        ),
    }
    pre = run_sampled(
        [
            sys.executable,
            "-m",
            "cli",
            "preprocess",
            "--dataset",
            "manifest",
            "--data-dir",
            str(manifest),
            "--out",
            str(records),
            "--classes",
            ",".join(args.classes),
            "--embeddings",
            str(embeddings.fetch_glove()),
            "--beam-arg=--runner=DirectRunner",
            "--beam-arg=--direct_running_mode=multi_processing",
            f"--beam-arg=--direct_num_workers={args.workers}",
        ],
        env=env,
    )
    summary = json.loads(pre["stdout"][pre["stdout"].index("{") :])
    on_disk = sum(p.stat().st_size for p in (records / "records").rglob("*") if p.is_file())
    train = run_sampled(
        [sys.executable, str(Path(__file__).resolve()), "--train-stage", str(records)], env=env
    )
    trained = json.loads(train["stdout"].strip().splitlines()[-1])
    return {
        "benchmark": "scaling",
        "size": size,
        "utterances": count,
        "records": summary["records"],
        "errors": summary["errors"],
        "preprocess_seconds": round(pre["seconds"], 1),
        "utterances_per_second": round(count / pre["seconds"], 1),
        "preprocess_driver_peak_mb": round(pre["driver_mb"]),
        "preprocess_workers_peak_mb": round(pre["workers_mb"]),
        "records_mb": round(on_disk / 2**20, 1),
        "epoch_seconds": round(trained["epoch_seconds"], 2),
        "first_epoch_seconds": round(trained["first_epoch_seconds"], 2),
        "evaluate_seconds": round(trained["evaluate_seconds"], 2),
        "train_utterances": trained["train_utterances"],
        "evaluated_utterances": trained["evaluated_utterances"],
        "train_peak_mb": round(trained["train_peak_mb"]),
    }


def exponents(rows) -> dict:
    """Least-squares slope of log(figure) against log(size), per figure (needs >= 2 sizes)."""
    import numpy as np

    sizes = np.log([r["size"] for r in rows])
    return {
        name: round(float(np.polyfit(sizes, np.log([r[name] for r in rows]), 1)[0]), 3)
        for name in TIME_FIGURES + MEMORY_FIGURES + SIZE_FIGURES
    }


def targets(rows, slopes) -> dict:
    first, last = rows[0], rows[-1]
    return {
        "time_exponents_at_most_1.05": {n: slopes[n] <= TARGET_EXPONENT for n in TIME_FIGURES},
        "peak_memory_within_20_percent": {
            n: last[n] <= TARGET_MEMORY_GROWTH * first[n] for n in MEMORY_FIGURES
        },
        "preprocess_at_least_25_utterances_per_second": all(
            r["utterances_per_second"] >= TARGET_UTTERANCES_PER_SECOND for r in rows
        ),
    }


def plot(rows, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["size"] for r in rows]
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    axis.plot(sizes, sizes, color="0.6", linestyle="--", label="linear")
    for name in TIME_FIGURES + MEMORY_FIGURES + SIZE_FIGURES:
        axis.plot(sizes, [r[name] / rows[0][name] for r in rows], marker="o", label=name)
    axis.set_xscale("log", base=2)
    axis.set_yscale("log", base=2)
    axis.set_xticks(sizes, [f"{s}x" for s in sizes])
    axis.set_xlabel(f"corpus size (x RAVDESS speech, {rows[0]['utterances']} utterances)")
    axis.set_ylabel("relative to 1x")
    axis.set_title("Cost against corpus size (benchmarks/scaling.py)")
    axis.legend(fontsize=7)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def main(argv=None) -> list:
    from trainer.config import DEFAULT_CLASSES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        default="1,2,4,8",
        help="corpus sizes, in copies of RAVDESS speech (comma-separated)",
    )
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="Beam worker processes of the preprocessing",
    )
    parser.add_argument(
        "--every",
        type=int,
        default=1,
        help="1x is every N-th utterance of the corpus (a quick check: 16)",
    )
    parser.add_argument(
        "--plot", default=None, help="draw the figures here (e.g. docs/scaling.png)"
    )
    parser.add_argument("--train-stage", default=None, help=argparse.SUPPRESS)  # the child
    args = parser.parse_args(argv)
    if args.train_stage:
        print(json.dumps(train_stage(args.train_stage)))
        return []
    from preprocessing import corpora
    from preprocessing.corpus_options import find_data_dir

    args.classes = DEFAULT_CLASSES
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    if not sizes or sizes[0] < 1:
        parser.error(f"--sizes must be positive integers, got {args.sizes!r}")
    utterances, _ = corpora.partition(
        corpora.ravdess(find_data_dir(args.data_dir), DEFAULT_CLASSES)
    )
    utterances = utterances[:: max(1, args.every)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="cme-ser-scaling-") as tmp:
        (Path(tmp) / "copies").mkdir()
        for size in sizes:
            rows.append(measure(size, utterances, Path(tmp), args))
            print(json.dumps(rows[-1]), flush=True)
    if len(rows) >= 2:
        slopes = exponents(rows)
        print(
            json.dumps(
                {
                    "benchmark": "scaling",
                    "sizes": sizes,
                    "exponents": slopes,
                    "targets": targets(rows, slopes),
                }
            ),
            flush=True,
        )
        if args.plot:
            plot(rows, args.plot)
    return rows


if __name__ == "__main__":
    main()
