"""``cme-ser serve``: the options checked, then TF Serving's REST and gRPC APIs in gunicorn
worker processes (gunicorn_app.py) until interrupted. This process is gunicorn's master: it
never imports TensorFlow (the workers load it)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from infra.usage_error import UsageError


def serve(args) -> None:
    """TF Serving's REST API over <base>/<version>/ SavedModels, until interrupted.
    ``args``: the parsed `cme-ser serve` options (cli/main.py)."""
    import faulthandler

    try:  # should it ever abort: every thread's stack on stderr
        faulthandler.enable(all_threads=True)
    except (AttributeError, ValueError, OSError):  # a stderr without a file (in-process tests)
        pass

    base = Path(args.model_base_path)
    if not base.is_dir():
        raise UsageError(f"--model-base-path {base} is not a directory")
    if args.version_labels and not Path(args.version_labels).is_file():
        raise UsageError(f"--version-labels {args.version_labels} is not a file")
    if args.max_request_mb <= 0:
        raise UsageError(f"--max-request-mb must be > 0, got {args.max_request_mb}")
    if args.grpc_port is None:  # TF Serving's 8500; a free one when --port 0 asks for that
        args.grpc_port = 0 if args.port == 0 else 8500
    if args.grpc_port < -1:
        raise UsageError(
            f"--grpc-port must be a port, 0 (a free one) or -1 (off), got {args.grpc_port}"
        )
    for flag, value in (
        ("--num-versions", args.num_versions),
        ("--max-batch-size", args.max_batch_size),
        ("--workers", args.workers),
    ):
        if value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    for flag, value in (
        ("--intra-op-threads", args.intra_op_threads),
        ("--inter-op-threads", args.inter_op_threads),
    ):
        if value < 0:
            raise UsageError(f"{flag} must be >= 0, got {value}")
    if args.read_timeout is not None:  # the older flag: both read timeouts
        if args.read_timeout <= 0:
            raise UsageError(f"--read-timeout must be > 0, got {args.read_timeout}")
        args.header_timeout = args.body_timeout = args.read_timeout
    for flag, value in (
        ("--header-timeout", args.header_timeout),
        ("--body-timeout", args.body_timeout),
        ("--max-header-kb", args.max_header_kb),
    ):
        if value <= 0:
            raise UsageError(f"{flag} must be > 0, got {value}")
    # gunicorn's master: no TensorFlow in this process (the workers load it).
    from serving.gunicorn_app import PortError, ServeConfig, run

    config = ServeConfig(
        base_path=base,
        model_name=args.model_name,
        host=args.host,
        port=args.port,
        grpc_port=args.grpc_port,
        workers=args.workers,
        poll_seconds=args.poll_seconds,
        labels_file=args.version_labels,
        num_latest=args.num_versions,
        max_body_bytes=int(args.max_request_mb * 1024 * 1024),
        batching=args.enable_batching,
        max_batch_size=args.max_batch_size,
        batch_timeout_ms=args.batch_timeout_ms,
        cors=args.enable_cors_support,
        intra_op_threads=args.intra_op_threads
        or (_threads_per_worker(args.workers) if args.workers > 1 else 0),
        inter_op_threads=args.inter_op_threads,
        max_header_bytes=int(args.max_header_kb * 1024),
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
    )
    try:
        code = run(config)  # SIGTERM / Ctrl-C: finish what is in flight, exit 0
    except PortError as error:
        raise UsageError(str(error))
    if code:
        sys.exit(code)


def _threads_per_worker(workers: int) -> int:
    """The CPU cores this process may use, divided among the workers (at least 1). Each
    TensorFlow thread pool thread that spins waiting for work costs a busy machine CPU."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores // workers)
