import os
import signal
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# --- A small but real `cme-ser run` (TFX LocalDagRunner), shared by the whole session. ---

import subprocess  # noqa: E402

import pytest  # noqa: E402
from data_support import RAVDESS_SPEECH, missing_under_ci, require_speech  # noqa: E402


def pytest_sessionstart(session):
    missing = missing_under_ci()
    if missing:  # under CI=true a skipped data test would still report "passed"
        raise pytest.UsageError(
            f"CI=true, but {' and '.join(missing)} not found by the "
            "project's lookup ($CME_SER_DATA, ./data, ../shared/data)"
        )


def small_ravdess_corpus(dest: Path) -> Path:
    """24 RAVDESS utterances of 4 actors (symlinks): statement 1, repetition 1, intensity 1 of
    each of the 4 classes, plus intensity 2 of angry and sad."""
    require_speech()
    for actor in ("01", "02", "03", "04"):
        (dest / f"Actor_{actor}").mkdir(parents=True)
        for emotion, intensity in (
            ("01", "01"),
            ("03", "01"),
            ("04", "01"),
            ("05", "01"),
            ("04", "02"),
            ("05", "02"),
        ):
            name = f"03-01-{emotion}-{intensity}-01-01-{actor}.flac"
            (dest / f"Actor_{actor}" / name).symlink_to(RAVDESS_SPEECH / f"Actor_{actor}" / name)
    return dest


BIN = Path(sys.executable).parent
# `cme-ser run`'s arguments in the shared run; the TFX CLI's run gets the same from CME_SER_*.
# One `cme` model per Trainer (not the shipped 3-model ensemble, to keep it cheap); the prior
# correction is left to both defaults (on), so the run covers it end to end.
SMALL_RUN = ["--folds", "2", "--epochs", "2", "--variant", "cme", "--ensemble", "1"]


def run_until_training_then_kill(corpus: Path, out: Path, env: dict) -> list:
    """Starts `cme-ser run`, SIGKILLs it (and its Beam workers) once a Trainer is running;
    returns the stage lines it printed."""
    stderr = out.parent / "killed_run.err"
    with open(stderr, "w") as err:
        process = subprocess.Popen(
            [
                str(BIN / "cme-ser"),
                "run",
                "--data-dir",
                str(corpus),
                "--output",
                str(out),
                *SMALL_RUN,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            start_new_session=True,
        )
        lines = []
        try:
            for line in process.stdout:
                lines.append(line.strip())
                if line.startswith("[") and "Trainer." in line and line.strip().endswith("running"):
                    break
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)
    return lines


