import os
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

RAVDESS_SPEECH = ROOT.parent / "shared" / "data" / "ravdess-speech"


def small_ravdess_corpus(dest: Path) -> Path:
    """24 RAVDESS utterances of 4 actors (symlinks): statement 1, repetition 1, intensity 1 of
    each of the 4 classes, plus intensity 2 of angry and sad."""
    if not RAVDESS_SPEECH.is_dir():
        pytest.skip(f"RAVDESS not found at {RAVDESS_SPEECH} (see ../shared/data/README.md)")
    for actor in ("01", "02", "03", "04"):
        (dest / f"Actor_{actor}").mkdir(parents=True)
        for emotion, intensity in (("01", "01"), ("03", "01"), ("04", "01"), ("05", "01"),
                                   ("04", "02"), ("05", "02")):
            name = f"03-01-{emotion}-{intensity}-01-01-{actor}.flac"
            (dest / f"Actor_{actor}" / name).symlink_to(RAVDESS_SPEECH / f"Actor_{actor}" / name)
    return dest


@pytest.fixture(scope="session")
def small_tfx_run(tmp_path_factory):
    """`cme-ser run` on the 24-utterance corpus, 2 folds, 2 epochs, run once per session, of
    one `cme` model per Trainer without prior correction (the shipped ensemble of refit models
    would train 6 per Trainer).
    Returns {"output": its --output, "root": the TFX pipeline root, "stdout": what it printed}."""
    from preprocessing.embeddings import fetch_glove
    fetch_glove()  # the default word vectors `cme-ser run` uses (downloaded once, then cached)
    tmp = tmp_path_factory.mktemp("small_tfx_run")
    corpus = small_ravdess_corpus(tmp / "corpus")
    out = tmp / "out"
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([str(bin_dir / "cme-ser"), "run", "--data-dir", str(corpus),
                           "--output", str(out), "--folds", "2", "--epochs", "2",
                           "--variant", "cme", "--ensemble", "1", "--no-prior-correction"],
                          env=env, cwd=tmp, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return {"output": out, "root": out / "tfx" / "root", "stdout": done.stdout}


# --- Synthetic preprocessed records (no audio), for tests that train tiny models. ---

def write_synthetic_records(root: Path, folds: int = 2, per_fold: int = 12, word_dim: int = 50,
                            seed: int = 0, channels: bool = False) -> Path:
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
                writer.write(make_example(
                    utterance_id=f"f{fold}-{i:02d}", speaker=f"s{fold}{i % 2}", label=label,
                    label_name=("angry", "happy", "neutral", "sad")[label], fold=fold,
                    fbank=fbank, words=["kids", "talk"],
                    word_embeddings=rng.normal(size=(2, word_dim)), word_start=[0, frames // 2],
                    word_end=[frames // 2, frames], transcript="kids talk",
                    alignment_source="forced",
                    channel=("speech" if i < per_fold // 2 else "song") if channels else None,
                ).SerializeToString())
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
    if not RAVDESS_SPEECH.is_dir():  # small_model() adapts on a RAVDESS utterance
        pytest.skip(f"RAVDESS not found at {RAVDESS_SPEECH} (see ../shared/data/README.md)")
    from serving_support import export, small_model
    base = tmp_path_factory.mktemp("small_model") / "cme"
    export(small_model(seed=4), base / "1")
    return base
