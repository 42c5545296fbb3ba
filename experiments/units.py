"""Units of evaluation work: the worker pool that trains them, and what a unit records of its
origin. ``cme-ser reproduce`` (every protocol) trains its units (one model, one fold each) in
``--jobs`` worker processes, or one after another in its own process for one job, and rewrites
its results after every finished unit."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from infra.usage_error import UsageError


def _worker_init(threads: int) -> None:
    import tensorflow as tf

    from trainer.distribution import training_strategy

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    # The units train under the environment's strategy (trainer.train); a multi-worker one
    # joins its cluster before the process runs any TensorFlow operation.
    training_strategy()


def run_pool(
    todo: Sequence,
    work: Callable[[object], tuple],
    *,
    jobs: int,
    threads: int,
    describe: Callable[[dict], str],
    after_each: Callable[[dict], None],
    log: Callable[[str], None] = print,
) -> int:
    """Runs ``work(unit) -> (function, args)`` for every unit of ``todo`` in ``jobs`` spawned
    worker processes (``threads`` TensorFlow threads each; 0: TensorFlow's default), or in this
    process for one job with the default threads (a multi-worker ``TF_CONFIG`` aside). After each
    finished unit, logs ``describe(row)`` with the time it took and an ETA, then calls
    ``after_each(row)``. A failed unit is logged and the others go on; returns how many failed."""
    if not todo:
        return 0
    from trainer.distribution import training_tasks

    if training_tasks() > 1 and jobs > 1:
        # Each worker process would join the cluster of TF_CONFIG as the same task.
        raise UsageError(
            f"TF_CONFIG names {training_tasks()} training tasks: every unit is "
            f"then trained by the whole cluster, one at a time; use --jobs 1, "
            f"not {jobs}"
        )
    started, done, failed = time.time(), 0, 0

    def finished(unit, result: Callable[[], dict]) -> None:
        nonlocal done, failed
        done += 1
        try:
            row = result()
        except Exception as error:  # one failed unit is reported, the others go on
            failed += 1
            log(f"[{done}/{len(todo)}] {unit}: FAILED: {type(error).__name__}: {error}")
            return
        elapsed = time.time() - started
        log(
            f"[{done}/{len(todo)}] {unit}: {describe(row)} ({row['seconds']:.0f} s; ETA "
            f"{elapsed / done * (len(todo) - done) / 60:.0f} min)"
        )
        after_each(row)

    if jobs <= 1 and not threads and training_tasks() == 1:
        # One job with TensorFlow's own thread settings: the units run one after another
        # either way, so they run in this process, without a worker that first imports
        # TensorFlow (some 5 s of CPU). A unit seeds what it draws (trainer.train), so its model
        # does not depend on the process that trains it.
        for unit in todo:
            function, args = work(unit)
            finished(unit, lambda: function(*args))
        return failed
    context = multiprocessing.get_context("spawn")  # TensorFlow does not survive a fork
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=max(jobs, 1), mp_context=context, initializer=_worker_init, initargs=(threads,)
    ) as pool:
        futures = {}
        for unit in todo:
            function, args = work(unit)
            futures[pool.submit(function, *args)] = unit
        for future in concurrent.futures.as_completed(futures):
            finished(futures[future], future.result)
    return failed


def planned_time(seconds: float, jobs: int) -> str:
    """The CPU time a plan needs, and the wall time with ``jobs`` workers, as a run prints it
    before it starts."""
    return (
        f"estimated {seconds / 3600:.1f} CPU hours, about "
        f"{seconds / 3600 / max(jobs, 1):.1f} h with {jobs} job(s)"
    )


def config_hash(config) -> str:
    """sha256 of a configuration's canonical JSON, its seed left out: the units of one
    configuration share it whatever their seed."""
    fields = config if isinstance(config, dict) else json.loads(config.to_json())
    fields = {k: v for k, v in fields.items() if k != "seed"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode("utf-8")).hexdigest()


def git_commit(ignore=None) -> str:
    """Short HEAD commit, marked if tracked files (other than under ``ignore``, the results
    this command rewrites) have uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        prefix = Path(os.path.relpath(ignore)).as_posix() + "/" if ignore else None
        dirty = [line for line in status if not (prefix and line[3:].startswith(prefix))]
        return commit + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# CPU features whose presence changes which kernels oneDNN and Eigen pick, hence the float
# results of the same training: vector widths and the matrix/bfloat16/int8 extensions.
FLOAT_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


def machine() -> dict:
    """The machine a unit trained on, as far as it can change its numbers: the CPU model and
    the float-relevant flags it has, TensorFlow's version, whether oneDNN is on (TF 2.16 turns
    it on by default on x86; ``TF_ENABLE_ONEDNN_OPTS=0`` turns it off; ``ONEDNN_MAX_CPU_ISA``
    caps its instructions) and its thread counts: each of these changes a trained model
    (docs/measurements.md, "Why the same unit differs"). Called in the worker, where
    TensorFlow is already loaded."""
    import tensorflow as tf

    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    return {
        "cpu": model,
        "cpu_flags": [f for f in FLOAT_FLAGS if f in flags],
        "cpu_count": os.cpu_count(),
        "tensorflow": tf.__version__,
        "onednn": onednn != "0" if onednn is not None else True,
        # oneDNN's instruction-set cap (unset: the CPU's best), e.g. AVX2 on an AVX-512 CPU
        **(
            {"onednn_max_cpu_isa": os.environ["ONEDNN_MAX_CPU_ISA"]}
            if os.environ.get("ONEDNN_MAX_CPU_ISA")
            else {}
        ),
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
    }


def provenance(config, commit: Optional[str] = None) -> dict:
    """What a unit row records of where it came from: the commit, the configuration hash and
    the machine. ``commit`` is the command's, taken before it wrote any results (``header``):
    asked again from a worker, git would count the results rewritten since as uncommitted
    changes."""
    return {
        "commit": commit or git_commit(),
        "config_sha256": config_hash(config),
        "machine": machine(),
    }


def header(command: str, results_dir, **extra) -> dict:
    """The results' header: the command, the commit, the date and the machine."""
    return {
        "command": command,
        "commit": git_commit(results_dir),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPU cores, no GPU",
        **extra,
    }