@pytest.fixture(scope="session")
def small_tfx_run(tmp_path_factory):
    """The TFX pipeline end to end, small but real, run once per session and shared by
    ``test_tfx_pipeline`` and ``test_tensorboard``: 24 RAVDESS utterances of 4 actors,
    ``SMALL_RUN``. ``cme-ser run`` is killed once a Trainer runs; the TFX CLI's local engine
    (``tfx pipeline create`` + ``tfx run create``) then finishes the same pipeline, reusing what
    the killed run completed.
    Returns {"tmp", "corpus", "env", "killed": the killed run's stage lines, "output": its
    --output, "root": the TFX pipeline root}."""
    from preprocessing.embeddings import fetch_glove

    fetch_glove()  # the default word vectors `cme-ser run` uses (downloaded once, then cached)
    tmp = tmp_path_factory.mktemp("small_tfx_run")
    corpus = small_ravdess_corpus(tmp / "corpus")  # skips without the data
    out = tmp / "out"
    # SMALL_RUN as the TFX CLI's run takes it: --folds 2 -> CME_SER_FOLDS=2, ...
    small = {
        "CME_SER_" + flag[2:].upper(): value for flag, value in zip(SMALL_RUN[::2], SMALL_RUN[1::2])
    }
    env = {
        **os.environ,
        **small,
        "LOCAL_HOME": str(tmp / "tfx_home"),
        "CME_SER_DATA": str(corpus),
        "CME_SER_OUTPUT": str(out),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    killed = run_until_training_then_kill(corpus, out, env)
    for command in (
        [
            "tfx",
            "pipeline",
            "create",
            "--engine",
            "local",
            "--pipeline_path",
            str(ROOT / "pipeline" / "local_runner.py"),
        ],
        ["tfx", "run", "create", "--engine", "local", "--pipeline_name", "cme_ser"],
    ):
        done = subprocess.run(
            [str(BIN / command[0]), *command[1:]],
            env=env,
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
        (tmp / f"tfx_{command[1]}_create.out").write_text(done.stdout)
        (tmp / f"tfx_{command[1]}_create.err").write_text(done.stderr)
    return {
        "tmp": tmp,
        "corpus": corpus,
        "env": env,
        "killed": killed,
        "output": out,
        "root": out / "tfx" / "root",
    }


# --- Synthetic preprocessed records (no audio), for tests that train tiny models. ---


def write_synthetic_records(
    root: Path,
    folds: int = 2,
    per_fold: int = 12,
    word_dim: int = 50,
    seed: int = 0,
    channels: bool = False,
) -> Path:
    """A preprocessed-records directory in the Beam job's layout (records/fold-K/*.tfrecord.gz):
    two speakers per fold, each with every class; the filterbank is shifted by the label.
    With ``channels`` every record has a RAVDESS channel: the first half of each fold's records
    ``speech``, the second half ``song`` (so both speakers have every class in both, given
    ``per_fold`` a multiple of 16)."""
    import json

    import numpy as np
    import tensorflow as tf

    from preprocessing.records import make_example

    rng = np.random.default_rng(seed)
    for fold in range(folds):
        path = root / "records" / f"fold-{fold}" / "part-00000.tfrecord.gz"
        path.parent.mkdir(parents=True)
        with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
            for i in range(per_fold):
                label = (i // 2) % 4
                frames = int(rng.integers(30, 60))
                fbank = rng.normal(size=(frames, 40)).astype(np.float32) + label
                writer.write(
                    make_example(
                        utterance_id=f"f{fold}-{i:02d}",
                        speaker=f"s{fold}{i % 2}",
                        label=label,
                        label_name=("angry", "happy", "neutral", "sad")[label],
                        fold=fold,
                        fbank=fbank,
                        words=["kids", "talk"],
                        word_embeddings=rng.normal(size=(2, word_dim)),
                        word_start=[0, frames // 2],
                        word_end=[frames // 2, frames],
                        transcript="kids talk",
                        alignment_source="forced",
                        channel=("speech" if i < per_fold // 2 else "song") if channels else None,
                    ).SerializeToString()
                )
    (root / "fold_plan.json").write_text(json.dumps({"num_folds": folds}))
    (root / "summary.json").write_text(json.dumps({"records": folds * per_fold}))
    return root


@pytest.fixture
def synthetic_records():
    """``write_synthetic_records`` (root, folds=2, per_fold=12, word_dim=50, seed=0) -> root."""
    return write_synthetic_records


# --- A small exported CME model (the serving tests' helpers), for evaluate / predict tests. ---


@pytest.fixture(scope="session")
def small_model_base(tmp_path_factory):
    """``tests/serving_support.py``'s ``small_model(seed=4)`` (random weights) exported
    with ``export()`` as version 1 of a model base directory; returns the base directory.
    Seed 4 answers more than one class on RAVDESS files (seeds 0-3 answer one class for every
    song file tried), so scores computed from its answers are not a constant predictor's."""
    require_speech()  # small_model() adapts on a RAVDESS utterance
    from serving_support import export, small_model

    base = tmp_path_factory.mktemp("small_model") / "cme"
    export(small_model(seed=4), base / "1")
    return base


@pytest.fixture(scope="session")
def small_model_export(tmp_path_factory):
    """``small_model()`` (seed 0) exported with ``export()`` as version 1 of a model base
    directory, built once per session for the serving tests that take this model
    (test_serving_rest, _grpc, _signatures, _predict, test_waveform_checks): ``(model, base,
    info)``, ``info`` as ``export()`` returns it. Read-only: a test that needs more versions
    (or a broken one) copies this one into a base of its own."""
    require_speech()  # small_model() adapts on a RAVDESS utterance
    from serving_support import export, small_model

    model = small_model()
    base = tmp_path_factory.mktemp("small_model_export") / "cme"
    info = export(model, base / "1")
    return model, base, info


# --- Two workers (`make test` runs pytest-xdist with `-n 2`). ---

# Test files that share a session fixture run on one worker, so that it is built once.
SHARED_FILES = {"tests/test_tensorboard.py": "tests/test_tfx_pipeline.py"}  # small_tfx_run
# The slowest files first, so that the two workers finish at about the same time: by the CPU
# seconds each file took alone (tfx_pipeline with tensorboard, object_storage and nested about
# 200, distribution about 150, ... serving_grpc 40; the files not listed take less). `make
# test` prints the 15 slowest tests.
SLOW_FIRST = (
    "test_tfx_pipeline",
    "test_tensorboard",
    "test_object_storage",
    "test_nested",
    "test_distribution",
    "test_readme_runs",
    "test_baselines",
    "test_reproduce",
    "test_serving_rest",
    "test_training",
    "test_timeline",
    "test_module",
    "test_stability",
    "test_serving_signatures",
    "test_portable_runner",
    "test_infra_validation",
    "test_crossdomain",
    "test_evaluate",
    "test_serving_grpc",
    "test_preprocess_pipeline",
    "test_export_portability",
    "test_tfx_augment",
)


def pytest_xdist_make_scheduler(config, log):
    """xdist's file-by-file scheduling (each file's module fixtures are built once), with the
    files of ``SHARED_FILES`` as one unit. (xdist's own ``loadgroup`` marks do not reach its
    scheduler under pytest 9, which no longer reads the node id xdist rewrites.)"""
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return SHARED_FILES.get(path, path)

    return FileScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """The slowest files are handed out first (xdist schedules in collection order)."""
    rank = {name: n for n, name in enumerate(SLOW_FIRST)}
    items.sort(
        key=lambda item: rank.get(item.module.__name__.rsplit(".", 1)[-1], len(SLOW_FIRST))
    )  # stable
