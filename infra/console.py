"""What a long command shows its user: our lines on the terminal, the libraries' in a log file.

TensorFlow's C++ log, Beam's worker messages, TFX's and absl's logging and Python warnings all
write to file descriptor 2, from this process and from the worker processes it starts; our
stage lines, training progress and report go to standard output. So sending descriptor 2 to a
file, for the length of the command, separates the two without touching any library.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator, Optional


@contextlib.contextmanager
def library_output_to(log_path: Optional[str]) -> Iterator[Optional[str]]:
    """Within the block, everything written to descriptor 2 (``sys.stderr`` included) is
    appended to ``log_path``; on leaving it, even by an exception, descriptor 2 is the terminal
    again, so a traceback or an error message still reaches the user. ``None``: no change
    (``--verbose``)."""
    if log_path is None:
        yield None
        return
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log_path, "ab", buffering=0) as log:
        os.dup2(log.fileno(), 2)
        try:
            yield log_path
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
