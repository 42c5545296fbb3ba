"""A training progress line for people, in place of Keras' per-epoch log."""

from __future__ import annotations

import sys
import time
from typing import Optional, Sequence, TextIO

import keras


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


class EpochProgress(keras.callbacks.Callback):
    """Shows ``label, phase: epoch e/E, m:ss elapsed, at most m:ss left`` while a model trains.

    ``E`` is the fit's maximum (``epochs`` given to ``fit``); early stopping can end it sooner,
    so the time left, ``(E - e)`` times the mean epoch time so far, is an upper bound. One
    callback may serve several fits in a row (select the epoch, then refit); ``phases`` names
    them in order. On a terminal the line is rewritten in place; elsewhere (a log, CI) a line is
    written at most every ``every_seconds`` and at the end of each fit, which always ends with
    ``stopped at epoch e/E after m:ss``.
    """

    def __init__(
        self,
        label: str,
        phases: Sequence[str] = ("training",),
        stream: Optional[TextIO] = None,
        every_seconds: float = 60.0,
    ):
        super().__init__()
        self.label, self.phases = label, tuple(phases)
        self.stream, self.every_seconds = stream, every_seconds
        self._fit, self._start, self._last = -1, 0.0, 0.0

    @property
    def _out(self) -> TextIO:
        return self.stream or sys.stdout  # looked up late: tests and CLIs swap sys.stdout

    def _phase(self) -> str:
        return self.phases[min(self._fit, len(self.phases) - 1)]

    def on_train_begin(self, logs=None):
        self._fit += 1
        self._start = self._last = time.monotonic()
        self._done = 0

    def on_epoch_end(self, epoch, logs=None):
        self._done = epoch + 1
        self._total = int(self.params.get("epochs") or self._done)
        now = time.monotonic()
        elapsed = now - self._start
        left = elapsed / self._done * (self._total - self._done)
        line = (
            f"{self._prefix()}epoch {self._done}/{self._total}, {_clock(elapsed)} elapsed, "
            f"at most {_clock(left)} left"
        )
        if self._on_terminal():
            self._out.write(f"\r{line}\033[K")
            self._out.flush()
        elif now - self._last >= self.every_seconds:
            print(line, file=self._out, flush=True)
            self._last = now

    def on_train_end(self, logs=None):
        line = (
            f"{self._prefix()}stopped at epoch {self._done}/{getattr(self, '_total', 0)} "
            f"after {_clock(time.monotonic() - self._start)}"
        )
        print(f"\r{line}\033[K" if self._on_terminal() else line, file=self._out, flush=True)

    def _prefix(self) -> str:
        return f"{self.label}, {self._phase()}: "

    def _on_terminal(self) -> bool:
        return bool(getattr(self._out, "isatty", lambda: False)())
