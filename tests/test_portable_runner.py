"""The Beam preprocessing job run the way cluster runners run it (issue 13, section 2).

Flink, Spark and Dataflow run Python through Beam's portability framework: a job service hands
the pipeline to SDK harnesses in separate worker processes. Here the job service is embedded in
`cme-ser preprocess` (``--job_endpoint=embed``) and the harnesses come from a worker pool this
module starts itself (``worker_pool_main``, in its own process group and its own working
directory). The portable run must give what the DirectRunner gives on the same corpus: the same
utterances in the same folds with the same feature bytes, the same errors, and records + errors
= inputs. That is what breaks first on a cluster: unpicklable DoFns, state kept in the driver,
imports missing in workers, paths only the driver can resolve.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import small_ravdess_corpus
from data_support import RAVDESS_SPEECH, require_speech

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
# A valid RAVDESS name (happy, intensity 2, actor 4) that small_ravdess_corpus does not use,
# holding the first third of the real file: it must become a "decode" error on every runner.
BROKEN = "Actor_04/03-01-03-02-02-01-04.flac"
INPUTS = 24 + 1
FOLDS = 2
POOL_START_TIMEOUT = 120
RUN_TIMEOUT = 900


def env():
    return {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def group_members(pgid: int) -> dict:
    """Live (non-zombie) processes of process group ``pgid``: {pid: command line}."""
    members = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        state, _ppid, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            members[int(entry)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return members


def wait_for(predicate, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class WorkerPool:
    """``python -m apache_beam.runners.worker.worker_pool_main`` on a free loopback port, in a
    new session (so its SDK worker processes share its process group) and its own cwd."""

    def __init__(self, cwd: Path, log: Path):
        self.port = free_port()
        self.log = log
        self._log_file = open(log, "wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "apache_beam.runners.worker.worker_pool_main",
                f"--service_port={self.port}",
            ],
            cwd=cwd,
            env=env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pgid = self.proc.pid

    def wait_listening(self, timeout: float = POOL_START_TIMEOUT) -> None:
        def listening():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"worker pool exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                socket.create_connection(("localhost", self.port), timeout=1).close()
                return True
            except OSError:
                return False

        assert wait_for(listening, timeout), (
            f"worker pool not listening on {self.port} after {timeout}s:\n{self.log_tail()}"
        )

    def workers(self) -> dict:
        """The pool's SDK worker processes still alive (the group minus the pool itself)."""
        return {pid: cmd for pid, cmd in group_members(self.pgid).items() if pid != self.proc.pid}

    def log_tail(self, chars: int = 4000) -> str:
        self._log_file.flush()
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self) -> dict:
        """terminate, wait, kill on timeout; then end whatever is left in the process group
        (SIGTERM skips the pool's atexit hook that stops its workers). Returns what was left."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        left = group_members(self.pgid)
        if left:
            os.killpg(self.pgid, signal.SIGTERM)
            if not wait_for(lambda: not group_members(self.pgid), 15):
                os.killpg(self.pgid, signal.SIGKILL)
                wait_for(lambda: not group_members(self.pgid), 15)
        self._log_file.close()
        return left


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The corpus (24 real files + 1 broken one), the GloVe vectors, and a running worker pool."""
    require_speech()
    from preprocessing.embeddings import fetch_glove

    embeddings = fetch_glove()  # the default vectors `cme-ser preprocess` uses (cached)
    tmp = tmp_path_factory.mktemp("portable")
    corpus = small_ravdess_corpus(tmp / "corpus")
    flac = (RAVDESS_SPEECH / BROKEN).read_bytes()
    (corpus / BROKEN).write_bytes(flac[: len(flac) // 3])
    (tmp / "pool").mkdir()
    (tmp / "cli").mkdir()
    pool = WorkerPool(cwd=tmp / "pool", log=tmp / "pool.log")
    try:
        pool.wait_listening()
        yield {"tmp": tmp, "corpus": corpus, "pool": pool, "embeddings": embeddings}
    finally:
        pool.stop()
        still = group_members(pool.pgid)
        assert not still, f"worker pool processes survived clean-up: {still}"


def preprocess(setup, out, beam_args=(), data_dir=None, cwd=None) -> dict:
    """`cme-ser preprocess` as a subprocess; returns its result and wall-clock seconds."""
    cmd = [
        str(BIN / "cme-ser"),
        "preprocess",
        "--dataset",
        "ravdess",
        "--data-dir",
        str(data_dir or setup["corpus"]),
        "--out",
        str(out),
        "--folds",
        str(FOLDS),
    ] + [f"--beam-arg={a}" for a in beam_args]
    started = time.monotonic()
    done = subprocess.run(
        cmd,
        cwd=cwd or setup["tmp"] / "cli",
        env=env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    return {"done": done, "seconds": time.monotonic() - started, "out": out}


def portable_args(pool: WorkerPool):
    return [
        "--runner=PortableRunner",
        "--job_endpoint=embed",
        "--environment_type=EXTERNAL",
        f"--environment_config=localhost:{pool.port}",
    ]


def check_ok(run, pool=None):
    done = run["done"]
    detail = done.stdout[-2000:] + done.stderr[-5000:]
    if pool is not None:
        detail += "\n--- worker pool log ---\n" + pool.log_tail()
    assert done.returncode == 0, detail


@pytest.fixture(scope="module")
def runs(setup):
    """The same corpus through the DirectRunner (the default: multi-processing, one worker per
    core) and through the PortableRunner against the worker pool, one after the other."""
    tmp, pool = setup["tmp"], setup["pool"]
    direct = preprocess(setup, tmp / "out-direct")
    check_ok(direct)
    # Given relative --data-dir and --out from a directory of its own, the workers running in
    # another (the pool's): this one run is also test_relative_paths_on_portable_workers'.
    cli = tmp / "cli"
    portable = preprocess(
        setup,
        "out-portable",
        portable_args(pool),
        data_dir=os.path.relpath(setup["corpus"], cli),
        cwd=cli,
    )
    check_ok(portable, pool)
    # The job service stops its workers when the job ends: none may outlive it.
    workers_left = pool.workers() if not wait_for(lambda: not pool.workers(), 30) else {}
    print(
        f"\ncme-ser preprocess, {INPUTS} inputs: DirectRunner {direct['seconds']:.1f}s, "
        f"PortableRunner (embedded job service, external worker pool) "
        f"{portable['seconds']:.1f}s"
    )
    return {
        "direct": direct["out"],
        "portable": cli / portable["out"],
        "portable_argv": portable["done"].args,
        "portable_cwd": cli,
        "workers_left": workers_left,
        "pool_log": pool.log_tail(),
    }


def read_records(out: Path) -> dict:
    """{utterance_id: (fold dir, raw bytes, {feature name: serialized tf.train.Feature})}."""
    import tensorflow as tf

    records = {}
    files = sorted(out.glob("records/fold-*/*.tfrecord.gz"))
    assert files, f"no record files under {out}"
    for path in files:
        for raw in tf.data.TFRecordDataset(str(path), compression_type="GZIP").as_numpy_iterator():
            example = tf.train.Example.FromString(raw)
            features = {
                name: feature.SerializeToString()
                for name, feature in example.features.feature.items()
            }
            uid = example.features.feature["utterance_id"].bytes_list.value[0].decode()
            assert uid not in records, f"{uid} written twice ({records[uid][0]}, {path})"
            records[uid] = (path.parent.name, raw, features)
    return records


def read_errors(out: Path) -> list:
    return [
        json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines() if line.strip()
    ]


def test_portable_workers_ran_and_stopped(runs):
    assert "Starting worker with command" in runs["pool_log"], (
        "the portable run did not use the worker pool:\n" + runs["pool_log"]
    )
    assert not runs["workers_left"], f"SDK workers left running: {runs['workers_left']}"


def test_same_utterances_in_the_same_folds(runs):
    direct, portable = read_records(runs["direct"]), read_records(runs["portable"])

    def by_fold(recs):
        return {
            fold: sorted(u for u, r in recs.items() if r[0] == fold)
            for fold in sorted({r[0] for r in recs.values()})
        }

    assert by_fold(portable) == by_fold(direct)
    assert len(by_fold(direct)) == FOLDS


def test_identical_feature_bytes(runs):
    direct, portable = read_records(runs["direct"]), read_records(runs["portable"])
    assert set(portable) == set(direct)
    for uid in sorted(direct):
        d, p = direct[uid][2], portable[uid][2]
        assert sorted(p) == sorted(d), uid
        differ = [name for name in d if d[name] != p[name]]
        assert not differ, f"{uid}: features {differ} differ between runners"


def test_same_errors(runs):
    key = lambda e: (e["utterance_id"], e["path"], e["stage"])  # noqa: E731
    direct, portable = read_errors(runs["direct"]), read_errors(runs["portable"])
    assert sorted(map(key, portable)) == sorted(map(key, direct))
    broken = str(Path(BROKEN).stem)
    assert [(e["utterance_id"], e["stage"]) for e in direct] == [(broken, "decode")]


@pytest.mark.parametrize("runner", ["direct", "portable"])
def test_records_plus_errors_are_the_inputs(runs, runner):
    out = runs[runner]
    records, errors = read_records(out), read_errors(out)
    assert len(records) + len(errors) == INPUTS
    assert set(records).isdisjoint(e["utterance_id"] for e in errors)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["inputs"], summary["records"], summary["errors"], summary["complete"]) == (
        INPUTS,
        len(records),
        len(errors),
        True,
    )


def test_record_bytes_are_reproducible(runs):
    """Serialized deterministically, a record's bytes do not depend on the writing process."""
    direct, portable = read_records(runs["direct"]), read_records(runs["portable"])
    assert {u: r[1] for u, r in portable.items()} == {u: r[1] for u, r in direct.items()}


def test_relative_paths_on_portable_workers(setup, runs):
    """Relative --data-dir / --out work on workers that run in another directory: the portable
    run was given both relative to its own working directory, which is not the pool's (and
    gave what the DirectRunner gives: the tests above)."""
    argv = runs["portable_argv"]
    relative = {flag: argv[argv.index(flag) + 1] for flag in ("--data-dir", "--out")}
    assert not any(os.path.isabs(path) for path in relative.values()), relative
    assert runs["portable_cwd"] != setup["tmp"] / "pool"  # the workers' directory
    out = runs["portable_cwd"] / relative["--out"]
    assert out == runs["portable"]
    assert len(read_records(out)) == INPUTS - 1
    assert json.loads((out / "summary.json").read_text())["complete"]
