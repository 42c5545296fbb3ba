"""The TFX pipeline end to end, small but real: the session's ``small_tfx_run`` (conftest.py:
24 RAVDESS utterances of 4 actors, 2 folds, 2 epochs, one ``cme`` model per Trainer with the
shipped default's prior correction). ``cme-ser run`` was killed during training; the TFX CLI's
local engine (``tfx pipeline create`` + ``tfx run create``) then finished the same pipeline,
reusing what the killed run completed; a last ``cme-ser run`` here comes entirely from the
cache. Every artifact is checked."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT
from conftest import SMALL_RUN as SMALL

from cli.main import main
from pipeline.tfma_metrics import read_fold_metrics
from trainer.config import SHIPPED

BIN = Path(sys.executable).parent
CLASSES = ["angry", "happy", "neutral", "sad"]


def latest(root: Path, component: str, output: str) -> Path:
    runs = sorted((root / component / output).iterdir(), key=lambda p: int(p.name))
    assert runs, f"no {component}.{output} artifact"
    return runs[-1]


@pytest.fixture(scope="module")
def pipeline_run(small_tfx_run):
    run = small_tfx_run
    return run["tmp"], run["corpus"], run["env"], run["killed"]


def test_the_killed_run_sent_library_messages_to_its_log_file(pipeline_run):
    tmp, _, _, lines = pipeline_run
    assert any("Trainer." in line for line in lines), lines
    # The libraries' messages (Beam's workers, TFX's absl log) went to the log file named at
    # the start, not to the terminal.
    log = tmp / "out" / "cme-ser-run.log"
    assert lines[1] == f"TensorFlow, Beam and TFX messages: {log} (--verbose shows them here)"
    assert "apache_beam" in log.read_text()
    assert "apache_beam" not in (tmp / "killed_run.err").read_text()


def test_an_interrupted_run_resumes_from_the_cache(pipeline_run):
    tmp, _, _, killed = pipeline_run
    root = tmp / "out" / "tfx" / "root"
    assert "CorpusExampleGen: finished" in "\n".join(killed)
    assert not any("Pusher" in line for line in killed)
    # The TFX CLI run after the kill reused the preprocessing instead of redoing it.
    assert len(list((root / "CorpusExampleGen" / "examples").iterdir())) == 1
    assert len(list((root / "StatisticsGen" / "statistics").iterdir())) == 1


def test_tfx_run_create_says_what_ran_what_came_from_the_cache_and_where_things_are(pipeline_run):
    tmp = pipeline_run[0]
    out = (tmp / "tfx_run_create.out").read_text()
    lines = out.splitlines()
    ran = next(line for line in lines if line.startswith("ran: "))[len("ran: ") :].split(", ")
    cached = next(line for line in lines if line.startswith("from the cache: "))[
        len("from the cache: ") :
    ].split(", ")
    # The killed `cme-ser run` had finished the preprocessing: reused, not redone.
    assert "CorpusExampleGen" in cached and "StatisticsGen" in cached
    assert {"Trainer.final", "CrossValidationReport", "Pusher"} <= set(ran)
    assert not set(ran) & set(cached)
    assert set(ran) | set(cached) == {
        "CorpusExampleGen",
        "StatisticsGen",
        "SchemaGen",
        "ExampleValidator",
        "Trainer.fold0",
        "Trainer.fold1",
        "Evaluator.fold0",
        "Evaluator.fold1",
        "Calibrator",
        "CrossValidationReport",
        "Trainer.final",
        "ModelLoadValidator",
        "Pusher",
    }
    root = tmp / "out" / "tfx" / "root"
    assert f"report: {latest(root, 'CrossValidationReport', 'report')}" in lines
    versions = sorted((tmp / "out" / "serving_model" / "cme").iterdir())
    assert f"pushed model: {versions[-1]}" in lines
    assert "Trainer.final: running" in out  # the stage lines, as `cme-ser run` prints them
    # Each Trainer's progress: epochs out of the maximum, then where it stopped.
    stopped = re.search(r"Trainer\.final model 1/1, training: stopped at epoch (\d+)/2 after ", out)
    final = json.loads((latest(root, "Trainer.final", "model_run") / "fit.json").read_text())
    assert stopped and int(stopped.group(1)) == final["epochs_run"]
    # The libraries' messages went to the run's log file, named first, as with `cme-ser run`.
    log = tmp / "out" / "cme-ser-run.log"
    assert (
        f"TensorFlow, Beam and TFX messages: {log} (CME_SER_VERBOSE=1 shows them here)" in lines
    ), lines[:5]
    assert "apache_beam" not in out + (tmp / "tfx_run_create.err").read_text()
    # `tfx pipeline create` runs the same file without running the pipeline: no summary.
    assert "ran: " not in (tmp / "tfx_pipeline_create.out").read_text()


def test_examples_are_split_by_fold(pipeline_run):
    tmp = pipeline_run[0]
    examples = latest(tmp / "out" / "tfx" / "root", "CorpusExampleGen", "examples")
    counts = {}
    for fold in (0, 1):
        files = list((examples / f"Split-fold{fold}").glob("*.tfrecord.gz"))
        ds = tf.data.TFRecordDataset([str(f) for f in files], compression_type="GZIP")
        speakers = {
            tf.train.Example.FromString(r.numpy())
            .features.feature["speaker"]
            .bytes_list.value[0]
            .decode()
            for r in ds
        }
        counts[fold] = (sum(1 for _ in ds), speakers)
    assert counts[0][0] + counts[1][0] == 24
    assert not counts[0][1] & counts[1][1]  # speaker-independent
    summary = json.loads((examples / "summary.json").read_text())
    assert summary["records"] == 24 and summary["errors"] == 0


def test_statistics_schema_and_anomalies(pipeline_run):
    tmp = pipeline_run[0]
    root = tmp / "out" / "tfx" / "root"
    stats = latest(root, "StatisticsGen", "statistics")
    assert (stats / "Split-fold0" / "FeatureStats.pb").stat().st_size > 0
    schema = (latest(root, "SchemaGen", "schema") / "schema.pbtxt").read_text()
    for feature in ("fbank", "word_embeddings", "word_start", "alignment_source", "label"):
        assert f'name: "{feature}"' in schema
    assert (latest(root, "ExampleValidator", "anomalies") / "Split-fold1").is_dir()


def test_each_fold_has_a_model_with_tensorboard_curves(pipeline_run):
    tmp = pipeline_run[0]
    root = tmp / "out" / "tfx" / "root"
    for fold in (0, 1):
        model = latest(root, f"Trainer.fold{fold}", "model") / "Format-Serving"
        assert (model / "saved_model.pb").exists()
        run_dir = latest(root, f"Trainer.fold{fold}", "model_run")
        fit = json.loads((run_dir / "fit.json").read_text())
        assert fit["epochs_run"] == 2 and len(fit["val_speakers"]) == 1
        assert fit["config"]["variant"] == "cme" and fit["ensemble_size"] == 1
        # The prior correction (on by default) divided by the final training data's counts.
        assert fit["prior_correction"] is True
        assert fit["prior_class_counts"] == fit["class_counts"]
        assert sum(fit["class_counts"]) == fit["num_final_train"] == 6  # 1 actor of 6
        tags = set()
        for events in (run_dir / "validation").glob("events.out.tfevents.*"):
            for event in tf.compat.v1.train.summary_iterator(str(events)):
                tags |= {v.tag for v in event.summary.value}
        assert {"epoch_loss", "epoch_wa", "epoch_ua"} <= tags


def test_each_fold_is_evaluated_by_tfma_and_reported(pipeline_run):
    tmp = pipeline_run[0]
    root = tmp / "out" / "tfx" / "root"
    rows = []
    for fold in (0, 1):
        metrics = read_fold_metrics(str(latest(root, f"Evaluator.fold{fold}", "evaluation")), 4)
        confusion = np.array(metrics["confusion"])
        assert confusion.sum() == 12 == metrics["examples"]
        assert metrics["wa"] == pytest.approx(np.trace(confusion) / confusion.sum())
        support = confusion.sum(axis=1)
        assert metrics["ua"] == pytest.approx(
            np.mean(np.diag(confusion)[support > 0] / support[support > 0])
        )
        rows.append(metrics)
    report_dir = latest(root, "CrossValidationReport", "report")
    report = json.loads((report_dir / "report.json").read_text())
    assert report["wa_mean"] == pytest.approx(np.mean([r["wa"] for r in rows]))
    assert report["ua_mean"] == pytest.approx(np.mean([r["ua"] for r in rows]))
    assert np.array(report["confusion"]).sum() == 24
    assert "| fold | examples | WA | UA |" in (report_dir / "report.md").read_text()
    assert (report_dir / "confusion.png").stat().st_size > 1000


def test_pushed_model_serves_records(pipeline_run):
    tmp = pipeline_run[0]
    versions = list((tmp / "out" / "serving_model" / "cme").iterdir())
    assert len(versions) == 1 and versions[0].name.isdigit()
    model = tf.saved_model.load(str(versions[0]))
    examples = latest(tmp / "out" / "tfx" / "root", "CorpusExampleGen", "examples")
    files = [str(f) for f in (examples / "Split-fold0").glob("*.tfrecord.gz")]
    batch = next(iter(tf.data.TFRecordDataset(files, compression_type="GZIP").batch(5)))
    out = model.signatures["serving_default"](examples=batch)
    probabilities = out["probabilities"].numpy()
    assert probabilities.shape == (5, 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # What was pushed is the final Trainer's prior-corrected model (3 actors of [2, 1, 1, 2]).
    fit = json.loads(
        (
            latest(tmp / "out" / "tfx" / "root", "Trainer.final", "model_run") / "fit.json"
        ).read_text()
    )
    assert fit["prior_correction"] is True and fit["prior_class_counts"] == [6, 3, 3, 6]
    assert set(out["classes"].numpy().astype(str)) <= set(CLASSES)


def test_rerun_with_cme_ser_run_comes_from_the_cache(pipeline_run):
    tmp, corpus, env, _ = pipeline_run
    before = json.loads(
        (
            latest(tmp / "out" / "tfx" / "root", "CrossValidationReport", "report") / "report.json"
        ).read_text()
    )
    done = subprocess.run(
        [
            str(BIN / "cme-ser"),
            "run",
            "--data-dir",
            str(corpus),
            "--output",
            str(tmp / "out"),
            *SMALL,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    assert "Trainer.fold0: finished" in done.stdout
    assert f"WA {before['wa_mean']:.3f}" in done.stdout
    # Nothing ran again: no new execution directories were made.
    assert len(list((tmp / "out" / "tfx" / "root" / "Trainer.fold0" / "model").iterdir())) == 1
    assert len(list((tmp / "out" / "serving_model" / "cme").iterdir())) == 1


def test_invalid_configuration_fails_before_training(pipeline_run, tmp_path, capsys):
    """Each bad configuration is a usage error (exit code 2, the reason on stderr) before any
    TFX output exists. The first case runs as the `cme-ser` process; the others call the same
    ``main`` in this process (the check is the same code, without a TensorFlow start each)."""
    _, corpus, env, _ = pipeline_run
    cases = [
        (["--folds", "1"], "--folds must be >= 2"),
        (["--classes", "angry,bored"], "bored"),
        (["--folds", "5"], "num_folds=5 but only 4 speakers"),
        (["--data-dir", str(tmp_path / "nowhere")], "is not a directory"),
        (["--ensemble", "0"], "--ensemble must be >= 1"),
        (["--variant", "cme_speaker_norm"], "standardises features per speaker"),
    ]
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    cases.append((["--folds", "2", "--embeddings", str(empty)], str(empty)))
    # (The corpus is speech only; the shipped variant also trains on song.)
    cases = [(["--channels", "speech", *extra], message) for extra, message in cases]
    cases.append((["--channels", "speech,song", "--folds", "2"], "hold(s) no song files"))
    for n, (extra, message) in enumerate(cases):
        args = ["run", "--data-dir", str(corpus), "--output", str(tmp_path / "o"), *extra]
        if n == 0:
            done = subprocess.run(
                [str(BIN / "cme-ser"), *args], env=env, capture_output=True, text=True, timeout=300
            )
            code, stderr = done.returncode, done.stderr
        else:
            code, stderr = main(args), capsys.readouterr().err
        assert code == 2, (extra, stderr[-2000:])
        assert message in stderr, (extra, stderr[-2000:])
        assert not (tmp_path / "o" / "tfx").exists()
    # Without --channels, the shipped variant trains on the channels the corpus holds (speech
    # here), and says so before anything else.
    code = main(["run", "--data-dir", str(corpus), "--output", str(tmp_path / "o"), "--folds", "1"])
    out = capsys.readouterr()
    assert code == 2 and "--folds must be >= 2" in out.err
    assert (
        f"hold(s) no song files: --variant {SHIPPED['variant']} trains on speech only" in out.out
    ), out.out


def test_the_song_directory_must_hold_the_speech_directorys_actors(tmp_path):
    """Folds are dealt on speech: a song directory of other actors (the default song directory
    beside a subset of the speech) is refused before any training, naming them."""
    from conftest import small_ravdess_corpus
    from data_support import RAVDESS_SONG

    from infra.usage_error import UsageError
    from pipeline.run_command import check_fold_plan
    from trainer.config import variant_config

    if not RAVDESS_SONG.is_dir():
        pytest.skip("RAVDESS song not found (see ../shared/data/README.md)")
    speech = small_ravdess_corpus(tmp_path / "speech")  # Actor_01 .. Actor_04
    song = tmp_path / "song"
    song.mkdir()
    for actor in ("01", "02", "03", "04", "05"):
        (song / f"Actor_{actor}").symlink_to(RAVDESS_SONG / f"Actor_{actor}")
    config = variant_config("cme_fixed20_song")
    with pytest.raises(UsageError, match=r"1 speaker\(s\) \(Actor_05\) have song files but no"):
        check_fold_plan([speech, song], config, 2, 1, True)
    (song / "Actor_05").unlink()
    check_fold_plan([speech, song], config, 2, 1, True)  # the same actors: accepted


def test_a_run_killed_inside_a_metadata_transaction_is_still_read(tmp_path):
    """A run killed while ML Metadata writes leaves a hot journal beside metadata.sqlite. The
    next reader rolls it back and reads the runs before it (this failed intermittently in
    `tfx pipeline create` after the killed run of ``small_tfx_run``: "attempt to write a
    readonly database")."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2 as mlmd

    from pipeline.runner import metadata_file, newest_run_started, run_outcome

    out = tmp_path / "out"
    db = metadata_file(str(out))
    Path(db).parent.mkdir(parents=True)
    config = mlmd.ConnectionConfig()
    config.sqlite.filename_uri = db
    config.sqlite.connection_mode = mlmd.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    store = metadata_store.MetadataStore(config)
    run_type = store.put_context_type(mlmd.ContextType(name="pipeline_run"))
    store.put_contexts([mlmd.Context(type_id=run_type, name="run-1")])
    del store
    # A writer killed with pages already spilled to the file: SQLite's hot journal.
    killed = (
        "import os, signal, sqlite3\n"
        f"con = sqlite3.connect({db!r}, isolation_level=None)\n"
        "con.execute('PRAGMA cache_size=1')\n"
        "con.execute('BEGIN IMMEDIATE')\n"
        "con.execute('CREATE TABLE junk (b BLOB)')\n"
        "for _ in range(200): con.execute('INSERT INTO junk VALUES (?)', (os.urandom(4000),))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", killed], check=False)
    assert Path(db + "-journal").stat().st_size > 0
    started = newest_run_started(str(out))
    assert started is not None and abs(started - time.time()) < 600
    assert run_outcome(str(out)) == []  # the run has no components: read, not an error
    assert not Path(db + "-journal").exists()  # rolled back


