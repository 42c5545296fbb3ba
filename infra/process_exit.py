"""Ending a process without the C++ static destructors that abort after tensorflow-io's S3
filesystem was used ("pure virtual method called": the AWS SDK's global EC2-metadata client
outlives the SDK's log system; see :mod:`infra.filesystems`). The commands, the Beam worker
plugin (:mod:`infra.s3_worker`) and the ``cme-ser serve`` workers end through it."""

from __future__ import annotations

import atexit
import os
import sys
import threading


def exit_process(code: int, run_exit_handlers: bool = True) -> None:
    """Ends this process with ``code`` as the interpreter would (non-daemon threads joined,
    exit handlers run, unless called from one, output flushed), then ``os._exit``, which skips
    the C++ static destructors that abort after tensorflow-io's S3 filesystem was used (see the
    module docstring)."""
    try:
        if run_exit_handlers:
            threading._shutdown()  # what Py_FinalizeEx does first
            atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
