"""Imported by every Beam SDK worker of a job that touches ``s3://`` (``--beam_plugin``, see
``infra.filesystems.beam_args``): registers tensorflow-io's S3 filesystem there, and ends the
worker without the C++ static destructors that abort after it was used (exit status 1 after an
uncaught exception, else 0; see ``infra.process_exit``)."""

import atexit
import logging
import sys

from infra import filesystems
from infra.process_exit import exit_process


def _exit_cleanly():
    logging.shutdown()  # registered before this handler, so it would run after it
    exit_process(1 if getattr(sys, "last_value", None) is not None else 0, run_exit_handlers=False)


filesystems.enable_s3()
atexit.register(_exit_cleanly)