def test_the_tfx_cli_runner_refuses_a_corpus_too_small_for_its_plan(pipeline_run, tmp_path):
    """pipeline/local_runner.py (what `tfx pipeline create` / `tfx run create` execute) checks
    the fold plan as `cme-ser run` does: 2 actors in 2 folds leave each fold model 1 training
    speaker, so it exits with the reason before any TFX output exists."""
    _, corpus, env, _ = pipeline_run
    small = tmp_path / "two_actors"
    small.mkdir()
    for actor in sorted(corpus.glob("Actor_*"))[:2]:
        (small / actor.name).symlink_to(actor.resolve(), target_is_directory=True)
    out = tmp_path / "o"
    done = subprocess.run(
        [sys.executable, str(ROOT / "pipeline" / "local_runner.py")],
        env={**env, "CME_SER_DATA": str(small), "CME_SER_OUTPUT": str(out), "CME_SER_FOLDS": "2"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert (
        "local_runner.py: error: this corpus is too small for 2 folds with 1 model(s)"
        in done.stderr
    )
    assert "1 training speaker(s)" in done.stderr and "epoch selection needs >= 2" in done.stderr
    assert not (out / "tfx").exists()


def test_the_report_blesses_the_run_and_the_pusher_pushes(pipeline_run):
    tmp = pipeline_run[0]
    root = tmp / "out" / "tfx" / "root"
    blessing = latest(root, "CrossValidationReport", "blessing")
    decision = json.loads((blessing / "blessing.json").read_text())
    assert decision["blessed"] and decision["min_ua"] == 0.0 and not decision["reasons"]
    assert (blessing / "BLESSED").exists()
    report_dir = latest(root, "CrossValidationReport", "report")
    assert "## Push: blessed" in (report_dir / "report.md").read_text()
    # A fresh process loaded the final model and answered its warm-up requests.
    assert (latest(root, "ModelLoadValidator", "blessing") / "INFRA_BLESSED").is_file()
    pushed = latest(root, "Pusher", "pushed_model")
    assert any(pushed.iterdir())  # the Pusher's copy of what it pushed


# Last in the module: it adds a report execution that the cache test above must not see.
def test_a_run_below_the_bar_is_not_pushed_and_says_why(pipeline_run):
    """The same run with an impossible bar: only the report (new parameter) and the Pusher (new
    blessing) run again, from the cache otherwise; nothing is pushed, the serving directory is
    untouched, and the reason is on the terminal and in report.md."""
    tmp, corpus, env, _ = pipeline_run
    serving = tmp / "out" / "serving_model" / "cme"
    before = sorted((p.relative_to(serving), p.stat().st_mtime_ns) for p in serving.rglob("*"))
    done = subprocess.run(
        [
            str(BIN / "cme-ser"),
            "run",
            "--data-dir",
            str(corpus),
            "--output",
            str(tmp / "out"),
            *SMALL,
            "--bless-min-ua",
            "1.01",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "NOT PUSHED" in done.stdout and "pushed model:" not in done.stdout
    assert "below the bar --bless-min-ua 1.01" in done.stdout
    root = tmp / "out" / "tfx" / "root"
    report_dir = latest(root, "CrossValidationReport", "report")
    markdown = (report_dir / "report.md").read_text()
    assert "## Push: NOT blessed" in markdown and "--bless-min-ua 1.01" in markdown
    blessing = latest(root, "CrossValidationReport", "blessing")
    assert (blessing / "NOT_BLESSED").exists()
    assert not json.loads((blessing / "blessing.json").read_text())["blessed"]
    assert (
        sorted((p.relative_to(serving), p.stat().st_mtime_ns) for p in serving.rglob("*")) == before
    )
    # The Pusher ran on the new blessing (no cache hit) and recorded "not pushed".
    assert len(list((root / "Pusher" / "pushed_model").iterdir())) == 2
    assert not any(latest(root, "Pusher", "pushed_model").iterdir())
    assert len(list((root / "Trainer.final" / "model").iterdir())) == 1  # from the cache


def test_the_pushed_model_is_calibrated_on_the_folds_held_out_answers(pipeline_run):
    """The Calibrator ran every fold model on its held-out split; the final Trainer exported
    the temperature fitted on all of those answers; each fold's reported score used the other
    fold's temperature only; the report shows it."""
    from pipeline.calibrator import CALIBRATION_FILE, held_out_answers
    from trainer.calibration import fit_temperature, temperature_scaled

    tmp = pipeline_run[0]
    root = tmp / "out" / "tfx" / "root"
    saved = json.loads((latest(root, "Calibrator", "calibration") / CALIBRATION_FILE).read_text())
    examples = latest(root, "CorpusExampleGen", "examples")
    answers = {}
    for fold in (0, 1):
        model_dir = latest(root, f"Trainer.fold{fold}", "model") / "Format-Serving"
        files = sorted(str(f) for f in (examples / f"Split-fold{fold}").glob("*.gz"))
        answers[fold] = held_out_answers(str(model_dir), files)
        assert len(answers[fold][1]) == 12
    everything = fit_temperature(
        np.concatenate([answers[k][0] for k in (0, 1)]),
        np.concatenate([answers[k][1] for k in (0, 1)]),
    )
    assert saved["temperature"] == pytest.approx(everything, rel=1e-4)
    for fold, other in ((0, 1), (1, 0)):
        t = fit_temperature(*answers[other][:2])
        assert saved["calibration"]["folds"][str(fold)]["temperature"] == pytest.approx(t, rel=1e-4)
    fit = json.loads((latest(root, "Trainer.final", "model_run") / "fit.json").read_text())
    assert fit["temperature"] == pytest.approx(saved["temperature"])
    for fold in (0, 1):
        assert (
            json.loads((latest(root, f"Trainer.fold{fold}", "model_run") / "fit.json").read_text())[
                "temperature"
            ]
            is None
        )
    [version] = list((tmp / "out" / "serving_model" / "cme").iterdir())
    pushed = tf.saved_model.load(str(version))
    assert float(pushed.calibration_temperature.numpy()) == pytest.approx(saved["temperature"])
    # The pushed probabilities are the final model's uncalibrated ones at that temperature:
    # undoing it gives back a distribution whose argmax is the same.
    files = sorted(str(f) for f in (examples / "Split-fold0").glob("*.gz"))
    out = pushed.signatures["serving_default"](
        examples=next(iter(tf.data.TFRecordDataset(files, compression_type="GZIP").batch(4)))
    )
    served = out["probabilities"].numpy()
    undone = temperature_scaled(served, 1 / saved["temperature"])
    assert (undone.argmax(-1) == out["class_ids"].numpy()).all()
    report_dir = latest(root, "CrossValidationReport", "report")
    report = json.loads((report_dir / "report.json").read_text())
    assert report["calibration"]["temperature"] == pytest.approx(saved["temperature"])
    assert "## Calibration" in (report_dir / "report.md").read_text()
    assert (report_dir / "reliability.png").stat().st_size > 1000
