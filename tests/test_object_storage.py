"""Object storage end to end (issue 13, section 1): the corpus, the records, the pipeline root
and the serving base path in an S3 bucket.

A local S3-compatible server (moto's, from PyPI) listens on loopback; the module uploads the
24-utterance RAVDESS corpus of the TFX test plus one truncated file, then runs the real
`cme-ser preprocess` (s3:// in, s3:// out) and a 2-fold, 1-epoch `cme-ser run` whose output is
in the bucket, as subprocesses configured only with the standard AWS variables (dummy keys,
the loopback endpoint). What lands in the bucket is downloaded with boto3 and checked here:
this process never loads tensorflow-io's S3 filesystem. Every command must exit 0: a process
that used that filesystem aborted at exit before ``infra.process_exit.exit_process``.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import RAVDESS_SPEECH, small_ravdess_corpus

from infra import filesystems
from preprocessing.records import decode_example

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
BUCKET = "cme-ser-test"
# A valid RAVDESS name (happy, intensity 2, actor 4) that small_ravdess_corpus does not use,
# holding the first third of the real file: a "decode" error, reported in the bucket.
BROKEN = "Actor_04/03-01-03-02-02-01-04.flac"
CLASSES = ["angry", "happy", "neutral", "sad"]
TIMEOUT = 1800


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def aws_env(endpoint: str) -> dict:
    """The standard AWS variables only (the plugin's S3_* are derived by cme-ser itself)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "S3_"))
        and k not in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
    }
    return {
        **env,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def cme_ser(*args, env, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "cme-ser"), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def keys(client, prefix: str) -> list:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def read(client, key: str) -> bytes:
    return client.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def record_ids(client, record_keys, tmp: Path) -> dict:
    """``{utterance id: fold}`` of the records in ``record_keys``, read back locally."""
    found = {}
    for n, key in enumerate(record_keys):
        local = tmp / f"{n}.tfrecord.gz"
        local.write_bytes(read(client, key))
        for raw in tf.data.TFRecordDataset(str(local), compression_type="GZIP"):
            record = decode_example(raw.numpy())
            assert record["utterance_id"] not in found
            found[record["utterance_id"]] = int(record["fold"])
    return found


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    """moto's S3 server on loopback with the corpus uploaded; stopped at the end."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    from preprocessing.embeddings import fetch_glove

    fetch_glove()  # the default word vectors (downloaded once, then cached)
    tmp = tmp_path_factory.mktemp("object_storage")
    corpus = small_ravdess_corpus(tmp / "corpus")  # skips without the data
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_bucket(Bucket=BUCKET)
        uploaded = []
        for path in sorted(corpus.glob("Actor_*/*.flac")):
            client.put_object(
                Bucket=BUCKET, Key=f"ravdess/{path.parent.name}/{path.name}", Body=path.read_bytes()
            )
            uploaded.append(path.stem)
        data = (RAVDESS_SPEECH / BROKEN).read_bytes()
        client.put_object(Bucket=BUCKET, Key=f"ravdess/{BROKEN}", Body=data[: len(data) // 3])
        uploaded.append(Path(BROKEN).stem)
        yield {"client": client, "env": aws_env(endpoint), "tmp": tmp, "uploaded": uploaded}
    finally:
        server.stop()


@pytest.fixture(scope="module")
def preprocessed(bucket):
    done = cme_ser(
        "preprocess",
        "--dataset",
        "ravdess",
        "--data-dir",
        f"s3://{BUCKET}/ravdess",
        "--out",
        f"s3://{BUCKET}/records",
        "--folds",
        "2",
        env=bucket["env"],
        cwd=bucket["tmp"],
    )
    return done


@pytest.fixture(scope="module")
def pipeline_run(bucket, preprocessed):
    done = cme_ser(
        "run",
        "--data-dir",
        f"s3://{BUCKET}/ravdess",
        "--output",
        f"s3://{BUCKET}/out",
        "--metadata",
        str(bucket["tmp"] / "metadata.sqlite"),
        "--folds",
        "2",
        "--epochs",
        "1",
        "--variant",
        "cme",
        "--ensemble",
        "1",
        env=bucket["env"],
        cwd=bucket["tmp"],
    )
    return done


def test_preprocess_reads_and_writes_the_bucket_and_exits_0(bucket, preprocessed):
    assert preprocessed.returncode == 0, preprocessed.stdout[-3000:] + preprocessed.stderr[-5000:]
    assert "pure virtual method" not in preprocessed.stderr
    client = bucket["client"]
    summary = json.loads(read(client, "records/summary.json"))
    assert summary == json.loads(preprocessed.stdout)  # what it printed is what it wrote
    errors = [
        json.loads(line) for line in read(client, "records/errors.jsonl").decode().splitlines()
    ]
    assert [(e["utterance_id"], e["stage"], e["path"]) for e in errors] == [
        (Path(BROKEN).stem, "decode", f"s3://{BUCKET}/ravdess/{BROKEN}")
    ]
    record_keys = keys(client, "records/records/")
    assert record_keys and all(k.endswith(".tfrecord.gz") for k in record_keys)
    ids = record_ids(client, record_keys, bucket["tmp"])
    # Every uploaded file is a record or an error, never both, never lost.
    assert set(ids) == set(bucket["uploaded"]) - {e["utterance_id"] for e in errors}
    assert len(ids) == 24 and summary["records"] == 24 and summary["complete"] is True
    plan = json.loads(read(client, "records/fold_plan.json"))
    assert {ids[f"03-01-01-01-01-01-{a}"] for a in ("01", "02", "03", "04")} == {0, 1}
    for utterance_id, fold in ids.items():
        assert plan["folds"][f"Actor_{utterance_id[-2:]}"] == fold
    assert summary["records_per_fold"] == {"fold-0": 12, "fold-1": 12}


def test_preprocess_refuses_to_mix_runs_in_the_bucket(bucket, preprocessed):
    again = cme_ser(
        "preprocess",
        "--dataset",
        "ravdess",
        "--data-dir",
        f"s3://{BUCKET}/ravdess",
        "--out",
        f"s3://{BUCKET}/records",
        "--folds",
        "2",
        env=bucket["env"],
        cwd=bucket["tmp"],
    )
    assert again.returncode == 2, again.stderr[-3000:]
    assert (
        f"s3://{BUCKET}/records already holds preprocessed output (errors.jsonl, "
        "fold_plan.json, records, summary.json)"
    ) in again.stderr


def test_a_missing_bucket_directory_is_a_usage_error(bucket):
    done = cme_ser(
        "preprocess",
        "--dataset",
        "ravdess",
        "--data-dir",
        f"s3://{BUCKET}/no-such-corpus",
        "--out",
        f"s3://{BUCKET}/x",
        env=bucket["env"],
        cwd=bucket["tmp"],
    )
    assert done.returncode == 2
    assert f"--data-dir s3://{BUCKET}/no-such-corpus is not a directory" in done.stderr


def test_run_puts_the_pipeline_root_report_and_pushed_model_in_the_bucket(bucket, pipeline_run):
    assert pipeline_run.returncode == 0, pipeline_run.stdout[-3000:] + pipeline_run.stderr[-5000:]
    client, tmp = bucket["client"], bucket["tmp"]
    # ML Metadata stays local (SQLite); every artifact is in the bucket, nothing else local.
    assert (tmp / "metadata.sqlite").stat().st_size > 0
    assert not (tmp / "output").exists()
    root = "out/tfx/root/"
    examples = [
        k for k in keys(client, root + "CorpusExampleGen/examples/") if k.endswith(".tfrecord.gz")
    ]
    ids = record_ids(client, examples, tmp)
    assert set(ids) == set(bucket["uploaded"]) - {Path(BROKEN).stem}

    reports = [
        k
        for k in keys(client, root + "CrossValidationReport/report/")
        if k.endswith("/report.json")
    ]
    assert len(reports) == 1
    report = json.loads(read(client, reports[0]))
    assert report["classes"] == CLASSES and len(report["folds"]) == 2
    assert 0.0 <= report["wa_mean"] <= 1.0 and 0.0 <= report["ua_mean"] <= 1.0
    assert np.array(report["confusion"]).sum() == 24
    assert report["blessing"]["blessed"] is True
    assert read(client, reports[0].replace("report.json", "confusion.png"))[:4] == b"\x89PNG"
    assert f"report: s3://{BUCKET}/{root}CrossValidationReport/report/" in pipeline_run.stdout

    # The pushed SavedModel, downloaded whole, loads and answers with probabilities.
    pushed = keys(client, "out/serving_model/cme/")
    versions = {k.split("/")[3] for k in pushed}
    assert len(versions) == 1 and versions.pop().isdigit()
    assert any(k.endswith("/saved_model.pb") for k in pushed)
    local = tmp / "pushed"
    for key in pushed:
        if not key.endswith("/"):
            target = local / key[len("out/serving_model/cme/") :]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(read(client, key))
    version_dir = next(local.iterdir())
    assert (
        f"pushed model: s3://{BUCKET}/out/serving_model/cme/{version_dir.name}"
        in pipeline_run.stdout
    )
    model = tf.saved_model.load(str(version_dir))
    record = local.parent / "0.tfrecord.gz"  # a record downloaded above
    batch = next(iter(tf.data.TFRecordDataset(str(record), compression_type="GZIP").batch(4)))
    probabilities = model.signatures["serving_default"](examples=batch)["probabilities"].numpy()
    assert probabilities.shape[1] == 4
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_the_s3_plugin_variables_come_from_the_standard_aws_ones():
    assert filesystems.s3_settings({"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}) == {
        "S3_ENDPOINT": "http://127.0.0.1:9000",
        "S3_USE_HTTPS": "0",
    }
    # The S3-specific endpoint wins; what the user set for the plugin is kept.
    assert filesystems.s3_settings(
        {
            "AWS_ENDPOINT_URL": "http://a:1",
            "AWS_ENDPOINT_URL_S3": "https://s3.example:443",
            "AWS_DEFAULT_REGION": "eu-west-1",
        }
    ) == {"S3_ENDPOINT": "https://s3.example:443", "S3_USE_HTTPS": "1", "AWS_REGION": "eu-west-1"}
    assert (
        filesystems.s3_settings(
            {"AWS_ENDPOINT_URL": "http://a:1", "S3_ENDPOINT": "b:2", "AWS_REGION": "us-east-1"}
        )
        == {}
    )
    assert filesystems.s3_settings({}) == {}
    with pytest.raises(ValueError, match="must be an http:// or https:// URL"):
        filesystems.s3_settings({"AWS_ENDPOINT_URL": "127.0.0.1:9000"})


def test_paths_keep_their_kind():
    assert filesystems.join("s3://b/out", "tfx", "root") == "s3://b/out/tfx/root"
    assert filesystems.join("out", "tfx") == os.path.join("out", "tfx")
    assert filesystems.absolute("s3://b/x") == "s3://b/x"
    assert filesystems.absolute("x") == os.path.abspath("x")
    assert filesystems.basename("s3://b/records/fold-0/") == "fold-0"
    assert filesystems.dirname("gs://b/a/part.gz") == "gs://b/a"
    assert filesystems.beam_args(["s3://b/x", "/local"], ["--runner=DirectRunner"]) == [
        "--runner=DirectRunner",
        "--beam_plugin=infra.s3_worker",
    ]
    assert filesystems.beam_args(["gs://b/x", "/local"], ["--runner=DirectRunner"]) == [
        "--runner=DirectRunner"
    ]


def test_run_into_object_storage_needs_a_local_metadata_file(capsys):
    from cli.main import main

    assert main(["run", "--output", f"s3://{BUCKET}/out"]) == 2
    assert (
        "--output s3://cme-ser-test/out is object storage, where ML Metadata's SQLite file "
        "cannot live: pass --metadata PATH (a local file)"
    ) in capsys.readouterr().err
    assert main(["run", "--output", f"s3://{BUCKET}/out", "--metadata", "s3://b/m.sqlite"]) == 2
    assert (
        "the ML Metadata file must be local (SQLite), got s3://b/m.sqlite"
        in capsys.readouterr().err
    )


def test_exit_process_ends_like_the_interpreter_with_the_given_code(tmp_path):
    """What a command that used the S3 filesystem ends with: threads joined, exit handlers
    run, buffered output flushed, the given status (no C++ static destructors)."""
    script = tmp_path / "end.py"
    script.write_text(
        "import atexit, sys, threading, time\n"
        "from infra.process_exit import exit_process\n"
        "atexit.register(lambda: print('exit handler', flush=True))\n"
        "threading.Thread(target=lambda: (time.sleep(0.2), print('thread', flush=True))).start()\n"
        "print('buffered', end='')\n"
        "exit_process(int(sys.argv[1]))\n"
    )
    for code in (0, 3):
        done = subprocess.run(
            [sys.executable, str(script), str(code)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        )
        assert done.returncode == code, done.stderr
        assert done.stdout == "bufferedthread\nexit handler\n"
